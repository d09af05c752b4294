//! The layer over a real TCP socket, driven by a cookie-keeping HTTP client.

mod common;

use tower_session_guard::{CookieConfig, Key, MemoryStore, SessionLayer};

#[tokio::test]
async fn a_cookie_keeping_client_over_tcp_counts_logs_in_and_out() {
    // Plain http on loopback: a cookie without `Secure` (and so without the
    // `__Host-` prefix), as in the demo.
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, common::app(layer)).await.unwrap();
    });

    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let base = format!("http://{address}");
    let get = |path: &str| {
        let request = client.get(format!("{base}{path}"));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let post = |path: &str| {
        let request = client.post(format!("{base}{path}"));
        async move { request.send().await.unwrap() }
    };

    assert_eq!(get("/count").await, "1");
    assert_eq!(get("/count").await, "2");
    let login = post("/login/tcp-user").await;
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("id=") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    assert_eq!(get("/whoami").await, "tcp-user");
    assert_eq!(get("/count").await, "3", "data survived the login");
    post("/logout").await;
    assert_eq!(get("/whoami").await, "anonymous");
    assert_eq!(get("/count").await, "1", "a fresh session after logout");
    server.abort();
}
