//! The error a handler sees from [`Session`](crate::Session) methods.

use std::fmt;
use std::time::Duration;

use crate::sign_in::StampError;
use crate::store::StoreError;

/// Why a session operation failed.
///
/// With the `axum` feature it is an `IntoResponse`, so handlers can return
/// `Result<_, SessionError>`: store failures answer `503 Service
/// Unavailable`, a reached session limit `409 Conflict`, anything else
/// `500 Internal Server Error` (details go to the log, not to the client).
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// A value could not be turned into JSON for storing under `key`.
    Serialize {
        /// The session key.
        key: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The value stored under `key` does not have the type asked for.
    Deserialize {
        /// The session key.
        key: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The session store failed; nothing was changed.
    Store(StoreError),
    /// `login` was given a user id that cannot be used.
    InvalidUserId(&'static str),
    /// `login` was called on a plain-HTTP request while the layer is
    /// HTTPS-only: no cookie could carry the new session.
    InsecureTransport,
    /// The user already has the most sessions allowed and the rule is
    /// `OnLimit::RejectLogin`; nothing was changed.
    LimitReached {
        /// The user's limit.
        max: usize,
    },
    /// The request's CSRF token is missing or is not this session's
    /// ([`Session::verify_csrf`](crate::Session::verify_csrf)); answered
    /// `403 Forbidden`. Nothing was changed.
    CsrfTokenMismatch,
    /// The user last proved who they are longer ago than the operation
    /// allows ([`Session::require_recent_auth`](crate::Session::require_recent_auth)),
    /// Answered `401 Unauthorized` with a JSON body
    /// an API client can act on:
    /// `{"error":"reauthentication_required","max_age_secs":600}`; a
    /// browser app sends the user to re-enter a credential, then calls
    /// [`Session::reauthenticate`](crate::Session::reauthenticate).
    ReauthenticationRequired {
        /// How recent the last authentication had to be.
        max_age: Duration,
    },
    /// Nobody is signed in, and the operation needs a signed-in user
    /// ([`Session::require_recent_auth`](crate::Session::require_recent_auth),
    /// [`Session::reauthenticate`](crate::Session::reauthenticate)).
    /// Answered `401 Unauthorized` with the JSON body
    /// `{"error":"sign_in_required"}`.
    NotSignedIn,
    /// [`Session::login_with`](crate::Session::login_with) was given
    /// options that cannot be used; nothing was changed.
    InvalidLoginOptions(&'static str),
    /// The credential-stamp lookup set with
    /// [`SessionLayer::with_user_stamp`](crate::SessionLayer::with_user_stamp)
    /// failed during a sign-in; answered `503`, nothing was changed.
    StampLookup(StampError),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serialize { key, source } => {
                write!(
                    f,
                    "the value for session key {key:?} could not be serialized: {source}"
                )
            }
            Self::Deserialize { key, source } => write!(
                f,
                "the value stored under session key {key:?} is not of the requested type: {source}"
            ),
            Self::Store(err) => write!(f, "{err}"),
            Self::InvalidUserId(why) => write!(f, "invalid user id: {why}"),
            Self::InsecureTransport => f.write_str(
                "refusing to sign in over plain HTTP: the layer is HTTPS-only; serve this route over HTTPS \
                 (or declare the TLS-terminating proxy with `with_trusted_proxies`)",
            ),
            Self::LimitReached { max } => write!(
                f,
                "the user already has {max} active session(s), the most allowed; sign out elsewhere first"
            ),
            Self::CsrfTokenMismatch => f.write_str(
                "the form's CSRF token is missing or does not belong to this session; reload the page and send \
                 the form again",
            ),
            Self::ReauthenticationRequired { max_age } => write!(
                f,
                "this needs a sign-in within the last {} seconds; enter your credentials again",
                max_age.as_secs()
            ),
            Self::InvalidLoginOptions(why) => write!(f, "invalid login options: {why}"),
            Self::NotSignedIn => f.write_str("nobody is signed in; sign in first"),
            Self::StampLookup(err) => write!(f, "the user's credential stamp could not be read: {err}"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Serialize { source, .. } | Self::Deserialize { source, .. } => Some(source),
            Self::Store(err) => Some(err),
            Self::StampLookup(err) => Some(&**err),
            Self::InvalidUserId(_)
            | Self::ReauthenticationRequired { .. }
            | Self::NotSignedIn
            | Self::InvalidLoginOptions(_)
            | Self::InsecureTransport
            | Self::LimitReached { .. }
            | Self::CsrfTokenMismatch => None,
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl SessionError {
    /// The HTTP status this error answers with.
    #[must_use]
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Store(_) | Self::StampLookup(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::ReauthenticationRequired { .. } | Self::NotSignedIn => {
                http::StatusCode::UNAUTHORIZED
            }
            Self::LimitReached { .. } => http::StatusCode::CONFLICT,
            Self::InsecureTransport | Self::CsrfTokenMismatch => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionError {
    fn into_response(self) -> axum_core::response::Response {
        let status = self.status();
        let json = match &self {
            Self::ReauthenticationRequired { max_age } => Some(format!(
                "{{\"error\":\"reauthentication_required\",\"max_age_secs\":{},\"message\":\"sign in again to continue\"}}",
                max_age.as_secs()
            )),
            Self::NotSignedIn => Some(
                "{\"error\":\"sign_in_required\",\"message\":\"sign in first\"}".to_owned(),
            ),
            _ => None,
        };
        if let Some(body) = json {
            return (
                status,
                [(http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        if status.is_server_error() {
            tracing::error!(target: "tower_session_guard", error = %self, "session operation failed");
        }
        let body = match status {
            http::StatusCode::SERVICE_UNAVAILABLE => {
                "session store unavailable, try again shortly".to_owned()
            }
            http::StatusCode::CONFLICT | http::StatusCode::FORBIDDEN => self.to_string(),
            // Key names and serde messages are for the log, not for clients.
            _ => "session error".to_owned(),
        };
        (status, body).into_response()
    }
}
