//! The Lua scripts: one per primitive, each on one key (`KEYS[1]`), so each
//! is atomic on its own and valid on Redis Cluster.
//!
//! A script that changes an entry also publishes the entry's hash on the
//! change channel (`ARGV[1]`, empty when announcements are off), in the same
//! atomic step, so no change can go unannounced while the feed is up.

use std::sync::OnceLock;

use ::redis::{FromRedisValue, Script};

use super::connection::{store_error, Connection};
use crate::store::StoreError;

/// Stores a session unless the key holds anything.
/// KEYS: entry. ARGV: expire-at, then field/value pairs.
/// Returns 1 when created, 0 when the key was taken.
///
/// Nothing is announced: no cache holds a copy of a key that held nothing
/// (caches keep what loads found, never an absence).
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
";

/// Applies a delta to a session: removes and sets data fields, replaces the
/// binding, moves `seen` and `idle` forward only (`idle` capped at `abs`)
/// and the expiry with them, and bumps the version.
/// KEYS: entry. ARGV: channel, hash, touch last-seen ('' for none), touch
/// idle deadline, backstop slack, client binding JSON ('' for unchanged),
/// number of removed fields, the removed fields, then set field/value pairs.
/// Returns the session's new version, or nil (writing nothing) when the key
/// holds no session. The announcement is the hash, `:` and the new version.
/// The version is read back as the stored text: `HINCRBY`'s answer is a Lua
/// number, a double, which concatenates as `1e+14` from 10^14 on and is
/// rounded past 2^53.
const UPDATE: &str = r"
if redis.call('HGET', KEYS[1], 'kind') ~= 's' then return false end
local removed = tonumber(ARGV[7])
for i = 8, 7 + removed do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 8 + removed, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'bind', ARGV[6]) end
if ARGV[3] ~= '' then
  if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[1], 'seen')) then
    redis.call('HSET', KEYS[1], 'seen', ARGV[3])
  end
  local idle = redis.call('HGET', KEYS[1], 'idle')
  local abs = redis.call('HGET', KEYS[1], 'abs')
  if tonumber(ARGV[4]) > tonumber(idle) then idle = ARGV[4] end
  if tonumber(idle) > tonumber(abs) then idle = abs end
  redis.call('HSET', KEYS[1], 'idle', idle)
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(idle) + tonumber(ARGV[5])))
end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
local version = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2] .. ':' .. version) end
return version
";

/// Replaces a session with a new entry, or removes it, if it is still a
/// session at the version given.
/// KEYS: entry. ARGV: channel, hash, version, expire-at, then the new
/// entry's field/value pairs (none: remove).
/// Returns 1 when replaced, 0 (writing nothing) otherwise.
const REPLACE: &str = r"
local found = redis.call('HMGET', KEYS[1], 'kind', 'ver')
if found[1] ~= 's' or found[2] ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
if #ARGV > 4 then
  for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
";

/// Removes whatever the key holds and returns it.
/// KEYS: entry. ARGV: channel, hash.
/// Returns the removed hash's field/value pairs (none: there was nothing).
const DELETE: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return fields end
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return fields
";

/// Adds a session to a user's index, drops the entries whose sessions
/// Redis has already expired (scored more than the slack before Redis's own
/// clock), and keeps the index until its last entry's end plus the slack.
/// KEYS: index. ARGV: member, score (until), slack.
const INDEX_ADD: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expired = string.format('(%.0f', now - tonumber(ARGV[3]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', expired)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(last[2]) + tonumber(ARGV[3])))
end
return 1
";

/// Drops a user's index entries that end before `now` and returns the rest.
/// KEYS: index. ARGV: now.
const INDEX_READ: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Releases a lock if this holder still has it.
/// KEYS: lock. ARGV: token.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The scripts, hashed once per process.
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) update: Script,
    pub(super) replace: Script,
    pub(super) delete: Script,
    pub(super) index_add: Script,
    pub(super) index_read: Script,
    pub(super) unlock: Script,
}

pub(super) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        create: Script::new(CREATE),
        update: Script::new(UPDATE),
        replace: Script::new(REPLACE),
        delete: Script::new(DELETE),
        index_add: Script::new(INDEX_ADD),
        index_read: Script::new(INDEX_READ),
        unlock: Script::new(UNLOCK),
    })
}

/// Runs `script` on `key`: one `EVALSHA` (two more, `SCRIPT LOAD` and the
/// `EVALSHA` again, the first time a server sees the script).
pub(super) async fn run<T: FromRedisValue>(
    connection: &Connection,
    script: &Script,
    key: &str,
    args: &[String],
) -> Result<T, StoreError> {
    let mut invocation = script.key(key);
    for arg in args {
        invocation.arg(arg);
    }
    let mut connection = connection.clone();
    invocation
        .invoke_async(&mut connection)
        .await
        .map_err(store_error)
}
