//! What a store keeps ([`SessionRecord`]) and what a commit sends ([`Change`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::fmt;
use std::net::IpAddr;

use crate::client::Network;
use crate::clock::UnixMillis;
use crate::id::{IdHash, SealedId};
use std::sync::Arc;

/// One stored session.
///
/// The record is the single source of truth for expiry: the deadlines are
/// written when the session is created or touched, and the layer's policy
/// compares them with the clock on every request. A store's own TTL is only
/// a backstop that frees memory some time after the policy has stopped
/// accepting the session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The at-rest hash of the session id (the store key).
    pub(crate) id_hash: IdHash,
    /// The signed-in user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user_id: Option<String>,
    /// The session's key/value data.
    #[serde(default)]
    pub(crate) data: SessionData,
    /// When the session was created.
    pub(crate) created_at: UnixMillis,
    /// When the session was last touched (see the idle timeout docs on the layer).
    pub(crate) last_seen: UnixMillis,
    /// After this instant the session is expired for inactivity.
    pub(crate) idle_deadline: UnixMillis,
    /// After this instant the session is expired whatever its activity.
    pub(crate) absolute_deadline: UnixMillis,
    /// When the current id was issued (creation, login, regeneration, renewal).
    pub(crate) id_issued_at: UnixMillis,
    /// Bumped by every applied change.
    #[serde(default)]
    pub(crate) version: u64,
    /// The client address the session was created or signed in from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Option<IpAddr>,
    /// The client's User-Agent family (browser and platform, no versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user_agent: Option<Box<str>>,
    /// What the session is bound to (client binding), when that is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) binding: Option<Box<Binding>>,
    /// How and when the user last proved who they are, and the session's
    /// own lifetime; `None` for an anonymous session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sign_in: Option<Box<SignIn>>,
}

/// What a signed-in session keeps about its sign-in: when the user last
/// authenticated and how, the session's own lifetime (a remember-me login
/// carries one), and the keyed hash of the user's credential stamp.
///
/// Opaque to stores: a store that keeps records in columns stores it whole
/// with serde, as it does [`Binding`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignIn {
    /// When the user last authenticated (login or re-authentication).
    #[serde(rename = "at")]
    pub(crate) authenticated_at: UnixMillis,
    /// How they authenticated ("password", "passkey", ...), if the app said.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<Box<str>>,
    /// This session's idle timeout in milliseconds, when it is not the layer's.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_timeout: Option<u64>,
    /// This session's absolute timeout in milliseconds (from sign-in), when
    /// it is not the layer's.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub(crate) absolute_timeout: Option<u64>,
    /// The cookie outlives the browser session (`Max-Age`), whatever the
    /// layer's cookie settings say (a remember-me login).
    #[serde(rename = "p", default, skip_serializing_if = "is_false")]
    pub(crate) persistent: bool,
    /// The keyed hash of the user's credential stamp at sign-in.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub(crate) stamp: Option<StampHash>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_false(value: &bool) -> bool {
    !*value
}

/// A keyed hash of a user's credential stamp (see
/// [`SessionLayer::with_user_stamp`](crate::SessionLayer::with_user_stamp)),
/// kept as hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct StampHash(pub(crate) [u8; 16]);

impl fmt::Debug for StampHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StampHash(..)")
    }
}

impl Serialize for StampHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(32);
        for byte in self.0 {
            hex.push_str(&format!("{byte:02x}"));
        }
        serializer.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for StampHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return Err(serde::de::Error::custom(
                "a stamp hash is 32 hex characters",
            ));
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(serde::de::Error::custom)?;
            out[i] = u8::from_str_radix(pair, 16).map_err(serde::de::Error::custom)?;
        }
        Ok(Self(out))
    }
}

impl SignIn {
    /// When the user last authenticated.
    #[must_use]
    pub fn authenticated_at(&self) -> UnixMillis {
        self.authenticated_at
    }

    /// How the user authenticated, if the app said.
    #[must_use]
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// This session's own idle timeout in milliseconds, if it has one.
    #[must_use]
    pub fn idle_timeout(&self) -> Option<u64> {
        self.idle_timeout
    }

