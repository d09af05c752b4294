//! The [`Session`] handle handlers use.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::admin::{system_time, SessionHandle, SessionInfo};
use crate::client::{family_of, ClientContext};
use crate::clock::duration_millis;
use crate::error::SessionError;
use crate::event::SessionEvent;
use crate::id::{Fingerprint, IdHash, SessionId};
use crate::insights::{End, Observer};
use crate::key::Keyring;
use crate::lifecycle::{self, Login, LoginOutcome};
use crate::policy::{initial_binding, ClientBinding, LimitRule, Timeouts};
use crate::record::{Change, Deadlines, Entry, SessionData, SessionRecord, Touch};
use crate::sign_in::{LoginOptions, UserStamp};
use crate::store::SessionStore;

/// The longest user id `login` accepts, in bytes.
pub const MAX_USER_ID_LEN: usize = 1024;

/// The current request's session.
///
/// The layer loads and validates the session before the handler runs, so
/// reads and writes are synchronous; writes are collected and committed to
/// the store as one delta when the response goes out. Operations that must
/// take effect at once (`login`, `logout`) are `async`.
///
/// `Session` is a cheap `Clone` handle; clones see the same state. Changes
/// made after the response has been produced are not saved.
///
/// ```
/// use tower_session_guard::{Session, SessionError};
///
/// async fn counter(session: Session) -> Result<String, SessionError> {
///     let n: u64 = session.get("n")?.unwrap_or(0);
///     session.insert("n", n + 1)?;
///     Ok(format!("visit {}", n + 1))
/// }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    context: Context,
    state: Mutex<State>,
}

/// What a session needs from the layer for one request.
pub(crate) struct Context {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) limit: Option<LimitRule>,
    /// What a session created by this request starts as (deadlines, client).
    pub(crate) template: Template,
    /// `false` over plain HTTP when the layer is HTTPS-only.
    pub(crate) login_allowed: bool,
    /// Whether anyone listens to events (a fingerprint costs two SHA-256
    /// runs, so events nobody reads are not built).
    pub(crate) events_enabled: bool,
    /// Makes and checks CSRF tokens.
    pub(crate) keyring: Arc<Keyring>,
    /// The authentic id the request's token named, which a renewal on
    /// arrival may have replaced: the page that sent the request was
    /// rendered with its CSRF token.
    pub(crate) arrived_as: Option<SessionId>,
    /// The credential-stamp rule, when the layer has one.
    pub(crate) stamp: Option<UserStamp>,
    /// Where [`SignedIn`](crate::SignedIn) sends a visitor who is not signed in.
    pub(crate) sign_in_page: Option<Arc<str>>,
    /// Where session ends and sign-ins are counted.
    pub(crate) observer: Arc<Observer>,
}

/// Everything a request did to its session, read by the layer at commit.
#[derive(Default)]
pub(crate) struct State {
    /// The id of the stored session this request is on, if any.
    pub(crate) id: Option<SessionId>,
    /// The stored record as last seen by this request.
    pub(crate) record: Option<Arc<SessionRecord>>,
    /// Writes not yet sent to the store.
    pub(crate) pending: Pending,
    /// `regenerate()` was called: move to a new id at commit.
    pub(crate) regenerate: bool,
    /// The session was not stored when the request arrived.
    pub(crate) is_new: bool,
    /// The current id was issued during this request (the client needs it).
    pub(crate) id_issued: bool,
    /// `logout()` destroyed the session this request arrived with.
    pub(crate) logged_out: bool,
    /// The id a session created by this request will have: drawn when
    /// `csrf_token()` is asked before the session is stored, so the page
    /// can carry the token of the session its next request arrives with.
    pub(crate) planned_id: Option<SessionId>,
    /// What happened, in order: the layer sends these events on.
    pub(crate) events: Vec<SessionEvent>,
    /// The activity this request records when the response goes out,
    /// unless it is passive.
    pub(crate) touch: Option<Touch>,
    /// `mark_passive()` was called: record no activity.
    pub(crate) passive: bool,
}

impl State {
    /// Records `event` when events are listened to.
    fn record(&mut self, enabled: bool, event: impl FnOnce() -> SessionEvent) {
        if enabled {
            self.events.push(event());
        }
    }
}

/// Writes collected during a request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending {
    set: Vec<(String, Value)>,
    removed: Vec<String>,
}

