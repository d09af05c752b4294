//! The layer over a real TCP socket, driven by a cookie-keeping HTTP client.

#[path = "../../tests/common/mod.rs"]
mod common;

use tower_session_guard::{
    ClientBinding, CookieConfig, Csrf, GuessingDetection, Key, MemoryStore, SessionEvent,
    SessionLayer,
};

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

/// Serves `app` on a fresh loopback port, with or without the peer address
/// in the requests' extensions; returns the base URL.
async fn serve(app: axum::Router, connect_info: bool) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        if connect_info {
            let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, service).await.unwrap();
        } else {
            axum::serve(listener, app).await.unwrap();
        }
    });
    (format!("http://{address}"), server)
}

fn dev_layer() -> SessionLayer {
    SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false))
}

#[tokio::test]
async fn over_tcp_cross_site_posts_are_refused_and_same_origin_ones_pass() {
    let (base, server) = serve(common::app(dev_layer().with_csrf(Csrf::default())), false).await;
    let client = reqwest::Client::new();
    // The attack from the issue: a foreign page posts a login.
    let attack = client
        .post(format!("{base}/login/attacker"))
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(attack.status(), 403);
    assert!(attack.headers().get("set-cookie").is_none());
    assert!(attack.text().await.unwrap().contains("cross-site"));
    for (name, value) in [
        ("origin", "http://evil.example".to_owned()),
        ("referer", "http://evil.example/page".to_owned()),
    ] {
        let refused = client
            .post(format!("{base}/login/attacker"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{name}");
    }
    for (name, value) in [
        ("sec-fetch-site", "same-origin".to_owned()),
        ("origin", base.clone()),
        ("referer", format!("{base}/form")),
    ] {
        let accepted = client
            .post(format!("{base}/login/alice"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 200, "{name}");
    }
    let no_headers = client
        .post(format!("{base}/login/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_headers.status(), 200);
    server.abort();
}

#[tokio::test]
async fn without_connect_info_guessing_detection_says_so_once_and_can_fail_closed() {
    let capture = common::LogCapture::install();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&events);
    let guarded = dev_layer()
        .with_guessing_detection(
            GuessingDetection::default().with_threshold(3, std::time::Duration::from_secs(60)),
        )
        .with_event_handler(move |e: &SessionEvent| seen.lock().unwrap().push(e.clone()));
    let (base, server) = serve(common::app(guarded.clone()), false).await;
    let client = reqwest::Client::new();
    for i in 0..6 {
        let forged = client
            .get(format!("{base}/read"))
            .header("cookie", format!("id={:A<43}", i))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 200, "served, but not protected");
    }
    let logged = capture.text();
    let sentence = "into_make_service_with_connect_info::<SocketAddr>()";
    assert_eq!(
        logged.matches(sentence).count(),
        1,
        "one error, not one per request: {logged}"
    );
    assert!(logged.contains("ERROR"), "{logged}");
    let missing = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, SessionEvent::ClientAddressMissing))
        .count();
    assert_eq!(missing, 6, "an event per unprotected request");
    server.abort();

    // Fail closed: 500 with the same sentence, the handler never runs.
    let (base, server) = serve(
        common::app(guarded.clone().with_client_address_required(true)),
        false,
    )
    .await;
    let refused = client.get(format!("{base}/count")).send().await.unwrap();
    assert_eq!(refused.status(), 500);
    assert!(refused.headers().get("set-cookie").is_none());
    let body = refused.text().await.unwrap();
    assert!(
        body.contains(sentence) && body.contains("with_trusted_proxies"),
        "{body}"
    );
    server.abort();

    // With the peer address, the same layer protects and serves.
    let (base, server) = serve(
        common::app(guarded.with_client_address_required(true)),
        true,
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let forged = client
            .get(format!("{base}/read"))
            .header("cookie", format!("id={:A<43}", i))
            .send()
            .await
            .unwrap();
        statuses.push(forged.status().as_u16());
    }
    assert!(
        statuses.contains(&429),
        "guessing detection works: {statuses:?}"
    );
    server.abort();

    // Client binding needs the address too. (Here, not in a test of its
    // own: the log capture is shared, and the count above must be exact.)
    let bound = dev_layer()
        .with_client_binding(ClientBinding::default())
        .with_client_address_required(true);
    let (base, server) = serve(common::app(bound), false).await;
    let refused = reqwest::get(format!("{base}/count")).await.unwrap();
    assert_eq!(refused.status(), 500);
    server.abort();
}