    /// This session's own absolute timeout in milliseconds, if it has one.
    #[must_use]
    pub fn absolute_timeout(&self) -> Option<u64> {
        self.absolute_timeout
    }

    /// Whether the session's cookie is persistent whatever the layer says.
    #[must_use]
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }
}

/// The client a session is bound to: browser family, recent networks and
/// last known location. Kept and compared by the policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// The User-Agent family the session was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user_agent: Option<String>,
    /// Networks the session was used from recently.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) networks: Vec<SeenNetwork>,
    /// Where the session was last seen, when a locator is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<SeenLocation>,
}

/// A network a session was used from, and when last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeenNetwork {
    /// The client network (an IPv4 /24 or IPv6 /48 by default).
    pub(crate) network: Network,
    /// When it was last seen.
    pub(crate) last_seen: UnixMillis,
}

/// A place a session was used from, and when.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SeenLocation {
    /// Degrees north.
    pub(crate) latitude: f64,
    /// Degrees east.
    pub(crate) longitude: f64,
    /// When the session was seen there.
    pub(crate) at: UnixMillis,
}

/// Every field of a [`SessionRecord`], for a store that keeps a record in
/// columns of its own and rebuilds it on load
/// ([`SessionRecord::from_parts`], [`SessionRecord::into_parts`]). A store
/// that keeps the record whole serializes it with serde instead.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordParts {
    /// The at-rest hash of the session id (the store key).
    pub id_hash: IdHash,
    /// The signed-in user, if any.
    pub user_id: Option<String>,
    /// The session's key/value data.
    pub data: SessionData,
    /// When the session was created.
    pub created_at: UnixMillis,
    /// When the session was last touched.
    pub last_seen: UnixMillis,
    /// After this instant the session is expired for inactivity.
    pub idle_deadline: UnixMillis,
    /// After this instant the session is expired whatever its activity.
    pub absolute_deadline: UnixMillis,
    /// When the current id was issued (creation, login, regeneration, renewal).
    pub id_issued_at: UnixMillis,
    /// The record's version, bumped by every applied change.
    pub version: u64,
    /// The client address the session was created or signed in from.
    pub ip: Option<IpAddr>,
    /// The client's User-Agent family.
    pub user_agent: Option<Box<str>>,
    /// What the session is bound to (opaque; kept with serde).
    pub binding: Option<Box<Binding>>,
    /// The sign-in: authentication time, lifetime, stamp (opaque; kept with serde).
    pub sign_in: Option<Box<SignIn>>,
}

impl SessionRecord {
    /// A record rebuilt from its parts, exactly as [`into_parts`](Self::into_parts) gave them.
    #[must_use]
    pub fn from_parts(parts: RecordParts) -> Self {
        Self {
            id_hash: parts.id_hash,
            user_id: parts.user_id,
            data: parts.data,
            created_at: parts.created_at,
            last_seen: parts.last_seen,
            idle_deadline: parts.idle_deadline,
            absolute_deadline: parts.absolute_deadline,
            id_issued_at: parts.id_issued_at,
            version: parts.version,
            ip: parts.ip,
            user_agent: parts.user_agent,
            binding: parts.binding,
            sign_in: parts.sign_in,
        }
    }

    /// The record taken apart, for a store that keeps it in columns.
    #[must_use]
    pub fn into_parts(self) -> RecordParts {
        RecordParts {
            id_hash: self.id_hash,
            user_id: self.user_id,
            data: self.data,
            created_at: self.created_at,
            last_seen: self.last_seen,
            idle_deadline: self.idle_deadline,
            absolute_deadline: self.absolute_deadline,
            id_issued_at: self.id_issued_at,
            version: self.version,
            ip: self.ip,
            user_agent: self.user_agent,
            binding: self.binding,
            sign_in: self.sign_in,
        }
    }

    /// The at-rest hash of the session id: the key the record is stored under.
    #[must_use]
    pub fn id_hash(&self) -> IdHash {
        self.id_hash
    }

    /// The signed-in user, if any: what a store indexes the session under.
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The session's key/value data.
    #[must_use]
    pub fn data(&self) -> &SessionData {
        &self.data
    }

    /// When the session was created.
    #[must_use]
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// When the session was last touched.
    #[must_use]
    pub fn last_seen(&self) -> UnixMillis {
        self.last_seen
    }