impl Pending {
    fn insert(&mut self, key: String, value: Value) {
        self.removed.retain(|k| *k != key);
        if let Some(slot) = self.set.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.set.push((key, value));
        }
    }

    fn remove(&mut self, key: &str) {
        self.set.retain(|(k, _)| k != key);
        if !self.removed.iter().any(|k| k == key) {
            self.removed.push(key.to_owned());
        }
    }

    /// `Some(value)` if this request set the key, `Some(None)` if it removed it.
    fn lookup(&self, key: &str) -> Option<Option<&Value>> {
        if let Some((_, v)) = self.set.iter().find(|(k, _)| k == key) {
            return Some(Some(v));
        }
        if self.removed.iter().any(|k| k == key) {
            return Some(None);
        }
        None
    }

    /// Whether applying these writes to an empty session leaves data in it.
    pub(crate) fn has_values(&self) -> bool {
        !self.set.is_empty()
    }

    pub(crate) fn to_change(&self) -> Change {
        Change {
            set: self.set.clone(),
            removed: self.removed.clone(),
            touch: None,
            binding: None,
        }
    }

    pub(crate) fn into_change(self) -> Change {
        Change {
            set: self.set,
            removed: self.removed,
            touch: None,
            binding: None,
        }
    }

    /// The data of a brand-new session holding these writes.
    pub(crate) fn into_data(self) -> SessionData {
        self.set.into_iter().collect()
    }

    /// Drops the writes that `sent` already delivered (unless overwritten since).
    fn forget(&mut self, sent: &Change) {
        for (key, value) in &sent.set {
            if let Some(pos) = self.set.iter().position(|(k, v)| k == key && v == value) {
                self.set.remove(pos);
            }
        }
        self.removed.retain(|k| !sent.removed.contains(k));
    }
}

impl Session {
    /// A handle for one request. `loaded` is the validated stored session, if any.
    /// `touch` is the activity the request records unless it is passive.
    pub(crate) fn new(
        context: Context,
        loaded: Option<(SessionId, Arc<SessionRecord>)>,
        touch: Option<Touch>,
    ) -> Self {
        let is_new = loaded.is_none();
        let (id, record) = match loaded {
            Some((id, record)) => (Some(id), Some(record)),
            None => (None, None),
        };
        Self {
            inner: Arc::new(Inner {
                context,
                state: Mutex::new(State {
                    id,
                    record,
                    is_new,
                    touch,
                    ..State::default()
                }),
            }),
        }
    }

