//! The bounded, sharded in-memory table behind [`MokaStore`](super::MokaStore).
//!
//! Each shard is an insertion-ordered hash map (`indexmap`) behind a
//! read-write lock. Records are `Arc`s: a read clones a pointer under the
//! read lock, a write swaps the pointer under the write lock. Per entry the
//! table keeps 8 bytes besides the key and the record pointer: when it was
//! last used (for eviction) and the second it may be dropped (the backstop).
//!
//! - **Eviction** when a shard is full: of a few entries sampled at random,
//!   one past its backstop if there is one, else the least recently used
//!   (the approximation of LRU that Redis uses). Each shard has its share
//!   of the bound, so eviction starts when the first shard fills, a few
//!   percent short of the whole bound.
//! - **Recency** is a per-shard 32-bit counter compared with wrapping
//!   arithmetic: an entry left unused for 2³² uses of its shard looks
//!   recent again, which only blurs the approximation (the backstop still
//!   drops it after its deadline).
//! - **Backstop**: every insert checks the next few entries in turn and
//!   drops those past their backstop, so the memory of abandoned sessions
//!   comes back as new sessions arrive, without a sweeper task.
//!
//! Dropped entries (eviction, backstop) are reported to a callback, called
//! under the shard's write lock, as are the hooks of `insert_new` and
//! `take_if`; none may call back into the table.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use crate::clock::UnixMillis;
use crate::id::{IdHash, IdHashState};
use crate::record::SessionRecord;

/// Most shards a table is split into.
const MAX_SHARDS: u64 = 64;

/// Fewest entries a shard is made for (small tables get fewer shards).
const MIN_SHARD_CAPACITY: u64 = 1024;

/// Entries compared to choose an eviction victim.
const SAMPLE: usize = 8;

/// Entries checked for their backstop on every insert.
const SWEEP: usize = 2;

/// What to do with an entry the table drops on its own.
pub(super) type OnDrop = Box<dyn Fn(&IdHash, &SessionRecord) + Send + Sync>;

pub(super) struct Table {
    shards: Box<[RwLock<Shard>]>,
    hasher: IdHashState,
    shard_capacity: usize,
    /// The origin of the entries' backstop times (milliseconds since).
    epoch: Instant,
    slack: Duration,
    on_drop: OnDrop,
}

struct Shard {
    entries: IndexMap<IdHash, Entry, IdHashState>,
    /// Recency clock: bumped by every use of an entry of this shard. Ages
    /// are compared with wrapping arithmetic, so it may wrap.
    tick: AtomicU32,
    /// Where the backstop check resumes.
    cursor: usize,
    /// State of the sampling generator (xorshift, randomly seeded; victims
    /// need spread, not secrecy).
    sampler: u64,
}

struct Entry {
    record: Arc<SessionRecord>,
    /// The shard's tick when the entry was last used.
    used: AtomicU32,
    /// When the entry may be dropped, in whole seconds since the epoch
    /// (rounded up: a backstop may run late, never early).
    drop_at: u32,
}

/// What [`Table::replace`] did.
pub(super) enum Replaced {
    /// Nothing is stored under the id.
    Gone,
    /// The replacement declined; this is the record left in place.
    Kept(Arc<SessionRecord>),
    /// Replaced `previous`.
    Done { previous: Arc<SessionRecord> },
}

impl Table {
    /// A table for at most `max_entries` entries (at least one).
    ///
    /// Entries are dropped `slack` after their record's earliest deadline,
    /// counted from their last write.
    pub(super) fn new(max_entries: u64, slack: Duration, on_drop: OnDrop) -> Self {
        let max_entries = max_entries.max(1);
        // A power of two, so that each shard holds at least
        // MIN_SHARD_CAPACITY entries and the total never exceeds the bound.
        let mut shards = 1;
        while shards < MAX_SHARDS && max_entries / (shards * 2) >= MIN_SHARD_CAPACITY {
            shards *= 2;
        }
        let shard_capacity = usize::try_from(max_entries / shards).unwrap_or(usize::MAX);
        let hasher = IdHashState::new();
        let shards = (0..shards)
            .map(|n| {
                RwLock::new(Shard {
                    entries: IndexMap::with_hasher(hasher.clone()),
                    tick: AtomicU32::new(0),
                    cursor: 0,
                    // Seeded from the table's random key; xorshift needs a
                    // state other than zero.
                    sampler: hasher.hash_one(n) | 1,
                })
            })
            .collect();
        Self {
            shards,
            hasher,
            shard_capacity,
            epoch: Instant::now(),
            slack,
            on_drop,
        }
    }