    /// After this instant the session is expired for inactivity.
    #[must_use]
    pub fn idle_deadline(&self) -> UnixMillis {
        self.idle_deadline
    }

    /// After this instant the session is expired whatever its activity.
    #[must_use]
    pub fn absolute_deadline(&self) -> UnixMillis {
        self.absolute_deadline
    }

    /// When the current id was issued (creation, login, regeneration, renewal).
    #[must_use]
    pub fn id_issued_at(&self) -> UnixMillis {
        self.id_issued_at
    }

    /// The record's version: [`replace`](crate::store::SessionStore::replace)
    /// succeeds only at the version the caller read.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The client address the session was created or signed in from.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The client's User-Agent family (browser and platform, no versions).
    #[must_use]
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// The sign-in (authentication time, the session's own lifetime), when
    /// a user is signed in.
    #[must_use]
    pub fn sign_in(&self) -> Option<&SignIn> {
        self.sign_in.as_deref()
    }

    /// When the user last authenticated, when one is signed in.
    #[must_use]
    pub fn authenticated_at(&self) -> Option<UnixMillis> {
        self.sign_in.as_ref().map(|s| s.authenticated_at)
    }

    /// The earliest deadline: the instant after which no policy accepts this record.
    #[must_use]
    pub fn expires_at(&self) -> UnixMillis {
        self.idle_deadline.min(self.absolute_deadline)
    }

    /// Applies a delta in place (what every store does under its own atomicity).
    pub fn apply(&mut self, change: &Change) {
        for key in &change.removed {
            self.data.remove(key);
        }
        for (key, value) in &change.set {
            self.data.insert(key.clone(), value.clone());
        }
        if let Some(binding) = &change.binding {
            self.binding = Some(Box::new(binding.clone()));
        }
        if let Some(touch) = change.touch {
            self.last_seen = self.last_seen.max(touch.last_seen);
            self.idle_deadline = self
                .idle_deadline
                .max(touch.idle_deadline)
                .min(self.absolute_deadline);
        }
        self.version = self.version.wrapping_add(1);
    }
}

/// What a store keeps under one key: a session, or what is left under an
/// id after the session moved to a new one.
///
/// Stores keep and return entries as they are given; only the session
/// protocol (the crate's `lifecycle`) creates and interprets the two
/// placeholders.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A live (or expired, not yet removed) session.
    Session(Arc<SessionRecord>),
    /// Left by a renewal under the old id: requests still holding it are
    /// served the successor until [`Forward::until`].
    Forward(Forward),
    /// Left by a login or `regenerate()` under the old id: requests still
    /// holding it get no session, but keep their cookie until
    /// [`Superseded::until`] (a request that was in flight must not clear
    /// the new cookie).
    Superseded(Superseded),
}

/// A renewal's forward from an old id to its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The at-rest hash of the successor's id.
    pub successor: IdHash,
    /// The successor's id, readable only with the old id.
    pub sealed_id: SealedId,
    /// When the old id stops working.
    pub until: UnixMillis,
    /// How long the forward is kept after `until`, so that the old id
    /// presented late is recognised as reuse of a renewed token (a sign of a
    /// stolen cookie) rather than as an unknown id. Stores keep the entry
    /// until then (see [`Entry::expires_at`]).
    pub kept_until: UnixMillis,
}

/// The marker left under an id that a login or a regeneration replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    /// The at-rest hash of the id that replaced this one (a logout racing
    /// the move follows it).
    pub successor: IdHash,
    /// When the marker may go.
    pub until: UnixMillis,
    /// The user the session had before the move (`None`: anonymous). A
    /// removal that names the old id follows the marker only to a session
    /// of this same user, never into a different user's sign-in.
    pub user_id: Option<String>,
}

impl Entry {
    /// The instant after which nothing reads this entry any more: a
    /// session's earliest deadline, a placeholder's end. Stores may drop the
    /// entry some time after it (their expiry backstop).
    #[must_use]
    pub fn expires_at(&self) -> UnixMillis {
        match self {
            Self::Session(record) => record.expires_at(),
            Self::Forward(forward) => forward.until.max(forward.kept_until),
            Self::Superseded(marker) => marker.until,
        }
    }