    /// Where [`SignedIn`](crate::SignedIn) sends a visitor who is not signed in.
    pub(crate) fn sign_in_page(&self) -> Option<&str> {
        self.inner.context.sign_in_page.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked mid-update leaves consistent data behind
        // (every update is a single assignment), so poisoning is ignored.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What a session created by this request starts as.
    pub(crate) fn template(&self) -> &Template {
        &self.inner.context.template
    }

    /// Takes the request's state for committing.
    pub(crate) fn take_state(&self) -> State {
        std::mem::take(&mut *self.lock())
    }

    /// The value stored under `key`, deserialized.
    ///
    /// # Errors
    ///
    /// [`SessionError::Deserialize`] when the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.lock();
        let value = match state.pending.lookup(key) {
            Some(value) => value,
            None => state.record.as_ref().and_then(|r| r.data.get(key)),
        };
        value
            .map(|v| {
                T::deserialize(v).map_err(|source| SessionError::Deserialize {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// Stores `value` under `key`; saved when the response goes out.
    ///
    /// # Errors
    ///
    /// [`SessionError::Serialize`] when `value` cannot be turned into JSON.
    pub fn insert<T: Serialize>(
        &self,
        key: impl Into<String>,
        value: T,
    ) -> Result<(), SessionError> {
        let key = key.into();
        let value = serde_json::to_value(value).map_err(|source| SessionError::Serialize {
            key: key.clone(),
            source,
        })?;
        self.lock().pending.insert(key, value);
        Ok(())
    }

    /// Removes `key`; returns whether it held a value.
    pub fn remove(&self, key: &str) -> bool {
        let mut state = self.lock();
        let existed = match state.pending.lookup(key) {
            Some(value) => value.is_some(),
            None => state
                .record
                .as_ref()
                .is_some_and(|r| r.data.get(key).is_some()),
        };
        state.pending.remove(key);
        existed
    }

    /// Reads and removes `key` in one step (for flash messages).
    ///
    /// # Errors
    ///
    /// [`SessionError::Deserialize`] when the stored value is not a `T`; the
    /// key is then left in place.
    pub fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let value = self.get(key)?;
        if value.is_some() {
            self.remove(key);
        }
        Ok(value)
    }

    /// The signed-in user, if any.
    #[must_use]
    pub fn user_id(&self) -> Option<String> {
        self.lock().record.as_ref().and_then(|r| r.user_id.clone())
    }

    /// Whether this session was not stored when the request arrived.
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.lock().is_new
    }

    /// A log-safe name of the stored session, if there is one.
    #[must_use]
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.lock().id.as_ref().map(SessionId::fingerprint)
    }

    /// The session's CSRF token, for a hidden form field or a
    /// `<meta>` tag scripts read and send back in the `x-csrf-token`
    /// header (see [`Csrf`](crate::Csrf)).
    ///
    /// It is derived from the session id with the layer's key (an HMAC;
    /// nothing is stored, and the id cannot be recovered from it), so it
    /// changes whenever the id does: at [`login`](Self::login), at
    /// [`regenerate`](Self::regenerate) and at a renewal
    /// ([`with_renewal_interval`](crate::SessionLayer::with_renewal_interval);
    /// a form left open across a renewal is refused and must be reloaded).
    ///
    /// Asked before anything is stored (a first visit), it starts the
    /// session: it is stored when the response goes out, under the id the
    /// token belongs to, so the form's next request arrives with both.
    ///
    /// `None` while a [`regenerate`](Self::regenerate) of this request is
    /// pending (the id changes when the response goes out: render forms on
    /// the next request, say after a redirect).
    ///
    /// ```
    /// use tower_session_guard::Session;
    ///
    /// async fn form(session: Session) -> String {
    ///     let token = session.csrf_token().unwrap_or_default();
    ///     format!(r#"<form method="post" action="/transfer">
    ///         <input type="hidden" name="csrf_token" value="{token}">
    ///         <button>Send</button></form>"#)
    /// }
    /// ```
    #[must_use]
    pub fn csrf_token(&self) -> Option<String> {
        let mut state = self.lock();
        if state.regenerate {
            return None;
        }
        let state = &mut *state;
        let id = match &state.id {
            Some(id) => id,
            None => state.planned_id.get_or_insert_with(SessionId::generate),
        };
        Some(self.inner.context.keyring.csrf_token(id))
    }

    /// Checks a CSRF token a form sent (its hidden field, from
    /// [`csrf_token`](Self::csrf_token)), in constant time.
    ///
    /// Call it first in every handler that takes a form and changes
    /// something. It succeeds when `token` is this session's token (or
    /// that of the id the request arrived with, when a renewal replaced it
    /// on arrival), and when there is no stored session: a request without
    /// one acts for nobody, and the layer's origin check
    /// ([`Csrf`](crate::Csrf)) refuses cross-site sign-in forms.
    ///
    /// ```
    /// use axum::Form;
    /// use serde::Deserialize;
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// #[derive(Deserialize)]
    /// struct Transfer {
    ///     csrf_token: String,
    ///     amount: u64,
    /// }
    ///
    /// async fn transfer(session: Session, Form(form): Form<Transfer>) -> Result<String, SessionError> {
    ///     session.verify_csrf(&form.csrf_token)?; // 403 otherwise
    ///     Ok(format!("sent {}", form.amount))
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::CsrfTokenMismatch`] (a `403`) when the session
    /// exists and `token` is missing, malformed or another session's.
    pub fn verify_csrf(&self, token: &str) -> Result<(), SessionError> {
        let current = self.lock().id.clone();
        let Some(current) = current else {
            return Ok(());
        };
        let context = &self.inner.context;
        let arrived = context.arrived_as.as_ref().filter(|id| **id != current);
        let valid = context.keyring.verify_csrf(&current, token)
            || arrived.is_some_and(|id| context.keyring.verify_csrf(id, token));
        if valid {
            Ok(())
        } else {
            Err(SessionError::CsrfTokenMismatch)
        }
    }

    /// Issues a new id when the response goes out, keeping the data.
    ///
    /// Call it on any privilege change short of a login (which regenerates
    /// by itself). A session that is not stored yet has no id to replace:
    /// it gets its first id only if it holds data (lazy creation).
    ///
    /// ```
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn become_admin(session: Session) -> Result<&'static str, SessionError> {
    ///     session.insert("role", "admin")?;
    ///     session.regenerate(); // the old id stops working when the response goes out
    ///     Ok("you are an admin now")
    /// }
    /// ```
    pub fn regenerate(&self) {
        self.lock().regenerate = true;
    }

    /// Signs `user_id` in: the session gets a new id now and the old id is
    /// dead at once; the data (including writes made earlier in this
    /// request) is kept.
    ///
    /// Because the user id can only change through `login`, and `login`
    /// always changes the id, session fixation is impossible: an id an
    /// attacker planted before the login is worthless after it.
    ///
    /// ```
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn sign_in(session: Session) -> Result<&'static str, SessionError> {
    ///     // ...once the password checked out:
    ///     session.login("user-42").await?;
    ///     assert_eq!(session.user_id().as_deref(), Some("user-42"));
    ///     Ok("welcome")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`SessionError::InvalidUserId`] for an empty user id or one longer
    ///   than [`MAX_USER_ID_LEN`] bytes.
    /// - [`SessionError::Store`] when the store fails; the session is then
    ///   unchanged and the old id still valid.
    pub async fn login(&self, user_id: impl Into<String>) -> Result<(), SessionError> {
        self.sign_in(user_id.into(), &LoginOptions::new(), false)
            .await
    }

    /// Signs `user_id` in like [`login`](Self::login), with this session's
    /// own lifetime: a remember-me login keeps the user signed in for its
    /// lifetime with a persistent cookie, while other sessions keep the
    /// layer's timeouts. The deadlines are stored with the session, so
    /// every instance enforces them, and the cookie's `Max-Age` is derived
    /// from the stored absolute deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_session_guard::{LoginOptions, Session, SessionError};
    ///
    /// async fn sign_in(session: Session) -> Result<&'static str, SessionError> {
    ///     let month = Duration::from_secs(30 * 86_400);
    ///     session.login_with("user-42", LoginOptions::remember_me(month)).await?;
    ///     Ok("welcome back in the next 30 days without a password")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`login`](Self::login), and [`SessionError::InvalidLoginOptions`]
    /// for a zero timeout or a method label that is empty or too long.
    pub async fn login_with(
        &self,
        user_id: impl Into<String>,
        options: LoginOptions,
    ) -> Result<(), SessionError> {
        options
            .validate()
            .map_err(SessionError::InvalidLoginOptions)?;
        self.sign_in(user_id.into(), &options, false).await
    }

    /// Records that the signed-in user just proved who they are again (say,
    /// re-entered their password before changing it): the session gets a
    /// new id and a fresh authentication time, its idle and absolute
    /// windows start afresh with the lifetime it was signed in with, and
    /// its credential stamp is read again (see
    /// [`SessionLayer::with_user_stamp`](crate::SessionLayer::with_user_stamp)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn confirm_password(session: Session) -> Result<&'static str, SessionError> {
    ///     // ...once the password the user typed again checked out:
    ///     session.reauthenticate().await?;
    ///     session.require_recent_auth(Duration::from_secs(600))?; // passes now
    ///     Ok("confirmed")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::NotSignedIn`] when nobody is signed in; otherwise as
    /// [`login`](Self::login).
    pub async fn reauthenticate(&self) -> Result<(), SessionError> {
        let (user_id, options) = {
            let state = self.lock();
            let record = state.record.as_ref();
            let user = record.and_then(|r| r.user_id.clone());
            let options = record
                .and_then(|r| r.sign_in.as_deref())
                .map_or_else(LoginOptions::new, LoginOptions::of);
            (user, options)
        };
        let Some(user_id) = user_id else {
            return Err(SessionError::NotSignedIn);
        };
        self.sign_in(user_id, &options, true).await
    }

    /// When the signed-in user last proved who they are (sign-in or
    /// [`reauthenticate`](Self::reauthenticate)); `None` when nobody is
    /// signed in.
    #[must_use]
    pub fn authenticated_at(&self) -> Option<SystemTime> {
        self.lock()
            .record
            .as_ref()
            .filter(|r| r.user_id.is_some())
            .and_then(|r| r.authenticated_at())
            .map(system_time)
    }

    /// Checks that the user authenticated within the last `max_age`, for
    /// operations that need a fresh proof (changing the password or the
    /// e-mail address, deleting the account).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn change_password(session: Session) -> Result<&'static str, SessionError> {
    ///     session.require_recent_auth(Duration::from_secs(10 * 60))?; // 401 otherwise
    ///     // ...store the new password, then keep this session and end the others:
    ///     session.reauthenticate().await?;
    ///     session.logout_others().await?;
    ///     Ok("password changed")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::ReauthenticationRequired`] (a `401` with a JSON body)
    /// when the last authentication is older than `max_age`;
    /// [`SessionError::NotSignedIn`] (a `401`) when nobody is signed in.
    pub fn require_recent_auth(&self, max_age: Duration) -> Result<(), SessionError> {
        let now = self.inner.context.template.deadlines.created_at;
        let authenticated = {
            let state = self.lock();
            match state.record.as_ref().filter(|r| r.user_id.is_some()) {
                None => return Err(SessionError::NotSignedIn),
                Some(record) => record.authenticated_at(),
            }
        };
        match authenticated {
            Some(at) if now.saturating_sub(at) <= duration_millis(max_age) => Ok(()),
            // Signed in before authentication times were kept: not recent.
            _ => Err(SessionError::ReauthenticationRequired { max_age }),
        }
    }

    /// When the session ends unless it is used again: the earlier of its
    /// idle and absolute deadlines, counting this request's activity (none
    /// for a [passive](Self::mark_passive) request). `None` while nothing
    /// is stored. For countdowns in a page.
    #[must_use]
    pub fn expires_at(&self) -> Option<SystemTime> {
        let state = self.lock();
        let record = state.record.as_ref()?;
        let mut idle = record.idle_deadline;
        if let (Some(touch), false) = (state.touch, state.passive) {
            idle = idle.max(touch.idle_deadline);
        }
        Some(system_time(idle.min(record.absolute_deadline)))
    }

    /// Marks this request as passive: it records no activity, so it does
    /// not extend the idle timeout. For requests the page makes on its own
    /// (a polling endpoint, a countdown refreshing itself) rather than for
    /// the user. The session's timeouts still apply to it.
    ///
    /// ```
    /// use tower_session_guard::Session;
    ///
    /// async fn notifications(session: Session) -> String {
    ///     session.mark_passive(); // polling every minute must not keep the session alive
    ///     "[]".to_owned()
    /// }
    /// ```
    pub fn mark_passive(&self) {
        self.lock().passive = true;
    }

    /// The signed-in user's sessions, most recently used first, with this
    /// one marked ([`SessionInfo::is_current`]): for a "your devices" page.
    /// Empty when nobody is signed in.
    ///
    /// ```
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn devices(session: Session) -> Result<String, SessionError> {
    ///     let mut page = String::new();
    ///     for device in session.my_sessions().await? {
    ///         let mark = if device.is_current { " (this device)" } else { "" };
    ///         page += &format!("{:?} from {:?}{mark}\n", device.user_agent, device.ip);
    ///     }
    ///     Ok(page)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn my_sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        let (user_id, current) = {
            let state = self.lock();
            (
                state.record.as_ref().and_then(|r| r.user_id.clone()),
                state.id.as_ref().map(SessionId::hash),
            )
        };
        let Some(user_id) = user_id else {
            return Ok(Vec::new());
        };
        let context = &self.inner.context;
        let now = context.template.deadlines.created_at;
        let mut sessions: Vec<SessionInfo> = lifecycle::sessions_of(&*context.store, &user_id, now)
            .await?
            .iter()
            .map(|record| SessionInfo::of(record, Some(record.id_hash) == current))
            .collect();
        sessions.sort_by_key(|info| std::cmp::Reverse(info.last_seen));
        Ok(sessions)
    }

    /// Signs out one of the signed-in user's own sessions ("sign out that
    /// device"), by the handle [`my_sessions`](Self::my_sessions) gave.
    /// Returns `false`, and does nothing, when the handle names no session
    /// of this user: a handle from another user's list cannot end their
    /// session. The current session's handle signs this session out, as
    /// [`logout`](Self::logout) does.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn revoke_mine(&self, handle: &SessionHandle) -> Result<bool, SessionError> {
        let (user_id, current) = {
            let state = self.lock();
            (
                state.record.as_ref().and_then(|r| r.user_id.clone()),
                state.id.as_ref().map(SessionId::hash),
            )
        };
        let Some(user_id) = user_id else {
            return Ok(false);
        };
        let target = handle.id_hash();
        if Some(target) == current {
            self.logout().await?;
            return Ok(true);
        }
        let store = &*self.inner.context.store;
        // Only a session of this user; a placeholder (the session moved a
        // moment ago) is not followed, and the user can reload the list.
        match store.load(&target).await? {
            Some(Entry::Session(record)) if record.user_id.as_deref() == Some(&*user_id) => {}
            _ => return Ok(false),
        }
        let removed = lifecycle::logout(store, &target, Some(&user_id)).await?;
        let Some(record) = removed else {
            return Ok(false);
        };
        let context = &self.inner.context;
        context
            .observer
            .ended(End::Revoked, &record, context.template.deadlines.created_at);
        self.lock().record(self.inner.context.events_enabled, || {
            SessionEvent::Revoked {
                session: record.id_hash.fingerprint(),
                user_id: Some(user_id),
            }
        });
        Ok(true)
    }