    fn shard(&self, id: &IdHash) -> &RwLock<Shard> {
        // The top bits: the shard's own map indexes by the low ones.
        let bits = self.hasher.hash_one(id) >> 40;
        // In range by the mask; truncation is intended.
        #[allow(clippy::cast_possible_truncation)]
        let index = bits as usize & (self.shards.len() - 1);
        &self.shards[index]
    }

    fn read(&self, id: &IdHash) -> RwLockReadGuard<'_, Shard> {
        self.shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, id: &IdHash) -> RwLockWriteGuard<'_, Shard> {
        self.shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds since the epoch.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The second after which an entry written at `now` (milliseconds) with
    /// `record` may be dropped.
    fn drop_at(&self, now: u64, record: &SessionRecord) -> u32 {
        let lifetime = u64::try_from(lifetime(record, self.slack).as_millis()).unwrap_or(u64::MAX);
        u32::try_from(now.saturating_add(lifetime).div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// Whether an entry dropped after `drop_at` may go at `now` (milliseconds).
    fn past(drop_at: u32, now: u64) -> bool {
        u64::from(drop_at) * 1000 <= now
    }

    /// The record under `id`, if there is one.
    pub(super) fn get(&self, id: &IdHash) -> Option<Arc<SessionRecord>> {
        let shard = self.read(id);
        let entry = shard.entries.get(id)?;
        entry.used.store(shard.bump(), Ordering::Relaxed);
        Some(Arc::clone(&entry.record))
    }

    /// Stores `record` under its id unless something is stored there;
    /// returns whether it was stored. Makes room in a full shard first.
    /// `stored` runs once the record is in, still under the shard's lock.
    pub(super) fn insert_new(
        &self,
        record: Arc<SessionRecord>,
        stored: impl FnOnce(&SessionRecord),
    ) -> bool {
        let id = record.id_hash;
        let now = self.now();
        let drop_at = self.drop_at(now, &record);
        let mut shard = self.write(&id);
        if shard.entries.contains_key(&id) {
            return false;
        }
        self.sweep(&mut shard, now, SWEEP);
        if shard.entries.len() >= self.shard_capacity {
            self.evict_one(&mut shard, now);
        }
        let used = AtomicU32::new(shard.bump());
        stored(&record);
        shard.entries.insert(
            id,
            Entry {
                record,
                used,
                drop_at,
            },
        );
        true
    }

    /// Replaces the record under `id` with `replace(current)`, unless that
    /// returns `None`.
    pub(super) fn replace(
        &self,
        id: &IdHash,
        replace: impl FnOnce(&Arc<SessionRecord>) -> Option<SessionRecord>,
    ) -> Replaced {
        let now = self.now();
        let mut shard = self.write(id);
        let tick = shard.bump();
        let Some(entry) = shard.entries.get_mut(id) else {
            return Replaced::Gone;
        };
        let Some(next) = replace(&entry.record) else {
            return Replaced::Kept(Arc::clone(&entry.record));
        };
        entry.drop_at = self.drop_at(now, &next);
        *entry.used.get_mut() = tick;
        let previous = std::mem::replace(&mut entry.record, Arc::new(next));
        Replaced::Done { previous }
    }

    /// Removes the record under `id` if `condition` holds for it; `taken`
    /// runs with it, still under the shard's lock.
    pub(super) fn take_if(
        &self,
        id: &IdHash,
        condition: impl FnOnce(&SessionRecord) -> bool,
        taken: impl FnOnce(&SessionRecord),
    ) -> Option<Arc<SessionRecord>> {
        let mut shard = self.write(id);
        let (index, _, entry) = shard.entries.get_full(id)?;
        if !condition(&entry.record) {
            return None;
        }
        let (_, entry) = shard.entries.swap_remove_index(index)?;
        taken(&entry.record);
        Some(entry.record)
    }

    /// Runs `absent` if nothing is stored under `id`, under the shard's
    /// lock: an insert under `id` cannot run meanwhile.
    pub(super) fn if_absent(&self, id: &IdHash, absent: impl FnOnce()) {
        let shard = self.read(id);
        if !shard.entries.contains_key(id) {
            absent();
        }
    }

    /// The number of entries.
    pub(super) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len() as u64
            })
            .sum()
    }

    /// Drops every entry past its backstop now.
    pub(super) fn sweep_all(&self) {
        let now = self.now();
        for shard in &self.shards[..] {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let len = shard.entries.len();
            shard.cursor = 0;
            self.sweep(&mut shard, now, len);
        }
    }

    /// Checks `count` entries from the shard's cursor on and drops those
    /// past their backstop.
    fn sweep(&self, shard: &mut Shard, now: u64, count: usize) {
        for _ in 0..count {
            let len = shard.entries.len();
            if len == 0 {
                return;
            }
            let at = shard.cursor % len;
            let expired = shard
                .entries
                .get_index(at)
                .is_some_and(|(_, entry)| Self::past(entry.drop_at, now));
            if expired {
                // The last entry moves into `at`: check that spot again.
                self.drop_index(shard, at);
                shard.cursor = at;
            } else {
                shard.cursor = at + 1;
            }
        }
    }

    /// Drops one entry of a full shard: of a random sample, one past its
    /// backstop if any, else the least recently used.
    fn evict_one(&self, shard: &mut Shard, now: u64) {
        let len = shard.entries.len();
        if len == 0 {
            return;
        }
        let tick = shard.tick.load(Ordering::Relaxed);
        let mut victim: Option<(usize, u32)> = None;
        for _ in 0..SAMPLE.min(len) {
            let at = shard.sample(len);
            let Some((_, entry)) = shard.entries.get_index(at) else {
                continue;
            };
            if Self::past(entry.drop_at, now) {
                victim = Some((at, u32::MAX));
                break;
            }
            let age = tick.wrapping_sub(entry.used.load(Ordering::Relaxed));
            if victim.map_or(true, |(_, oldest)| age > oldest) {
                victim = Some((at, age));
            }
        }
        if let Some((at, _)) = victim {
            self.drop_index(shard, at);
        }
    }

    fn drop_index(&self, shard: &mut Shard, at: usize) {
        if let Some((id, entry)) = shard.entries.swap_remove_index(at) {
            (self.on_drop)(&id, &entry.record);
        }
    }
}

