//! User sessions for any tower service (axum, tonic, hyper), secure by default.
//!
//! Add one layer and every request has a validated [`Session`]:
//!
//! ```
//! use axum::routing::{get, post};
//! use axum::{http::StatusCode, Router};
//! use tower_session_guard::{Key, MemoryStore, Session, SessionError, SessionLayer};
//!
//! async fn visits(session: Session) -> Result<String, SessionError> {
//!     let visits: u64 = session.get("visits")?.unwrap_or(0);
//!     session.insert("visits", visits + 1)?; // saved when the response goes out
//!     Ok(format!("visit number {}", visits + 1))
//! }
//!
//! async fn sign_in(session: Session) -> Result<&'static str, SessionError> {
//!     // ...once the user's credentials checked out:
//!     session.login("user-42").await?; // a new id now; the old one is dead
//!     Ok("welcome")
//! }
//!
//! async fn account(session: Session) -> Result<String, StatusCode> {
//!     let user = session.user_id().ok_or(StatusCode::UNAUTHORIZED)?;
//!     Ok(format!("signed in as {user}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .route("/sign-in", post(sign_in))
//!     .route("/account", get(account))
//!     .layer(SessionLayer::new(MemoryStore::default(), Key::generate()));
//! ```
//!
//! The [`guide`] walks through protecting routes, developing over plain
//! HTTP, deploying behind a proxy, running several instances and writing a
//! store.
//!
//! # What the layer does for every request
//!
//! 1. **transport** reads the token from the `__Host-id` cookie;
//! 2. **key** verifies its HMAC-SHA256 tag in constant time (a forged or
//!    damaged token is simply *no session* and never reaches the store);
//! 3. **client** notes the peer address and whether the request is HTTPS;
//! 4. **lifecycle** loads the session by the id's SHA-256 at-rest hash,
//!    following a renewal's forward;
//! 5. **policy** checks the idle and absolute deadlines stored in the
//!    record, the client binding, and whether the id is due for renewal;
//! 6. the handler gets a [`Session`] (synchronous `get`/`insert`/`remove`);
//! 7. on the way out, **lifecycle** commits what changed as a delta;
//! 8. a new or changed id goes back in `Set-Cookie`, with `Cache-Control: no-store`;
//! 9. the request's [`SessionEvent`]s go to your handler and to `tracing`.
//!
//! # Security properties
//!
//! - Ids are 128 bits from the operating system's CSPRNG; tokens carry a
//!   128-bit HMAC tag; stores see only a hash of the id.
//! - **Strict mode**: an id the server did not issue, or one that expired or
//!   was destroyed, is never adopted; the request gets a fresh, empty
//!   session and the stale cookie is cleared.
//! - **Lazy creation**: a visitor whose session stays empty is never stored
//!   and gets no cookie.
//! - [`Session::login`] changes the id at once; the user id can change in no
//!   other way, so session fixation is impossible.
//! - Raw ids never appear in logs, events, errors or `Debug` output: they
//!   show a [`Fingerprint`].
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `axum` | yes | [`Session`] as an axum extractor; `IntoResponse` for [`SessionError`] |
//! | `test-util` | no | [`store::conformance`], the contract suite for stores |
//! | `tonic` | no | `TonicSessionExt` (the session from a `tonic::Request`); the client IP from tonic's `TcpConnectInfo` |
//! | `redis` | no | `RedisStore` (single node or Cluster) and cross-instance invalidation for [`CachedStore`]; re-exports the `redis` crate |
//! | `postgres` | no | `PostgresStore` (sqlx) and `LISTEN`/`NOTIFY` invalidation for [`CachedStore`] |
//! | `sqlite` | no | `SqliteStore` (sqlx, SQLite bundled) |
//! | `mysql` | no | `MySqlStore` (sqlx) for MySQL 8 and MariaDB 10.5+ |
//! | `metrics` | no | counters, histograms and a gauge through the `metrics` facade (see `metrics`) |
//!
//! [`SessionLayer::insights`] (how long sessions last, the time limits that
//! follow) needs no feature.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod client;
pub mod clock;
mod error;
pub mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod guessing;
pub mod guide;
mod id;
pub mod insights;
mod key;
mod layer;
mod lifecycle;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod policy;
mod record;
mod session;
mod sign_in;
pub mod store;
mod transport;

pub use cookie::SameSite;

#[doc(inline)]
pub use crate::admin::{SessionAdmin, SessionHandle, SessionInfo};
#[doc(inline)]
pub use crate::client::{ClientContext, ForwardedHeader, Network, TrustedProxies};
pub use crate::error::SessionError;
#[doc(inline)]
pub use crate::event::{RejectReason, SessionEvent};
pub use crate::guessing::GuessingDetection;
pub use crate::id::Fingerprint;
#[doc(inline)]
pub use crate::insights::{Insights, InsightsConfig};
pub use crate::key::{Key, KeyError};
pub use crate::layer::{ResponseFuture, SessionLayer, SessionService};
#[doc(inline)]
pub use crate::policy::{
    ClientBinding, Csrf, ExpiryReason, Locate, Location, OnLimit, RejectAction,
};
#[cfg(feature = "axum")]
pub use crate::session::SessionLayerMissing;
#[cfg(feature = "tonic")]
pub use crate::session::TonicSessionExt;
pub use crate::session::{Session, MAX_USER_ID_LEN};
pub use crate::sign_in::{
    safe_return_path, LoginOptions, StampError, MAX_METHOD_LEN, MAX_RETURN_PATH_LEN,
};
#[cfg(feature = "axum")]
pub use crate::sign_in::{SignInRequired, SignedIn};
#[cfg(feature = "mysql")]
#[doc(inline)]
pub use crate::store::MySqlStore;
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use crate::store::PostgresStore;
#[cfg(feature = "redis")]
#[doc(inline)]
pub use crate::store::RedisStore;
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use crate::store::SqliteStore;
#[doc(inline)]
pub use crate::store::{CachedStore, MemoryStore, SessionStore, StoreError};
pub use crate::transport::{CookieConfig, CookieConfigError, SiteData, Transport};

/// The `redis` crate this one is built with, for [`RedisStore::from_client`] and friends.
#[cfg(feature = "redis")]
pub use redis;

/// Compiles and runs the README's Rust examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
