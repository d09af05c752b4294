//! What differs between the SQL backends, behind one sealed trait: the
//! SQL dialect's pieces, how a statement is run on the backend's pool, and
//! the few primitives each writes its own way (the delta, `delete`, the
//! migration's lock, the change feed).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use sqlx::{Database, Encode, Pool, Type};

use super::codec::{Columns, Stored};
use super::SqlStore;
use crate::id::IdHash;
use crate::record::{Change, Entry};
use crate::store::StoreError;

/// The SQL dialects the schema is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "postgres", feature = "sqlite", feature = "mysql")),
    allow(dead_code)
)]
pub enum Dialect {
    Postgres,
    Sqlite,
    MySql,
}

impl Dialect {
    /// What follows a `CREATE TABLE (...)`.
    pub(super) fn table_options(self) -> &'static str {
        match self {
            Self::Postgres => "",
            Self::Sqlite => " WITHOUT ROWID",
            Self::MySql => " ENGINE=InnoDB",
        }
    }
}

/// A boxed, sendable future, as the backends' hooks return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database a [`SqlStore`](super::SqlStore) runs on: [`sqlx::Postgres`]
/// (feature `postgres`), [`sqlx::Sqlite`] (feature `sqlite`) and
/// [`sqlx::MySql`] (feature `mysql`). Sealed: the crate implements it for
/// these three only.
pub trait SqlBackend: sealed::Backend {}

impl<DB: sealed::Backend> SqlBackend for DB {}

pub(super) mod sealed {
    use super::*;

    /// The backend's part of a [`SqlStore`]: its dialect, its runner and
    /// its own primitives. Defaults are the standard SQL that PostgreSQL
    /// and SQLite share.
    pub trait Backend: Database + Sized {
        /// What the backend's stores hold besides the pool and settings.
        type Extra: Clone + Send + Sync + 'static;

        /// The store's type name, for `Debug`.
        const STORE_NAME: &'static str;
        /// The dialect the schema is written in.
        const DIALECT: Dialect;
        /// The database's clock in milliseconds, for lock leases.
        const NOW_MS: &'static str;
        /// The data column as the entry `SELECT` reads it: as text.
        const DATA_AS_TEXT: &'static str;
        /// The delta's new version: one more than the row's. MySQL, which
        /// has no `UPDATE ... RETURNING`, also hands it back to the client
        /// as the statement's `LAST_INSERT_ID`.
        const NEXT_VERSION: &'static str = "version + 1";

        /// The backend's own state of a new store.
        fn new_extra() -> Self::Extra;

        /// The `n`-th (from 1) parameter of a statement.
        fn placeholder(n: usize) -> String {
            let _ = n;
            "?".to_owned()
        }

        /// The parameter of the data column (the JSON text), `n`-th.
        fn data_placeholder(n: usize) -> String {
            Self::placeholder(n)
        }

        /// The larger of two values.
        fn greatest(a: &str, b: &str) -> String {
            format!("GREATEST({a}, {b})")
        }

        /// The smaller of two values.
        fn least(a: &str, b: &str) -> String {
            format!("LEAST({a}, {b})")
        }

        /// An integer expression as a `BIGINT`.
        fn as_bigint(expr: &str) -> String {
            format!("CAST({expr} AS BIGINT)")
        }

        /// What follows an `INSERT` that must do nothing when `key`
        /// exists (on MySQL, nothing: the duplicate-key error says so).
        fn on_conflict_do_nothing(key: &str) -> String {
            format!(" ON CONFLICT ({key}) DO NOTHING")
        }

        /// What follows an `INSERT` that updates `column` when `key` exists.
        fn on_conflict_update(key: &str, column: &str) -> String {
            format!(" ON CONFLICT ({key}) DO UPDATE SET {column} = excluded.{column}")
        }

        /// A `DELETE` of at most `limit` rows of `table` whose `deadline`
        /// is before `before`, the oldest first (parameters 1 and 2).
        fn purge_batch(table: &str, key: &str, deadline: &str) -> String {
            let (before, limit) = (Self::placeholder(1), Self::placeholder(2));
            format!(
                "DELETE FROM {table} WHERE ({key}) IN \
                 (SELECT {key} FROM {table} WHERE {deadline} < {before} \
                 ORDER BY {deadline} LIMIT {limit})"
            )
        }

