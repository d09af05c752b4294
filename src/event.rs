//! Lifecycle events: what happened to which session, for audit logs and metrics.
//!
//! Events name sessions by [`Fingerprint`] only, never by id. The layer sends
//! each event to the handler set with
//! [`SessionLayer::with_event_handler`](crate::SessionLayer::with_event_handler)
//! and to `tracing` (target `tower_session_guard::event`).

use std::sync::Arc;

use crate::client::Network;
use crate::id::Fingerprint;
use crate::policy::ExpiryReason;
pub use crate::policy::RejectReason;

/// Something that happened to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session was stored for the first time.
    Created {
        /// The new session.
        session: Fingerprint,
    },
    /// A user signed in; the session got a new id.
    LoggedIn {
        /// The session under its new id.
        session: Fingerprint,
        /// The session before the login, if there was a stored one.
        previous: Option<Fingerprint>,
        /// The user who signed in.
        user_id: String,
    },
    /// The signed-in user proved who they are again
    /// (`Session::reauthenticate`); the session got a new id.
    Reauthenticated {
        /// The session under its new id.
        session: Fingerprint,
        /// The session under its old id.
        previous: Fingerprint,
        /// The user.
        user_id: String,
    },
    /// The session got a new id on request (`Session::regenerate`).
    Regenerated {
        /// The session under its new id.
        session: Fingerprint,
        /// The session under its old id.
        previous: Fingerprint,
    },
    /// The session was destroyed by `Session::logout`.
    LoggedOut {
        /// The destroyed session.
        session: Fingerprint,
        /// Its user, if one was signed in.
        user_id: Option<String>,
    },
    /// The session's id was renewed (`with_renewal_interval`).
    Renewed {
        /// The session under its new id.
        session: Fingerprint,
        /// The session under its old id (valid for the grace period).
        previous: Fingerprint,
    },
    /// The session was destroyed to keep its user under the session limit.
    Evicted {
        /// The destroyed session.
        session: Fingerprint,
        /// Its user.
        user_id: String,
    },
    /// The session was destroyed through [`SessionAdmin`](crate::admin::SessionAdmin).
    Revoked {
        /// The destroyed session.
        session: Fingerprint,
        /// Its user, if known.
        user_id: Option<String>,
    },
    /// The session timed out and was destroyed.
    Expired {
        /// The expired session.
        session: Fingerprint,
        /// Which timeout ended it.
        reason: ExpiryReason,
        /// The client's network (IPv4 /24, IPv6 /48), when known.
        network: Option<Network>,
    },
    /// A request carried a token that was not accepted.
    Rejected {
        /// The session the token named, when the token was authentic.
        session: Option<Fingerprint>,
        /// Why it was not accepted.
        reason: RejectReason,
        /// The client's network (IPv4 /24, IPv6 /48), when known.
        network: Option<Network>,
    },
    /// A header-transport response told the client to forget its token
    /// (an empty header value): the session ended or the token was refused.
    TokenRemoved {
        /// The session the request's token named, when it was authentic.
        session: Option<Fingerprint>,
    },
    /// A request carried no client address while client binding or
    /// guessing detection, which need one, is on: they did not protect it.
    /// See [`SessionLayer::with_client_address_required`](crate::SessionLayer::with_client_address_required).
    ClientAddressMissing,
    /// A renewed id was presented after its grace period had ended: the
    /// token was most likely copied before the renewal, and one of its two
    /// holders is not the user (the other one holds the successor). The
    /// request gets no session. With
    /// [`SessionLayer::with_revoke_on_reuse`](crate::SessionLayer::with_revoke_on_reuse)
    /// the successor is destroyed too, as refresh-token reuse detection
    /// does, so both holders must sign in again.
    ReusedAfterRenewal {
        /// The renewed (old) id the request carried.
        session: Fingerprint,
        /// The session it was renewed into.
        successor: Fingerprint,
        /// Whether the successor was destroyed.
        successor_revoked: bool,
        /// The client's network (IPv4 /24, IPv6 /48), when known.
        network: Option<Network>,
    },
    /// A network sent too many bad tokens and is now answered `429`.
    GuessingDetected {
        /// The network (as grouped by the detector).
        network: Network,
        /// Failures counted in the window.
        failures: u32,
    },
}

impl SessionEvent {
    /// A short name of the event's kind, for metrics labels.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::LoggedIn { .. } => "logged_in",
            Self::Regenerated { .. } => "regenerated",
            Self::Reauthenticated { .. } => "reauthenticated",
            Self::LoggedOut { .. } => "logged_out",
            Self::Renewed { .. } => "renewed",
            Self::Evicted { .. } => "evicted",
            Self::Revoked { .. } => "revoked",
            Self::Expired { .. } => "expired",
            Self::Rejected { .. } => "rejected",
            Self::GuessingDetected { .. } => "guessing_detected",
            Self::ReusedAfterRenewal { .. } => "reused_after_renewal",
            Self::TokenRemoved { .. } => "token_removed",
            Self::ClientAddressMissing => "client_address_missing",
        }
    }
}

/// Where the layer sends events.
pub(crate) type EventHandler = Arc<dyn Fn(&SessionEvent) + Send + Sync>;

/// Whether a `tracing` subscriber would record any session event.
pub(crate) fn tracing_enabled() -> bool {
    tracing::enabled!(target: "tower_session_guard::event", tracing::Level::WARN)
}

/// Sends `event` to `tracing` and to the user's handler.
pub(crate) fn emit(handler: Option<&EventHandler>, event: &SessionEvent) {
    match event {
        SessionEvent::Rejected { .. }
        | SessionEvent::Expired { .. }
        | SessionEvent::GuessingDetected { .. }
        | SessionEvent::Evicted { .. }
        | SessionEvent::ReusedAfterRenewal { .. }
        | SessionEvent::Revoked { .. } => {
            tracing::warn!(target: "tower_session_guard::event", event = ?event, "session event");
        }
        _ => tracing::debug!(target: "tower_session_guard::event", event = ?event, "session event"),
    }
    if let Some(handler) = handler {
        handler(event);
    }
}
