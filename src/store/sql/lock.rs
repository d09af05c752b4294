//! A user's lock as a row with a lease, the same on all three backends
//! (see "Locking" in the [module docs](super)).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::OsRng;
use rand::TryRngCore;
use tokio::runtime::Handle;

use super::bounded;
use crate::store::{HeldLock, StoreError, UserLock};

/// The longest pause between two attempts to take a lock held by another.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// The shortest lease of a user's lock.
const MIN_LEASE: Duration = Duration::from_secs(5);

/// The lock table of one store: the three statements a lease lock needs.
#[async_trait]
pub(super) trait LockTable: Send + Sync + 'static {
    /// Inserts the lock row, unless the user's row exists; whether it did.
    /// The lease ends `lease_ms` after the database's clock.
    async fn take(&self, user_key: &[u8], token: &[u8], lease_ms: i64) -> Result<bool, StoreError>;

    /// Removes the user's row if its lease lapsed (by the database's
    /// clock); whether it did.
    async fn clear_lapsed(&self, user_key: &[u8]) -> Result<bool, StoreError>;

    /// Removes the user's row if it still holds `token`.
    async fn give_back(&self, user_key: &[u8], token: &[u8]) -> Result<(), StoreError>;
}

/// How long a lock is leased for, with operations bounded by `timeout`:
/// five timeouts, at least 5 seconds.
pub(super) fn lease(timeout: Duration) -> Duration {
    (timeout * 5).max(MIN_LEASE)
}

/// Takes the user's lock, waiting (bounded by `timeout`) while another
/// holder has it.
pub(super) async fn lock_user(
    table: Arc<dyn LockTable>,
    user_key: Vec<u8>,
    timeout: Duration,
) -> Result<UserLock, StoreError> {
    let mut token = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut token)
        .map_err(|err| StoreError::Unavailable(format!("no randomness for a lock token: {err}")))?;
    let lock = SqlLock {
        table,
        user_key,
        token: token.to_vec(),
        timeout,
        runtime: Handle::try_current().ok(),
        // From the first attempt: an insert that timed out may have landed.
        held: true,
    };
    let lease_ms = i64::try_from(lease(timeout).as_millis()).unwrap_or(i64::MAX);
    bounded(timeout, async {
        let mut pause = Duration::from_millis(1);
        loop {
            if lock
                .table
                .take(&lock.user_key, &lock.token, lease_ms)
                .await?
            {
                return Ok(());
            }
            if lock.table.clear_lapsed(&lock.user_key).await? {
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    })
    .await?;
    Ok(UserLock::from_held(lock))
}

/// A user's lock held (or being taken) by this process. Released by
/// [`HeldLock::release`]; if dropped unreleased (a cancelled request), from
/// a spawned task; if the whole instance dies, by its lease.
struct SqlLock {
    table: Arc<dyn LockTable>,
    user_key: Vec<u8>,
    token: Vec<u8>,
    timeout: Duration,
    runtime: Option<Handle>,
    held: bool,
}

#[async_trait]
impl HeldLock for SqlLock {
    async fn release(mut self: Box<Self>) {
        self.held = false;
        let result = bounded(
            self.timeout,
            self.table.give_back(&self.user_key, &self.token),
        )
        .await;
        if let Err(err) = result {
            tracing::warn!(
                target: "tower_session_guard",
                error = %err,
                "could not release a user's lock in the database; it lapses with its lease"
            );
        }
    }
}

impl Drop for SqlLock {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let table = Arc::clone(&self.table);
        let user_key = std::mem::take(&mut self.user_key);
        let token = std::mem::take(&mut self.token);
        let timeout = self.timeout;
        runtime.spawn(async move {
            let _ = bounded(timeout, table.give_back(&user_key, &token)).await;
        });
    }
}
