//! Listing and revoking sessions from outside a request.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::{Clock, UnixMillis};
use crate::event::{self, EventHandler, SessionEvent};
use crate::id::{Fingerprint, IdHash};
use crate::insights::{End, Observer};
use crate::lifecycle;
use crate::record::SessionRecord;
use crate::store::{SessionStore, StoreError};

/// An admin handle on a layer's sessions, from
/// [`SessionLayer::sessions`](crate::SessionLayer::sessions).
///
/// Cheap to clone; usable from any task, inside or outside a request. It
/// reads the per-user index, so no operation scans the store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_session_guard::StoreError> {
/// use tower_session_guard::{Key, MemoryStore, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::default(), Key::generate());
/// let admin = layer.sessions();
///
/// // An admin page: what is "alice" signed in on?
/// for info in admin.list("alice").await? {
///     println!("{} from {:?} using {:?}", info.handle, info.ip, info.user_agent);
/// }
/// // Sign out one device, by the handle shown on that page...
/// # let handle = "00".repeat(32).parse().unwrap();
/// admin.revoke(&handle).await?;
/// // ...or all of them (say, after a password reset).
/// let count = admin.revoke_user("alice").await?;
/// # assert_eq!(count, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SessionAdmin {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    events: Option<EventHandler>,
    observer: Arc<Observer>,
}

impl SessionAdmin {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        events: Option<EventHandler>,
        observer: Arc<Observer>,
    ) -> Self {
        Self {
            store,
            clock,
            events,
            observer,
        }
    }

    /// The user's live sessions, least recently used first. Never the ids:
    /// each entry carries a [`SessionHandle`] to revoke it with.
    ///
    /// An unknown user, or an empty user id, has no sessions.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    pub async fn list(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        if user_id.is_empty() {
            return Ok(Vec::new());
        }
        let mut sessions: Vec<SessionInfo> =
            lifecycle::sessions_of(&*self.store, user_id, self.clock.now())
                .await?
                .iter()
                .map(|record| SessionInfo::of(record, false))
                .collect();
        sessions.sort_by_key(|info| info.last_seen);
        Ok(sessions)
    }

    /// Destroys one session; its next request is anonymous and its cookie
    /// is cleared. Returns `false` (and does nothing) for a handle that
    /// names no session, such as one already revoked.
    ///
    /// It checks no owner: any handle revokes whoever's session it names.
    /// Keep the routes that call it behind an administrators' guard, and
    /// let users end their own sessions with
    /// [`Session::revoke_mine`](crate::Session::revoke_mine), which does.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    pub async fn revoke(&self, handle: &SessionHandle) -> Result<bool, StoreError> {
        let revoked = lifecycle::revoke(&*self.store, &handle.0).await?;
        let deleted = revoked.is_some();
        if let Some(record) = revoked {
            self.observer.ended(End::Revoked, &record, self.clock.now());
            let user_id = record.user_id.clone();
            event::emit(
                self.events.as_ref(),
                &SessionEvent::Revoked {
                    session: handle.fingerprint(),
                    user_id,
                },
            );
        }
        Ok(deleted)
    }

    /// Destroys every session of the user and returns how many there were.
    /// A user with no sessions (or an empty user id) gives 0.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    pub async fn revoke_user(&self, user_id: &str) -> Result<usize, StoreError> {
        if user_id.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let deleted = lifecycle::logout_user(&*self.store, user_id, None, now).await?;
        for record in &deleted {
            self.observer.ended(End::Revoked, record, now);
            event::emit(
                self.events.as_ref(),
                &SessionEvent::Revoked {
                    session: record.id_hash.fingerprint(),
                    user_id: Some(user_id.to_owned()),
                },
            );
        }
        Ok(deleted.len())
    }
}

impl fmt::Debug for SessionAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionAdmin").finish_non_exhaustive()
    }
}