    /// Signs `user_id` in under a new id with `options`; a
    /// `reauthentication` keeps the user and says so in its event.
    async fn sign_in(
        &self,
        user_id: String,
        options: &LoginOptions,
        reauthentication: bool,
    ) -> Result<(), SessionError> {
        validate_user_id(&user_id)?;
        if !self.inner.context.login_allowed {
            return Err(SessionError::InsecureTransport);
        }
        let (previous, change) = {
            let state = self.lock();
            (state.id.clone(), state.pending.to_change())
        };
        let context = &self.inner.context;
        let now = context.template.deadlines.created_at;
        let stamp = match &context.stamp {
            None => None,
            Some(rule) => match rule.current(&context.keyring, &user_id).await {
                Ok(Some(stamp)) => Some(stamp),
                Ok(None) => {
                    return Err(SessionError::InvalidUserId(
                        "the user stamp lookup (`with_user_stamp`) knows no such user",
                    ))
                }
                Err(err) => return Err(SessionError::StampLookup(err)),
            },
        };
        let limit = context.limit.as_ref().map(|rule| rule.for_user(&user_id));
        // The lifecycle draws the new id.
        let mut record = context.template.record_with(
            options.deadlines(now, &context.template.timeouts),
            Some(user_id.clone()),
            change.set.iter().cloned().collect(),
        );
        record.sign_in = Some(Box::new(options.sign_in(now, stamp)));
        let login = Login {
            previous: previous.as_ref().map(SessionId::hash),
            record,
            change: &change,
            limit,
            now,
        };
        // A colliding new id (never expected: 128 random bits) changes
        // nothing and surfaces as a store error.
        let outcome = lifecycle::login(&*context.store, login).await?;
        let (new_id, record, moved, evicted) = match outcome {
            LoginOutcome::LoggedIn {
                id,
                record,
                moved,
                evicted,
                held,
            } => {
                observe_sign_in(context, reauthentication, moved, &evicted, held);
                (id, record, moved, evicted)
            }
            LoginOutcome::LimitReached => {
                return Err(SessionError::LimitReached {
                    max: limit.map_or(0, |l| l.max),
                })
            }
        };
        if let Some(rule) = &context.stamp {
            rule.checked_now(new_id.hash(), now);
        }
        let mut state = self.lock();
        state.pending.forget(&change);
        if !moved {
            state.record(self.inner.context.events_enabled, || {
                SessionEvent::Created {
                    session: new_id.fingerprint(),
                }
            });
        }
        for victim in evicted {
            state.record(self.inner.context.events_enabled, || {
                SessionEvent::Evicted {
                    session: victim.id_hash.fingerprint(),
                    user_id: user_id.clone(),
                }
            });
        }
        state.record(self.inner.context.events_enabled, || {
            let previous = previous
                .filter(|_| moved)
                .as_ref()
                .map(SessionId::fingerprint);
            match (reauthentication, previous) {
                (true, Some(previous)) => SessionEvent::Reauthenticated {
                    session: new_id.fingerprint(),
                    previous,
                    user_id,
                },
                (_, previous) => SessionEvent::LoggedIn {
                    session: new_id.fingerprint(),
                    previous,
                    user_id,
                },
            }
        });
        state.id = Some(new_id);
        state.record = Some(record);
        state.id_issued = true;
        state.regenerate = false;
        state.planned_id = None;
        // The new record's idle window starts now.
        state.touch = None;
        Ok(())
    }

