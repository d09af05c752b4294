//! A user's lock in Redis: `SET NX PX` with a random token and a lease,
//! released by a compare-and-delete script.

use std::time::Duration;

use ::redis::Value;
use async_trait::async_trait;
use rand::rngs::OsRng;
use rand::TryRngCore;
use tokio::runtime::Handle;

use super::connection::Connection;
use super::scripts::{run, scripts};
use crate::clock::duration_millis;
use crate::store::{HeldLock, StoreError};

/// The longest pause between two attempts to take a lock held by another.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// A user's lock, held (or being taken) by this process.
///
/// Released by [`HeldLock::release`]; if the operation holding it is
/// cancelled (its timeout fired) it is released from a spawned task, and if
/// the whole instance dies, by its lease.
pub(super) struct RedisLock {
    connection: Connection,
    key: String,
    token: String,
    /// Bounds the release.
    timeout: Duration,
    runtime: Option<Handle>,
    /// Whether the lock may be held: from the first attempt to take it (a
    /// `SET` that timed out may still have landed) until it is released.
    held: bool,
}

impl RedisLock {
    /// Takes the lock under `key` for `lease`, waiting while another holder
    /// has it. The caller bounds the wait.
    pub(super) async fn acquire(
        connection: &Connection,
        key: String,
        lease: Duration,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut token = [0u8; 16];
        OsRng.try_fill_bytes(&mut token).map_err(|err| {
            StoreError::Unavailable(format!("no randomness for a lock token: {err}"))
        })?;
        let lock = Self {
            connection: connection.clone(),
            key,
            token: token.iter().map(|b| format!("{b:02x}")).collect(),
            timeout,
            runtime: Handle::try_current().ok(),
            held: true,
        };
        let mut take = ::redis::cmd("SET");
        take.arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(duration_millis(lease));
        let mut pause = Duration::from_millis(1);
        loop {
            let taken: Value = lock.connection.query(&take).await?;
            if matches!(taken, Value::Okay | Value::SimpleString(_)) {
                return Ok(lock);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn unlock(connection: &Connection, key: &str, token: String) -> Result<(), StoreError> {
        run::<Value>(connection, &scripts().unlock, key, &[token]).await?;
        Ok(())
    }
}

#[async_trait]
impl HeldLock for RedisLock {
    async fn release(mut self: Box<Self>) {
        self.held = false;
        let unlock = Self::unlock(&self.connection, &self.key, self.token.clone());
        let result = tokio::time::timeout(self.timeout, unlock)
            .await
            .unwrap_or(Err(StoreError::Timeout));
        if let Err(err) = result {
            tracing::warn!(
                target: "tower_session_guard",
                error = %err,
                "could not release a user's lock in Redis; it lapses with its lease"
            );
        }
    }
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let connection = self.connection.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        let timeout = self.timeout;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(timeout, Self::unlock(&connection, &key, token)).await;
        });
    }
}