/// What an admin, or the user on a "your devices" page, may see of a
/// session: never its id or its data.
///
/// Serializes with serde (times as Unix milliseconds, the handle and the
/// fingerprint as hex strings), so a page or an API can hand it out as is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Names the session for [`SessionAdmin::revoke`] and
    /// [`Session::revoke_mine`](crate::Session::revoke_mine); not a credential.
    pub handle: SessionHandle,
    /// The log-safe fingerprint, as in events.
    pub fingerprint: Fingerprint,
    /// The signed-in user.
    pub user_id: Option<String>,
    /// Whether this is the session of the request that asked
    /// ([`Session::my_sessions`](crate::Session::my_sessions); always
    /// `false` from [`SessionAdmin::list`]).
    pub is_current: bool,
    /// When the session was created.
    #[serde(with = "unix_millis")]
    pub created: SystemTime,
    /// When the user last proved who they are (sign-in or re-authentication).
    #[serde(with = "unix_millis::option")]
    pub authenticated_at: Option<SystemTime>,
    /// How they did, if the app said ([`LoginOptions::with_method`](crate::LoginOptions::with_method)).
    pub method: Option<String>,
    /// When activity was last recorded.
    #[serde(with = "unix_millis")]
    pub last_seen: SystemTime,
    /// When it expires unless used (the earlier of its deadlines).
    #[serde(with = "unix_millis")]
    pub expires: SystemTime,
    /// When it ends however active it is (the absolute deadline).
    #[serde(with = "unix_millis")]
    pub ends: SystemTime,
    /// Its idle timeout, when it has its own ([`LoginOptions`](crate::LoginOptions));
    /// `None`: the layer's. Serialized in milliseconds.
    #[serde(with = "millis::option")]
    pub idle_timeout: Option<Duration>,
    /// Whether its cookie is persistent (a remember-me sign-in).
    pub remembered: bool,
    /// The client address at sign-in.
    pub ip: Option<IpAddr>,
    /// The client's User-Agent family at sign-in.
    pub user_agent: Option<String>,
}

impl SessionInfo {
    pub(crate) fn of(record: &SessionRecord, is_current: bool) -> Self {
        let sign_in = record.sign_in.as_deref();
        Self {
            handle: SessionHandle(record.id_hash),
            fingerprint: record.id_hash.fingerprint(),
            user_id: record.user_id.clone(),
            is_current,
            created: system_time(record.created_at),
            authenticated_at: sign_in.map(|s| system_time(s.authenticated_at)),
            method: sign_in.and_then(|s| s.method.as_deref().map(str::to_owned)),
            last_seen: system_time(record.last_seen),
            expires: system_time(record.expires_at()),
            ends: system_time(record.absolute_deadline),
            idle_timeout: sign_in
                .and_then(|s| s.idle_timeout)
                .map(Duration::from_millis),
            remembered: sign_in.is_some_and(|s| s.persistent),
            ip: record.ip,
            user_agent: record.user_agent.as_deref().map(str::to_owned),
        }
    }
}

pub(crate) fn system_time(millis: UnixMillis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// `SystemTime` as Unix milliseconds, for serde.
mod unix_millis {
    use std::time::{SystemTime, UNIX_EPOCH};

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` passes a reference
    pub(super) fn serialize<S: serde::Serializer>(
        time: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        serializer.serialize_u64(millis)
    }

    pub(super) mod option {
        use std::time::SystemTime;

        #[allow(clippy::ref_option)] // serde's `with` passes a reference
        pub(in super::super) fn serialize<S: serde::Serializer>(
            time: &Option<SystemTime>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => super::serialize(time, serializer),
                None => serializer.serialize_none(),
            }
        }
    }
}

/// `Option<Duration>` as milliseconds, for serde.
mod millis {
    pub(super) mod option {
        use std::time::Duration;

        #[allow(clippy::ref_option)] // serde's `with` passes a reference
        pub(in super::super) fn serialize<S: serde::Serializer>(
            duration: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(d) => {
                    serializer.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                }
                None => serializer.serialize_none(),
            }
        }
    }
}

/// A non-secret name of a stored session, for revoking it.
///
/// It is the at-rest hash of the session id: it identifies the record but
/// cannot be turned back into the id, so it cannot be used as a cookie.
/// Displayed and parsed as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHandle(IdHash);

impl SessionHandle {
    /// The at-rest hash this handle is.
    pub(crate) fn id_hash(&self) -> IdHash {
        self.0
    }

    /// The fingerprint of the session this handle names.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint()
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionHandle")
            .field(&self.fingerprint())
            .finish()
    }
}

impl FromStr for SessionHandle {
    type Err = InvalidHandle;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        IdHash::from_hex(text).map(Self).ok_or(InvalidHandle)
    }
}

/// A string that is not a [`SessionHandle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidHandle;

impl fmt::Display for InvalidHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a session handle is 64 lower-case hex characters, as shown by `SessionAdmin::list`",
        )
    }
}

impl std::error::Error for InvalidHandle {}

/// As its 64 hex characters.
impl serde::Serialize for SessionHandle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_hex())
    }
}

/// From its 64 hex characters; anything else is an error.
impl<'de> serde::Deserialize<'de> for SessionHandle {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
