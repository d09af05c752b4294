//! Every fixed statement of a store, written once for its table prefix in
//! its backend's dialect.

use super::backend::sealed::Backend;
use super::codec::{self, WRITTEN_COLUMNS};
use super::Settings;

/// A store's fixed statements (the delta's depends on the keys it names on
/// SQLite and MySQL; see each backend's `update`).
pub(super) struct Statements {
    pub(super) sessions: String,
    pub(super) users: String,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) channel: String,
    pub(super) create: String,
    pub(super) load: String,
    pub(super) replace_with: String,
    pub(super) replace_none: String,
    pub(super) delete: String,
    pub(super) index_add: String,
    pub(super) index_members: String,
    pub(super) lock_take: String,
    pub(super) lock_clear: String,
    pub(super) lock_give_back: String,
    pub(super) purge: [String; 3],
    /// The delta, where it is one statement for every change: committed
    /// synchronously, and as a data write commits (see
    /// [`Backend::fixed_deltas`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) fixed_deltas: [String; 2],
}

impl Statements {
    pub(super) fn new<DB: Backend>(settings: &Settings, extra: &DB::Extra) -> Self {
        let t = settings.tables();
        let channel = settings.channel();
        let p = DB::placeholder;
        let columns = codec::entry_columns(DB::DATA_AS_TEXT);
        let written = |first: usize| {
            WRITTEN_COLUMNS
                .iter()
                .enumerate()
                .map(|(n, column)| {
                    let placeholder = if *column == "data" {
                        DB::data_placeholder(first + n)
                    } else {
                        p(first + n)
                    };
                    (*column, placeholder)
                })
                .collect::<Vec<_>>()
        };
        let values = written(2)
            .into_iter()
            .map(|(_, placeholder)| placeholder)
            .collect::<Vec<_>>()
            .join(", ");
        let assignments = written(1)
            .into_iter()
            .map(|(column, placeholder)| format!("{column} = {placeholder}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (after_columns, after_columns_2) =
            (p(WRITTEN_COLUMNS.len() + 1), p(WRITTEN_COLUMNS.len() + 2));
        let announced = |write: String| DB::announced(extra, write, &channel);
        Self {
            create: format!(
                "INSERT INTO {s} (id_hash, {cols}) VALUES ({id}, {values}){conflict}",
                s = t.sessions,
                cols = WRITTEN_COLUMNS.join(", "),
                id = p(1),
                conflict = DB::on_conflict_do_nothing("id_hash"),
            ),
            load: format!(
                "SELECT {columns} FROM {s} WHERE id_hash = {id}",
                s = t.sessions,
                id = p(1)
            ),
            replace_with: announced(format!(
                "UPDATE {s} SET {assignments} \
                 WHERE id_hash = {after_columns} AND kind = 's' AND version = {after_columns_2}",
                s = t.sessions
            )),
            replace_none: announced(format!(
                "DELETE FROM {s} WHERE id_hash = {id} AND kind = 's' AND version = {version}",
                s = t.sessions,
                id = p(1),
                version = p(2)
            )),
            delete: DB::delete_returning(extra, &t.sessions, &columns, &channel),
            index_add: format!(
                "INSERT INTO {u} (user_key, id_hash, ends_at) VALUES ({}, {}, {}){conflict}",
                p(1),
                p(2),
                p(3),
                u = t.users,
                conflict = DB::on_conflict_update("user_key, id_hash", "ends_at"),
            ),
            index_members: format!(
                "SELECT id_hash FROM {u} WHERE user_key = {} AND ends_at >= {}",
                p(1),
                p(2),
                u = t.users
            ),
            lock_take: format!(
                "INSERT INTO {l} (user_key, token, ends_at) VALUES ({}, {}, {now} + {}){conflict}",
                p(1),
                p(2),
                p(3),
                l = t.locks,
                now = DB::NOW_MS,
                conflict = DB::on_conflict_do_nothing("user_key"),
            ),
            lock_clear: format!(
                "DELETE FROM {l} WHERE user_key = {} AND ends_at < {now}",
                p(1),
                l = t.locks,
                now = DB::NOW_MS
            ),
            lock_give_back: format!(
                "DELETE FROM {l} WHERE user_key = {} AND token = {}",
                p(1),
                p(2),
                l = t.locks
            ),
            purge: [
                (t.sessions.as_str(), "id_hash", "expires_at"),
                (t.users.as_str(), "user_key, id_hash", "ends_at"),
                (t.locks.as_str(), "user_key", "ends_at"),
            ]
            .map(|(table, key, deadline)| DB::purge_batch(table, key, deadline)),
            fixed_deltas: DB::fixed_deltas(extra, &t.sessions, &channel),
            sessions: t.sessions,
            users: t.users,
            channel,
        }
    }

    /// A `DELETE` of the user index rows of parameter 1 for `count` ids
    /// (parameters 2 and on).
    pub(super) fn index_remove<DB: Backend>(&self, count: usize) -> String {
        let ids = (2..count + 2).map(DB::placeholder).collect::<Vec<_>>();
        format!(
            "DELETE FROM {u} WHERE user_key = {user} AND id_hash IN ({ids})",
            u = self.users,
            user = DB::placeholder(1),
            ids = ids.join(", ")
        )
    }

    /// The columns a delta sets besides the data, with their parameters
    /// numbered from `first`: binding, last seen, idle deadline (twice).
    /// (MySQL assigns left to right, each seeing the columns set before it:
    /// none of these reads a column set before it.)
    pub(super) fn touch<DB: Backend>(first: usize) -> String {
        let p = |n: usize| DB::placeholder(first + n);
        format!(
            "binding = COALESCE({binding}, binding), \
             last_seen = {last_seen}, \
             idle_deadline = CASE WHEN {idle} IS NULL THEN idle_deadline \
               ELSE {idle_deadline} END, \
             version = {next_version}",
            next_version = DB::NEXT_VERSION,
            binding = p(0),
            last_seen = DB::greatest("last_seen", &format!("COALESCE({}, last_seen)", p(1))),
            idle = p(2),
            idle_deadline = DB::least(&DB::greatest("idle_deadline", &p(3)), "absolute_deadline"),
        )
    }
}
