//! [`SessionLayer`], [`SessionService`] and [`ResponseFuture`].
//!
//! The layer is a small `Clone` configuration ([`SessionLayer`], in
//! `builder.rs`); the service it makes ([`SessionService`]) walks each
//! request through the steps in the crate docs (`flow.rs`): arrive (read
//! the token, verify it, load the session, ask the policy), call the inner
//! service with a [`Session`](crate::Session) in the request's extensions,
//! depart (commit what changed), answer (the token on the response, and the
//! request's events). It holds no rules of its own: it asks `policy` and
//! tells `lifecycle`.

mod builder;
mod flow;
mod future;
mod service;

pub use self::builder::SessionLayer;
pub use self::future::ResponseFuture;
pub use self::service::SessionService;
