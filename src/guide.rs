//! How to use the layer for the common jobs: protecting routes, developing
//! over plain HTTP, deploying behind a proxy, running several instances,
//! and writing a store. This module holds no code, only these pages.
//!
//! # Protecting routes
//!
//! The layer gives every request a [`Session`](crate::Session); whether a
//! user is signed in is `session.user_id()`. Sign a user in with
//! [`Session::login`](crate::Session::login) once their credentials check
//! out: it gives the session a new id at once (the id an attacker may have
//! planted before is worthless after it), keeps what the session held, and
//! applies the session limit.
//!
//! ```
//! use axum::http::StatusCode;
//! use axum::response::Redirect;
//! use axum::routing::{get, post};
//! use axum::{Form, Router};
//! use serde::Deserialize;
//! use tower_session_guard::{Key, MemoryStore, Session, SessionError, SessionLayer};
//!
//! #[derive(Deserialize)]
//! struct Credentials {
//!     user: String,
//!     password: String,
//! }
//!
//! async fn sign_in(session: Session, Form(form): Form<Credentials>) -> Result<Redirect, SessionError> {
//!     # let password_is_right = |_: &str, _: &str| true;
//!     if !password_is_right(&form.user, &form.password) {
//!         return Ok(Redirect::to("/sign-in?failed"));
//!     }
//!     session.login(form.user).await?;
//!     Ok(Redirect::to("/account"))
//! }
//!
//! async fn account(session: Session) -> Result<String, StatusCode> {
//!     let Some(user) = session.user_id() else {
//!         return Err(StatusCode::UNAUTHORIZED);
//!     };
//!     Ok(format!("hello, {user}"))
//! }
//!
//! async fn sign_out(session: Session) -> Result<Redirect, SessionError> {
//!     session.logout().await?;
//!     Ok(Redirect::to("/"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/sign-in", post(sign_in))
//!     .route("/account", get(account))
//!     .route("/sign-out", post(sign_out))
//!     .layer(SessionLayer::new(MemoryStore::default(), Key::generate()));
//! ```
//!
//! For a privilege change short of a login (a user becomes an admin), call
//! [`Session::regenerate`](crate::Session::regenerate); after a password
//! change, [`Session::logout_others`](crate::Session::logout_others) ends
//! every other session of the user.
//!
//! # Developing over plain HTTP
//!
//! The default cookie is `__Host-id; Secure`, and browsers keep a Secure
//! cookie only from a secure origin: HTTPS, and in most browsers
//! `http://localhost`. If you develop on another plain-HTTP host,
//! give the development build a cookie without the `__Host-` prefix and
//! without `Secure`, and never ship it:
//!
//! ```
//! use tower_session_guard::{CookieConfig, Key, MemoryStore, SessionLayer};
//!
//! let development = cfg!(debug_assertions);
//! let mut layer = SessionLayer::new(MemoryStore::default(), Key::generate());
//! if development {
//!     layer = layer.with_cookie(CookieConfig::default().with_name("dev-id").with_secure(false));
//! }
//! ```
//!
//! A misconfiguration browsers would refuse (a `__Host-` cookie that is not
//! Secure, say) panics at start-up with a sentence saying what to change:
//! see [`CookieConfig::validate`](crate::CookieConfig::validate).
//!
//! # Deploying behind a proxy
//!
//! Client binding and guessing detection need the client's address. Serve
//! the app with its peer address, and tell the layer which proxies may
//! report the client's address and scheme:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//!
//! use axum::Router;
//! use tower_session_guard::{ClientBinding, Key, MemoryStore, SessionLayer, TrustedProxies};
//!
//! let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
//!     // X-Forwarded-For / X-Forwarded-Proto from these networks only.
//!     .with_trusted_proxies(TrustedProxies::networks(["10.0.0.0/8"])?)
//!     // Tokens only over HTTPS, as the proxy reports it.
//!     .with_https_only(true)
//!     .with_client_binding(ClientBinding::default());
//! let app: Router = Router::new().layer(layer);
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<SocketAddr>(),
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Without `with_trusted_proxies`, forwarding headers are ignored and the
//! client is the peer: behind a proxy every request would then come from
//! the proxy's address. A server that terminates TLS itself puts the
//! [`client::Https`](crate::client::Https) marker in the request's
//! extensions.
//!
//! # Running several instances
//!
//! Instances that share sessions share a store: `RedisStore` (feature
//! `redis`, single node or Cluster) with an optional [`CachedStore`](crate::CachedStore)
//! in front, invalidated across instances by pub/sub. Give every instance
//! the same keys (load them from your secret store, never
//! `Key::generate()` per process), and rotate with
//! [`SessionLayer::with_fallback_keys`](crate::SessionLayer::with_fallback_keys).
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_session_guard::{CachedStore, Key, RedisStore, SessionLayer};
//!
//! let redis = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let store = CachedStore::new(redis, 100_000);
//! // The same base64 secret on every instance: `openssl rand -base64 64`.
//! let layer = SessionLayer::new(store, Key::from_env("SESSION_KEY")?);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! Logins, limits, renewals and logouts are atomic across instances: the
//! protocol takes the store's per-user lock where it counts sessions.
//!
//! # Writing a store
//!
//! A store implements a few primitives, each atomic on one key; the
//! session protocol runs above them, the same for every store. The
//! [`store`](crate::store) module docs walk through a complete store over a
//! `Mutex<HashMap>` that passes the contract suite.