        /// A write of a session row (`UPDATE`, `DELETE`) as it runs, made to
        /// announce the row it changed where the backend has a change feed.
        fn announced(extra: &Self::Extra, write: String, channel: &str) -> String {
            let _ = (extra, channel);
            write
        }

        /// The delta's statements where they do not depend on the keys a
        /// change names (PostgreSQL): committed synchronously, and as a data
        /// write commits. Empty where the delta is written per change.
        fn fixed_deltas(extra: &Self::Extra, sessions: &str, channel: &str) -> [String; 2] {
            let _ = (extra, sessions, channel);
            [String::new(), String::new()]
        }

        /// `delete`'s statement: removes the row of parameter 1 and returns
        /// its entry columns (`columns`).
        fn delete_returning(
            extra: &Self::Extra,
            sessions: &str,
            columns: &str,
            channel: &str,
        ) -> String {
            let _ = (extra, channel);
            let id = Self::placeholder(1);
            format!("DELETE FROM {sessions} WHERE id_hash = {id} RETURNING {columns}")
        }

        /// Waits for this process's turn to write, where the backend wants
        /// its writers to take turns.
        fn write_turn(extra: &Self::Extra) -> BoxFuture<'_, Option<WriteTurn<'_>>> {
            let _ = extra;
            Box::pin(async { None })
        }

        /// Runs `sql` with `params`; how many rows it changed.
        fn execute<'a>(
            pool: &'a Pool<Self>,
            sql: &'a str,
            params: Params,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

        /// Runs `sql` with `params` on `connection`; how many rows it changed.
        fn execute_on<'a>(
            connection: &'a mut Self::Connection,
            sql: &'a str,
            params: Params,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

        /// Runs a query returning at most one row of one integer; that
        /// integer, if there was a row.
        fn fetch_optional_integer<'a>(
            pool: &'a Pool<Self>,
            sql: &'a str,
            params: Params,
        ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;

        /// Runs a query of one integer on `connection`.
        fn fetch_integer<'a>(
            connection: &'a mut Self::Connection,
            sql: &'a str,
        ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;

        /// Runs a query of [`entry_columns`](super::super::codec::entry_columns);
        /// its first row.
        fn fetch_entry<'a>(
            pool: &'a Pool<Self>,
            sql: &'a str,
            params: Params,
        ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;

        /// Runs a query of one binary column; every row's value.
        fn fetch_keys<'a>(
            pool: &'a Pool<Self>,
            sql: &'a str,
            params: Params,
        ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, sqlx::Error>>;

        /// Applies `change` to the session under `id` in one statement (or
        /// what the backend makes as atomic); whether there was one.
        fn update<'a>(
            store: &'a SqlStore<Self>,
            id: &'a IdHash,
            change: &'a Change,
        ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

        /// Removes the entry under `id`, returning it.
        fn delete<'a>(
            store: &'a SqlStore<Self>,
            id: &'a IdHash,
        ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
            Box::pin(store.fetch_entry(&store.sql.delete, id, true))
        }

        /// Creates or upgrades the tables, holding whatever keeps
        /// concurrent migrations apart.
        fn migrate(store: &SqlStore<Self>) -> BoxFuture<'_, Result<(), StoreError>>;

        /// Starts telling `listener` of changes; whether the backend can.
        fn watch_changes(
            store: &SqlStore<Self>,
            listener: std::sync::Arc<dyn crate::store::ChangeListener>,
        ) -> bool {
            let _ = (store, listener);
            false
        }

        /// Adds the backend's own settings to the store's `Debug`.
        fn debug_extra(extra: &Self::Extra, debug: &mut fmt::DebugStruct<'_, '_>) {
            let _ = (extra, debug);
        }
    }
}

/// This process's turn to write (SQLite's in-process writer queue).
pub type WriteTurn<'a> = tokio::sync::MutexGuard<'a, ()>;

