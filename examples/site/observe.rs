//! What the site shows besides the session itself: the last lifecycle
//! events (a bounded buffer the layer's event handler fills), and the
//! `Set-Cookie` that delivered the cookie a browser presents (recorded by a
//! middleware outside the session layer, with the value hidden).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::middleware::Next;
use axum::response::Response;
use tower_session_guard::{Fingerprint, SessionEvent};

/// How many events the buffer keeps, for all sessions together.
const EVENTS_KEPT: usize = 256;

/// How many delivered cookies are remembered.
const COOKIES_KEPT: usize = 1024;

/// The last [`EVENTS_KEPT`] session events, newest last.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<VecDeque<(SystemTime, SessionEvent)>>>);

impl Events {
    /// Keeps `event`, dropping the oldest one when full. For
    /// `SessionLayer::with_event_handler`.
    pub fn record(&self, event: &SessionEvent) {
        let mut events = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back((SystemTime::now(), event.clone()));
    }

    /// Up to `limit` events of the session now named `current`, newest
    /// first, following it back through its earlier ids (a sign-in, a
    /// re-authentication and a renewal each give it a new one).
    pub fn of(&self, current: Fingerprint, limit: usize) -> Vec<(SystemTime, SessionEvent)> {
        let events = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: HashSet<Fingerprint> = HashSet::from([current]);
        let mut found = Vec::new();
        for (at, event) in events.iter().rev() {
            let (session, previous) = names_in(event);
            if session.is_some_and(|s| names.contains(&s)) {
                names.extend(previous);
                found.push((*at, event.clone()));
                if found.len() == limit {
                    break;
                }
            }
        }
        found
    }
}

/// The session an event is about, and the id it had before, if it says.
fn names_in(event: &SessionEvent) -> (Option<Fingerprint>, Option<Fingerprint>) {
    match event {
        SessionEvent::LoggedIn {
            session, previous, ..
        } => (Some(*session), *previous),
        SessionEvent::Reauthenticated {
            session, previous, ..
        }
        | SessionEvent::Regenerated { session, previous }
        | SessionEvent::Renewed { session, previous } => (Some(*session), Some(*previous)),
        SessionEvent::Created { session }
        | SessionEvent::LoggedOut { session, .. }
        | SessionEvent::Evicted { session, .. }
        | SessionEvent::Revoked { session, .. }
        | SessionEvent::Expired { session, .. }
        | SessionEvent::ReusedAfterRenewal { session, .. } => (Some(*session), None),
        SessionEvent::Rejected { session, .. } | SessionEvent::TokenRemoved { session } => {
            (*session, None)
        }
        _ => (None, None),
    }
}

/// The session cookie a request presented, as its `Set-Cookie` delivered
/// it (value hidden), and when; a request extension.
#[derive(Clone, Debug, Default)]
pub struct DeliveredCookie {
    /// Whether the request carried a session cookie at all.
    pub presented: bool,
    /// The header that set it, if this process sent it.
    pub set_cookie: Option<(SystemTime, String)>,
}

/// The `Set-Cookie` headers the session layer sent, by a keyed hash of the
/// cookie value (the values themselves are not kept).
#[derive(Clone)]
pub struct Cookies {
    name: Arc<str>,
    hasher: RandomState,
    sent: Arc<Mutex<Sent>>,
}

/// The recorded headers, and their keys oldest first (to drop the oldest).
#[derive(Default)]
struct Sent {
    headers: HashMap<u64, (SystemTime, String)>,
    order: VecDeque<u64>,
}

impl Cookies {
    /// Records the cookie named `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            hasher: RandomState::new(),
            sent: Arc::default(),
        }
    }

    fn remember(&self, value: &str, header: String) {
        let key = self.hasher.hash_one(value);
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let Sent { headers, order } = &mut *sent;
        if headers.insert(key, (SystemTime::now(), header)).is_none() {
            order.push_back(key);
            if order.len() > COOKIES_KEPT {
                if let Some(oldest) = order.pop_front() {
                    headers.remove(&oldest);
                }
            }
        }
    }

    fn lookup(&self, value: &str) -> Option<(SystemTime, String)> {
        let key = self.hasher.hash_one(value);
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.headers.get(&key).cloned()
    }
}

/// Middleware, outside the session layer: tells the handler which
/// `Set-Cookie` delivered the cookie the request carries, and records the
/// ones the response sends.
pub async fn record_cookies(
    State(cookies): State<Cookies>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == &*cookies.name)
        .map(|(_, value)| value.to_owned());
    let delivered = DeliveredCookie {
        presented: presented.is_some(),
        set_cookie: presented.as_deref().and_then(|value| cookies.lookup(value)),
    };
    request.extensions_mut().insert(delivered);
    let response = next.run(request).await;
    for header in response.headers().get_all(SET_COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        let (pair, attributes) = header.split_once(';').unwrap_or((header, ""));
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if name.trim() != &*cookies.name || value.is_empty() {
            continue;
        }
        let shown = format!(
            "{name}={}…({} characters, hidden);{attributes}",
            &value[..value.len().min(4)],
            value.len()
        );
        cookies.remember(value, shown);
    }
    response
}
