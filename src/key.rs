//! Signing keys and the keyring that signs and verifies session tokens.
//!
//! The token a client holds is `base64url(id ‖ tag)`, where `tag` is the
//! first 128 bits of `HMAC-SHA256(key, "tsg1" ‖ id)`. Verification recomputes
//! the tag in constant time; a token that fails it never reaches the store,
//! so guessing ids costs an attacker one HMAC of our time and no store lookup.
//!
//! A session's CSRF token is `base64url(HMAC-SHA256(key, "tsg-csrf1" ‖ id))`:
//! nothing to store, a new token whenever the id changes, and the id cannot
//! be recovered from it (nor is the token a session token: its MAC input
//! differs).

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::Sha256;

use crate::id::{SessionId, ID_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC tag kept in a token (128 bits).
const TAG_LEN: usize = 16;
/// Bytes in a decoded token.
const TOKEN_BYTES: usize = ID_LEN + TAG_LEN;
/// Characters in an encoded token (unpadded base64 of 32 bytes).
pub(crate) const TOKEN_LEN: usize = 43;
/// Domain separation for the MAC input, so these keys sign nothing else by accident.
const TOKEN_CONTEXT: &[u8] = b"tsg1";

/// Domain separation for CSRF tokens: a CSRF token is never a session token.
const CSRF_CONTEXT: &[u8] = b"tsg-csrf1";

/// Separates a user's credential-stamp hashes from every other MAC.
const STAMP_CONTEXT: &[u8] = b"tsg-stamp1";

/// Bytes kept of a credential-stamp hash.
pub(crate) const STAMP_BYTES: usize = 16;

/// Bytes in a decoded CSRF token (a whole HMAC-SHA256 output).
const CSRF_BYTES: usize = 32;

/// The minimum length of key material accepted by [`Key::from_bytes`].
pub const MIN_KEY_LEN: usize = 32;

/// Secrets in base64 as tools write them: the standard alphabet
/// (`openssl rand -base64`) or the URL-safe one, with or without padding.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// A secret key that signs session tokens.
///
/// Make one with [`Key::generate`] (sessions then last only as long as the
/// process), or keep a secret of 32 or more random bytes outside the
/// program and load it with [`Key::from_env`], [`Key::from_base64`] or
/// [`Key::from_bytes`]. Generate such a secret once with
///
/// ```text
/// openssl rand -base64 64
/// ```
///
/// (64 random bytes, printed as base64), store it where your deployment
/// keeps secrets, and hand it to the process in an environment variable:
///
/// ```
/// # std::env::set_var("SESSION_KEY", "1PDjx7YwNErkaeJaQ+syWptlW7rQx6a+jgfaG06tobXyYwHpN9pOpB6srsyb90WG\nHMfZgPUuIouS0wzuf+2ziA==");
/// use tower_session_guard::Key;
///
/// let key = Key::from_env("SESSION_KEY")?;
/// # Ok::<(), tower_session_guard::KeyError>(())
/// ```
///
/// Every instance that shares sessions needs the same key, and sessions
/// survive a restart only if the key does. `Debug` never shows the key.
#[derive(Clone)]
pub struct Key {
    // A keyed HMAC state: cloning it skips re-hashing the key on every request.
    mac: HmacSha256,
}

impl Key {
    /// A new random 256-bit key from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system cannot supply random bytes.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random number generator failed; cannot make a key");
        Self::from_secret(&bytes)
    }

    /// A key from secret bytes, which must be at least 32 bytes of random data.
    ///
    /// # Errors
    ///
    /// [`KeyError::TooShort`] when fewer than 32 bytes are given.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        Ok(Self::from_secret(bytes))
    }

    /// A key from a base64 secret, such as the output of
    /// `openssl rand -base64 64`.
    ///
    /// Both base64 alphabets (standard and URL-safe) are accepted, with or
    /// without `=` padding; whitespace, such as the line break `openssl`
    /// puts after 64 characters, is ignored. The decoded secret must be at
    /// least 32 bytes.
    ///
    /// # Errors
    ///
    /// [`KeyError::NotBase64`] when the text is not base64, and
    /// [`KeyError::TooShort`] when it decodes to fewer than 32 bytes. The
    /// errors never contain the secret.
    pub fn from_base64(secret: &str) -> Result<Self, KeyError> {
        let compact: String = secret
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let bytes = STANDARD_ANY_PADDING
            .decode(&compact)
            .or_else(|_| URL_SAFE_ANY_PADDING.decode(&compact))
            .map_err(|_| KeyError::NotBase64 {
                position: first_non_base64(&compact),
            })?;
        Self::from_bytes(&bytes)
    }

    /// A key from the base64 secret in the environment variable `name`
    /// (see [`Key::from_base64`] for the format).
    ///
    /// ```text
    /// export SESSION_KEY="$(openssl rand -base64 64)"
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError::MissingEnvVar`] when the variable is not set (or is not
    /// UTF-8), and [`KeyError::InvalidEnvVar`] when its value is not a
    /// base64 secret of at least 32 bytes.
    pub fn from_env(name: &str) -> Result<Self, KeyError> {
        Self::from_env_value(name, std::env::var(name).ok())
    }

    fn from_env_value(name: &str, value: Option<String>) -> Result<Self, KeyError> {
        let value = value.ok_or_else(|| KeyError::MissingEnvVar {
            name: name.to_owned(),
        })?;
        Self::from_base64(&value).map_err(|error| KeyError::InvalidEnvVar {
            name: name.to_owned(),
            error: Box::new(error),
        })
    }

    fn from_secret(bytes: &[u8]) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(bytes).expect("HMAC accepts keys of any length"),
        }
    }

    fn tag(&self, id: &[u8; ID_LEN]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(TOKEN_CONTEXT);
        mac.update(id);
        mac
    }

    /// The token for `id`, signed with this key.
    pub(crate) fn sign(&self, id: &SessionId) -> String {
        let tag = self.tag(id.as_bytes()).finalize().into_bytes();
        let mut raw = [0u8; TOKEN_BYTES];
        raw[..ID_LEN].copy_from_slice(id.as_bytes());
        raw[ID_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn csrf_mac(&self, id: &SessionId) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(CSRF_CONTEXT);
        mac.update(id.as_bytes());
        mac
    }

    /// `HMAC(key, "tsg-stamp1" ‖ len(user) ‖ user ‖ stamp)`: the lengths keep
    /// user and stamp apart.
    fn stamp_mac(&self, user_id: &str, stamp: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(STAMP_CONTEXT);
        mac.update(&(user_id.len() as u64).to_be_bytes());
        mac.update(user_id.as_bytes());
        mac.update(stamp.as_bytes());
        mac
    }

    /// Checks a decoded CSRF token for `id` in constant time.
    fn verifies_csrf(&self, id: &SessionId, raw: &[u8; CSRF_BYTES]) -> bool {
        self.csrf_mac(id).verify_slice(raw).is_ok()
    }

    /// Checks the tag of a decoded token in constant time.
    fn verifies(&self, raw: &[u8; TOKEN_BYTES]) -> bool {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&raw[..ID_LEN]);
        self.tag(&id).verify_truncated_left(&raw[ID_LEN..]).is_ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why key material was refused. No variant carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key material is shorter than 32 bytes.
    TooShort {
        /// How many bytes were given.
        len: usize,
    },
    /// The secret given to [`Key::from_base64`] is not base64.
    NotBase64 {
        /// Where the first character outside both base64 alphabets is,
        /// counting characters after whitespace is removed; `None` when
        /// every character is valid but the text is malformed (for
        /// example, its length or padding).
        position: Option<usize>,
    },
    /// The environment variable given to [`Key::from_env`] is not set, or
    /// not UTF-8.
    MissingEnvVar {
        /// The variable's name.
        name: String,
    },
    /// The environment variable given to [`Key::from_env`] does not hold a
    /// usable secret.
    InvalidEnvVar {
        /// The variable's name.
        name: String,
        /// What is wrong with its value.
        error: Box<KeyError>,
    },
}

/// Where to get a secret, for the error messages.
const GENERATE_HINT: &str = "generate one with `openssl rand -base64 64`";

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "a session key needs at least {MIN_KEY_LEN} bytes of random data, but {len} were given; \
                 {GENERATE_HINT}, or use `Key::generate()` for keys that last as long as the process"
            ),
            Self::NotBase64 {
                position: Some(position),
            } => write!(
                f,
                "the session key is not base64: character {position} is not in the base64 alphabet; \
                 {GENERATE_HINT}"
            ),
            Self::NotBase64 { position: None } => write!(
                f,
                "the session key is not base64: its length or `=` padding is wrong; {GENERATE_HINT}"
            ),
            Self::MissingEnvVar { name } => write!(
                f,
                "the environment variable {name} is not set (or is not UTF-8); set it to a base64 \
                 secret of at least {MIN_KEY_LEN} bytes: export {name}=\"$(openssl rand -base64 64)\""
            ),
            Self::InvalidEnvVar { name, error } => write!(f, "{name}: {error}"),
        }
    }
}

/// The index of the first character outside both base64 alphabets.
fn first_non_base64(text: &str) -> Option<usize> {
    text.chars()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_' | '=')))
}

impl std::error::Error for KeyError {}

/// A verified token.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) id: SessionId,
    /// Signed with a fallback key: the response should re-issue it with the primary.
    pub(crate) needs_resign: bool,
}

/// The primary key (signs and verifies) and fallback keys (verify only).
#[derive(Clone, Debug)]
pub(crate) struct Keyring {
    primary: Key,
    fallbacks: Vec<Key>,
}

impl Keyring {
    pub(crate) fn new(primary: Key) -> Self {
        Self {
            primary,
            fallbacks: Vec::new(),
        }
    }

    pub(crate) fn set_fallbacks(&mut self, fallbacks: Vec<Key>) {
        self.fallbacks = fallbacks;
    }

    pub(crate) fn sign(&self, id: &SessionId) -> String {
        self.primary.sign(id)
    }

    /// The CSRF token of the session `id`, made with the primary key.
    pub(crate) fn csrf_token(&self, id: &SessionId) -> String {
        URL_SAFE_NO_PAD.encode(self.primary.csrf_mac(id).finalize().into_bytes())
    }

    /// Whether `token` is the CSRF token of `id` under any key of the ring
    /// (a form rendered before a key rotation still posts). Constant time
    /// in the token's bytes.
    pub(crate) fn verify_csrf(&self, id: &SessionId, token: &str) -> bool {
        let token = token.trim();
        if token.len() != TOKEN_LEN {
            return false;
        }
        let mut raw = [0u8; CSRF_BYTES];
        if URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut raw) != Ok(CSRF_BYTES) {
            return false;
        }
        std::iter::once(&self.primary)
            .chain(&self.fallbacks)
            .any(|key| key.verifies_csrf(id, &raw))
    }

    /// The keyed hash a session keeps of its user's credential stamp, made
    /// with the primary key.
    pub(crate) fn stamp_hash(&self, user_id: &str, stamp: &str) -> [u8; STAMP_BYTES] {
        let tag = self
            .primary
            .stamp_mac(user_id, stamp)
            .finalize()
            .into_bytes();
        let mut out = [0u8; STAMP_BYTES];
        out.copy_from_slice(&tag[..STAMP_BYTES]);
        out
    }

    /// Whether `stored` is the keyed hash of `stamp` for `user_id` under any
    /// key of the ring (a session signed in before a key rotation keeps
    /// its stamp). Constant time in the stored bytes.
    pub(crate) fn verify_stamp(
        &self,
        user_id: &str,
        stamp: &str,
        stored: &[u8; STAMP_BYTES],
    ) -> bool {
        std::iter::once(&self.primary)
            .chain(&self.fallbacks)
            .any(|key| {
                key.stamp_mac(user_id, stamp)
                    .verify_truncated_left(stored)
                    .is_ok()
            })
    }

    /// Decodes and verifies a token. Anything malformed or forged is `None`.
    pub(crate) fn verify(&self, token: &str) -> Option<Verified> {
        // Length first: nothing oversized is ever decoded.
        if token.len() != TOKEN_LEN {
            return None;
        }
        let mut raw = [0u8; TOKEN_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut raw) {
            Ok(TOKEN_BYTES) => {}
            _ => return None,
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&raw[..ID_LEN]);
        if self.primary.verifies(&raw) {
            return Some(Verified {
                id: SessionId::from_bytes(id),
                needs_resign: false,
            });
        }
        if self.fallbacks.iter().any(|key| key.verifies(&raw)) {
            return Some(Verified {
                id: SessionId::from_bytes(id),
                needs_resign: true,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_with_the_same_key_only() {
        let ring = Keyring::new(Key::generate());
        let other = Keyring::new(Key::generate());
        let id = SessionId::generate();
        let token = ring.sign(&id);
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(ring.verify(&token).map(|v| v.id), Some(id));
        assert!(other.verify(&token).is_none());
    }

    #[test]
    fn every_single_character_change_fails() {
        let ring = Keyring::new(Key::generate());
        let token = ring.sign(&SessionId::generate());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(ring.verify(&changed).is_none(), "position {i}");
        }
    }

    #[test]
    fn fallback_keys_verify_and_ask_for_resigning() {
        let old = Key::generate();
        let id = SessionId::generate();
        let token = Keyring::new(old.clone()).sign(&id);
        let mut ring = Keyring::new(Key::generate());
        assert!(ring.verify(&token).is_none());
        ring.set_fallbacks(vec![old]);
        let verified = ring.verify(&token).unwrap();
        assert_eq!(verified.id, id);
        assert!(verified.needs_resign);
    }

    #[test]
    fn csrf_tokens_belong_to_one_id_and_one_key_ring() {
        let ring = Keyring::new(Key::generate());
        let id = SessionId::generate();
        let token = ring.csrf_token(&id);
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(ring.verify_csrf(&id, &token));
        assert!(!ring.verify_csrf(&SessionId::generate(), &token));
        assert!(!Keyring::new(Key::generate()).verify_csrf(&id, &token));
        // Neither the id nor the session token can be read from it.
        assert!(!token.contains(&URL_SAFE_NO_PAD.encode(id.as_bytes())[..20]));
        assert!(ring.verify(&token).is_none());
        assert_ne!(token, ring.sign(&id));
        for bad in [
            "",
            "x",
            &token[1..],
            &format!("{token}A"),
            &"*".repeat(TOKEN_LEN),
        ] {
            assert!(!ring.verify_csrf(&id, bad), "{bad:?}");
        }
    }

    #[test]
    fn csrf_tokens_of_a_fallback_key_still_verify() {
        let old = Key::generate();
        let id = SessionId::generate();
        let token = Keyring::new(old.clone()).csrf_token(&id);
        let mut ring = Keyring::new(Key::generate());
        assert!(!ring.verify_csrf(&id, &token));
        ring.set_fallbacks(vec![old]);
        assert!(ring.verify_csrf(&id, &token));
    }

    #[test]
    fn stamp_hashes_belong_to_one_user_one_stamp_and_the_key_ring() {
        let old = Key::generate();
        let ring = Keyring::new(old.clone());
        let hash = ring.stamp_hash("ann", "pw-v1");
        assert!(ring.verify_stamp("ann", "pw-v1", &hash));
        assert!(!ring.verify_stamp("ann", "pw-v2", &hash));
        assert!(!ring.verify_stamp("bob", "pw-v1", &hash));
        // The user/stamp boundary cannot be shifted.
        assert!(!ring.verify_stamp("an", "npw-v1", &hash));
        assert!(!Keyring::new(Key::generate()).verify_stamp("ann", "pw-v1", &hash));
        let mut rotated = Keyring::new(Key::generate());
        rotated.set_fallbacks(vec![old]);
        assert!(rotated.verify_stamp("ann", "pw-v1", &hash));
    }

    #[test]
    fn short_keys_are_refused_with_a_sentence() {
        let err = Key::from_bytes(&[1; 31]).unwrap_err();
        assert_eq!(err, KeyError::TooShort { len: 31 });
        assert!(err.to_string().contains("at least 32 bytes"));
        assert!(Key::from_bytes(&[1; 32]).is_ok());
    }

    /// 64 bytes from `openssl rand -base64 64`, as it prints them: standard
    /// alphabet, padded, a line break after 64 characters.
    const OPENSSL_SECRET: &str = "1PDjx7YwNErkaeJaQ+syWptlW7rQx6a+jgfaG06tobXyYwHpN9pOpB6srsyb90WG\nHMfZgPUuIouS0wzuf+2ziA==\n";

    fn signs_like(a: &Key, b: &Key) -> bool {
        let id = SessionId::generate();
        Keyring::new(a.clone()).sign(&id) == Keyring::new(b.clone()).sign(&id)
    }

    #[test]
    fn a_base64_secret_from_openssl_is_the_key_of_its_bytes() {
        let bytes = STANDARD_ANY_PADDING
            .decode(OPENSSL_SECRET.replace('\n', ""))
            .unwrap();
        assert_eq!(bytes.len(), 64);
        let expected = Key::from_bytes(&bytes).unwrap();
        let key = Key::from_base64(OPENSSL_SECRET).unwrap();
        assert!(signs_like(&key, &expected));
        assert!(!signs_like(&key, &Key::generate()));
        // The same bytes in the URL-safe alphabet, unpadded.
        let url_safe = Key::from_base64(&URL_SAFE_NO_PAD.encode(&bytes)).unwrap();
        assert!(signs_like(&url_safe, &expected));
    }

    #[test]
    fn a_short_base64_secret_is_refused_with_its_length() {
        let err = Key::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 16])).unwrap_err();
        assert_eq!(err, KeyError::TooShort { len: 16 });
        assert!(err.to_string().contains("openssl rand -base64 64"), "{err}");
        assert_eq!(
            Key::from_base64("").unwrap_err(),
            KeyError::TooShort { len: 0 }
        );
    }

    #[test]
    fn text_that_is_not_base64_is_refused_without_echoing_it() {
        let secret = format!("{}*{}", "a".repeat(20), "b".repeat(23));
        let err = Key::from_base64(&secret).unwrap_err();
        assert_eq!(err, KeyError::NotBase64 { position: Some(20) });
        let message = err.to_string();
        assert!(message.contains("not base64"), "{message}");
        assert!(!message.contains("aaaa"), "the secret leaked: {message}");

        // Valid characters, impossible length (one character too many).
        let err = Key::from_base64(&"A".repeat(45)).unwrap_err();
        assert_eq!(err, KeyError::NotBase64 { position: None });
        assert!(err.to_string().contains("padding"), "{err}");
    }

    #[test]
    fn a_missing_environment_variable_is_named() {
        let name = "TOWER_SESSION_GUARD_TEST_KEY_THAT_IS_NEVER_SET";
        let err = Key::from_env(name).unwrap_err();
        assert_eq!(
            err,
            KeyError::MissingEnvVar {
                name: name.to_owned()
            }
        );
        let message = err.to_string();
        assert!(message.contains(name), "{message}");
        assert!(message.contains("openssl rand -base64 64"), "{message}");
    }

    #[test]
    fn a_bad_environment_variable_is_named_with_its_problem() {
        let err = Key::from_env_value("SESSION_KEY", Some("c2hvcnQ=".to_owned())).unwrap_err();
        assert_eq!(
            err,
            KeyError::InvalidEnvVar {
                name: "SESSION_KEY".to_owned(),
                error: Box::new(KeyError::TooShort { len: 5 }),
            }
        );
        assert!(
            err.to_string()
                .starts_with("SESSION_KEY: a session key needs at least 32 bytes"),
            "{err}"
        );
        let key = Key::from_env_value("SESSION_KEY", Some(OPENSSL_SECRET.to_owned())).unwrap();
        assert!(signs_like(&key, &Key::from_base64(OPENSSL_SECRET).unwrap()));
    }

    #[test]
    fn key_debug_hides_the_secret() {
        assert_eq!(format!("{:?}", Key::generate()), "Key(..)");
    }

    #[test]
    fn malformed_tokens_are_none() {
        let ring = Keyring::new(Key::generate());
        for bad in [
            "",
            "a",
            "!!!!",
            &"A".repeat(TOKEN_LEN + 1),
            &"*".repeat(TOKEN_LEN),
        ] {
            assert!(ring.verify(bad).is_none(), "{bad}");
        }
    }
}