/// One parameter of a statement.
pub enum Param {
    Integer(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// A statement's parameters, in order.
#[derive(Default)]
pub struct Params(Vec<Param>);

impl Params {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn integer(mut self, value: impl Into<Option<i64>>) -> Self {
        self.0.push(Param::Integer(value.into()));
        self
    }

    pub(super) fn text(mut self, value: Option<String>) -> Self {
        self.0.push(Param::Text(value));
        self
    }

    pub(super) fn bytes(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.0.push(Param::Bytes(Some(value.into())));
        self
    }

    pub(super) fn id(self, id: &IdHash) -> Self {
        self.bytes(id.as_bytes().as_slice())
    }

    /// An entry's columns, in the order of
    /// [`WRITTEN_COLUMNS`](super::codec::WRITTEN_COLUMNS).
    pub(super) fn columns(mut self, c: Columns) -> Self {
        self = self
            .text(Some(c.kind.to_owned()))
            .text(c.user_id)
            .text(Some(c.data))
            .integer(c.created_at)
            .integer(c.last_seen)
            .integer(c.idle_deadline)
            .integer(c.absolute_deadline)
            .integer(c.id_issued_at)
            .integer(c.version)
            .text(c.ip)
            .text(c.user_agent)
            .text(c.binding);
        self.0.push(Param::Bytes(c.successor));
        self.0.push(Param::Bytes(c.sealed_id));
        self.0.push(Param::Text(c.sign_in));
        self.0.push(Param::Integer(c.grace_until));
        self
    }

    /// Binds the parameters to `query`, in order.
    pub(super) fn bind<'q, DB>(
        self,
        mut query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>,
    ) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
    where
        DB: Database,
        Option<i64>: Encode<'q, DB> + Type<DB>,
        Option<String>: Encode<'q, DB> + Type<DB>,
        Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
    {
        for param in self.0 {
            query = match param {
                Param::Integer(value) => query.bind(value),
                Param::Text(value) => query.bind(value),
                Param::Bytes(value) => query.bind(value),
            };
        }
        query
    }
}

/// The statement runners of [`sealed::Backend`], the same text on every
/// backend over its concrete types.
macro_rules! runners {
    () => {
        fn execute<'a>(
            pool: &'a sqlx::Pool<Self>,
            sql: &'a str,
            params: $crate::store::sql::backend::Params,
        ) -> $crate::store::sql::backend::BoxFuture<'a, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                let done = params.bind(sqlx::query(sql)).execute(pool).await?;
                Ok(done.rows_affected())
            })
        }

        fn execute_on<'a>(
            connection: &'a mut Self::Connection,
            sql: &'a str,
            params: $crate::store::sql::backend::Params,
        ) -> $crate::store::sql::backend::BoxFuture<'a, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                let done = params.bind(sqlx::query(sql)).execute(connection).await?;
                Ok(done.rows_affected())
            })
        }

        fn fetch_optional_integer<'a>(
            pool: &'a sqlx::Pool<Self>,
            sql: &'a str,
            params: $crate::store::sql::backend::Params,
        ) -> $crate::store::sql::backend::BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
            Box::pin(async move {
                let row = params.bind(sqlx::query(sql)).fetch_optional(pool).await?;
                row.map(|row| sqlx::Row::try_get::<i64, _>(&row, 0))
                    .transpose()
            })
        }

        fn fetch_integer<'a>(
            connection: &'a mut Self::Connection,
            sql: &'a str,
        ) -> $crate::store::sql::backend::BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
            Box::pin(sqlx::query_scalar(sql).fetch_optional(connection))
        }

        fn fetch_entry<'a>(
            pool: &'a sqlx::Pool<Self>,
            sql: &'a str,
            params: $crate::store::sql::backend::Params,
        ) -> $crate::store::sql::backend::BoxFuture<
            'a,
            Result<Option<$crate::store::sql::codec::Stored>, $crate::store::StoreError>,
        > {
            Box::pin(async move {
                let row = params
                    .bind(sqlx::query(sql))
                    .fetch_optional(pool)
                    .await
                    .map_err($crate::store::sql::store_error)?;
                row.map(|row| $crate::store::sql::codec::Stored::read(&row))
                    .transpose()
            })
        }

        fn fetch_keys<'a>(
            pool: &'a sqlx::Pool<Self>,
            sql: &'a str,
            params: $crate::store::sql::backend::Params,
        ) -> $crate::store::sql::backend::BoxFuture<'a, Result<Vec<Vec<u8>>, sqlx::Error>> {
            Box::pin(async move {
                let rows = params.bind(sqlx::query(sql)).fetch_all(pool).await?;
                Ok(rows
                    .iter()
                    .filter_map(|row| sqlx::Row::try_get::<Vec<u8>, _>(row, 0).ok())
                    .collect())
            })
        }
    };
}
pub(super) use runners;
