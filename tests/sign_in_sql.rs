//! A session row written before schema version 2 (no `sign_in` column) keeps working through a Router after `migrate()`.
#![cfg(feature = "sqlite")]

mod common;
mod sql_common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;

use common::send;
use sql_common::SqliteFile;
use tower_session_guard::clock::ManualClock;
use tower_session_guard::store::SqliteStore;
use tower_session_guard::{Key, LoginOptions, Session, SessionError, SessionInfo, SessionLayer};

fn app(store: SqliteStore, key: Key, clock: &ManualClock) -> Router {
    async fn remember(s: Session, Path(u): Path<String>) -> Result<&'static str, SessionError> {
        s.login_with(
            u,
            LoginOptions::remember_me(Duration::from_secs(30 * 86_400)),
        )
        .await?;
        Ok("ok")
    }
    async fn whoami(s: Session) -> String {
        s.user_id().unwrap_or_else(|| "anonymous".into())
    }
    async fn recent(s: Session) -> Result<&'static str, SessionError> {
        s.require_recent_auth(Duration::from_secs(600))?;
        Ok("recent")
    }
    async fn reauth(s: Session) -> Result<&'static str, SessionError> {
        s.reauthenticate().await?;
        Ok("ok")
    }
    async fn list(s: Session) -> Result<String, SessionError> {
        let list: Vec<SessionInfo> = s.my_sessions().await?;
        Ok(serde_json::to_string(&list).unwrap())
    }
    Router::new()
        .route("/remember/{user}", post(remember))
        .route("/whoami", get(whoami))
        .route("/recent", get(recent))
        .route("/reauth", post(reauth))
        .route("/sessions", get(list))
        .layer(SessionLayer::new(store, key).with_clock(clock.clone()))
}

#[tokio::test]
async fn a_session_row_from_schema_version_1_keeps_working_after_migrate() {
    let file = SqliteFile::new("sign_in_v1_rows");
    let store = SqliteStore::new(file.pool().await);
    store.migrate().await.unwrap();
    let key = Key::generate();
    let clock = ManualClock::new();
    let app = app(store.clone(), key.clone(), &clock);
    let token = send(&app, "POST", "/remember/ann", None)
        .await
        .token()
        .unwrap();

    // Back to version 1: the row loses its sign-in, as a row written then.
    let prefix = store.table_prefix().to_owned();
    for statement in [
        format!("ALTER TABLE {prefix}sessions DROP COLUMN sign_in"),
        format!("ALTER TABLE {prefix}sessions DROP COLUMN grace_until"),
        format!("UPDATE {prefix}schema SET version = 1"),
    ] {
        sqlx::query(&statement).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();

    assert_eq!(send(&app, "GET", "/whoami", Some(&token)).await.body, "ann");
    let list = send(&app, "GET", "/sessions", Some(&token)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list[0]["authenticated_at"], serde_json::Value::Null);
    // No authentication time: a sensitive operation asks for one, and a
    // re-authentication provides it.
    assert_eq!(
        send(&app, "GET", "/recent", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let fresh = send(&app, "POST", "/reauth", Some(&token))
        .await
        .token()
        .unwrap();
    assert_eq!(
        send(&app, "GET", "/recent", Some(&fresh)).await.body,
        "recent"
    );
}