impl Shard {
    /// The next recency tick.
    fn bump(&self) -> u32 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// A pseudo-random index below `len` (xorshift64; eviction sampling
    /// needs spread, not secrecy).
    fn sample(&mut self, len: usize) -> usize {
        let mut x = self.sampler;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.sampler = x;
        // The remainder is below `len`, which fits a usize.
        #[allow(clippy::cast_possible_truncation)]
        let at = (x % len as u64) as usize;
        at
    }
}

/// How long after a write an entry holding `record` is kept: the time left
/// to the record's earliest deadline, plus `slack`.
///
/// Measured from the record's own `last_seen`, not the wall clock, so a
/// record written under a test clock is not dropped early.
pub(super) fn lifetime(record: &SessionRecord, slack: Duration) -> Duration {
    let left: UnixMillis = record.expires_at().saturating_sub(record.last_seen);
    Duration::from_millis(left) + slack
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::id::SessionId;
    use crate::record::{Deadlines, SessionData};

    /// A record idle for `idle_ms` from 1 s on.
    fn record(idle_ms: u64) -> Arc<SessionRecord> {
        Arc::new(
            Deadlines {
                created_at: 1_000,
                idle_deadline: 1_000 + idle_ms,
                absolute_deadline: 1_000 + 10 * idle_ms,
            }
            .record(SessionId::generate().hash(), None, SessionData::default()),
        )
    }

    fn recording_table(max: u64, slack: Duration) -> (Table, Arc<Mutex<Vec<IdHash>>>) {
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&dropped);
        let table = Table::new(
            max,
            slack,
            Box::new(move |id, _| sink.lock().unwrap().push(*id)),
        );
        (table, dropped)
    }

    fn insert(table: &Table, record: &Arc<SessionRecord>) -> bool {
        table.insert_new(Arc::clone(record), |_| {})
    }

    #[test]
    fn shards_never_add_up_to_more_than_the_bound() {
        for max in [0, 1, 7, 100, 1_023, 2_048, 100_000, 1_000_000, u64::MAX] {
            let (table, _) = recording_table(max, Duration::ZERO);
            let total = table.shard_capacity as u128 * table.shards.len() as u128;
            let max = u128::from(max);
            assert!(total <= max.max(1), "{max}: {total}");
            assert!(
                total * 100 >= max * 99 || max < 2_048,
                "{max}: only {total}"
            );
            assert!(table.shard_capacity >= 1);
        }
        // And at run time, with many shards.
        let (table, dropped) = recording_table(5_000, Duration::from_secs(60));
        assert!(table.shards.len() > 1);
        for _ in 0..20_000 {
            assert!(insert(&table, &record(60_000)));
        }
        assert!(table.len() <= 5_000, "{} entries held", table.len());
        assert_eq!(table.len() + dropped.lock().unwrap().len() as u64, 20_000);
    }

    #[test]
    fn a_full_table_drops_rarely_used_entries_and_reports_them() {
        let (table, dropped) = recording_table(1_000, Duration::from_secs(60));
        let first: Vec<_> = (0..1_000).map(|_| record(60_000)).collect();
        for r in &first {
            assert!(insert(&table, r));
        }
        // A hundred entries in the middle of the insertion order stay
        // unused; the other nine hundred are read after them.
        let idle: HashSet<_> = first[450..550].iter().map(|r| r.id_hash).collect();
        for r in first.iter().filter(|r| !idle.contains(&r.id_hash)) {
            assert!(table.get(&r.id_hash).is_some());
        }
        for _ in 0..100 {
            assert!(insert(&table, &record(60_000)));
        }
        assert_eq!(table.len(), 1_000);
        let dropped = dropped.lock().unwrap();
        assert_eq!(dropped.len(), 100);
        let from_idle = dropped.iter().filter(|id| idle.contains(id)).count();
        // Each eviction compares eight random entries and takes the least
        // recently used: about 45 of the 100 victims are unused entries
        // (sd about 5). Evicting at random would take about 10 of them, by
        // insertion order none, exact LRU all of them.
        assert!(
            from_idle >= 25,
            "only {from_idle} of 100 victims were unused entries"
        );
    }

    #[test]
    fn inserts_never_overwrite_and_take_removes() {
        let (table, _) = recording_table(10, Duration::from_secs(60));
        let r = record(60_000);
        assert!(insert(&table, &r));
        let mut twin = SessionRecord::clone(&r);
        twin.version = 99;
        assert!(
            !insert(&table, &Arc::new(twin)),
            "an existing id was overwritten"
        );
        assert_eq!(table.get(&r.id_hash).unwrap().version, r.version);
        assert!(table.take_if(&r.id_hash, |_| false, |_| {}).is_none());
        let mut hooked = false;
        assert!(table
            .take_if(&r.id_hash, |_| true, |_| hooked = true)
            .is_some());
        assert!(hooked);
        assert!(table.get(&r.id_hash).is_none());
        assert!(matches!(
            table.replace(&r.id_hash, |_| None),
            Replaced::Gone
        ));
        let mut absent = false;
        table.if_absent(&r.id_hash, || absent = true);
        assert!(absent);
    }

    #[test]
    fn entries_past_their_backstop_are_dropped_by_later_inserts_and_by_a_sweep() {
        let (table, dropped) = recording_table(1_000, Duration::ZERO);
        let short: Vec<_> = (0..4).map(|_| record(20)).collect();
        for r in &short {
            insert(&table, r);
        }
        let long = record(60_000);
        insert(&table, &long);
        // Backstops are kept to the second.
        std::thread::sleep(Duration::from_millis(1_050));
        // Each insert checks two entries in turn; a handful reach all four.
        for _ in 0..5 {
            insert(&table, &record(60_000));
        }
        assert_eq!(
            dropped.lock().unwrap().len(),
            4,
            "abandoned entries were kept"
        );
        assert!(table.get(&long.id_hash).is_some());

        let late = record(20);
        insert(&table, &late);
        std::thread::sleep(Duration::from_millis(1_050));
        let before = table.len();
        table.sweep_all();
        assert!(table.get(&late.id_hash).is_none());
        assert_eq!(table.len(), before - 1);
    }

    #[test]
    fn a_write_moves_the_backstop_with_the_deadline() {
        let (table, _) = recording_table(1_000, Duration::from_secs(30));
        let r = record(60_000);
        insert(&table, &r);
        let drop_at = |table: &Table| {
            let shard = table.read(&r.id_hash);
            shard.entries.get(&r.id_hash).map(|e| e.drop_at)
        };
        let first = drop_at(&table).unwrap();
        // 60 s of idle time plus 30 s of slack, give or take the rounding.
        assert!((90..=92).contains(&first), "{first}");
        // A placeholder that lives 5 more seconds: the backstop comes closer.
        table.replace(&r.id_hash, |current| {
            let mut next = SessionRecord::clone(current);
            next.idle_deadline = next.last_seen + 5_000;
            Some(next)
        });
        let third = drop_at(&table).unwrap();
        assert!((35..=37).contains(&third), "{third}");
    }
}
