//! A user's lock as a store hands it out: [`UserLock`].

use std::fmt;

use async_trait::async_trait;

/// A lock that needs an asynchronous step to be released (a network round
/// trip, say). Stores whose lock is released by dropping a guard use
/// [`UserLock::new`] instead.
#[async_trait]
pub trait HeldLock: Send + Sync + 'static {
    /// Releases the lock. Implementations should also release it (or let
    /// it lapse) when dropped without this call, for a cancelled request.
    async fn release(self: Box<Self>);
}

/// A held per-user lock, from [`SessionStore::lock_user`](super::SessionStore::lock_user).
///
/// Released by [`release`](Self::release), or when dropped.
pub struct UserLock(Held);

enum Held {
    Guard(#[allow(dead_code)] Box<dyn Send + Sync>),
    Async(Box<dyn HeldLock>),
}

impl UserLock {
    /// A lock released by dropping `guard` (a mutex guard, say).
    ///
    /// ```
    /// # async fn run() {
    /// use std::sync::Arc;
    /// use tower_session_guard::store::UserLock;
    ///
    /// let logins = Arc::new(tokio::sync::Mutex::new(()));
    /// let lock = UserLock::new(Arc::clone(&logins).lock_owned().await);
    /// lock.release().await;
    /// # }
    /// ```
    #[must_use]
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Held::Guard(Box::new(guard)))
    }

    /// A lock released by [`HeldLock::release`].
    #[must_use]
    pub fn from_held(held: impl HeldLock) -> Self {
        Self(Held::Async(Box::new(held)))
    }

    /// Releases the lock.
    pub async fn release(self) {
        match self.0 {
            Held::Guard(guard) => drop(guard),
            Held::Async(held) => held.release().await,
        }
    }
}

impl fmt::Debug for UserLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserLock").finish_non_exhaustive()
    }
}