    /// Signs the user out of every session, this one included, and returns
    /// how many sessions were destroyed. Without a signed-in user it is the
    /// same as [`logout`](Self::logout) and returns 0 or 1.
    ///
    /// ```
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn sign_out_everywhere(session: Session) -> Result<String, SessionError> {
    ///     let ended = session.logout_everywhere().await?;
    ///     Ok(format!("signed out of {ended} sessions"))
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails; sessions deleted before
    /// the failure stay deleted, this one is unchanged.
    pub async fn logout_everywhere(&self) -> Result<usize, SessionError> {
        let Some(user_id) = self.user_id() else {
            let had_session = self.lock().id.is_some();
            self.logout().await?;
            return Ok(usize::from(had_session));
        };
        let context = &self.inner.context;
        let now = context.template.deadlines.created_at;
        let deleted = lifecycle::logout_user(&*context.store, &user_id, None, now).await?;
        let current = self.lock().id.as_ref().map(SessionId::hash);
        let count = deleted.len();
        {
            let mut state = self.lock();
            for record in &deleted {
                // Counted here, the current one too: the logout below then
                // finds it gone and counts nothing.
                context.observer.ended(End::Logout, record, now);
                if Some(record.id_hash) != current {
                    state.record(self.inner.context.events_enabled, || {
                        SessionEvent::LoggedOut {
                            session: record.id_hash.fingerprint(),
                            user_id: Some(user_id.clone()),
                        }
                    });
                }
            }
        }
        // Also covers a current session the index did not list.
        self.logout().await?;
        Ok(count.max(usize::from(current.is_some())))
    }

    /// Signs the user out of every other session ("sign out other devices",
    /// say after a password change) and returns how many were destroyed.
    /// This session stays signed in. Without a signed-in user it does
    /// nothing and returns 0.
    ///
    /// ```
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn change_password(session: Session) -> Result<String, SessionError> {
    ///     // ...once the new password is stored:
    ///     let ended = session.logout_others().await?;
    ///     Ok(format!("password changed; {ended} other devices signed out"))
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn logout_others(&self) -> Result<usize, SessionError> {
        let Some(user_id) = self.user_id() else {
            return Ok(0);
        };
        let current = self.lock().id.as_ref().map(SessionId::hash);
        let context = &self.inner.context;
        let now = context.template.deadlines.created_at;
        let deleted =
            lifecycle::logout_user(&*context.store, &user_id, current.as_ref(), now).await?;
        let mut state = self.lock();
        for record in &deleted {
            context.observer.ended(End::Logout, record, now);
            state.record(self.inner.context.events_enabled, || {
                SessionEvent::LoggedOut {
                    session: record.id_hash.fingerprint(),
                    user_id: Some(user_id.clone()),
                }
            });
        }
        Ok(deleted.len())
    }

    /// Signs out: destroys the stored session now and removes the cookie.
    ///
    /// The handle is empty afterwards; anything inserted after the logout
    /// starts a new anonymous session with a new id. A request that moved
    /// this session meanwhile (a renewal, a regeneration, a second login of
    /// the same user) does not save it: the moved session ends too.
    ///
    /// ```
    /// use tower_session_guard::{Session, SessionError};
    ///
    /// async fn sign_out(session: Session) -> Result<&'static str, SessionError> {
    ///     session.logout().await?;
    ///     assert_eq!(session.user_id(), None);
    ///     Ok("bye")
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails; the session is then unchanged.
    pub async fn logout(&self) -> Result<(), SessionError> {
        let (id, user_id) = {
            let state = self.lock();
            let user_id = state.record.as_ref().and_then(|r| r.user_id.clone());
            (state.id.clone(), user_id)
        };
        let context = &self.inner.context;
        if let Some(id) = &id {
            let removed =
                lifecycle::logout(&*context.store, &id.hash(), user_id.as_deref()).await?;
            // Counted only when this logout removed it: a revocation or
            // another logout that won the race counted it already.
            if let Some(removed) = removed {
                context.observer.ended(
                    End::Logout,
                    &removed,
                    context.template.deadlines.created_at,
                );
            }
        }
        let mut state = self.lock();
        if let Some(id) = id {
            state.record(self.inner.context.events_enabled, || {
                SessionEvent::LoggedOut {
                    session: id.fingerprint(),
                    user_id,
                }
            });
        }
        state.id = None;
        state.record = None;
        state.pending = Pending::default();
        state.regenerate = false;
        state.id_issued = false;
        state.logged_out = true;
        state.touch = None;
        Ok(())
    }
}

/// Counts a sign-in (or a re-authentication) for insights and metrics:
/// the session it created, the sessions it evicted and, for a sign-in, the
/// login and how many sessions its user now holds (when the session limit
/// counted them). A re-authentication is not a login.
fn observe_sign_in(
    context: &Context,
    reauthentication: bool,
    moved: bool,
    evicted: &[Arc<SessionRecord>],
    held: Option<usize>,
) {
    let now = context.template.deadlines.created_at;
    let observer = &context.observer;
    if !moved {
        observer.created();
    }
    for victim in evicted {
        observer.ended(End::Evicted, victim, now);
    }
    if !reauthentication {
        observer.logged_in(held);
    }
}

/// What a session created during one request starts as. Built cheaply for
/// every request; the User-Agent family and the client binding are worked
/// out only when a session is actually created.
pub(crate) struct Template {
    pub(crate) deadlines: Deadlines,
    /// The layer's timeouts, for a sign-in with its own lifetime.
    pub(crate) timeouts: Timeouts,
    /// The client; its `user_agent` is filled in when already known.
    pub(crate) client: ClientContext,
    /// The raw `User-Agent`, for when the family is not known yet.
    pub(crate) user_agent_header: Option<http::HeaderValue>,
    /// The binding rules, when client binding is on.
    pub(crate) binding: Option<ClientBinding>,
}

impl Template {
    /// A new record under `id_hash`.
    pub(crate) fn record(
        &self,
        id_hash: IdHash,
        user_id: Option<String>,
        data: SessionData,
    ) -> SessionRecord {
        let mut record = self.record_with(self.deadlines, user_id, data);
        record.id_hash = id_hash;
        record
    }

    /// A new record with `deadlines` (its `id_hash` is the lifecycle's to draw).
    pub(crate) fn record_with(
        &self,
        deadlines: Deadlines,
        user_id: Option<String>,
        data: SessionData,
    ) -> SessionRecord {
        let mut record = deadlines.record(IdHash::from_bytes([0; 32]), user_id, data);
        let user_agent = self
            .client
            .user_agent
            .clone()
            .or_else(|| self.user_agent_header.as_ref().map(family_of));
        record.ip = self.client.ip;
        if let Some(rules) = &self.binding {
            let client = ClientContext {
                user_agent: user_agent.clone(),
                ..self.client.clone()
            };
            let location = rules.locate(client.ip);
            record.binding = Some(Box::new(initial_binding(
                &client,
                location.as_ref(),
                self.deadlines.created_at,
                rules,
            )));
        }
        record.user_agent = user_agent.map(String::into_boxed_str);
        record
    }
}

fn validate_user_id(user_id: &str) -> Result<(), SessionError> {
    if user_id.is_empty() {
        return Err(SessionError::InvalidUserId("the user id is empty"));
    }
    if user_id.len() > MAX_USER_ID_LEN {
        return Err(SessionError::InvalidUserId(
            "the user id is longer than 1024 bytes; use a short stable key such as a database id",
        ));
    }
    Ok(())
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Session")
            .field(
                "fingerprint",
                &state.id.as_ref().map(SessionId::fingerprint),
            )
            .field(
                "user_id",
                &state.record.as_ref().and_then(|r| r.user_id.as_deref()),
            )
            .field("is_new", &state.is_new)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::FromRequestParts;
    use axum_core::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::StatusCode;

    use super::Session;

    /// The rejection when a handler asks for a [`Session`] but no
    /// `SessionLayer` ran for the request.
    #[derive(Debug, Clone, Copy, Default)]
    #[non_exhaustive]
    pub struct SessionLayerMissing;

    impl std::fmt::Display for SessionLayerMissing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "Missing request extension: `tower_session_guard::Session`. \
                 Is `SessionLayer` installed around this route (`.layer(SessionLayer::new(store, key))`)?",
            )
        }
    }

    impl std::error::Error for SessionLayerMissing {}

    impl IntoResponse for SessionLayerMissing {
        fn into_response(self) -> Response {
            tracing::error!(target: "tower_session_guard", "{self}");
            (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Session {
        type Rejection = SessionLayerMissing;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Session>()
                .cloned()
                .ok_or(SessionLayerMissing)
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::SessionLayerMissing;

/// Reads the [`Session`] the layer put into a tonic request (feature `tonic`).
///
/// ```
/// use tonic::{Request, Response, Status};
/// use tower_session_guard::TonicSessionExt;
///
/// async fn whoami(request: Request<()>) -> Result<Response<String>, Status> {
///     let session = request.session()?;
///     let user = session.user_id().ok_or_else(|| Status::unauthenticated("sign in first"))?;
///     Ok(Response::new(user))
/// }
/// ```
#[cfg(feature = "tonic")]
pub trait TonicSessionExt {
    /// The request's session.
    ///
    /// # Errors
    ///
    /// `Status::internal` with a sentence saying the layer is missing, when
    /// no `SessionLayer` ran for the request.
    #[allow(clippy::result_large_err)]
    fn session(&self) -> Result<Session, tonic::Status>;
}

#[cfg(feature = "tonic")]
impl<T> TonicSessionExt for tonic::Request<T> {
    fn session(&self) -> Result<Session, tonic::Status> {
        self.extensions().get::<Session>().cloned().ok_or_else(|| {
            tracing::error!(target: "tower_session_guard", "no Session in the tonic request; is SessionLayer installed?");
            tonic::Status::internal(
                "Missing request extension: `tower_session_guard::Session`. Is `SessionLayer` installed \
                 (`Server::builder().layer(SessionLayer::new(store, key))`)?",
            )
        })
    }
}