    /// The session, if this entry is one.
    #[must_use]
    pub fn session(&self) -> Option<&Arc<SessionRecord>> {
        match self {
            Self::Session(record) => Some(record),
            _ => None,
        }
    }

    /// The id this entry's session moved to, if it is a placeholder.
    #[must_use]
    pub fn successor(&self) -> Option<IdHash> {
        match self {
            Self::Session(_) => None,
            Self::Forward(forward) => Some(forward.successor),
            Self::Superseded(marker) => Some(marker.successor),
        }
    }

    /// The user signed in on this entry's session (`None` for a placeholder
    /// or an anonymous session).
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        self.session().and_then(|r| r.user_id.as_deref())
    }
}

/// When a new session starts and ends, as decided by the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// Creation time (also the first `last_seen` and id issue time).
    pub created_at: UnixMillis,
    /// The first idle deadline.
    pub idle_deadline: UnixMillis,
    /// The absolute deadline.
    pub absolute_deadline: UnixMillis,
}

impl Deadlines {
    /// A new record under `id_hash` with these deadlines.
    #[must_use]
    pub fn record(
        &self,
        id_hash: IdHash,
        user_id: Option<String>,
        data: SessionData,
    ) -> SessionRecord {
        SessionRecord {
            id_hash,
            user_id,
            data,
            created_at: self.created_at,
            last_seen: self.created_at,
            idle_deadline: self.idle_deadline,
            absolute_deadline: self.absolute_deadline,
            id_issued_at: self.created_at,
            version: 0,
            ip: None,
            user_agent: None,
            binding: None,
            sign_in: None,
        }
    }
}

/// A session's key/value data: a small map kept in insertion order.
///
/// Sessions hold a handful of keys, so a flat vector is both smaller and
/// faster than a hash map here; keys of up to 22 bytes are kept inline.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(
    from = "serde_json::Map<String, Value>",
    into = "serde_json::Map<String, Value>"
)]
pub struct SessionData(Vec<(DataKey, Value)>);

/// A data key. Session keys are short names ("cart", "csrf_token"), so up
/// to 22 bytes live inline, in the 24 bytes a `String` would take for its
/// pointer alone; longer ones are boxed. Each key has one representation,
/// so the derived equality compares the text.
#[derive(Clone, PartialEq)]
enum DataKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Boxed(Box<str>),
}

const INLINE_KEY: usize = 22;

impl DataKey {
    fn new(key: &str) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Boxed(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Boxed(key) => key.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole: always valid.
            Self::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Self::Boxed(key) => key,
        }
    }

    fn is(&self, key: &str) -> bool {
        self.as_bytes() == key.as_bytes()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for SessionData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Two data sets are equal when they hold the same keys with the same
/// values, in any order: stores need not keep the order keys were set in.
impl PartialEq for SessionData {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(key, value)| other.get(key) == Some(value))
    }
}

impl SessionData {
    /// The value under `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k.is(key)).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: String, value: Value) -> Option<Value> {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k.is(&key)) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.0.push((DataKey::new(&key), value));
        None
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let index = self.0.iter().position(|(k, _)| k.is(key))?;
        Some(self.0.remove(index).1)
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys and values, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl From<serde_json::Map<String, Value>> for SessionData {
    fn from(map: serde_json::Map<String, Value>) -> Self {
        map.into_iter().collect()
    }
}

impl From<SessionData> for serde_json::Map<String, Value> {
    fn from(data: SessionData) -> Self {
        data.0
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect()
    }
}

impl FromIterator<(String, Value)> for SessionData {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        // Room for exactly what is known to come: stored sessions keep
        // their data vector for as long as they live.
        let mut data = Self(Vec::with_capacity(iter.size_hint().0));
        for (k, v) in iter {
            data.insert(k, v);
        }
        data
    }
}

/// What one request changed in a session: sent to the store as a delta, not
/// as the whole record, so that concurrent requests writing different keys
/// do not overwrite each other.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Keys set, with their new values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, Value)>,
    /// Keys removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Activity to record, if the idle window asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touch: Option<Touch>,
    /// The client binding's new state, when it changed (replaces the old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
}

impl Change {
    /// Whether applying this change would do nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.removed.is_empty()
            && self.touch.is_none()
            && self.binding.is_none()
    }
}

