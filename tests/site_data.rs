//! `Clear-Site-Data` through a real axum `Router`: sent exactly when
//! configured, over HTTPS, when a browser's session ends.

mod common;

use axum::body::Body;
use common::{send_request, Reply, COOKIE};
use http::{Request, StatusCode};
use tower_session_guard::{ClientBinding, Key, MemoryStore, RejectAction, SessionLayer, SiteData};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";

fn layer() -> SessionLayer {
    SessionLayer::new(MemoryStore::new(100), Key::generate())
}

async fn send(
    app: &axum::Router,
    method: &str,
    scheme: &str,
    path: &str,
    token: Option<&str>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{scheme}://app.example.com{path}"))
        .header(http::header::USER_AGENT, CHROME);
    if let Some(token) = token {
        request = request.header(http::header::COOKIE, format!("{COOKIE}={token}"));
    }
    send_request(app, request.body(Body::empty()).unwrap()).await
}

fn clear_site_data(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get("clear-site-data")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Signs in over `scheme`, then logs out; returns the logout's answer.
async fn login_then(app: &axum::Router, scheme: &str, path: &str) -> Reply {
    let login = send(app, "POST", scheme, "/login/alice", None).await;
    let token = login.token().expect("signed in");
    send(app, "POST", scheme, path, Some(&token)).await
}

#[tokio::test]
async fn logout_over_https_clears_the_site_cookies_when_configured() {
    let app = common::app(layer().with_clear_site_data(true));
    let logout = login_then(&app, "https", "/logout").await;
    assert_eq!(logout.status, StatusCode::OK);
    assert!(logout.clears_cookie());
    assert_eq!(clear_site_data(&logout).as_deref(), Some("\"cookies\""));
}

#[tokio::test]
async fn it_is_off_by_default_and_when_turned_off() {
    for layer in [
        layer(),
        layer()
            .with_clear_site_data(true)
            .with_clear_site_data(false),
    ] {
        let app = common::app(layer);
        let logout = login_then(&app, "https", "/logout").await;
        assert!(logout.clears_cookie());
        assert_eq!(clear_site_data(&logout), None);
    }
}

#[tokio::test]
async fn it_is_never_sent_over_plain_http() {
    let app = common::app(layer().with_clear_site_data(true));
    let logout = login_then(&app, "http", "/logout").await;
    assert!(logout.clears_cookie());
    assert_eq!(clear_site_data(&logout), None);
}

#[tokio::test]
async fn requests_that_end_no_session_do_not_send_it() {
    let app = common::app(layer().with_clear_site_data(true));
    let login = send(&app, "POST", "https", "/login/alice", None).await;
    assert_eq!(clear_site_data(&login), None);
    let token = login.token().unwrap();
    let read = send(&app, "GET", "https", "/whoami", Some(&token)).await;
    assert_eq!(clear_site_data(&read), None);
    // A stale cookie is cleared, but nothing else of the site is.
    let stale = send(&app, "GET", "https", "/whoami", Some(&"A".repeat(43))).await;
    assert!(stale.clears_cookie());
    assert_eq!(clear_site_data(&stale), None);
}

#[tokio::test]
async fn the_directives_are_configurable() {
    let app = common::app(layer().with_clear_site_data_directives([
        SiteData::Cookies,
        SiteData::Storage,
        SiteData::Cache,
        SiteData::Storage,
    ]));
    let logout = login_then(&app, "https", "/logout").await;
    assert_eq!(
        clear_site_data(&logout).as_deref(),
        Some("\"cookies\", \"storage\", \"cache\"")
    );
    let none = common::app(layer().with_clear_site_data_directives([]));
    let logout = login_then(&none, "https", "/logout").await;
    assert_eq!(clear_site_data(&logout), None);
}

#[tokio::test]
async fn logout_everywhere_clears_the_browser_that_asked() {
    use tower_session_guard::{Session, SessionError};
    let app = axum::Router::new()
        .route(
            "/login/{user}",
            axum::routing::post(|session: Session| async move {
                session.login("alice").await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/everywhere",
            axum::routing::post(|session: Session| async move {
                session.logout_everywhere().await?;
                Ok::<_, SessionError>("bye")
            }),
        )
        .layer(layer().with_clear_site_data(true));
    let logout = login_then(&app, "https", "/everywhere").await;
    assert_eq!(logout.status, StatusCode::OK);
    assert!(logout.clears_cookie());
    assert_eq!(clear_site_data(&logout).as_deref(), Some("\"cookies\""));
}

/// A session started with Chrome, then used with Firefox: client binding
/// rejects and destroys it.
async fn stolen(action: RejectAction) -> Reply {
    let app = common::app(
        layer()
            .with_clear_site_data(true)
            .with_client_binding(ClientBinding::default().with_action(action)),
    );
    let login = send(&app, "POST", "https", "/login/alice", None).await;
    let token = login.token().unwrap();
    let request = Request::get("https://app.example.com/whoami")
        .header(http::header::USER_AGENT, FIREFOX)
        .header(http::header::COOKIE, format!("{COOKIE}={token}"))
        .body(Body::empty())
        .unwrap();
    send_request(&app, request).await
}

#[tokio::test]
async fn a_session_destroyed_by_the_policy_clears_the_site() {
    let served = stolen(RejectAction::Destroy).await;
    assert_eq!(served.body, "anonymous");
    assert!(served.clears_cookie());
    assert_eq!(clear_site_data(&served).as_deref(), Some("\"cookies\""));

    let refused = stolen(RejectAction::Respond).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(clear_site_data(&refused).as_deref(), Some("\"cookies\""));
}