/// A record of activity: moves `last_seen` and the idle deadline forward.
///
/// Stores apply it monotonically (a late, older touch never moves a deadline back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// The new `last_seen`.
    pub last_seen: UnixMillis,
    /// The new idle deadline (stores cap it at the absolute deadline).
    pub idle_deadline: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use serde_json::json;

    #[test]
    fn keys_of_any_length_round_trip_and_short_ones_take_no_allocation() {
        assert_eq!(
            std::mem::size_of::<DataKey>(),
            std::mem::size_of::<String>()
        );
        let mut data = SessionData::default();
        let keys = [
            "",
            "k",
            &"a".repeat(22),
            &"b".repeat(23),
            "é😀",
            &"ü".repeat(40),
        ];
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(data.insert((*key).to_owned(), json!(n)), None);
        }
        assert!(matches!(data.0[2].0, DataKey::Inline { .. }));
        assert!(matches!(data.0[3].0, DataKey::Boxed(_)));
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(data.get(key), Some(&json!(n)), "{key:?}");
        }
        assert_eq!(data.get(&"a".repeat(21)), None, "a prefix is another key");
        assert_eq!(data.insert("k".into(), json!("again")), Some(json!(1)));
        let read: Vec<&str> = data.iter().map(|(k, _)| k).collect();
        assert_eq!(read, keys);

        let text = serde_json::to_string(&data).unwrap();
        let back: SessionData = serde_json::from_str(&text).unwrap();
        assert_eq!(back.len(), data.len());
        for (key, value) in data.iter() {
            assert_eq!(back.get(key), Some(value), "{key:?}");
        }
        assert_eq!(data.remove(&"b".repeat(23)), Some(json!(3)));
        assert_eq!(data.len(), keys.len() - 1);
        assert_eq!(format!("{data:?}").matches("\"k\"").count(), 1);
    }

    fn record() -> SessionRecord {
        SessionRecord {
            id_hash: SessionId::generate().hash(),
            user_id: None,
            data: SessionData::default(),
            created_at: 1_000,
            last_seen: 1_000,
            idle_deadline: 2_000,
            absolute_deadline: 5_000,
            id_issued_at: 1_000,
            version: 0,
            ip: None,
            user_agent: None,
            binding: None,
            sign_in: None,
        }
    }

    #[test]
    fn apply_sets_removes_and_touches() {
        let mut r = record();
        r.data.insert("gone".into(), json!(1));
        r.apply(&Change {
            set: vec![("n".into(), json!(2))],
            removed: vec!["gone".into()],
            touch: Some(Touch {
                last_seen: 1_500,
                idle_deadline: 9_000,
            }),
            binding: None,
        });
        assert_eq!(r.data.get("n"), Some(&json!(2)));
        assert_eq!(r.data.get("gone"), None);
        assert_eq!(r.last_seen, 1_500);
        assert_eq!(r.idle_deadline, 5_000, "capped at the absolute deadline");
        assert_eq!(r.version, 1);
    }

    #[test]
    fn older_touches_never_move_deadlines_back() {
        let mut r = record();
        r.apply(&Change {
            touch: Some(Touch {
                last_seen: 500,
                idle_deadline: 1_500,
            }),
            ..Change::default()
        });
        assert_eq!((r.last_seen, r.idle_deadline), (1_000, 2_000));
    }

    #[test]
    fn data_equality_ignores_the_order_keys_were_set_in() {
        let a: SessionData = [("x".to_owned(), json!(1)), ("y".to_owned(), json!(2))]
            .into_iter()
            .collect();
        let b: SessionData = [("y".to_owned(), json!(2)), ("x".to_owned(), json!(1))]
            .into_iter()
            .collect();
        assert_eq!(a, b);
        let c: SessionData = [("x".to_owned(), json!(1))].into_iter().collect();
        assert_ne!(a, c);
        let d: SessionData = [("x".to_owned(), json!(1)), ("y".to_owned(), json!(3))]
            .into_iter()
            .collect();
        assert_ne!(a, d);
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut r = record();
        r.user_id = Some("u".into());
        r.data.insert("a".into(), json!({"x": [1, 2]}));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SessionRecord>(&text).unwrap(), r);
    }
}
