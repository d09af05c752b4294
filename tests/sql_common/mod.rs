//! Helpers for the tests against real SQL databases: the shared PostgreSQL
//! and MariaDB/MySQL servers (unique table prefixes per test, tables
//! dropped afterwards), SQLite files in a temporary directory, and a
//! private PostgreSQL server a test may stop and start.
//!
//! Without a server the tests print a `SKIPPED` line and pass, unless
//! `REQUIRE_POSTGRES=1` / `REQUIRE_MYSQL=1`, which make a missing server a
//! failure.
#![allow(dead_code)]

#[path = "../common/external.rs"]
mod external;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::pool::{Pool, PoolOptions};
#[cfg(any(feature = "postgres", feature = "mysql"))]
use tower_session_guard::store::sql::{SqlBackend, SqlStore};
#[cfg(feature = "mysql")]
use tower_session_guard::MySqlStore;
#[cfg(feature = "postgres")]
use tower_session_guard::PostgresStore;

#[cfg(feature = "mysql")]
use sqlx::mysql::MySqlPool;
#[cfg(feature = "postgres")]
use sqlx::postgres::PgPool;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// The shared PostgreSQL: `POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The shared MySQL or MariaDB: `MYSQL_URL`, default
/// `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

#[allow(unused_imports)] // each test binary uses a different part
pub use external::{eventually, skip};

/// A table prefix no other test (or test run) uses.
pub fn unique_prefix(test: &str) -> String {
    let short: String = test
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("t{short}_{}_", external::unique_suffix('_'))
}

/// The tables a store with `prefix` creates.
pub fn tables(prefix: &str) -> [String; 4] {
    ["sessions", "user_sessions", "locks", "schema"].map(|t| format!("{prefix}{t}"))
}

/// A pool on the shared PostgreSQL, or a skip line and `None`.
#[cfg(feature = "postgres")]
pub async fn postgres_pool(test: &str) -> Option<PgPool> {
    shared_pool(test, &postgres_url(), "PostgreSQL", "POSTGRES").await
}

/// A pool on the shared MySQL or MariaDB, or a skip line and `None`.
#[cfg(feature = "mysql")]
pub async fn mysql_pool(test: &str) -> Option<MySqlPool> {
    shared_pool(test, &mysql_url(), "MySQL or MariaDB", "MYSQL").await
}

/// A pool on the shared server at `url`, or a skip line (or a failure,
/// with `REQUIRE_<NAME>=1`) and `None`.
async fn shared_pool<DB: sqlx::Database>(
    test: &str,
    url: &str,
    server: &str,
    name: &str,
) -> Option<Pool<DB>> {
    let pool = PoolOptions::<DB>::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await;
    match pool {
        Ok(pool) => Some(pool),
        Err(err) => {
            skip(
                test,
                &format!("no {server} at {url} ({err}); start one or set {name}_URL"),
                &format!("REQUIRE_{name}"),
            );
            None
        }
    }
}

/// A migrated store on the shared PostgreSQL under a fresh prefix, and the
/// guard that drops its tables.
#[cfg(feature = "postgres")]
pub async fn postgres_store(test: &str) -> Option<(PostgresStore, DropTables)> {
    Some(migrated(postgres_pool(test).await?, postgres_url(), test).await)
}

/// A migrated store on the shared MySQL or MariaDB under a fresh prefix,
/// and the guard that drops its tables.
#[cfg(feature = "mysql")]
pub async fn mysql_store(test: &str) -> Option<(MySqlStore, DropTables)> {
    Some(migrated(mysql_pool(test).await?, mysql_url(), test).await)
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn migrated<DB: SqlBackend>(
    pool: Pool<DB>,
    url: String,
    test: &str,
) -> (SqlStore<DB>, DropTables) {
    let prefix = unique_prefix(test);
    let guard = DropTables {
        url,
        prefix: prefix.clone(),
    };
    let store = SqlStore::new(pool).with_table_prefix(prefix);
    store.migrate().await.unwrap();
    (store, guard)
}

/// A SQLite database file under a fresh temporary directory (removed on drop).
pub struct SqliteFile {
    pub dir: PathBuf,
}

impl SqliteFile {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_prefix(test));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("sessions.db")
    }

    /// A new pool on the file (created if missing).
    #[cfg(feature = "sqlite")]
    pub async fn pool(&self) -> SqlitePool {
        sqlite_pool(&self.path()).await
    }
}

#[cfg(feature = "sqlite")]
pub async fn sqlite_pool(path: &Path) -> SqlitePool {
    // WAL (sqlx's default) with `synchronous = NORMAL`: no fsync per commit.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .synchronous(SqliteSynchronous::Normal);
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap()
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drops the tables of `prefix` when dropped (also when the test panics).
pub struct DropTables {
    pub url: String,
    pub prefix: String,
}

impl Drop for DropTables {
    fn drop(&mut self) {
        let url = self.url.clone();
        let prefix = self.prefix.clone();
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let drop = format!("DROP TABLE IF EXISTS {}", tables(&prefix).join(", "));
                #[cfg(feature = "postgres")]
                if url.starts_with("postgres") {
                    if let Ok(pool) = PgPool::connect(&url).await {
                        let _ = sqlx::query(&drop).execute(&pool).await;
                    }
                }
                #[cfg(feature = "mysql")]
                if url.starts_with("mysql") {
                    if let Ok(pool) = MySqlPool::connect(&url).await {
                        let _ = sqlx::query(&drop).execute(&pool).await;
                    }
                }
                let _ = (drop, url);
            });
        })
        .join();
    }
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`):
/// `PG_BIN`, or the newest under `/usr/lib/postgresql`.
fn postgres_bin() -> Option<PathBuf> {
    let has_both = |bin: &PathBuf| bin.join("initdb").is_file() && bin.join("postgres").is_file();
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir)).filter(has_both);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(has_both)
        .collect();
    versions.sort();
    versions.pop()
}

/// A PostgreSQL server of the test's own, which it may stop and start
/// again (same port, same data). Runs as the `postgres` OS user when the
/// tests run as root. Killed and removed on drop.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// Whether the server flushes its WAL to disk (`fsync`, PostgreSQL's
    /// default); off unless started with [`start_durable`](Self::start_durable).
    durable: bool,
}

impl PrivatePostgres {
    /// Starts one, or prints a skip line and returns `None` when the server
    /// programs are missing.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false)
    }

    /// Starts one with PostgreSQL's durability settings left as they are
    /// (`fsync = on`, `synchronous_commit = on`), for tests that kill it
    /// and count what survived.
    pub fn start_durable(test: &str) -> Option<Self> {
        Self::start_with(test, true)
    }

    fn start_with(test: &str, durable: bool) -> Option<Self> {
        let Some(bin) = postgres_bin() else {
            skip(
                test,
                "no PostgreSQL server programs to start a private server (install postgresql or set PG_BIN)",
                "REQUIRE_POSTGRES",
            );
            return None;
        };
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tsg-private-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        as_postgres_user(&dir);
        let status = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed in {}", dir.display());
        let mut server = Self {
            port,
            dir,
            bin,
            child: None,
            durable,
        };
        server.launch();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's process id (the postmaster's), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server (again).
    pub fn launch(&mut self) {
        let mut command = as_postgres(&self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.dir);
        if !self.durable {
            command.args(["-c", "fsync=off"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Accepting TCP is not yet accepting logins: give it a moment.
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the private PostgreSQL on port {} did not start", self.port);
    }

    /// Stops the server at once (`SIGQUIT`: an immediate shutdown that
    /// closes every connection), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-QUIT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl PrivatePostgres {
    /// Kills the postmaster at once (`SIGKILL` to its pid), as a crash
    /// would: no shutdown checkpoint, crash recovery from the WAL at the
    /// next [`launch`](Self::launch). Its backends notice their postmaster
    /// is gone and exit; this waits for them (a new postmaster refuses to
    /// start while one is still attached to the old shared memory), and
    /// kills, by pid, any still there after 10 seconds. Returns how many
    /// backends had to be killed.
    pub fn kill(&mut self) -> usize {
        let Some(mut child) = self.child.take() else {
            return 0;
        };
        let backends = children_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = |pid: &u32| running(*pid);
        while backends.iter().any(alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stragglers: Vec<u32> = backends.iter().copied().filter(alive).collect();
        for pid in &stragglers {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        while backends.iter().any(alive) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stragglers.len()
    }
}

/// Whether process `pid` exists and is not a zombie (an orphan's zombie
/// lingers until whoever adopted it reaps it, but holds nothing).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 2..].chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The pids of the processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The field after the command name, which is in parentheses
            // and may itself hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The uid and gid of the `postgres` OS user, when the tests run as root
/// (PostgreSQL refuses to run as root).
fn postgres_user() -> Option<(u32, u32)> {
    let id = |flag: &str, user: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(user).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u", None)? != 0 {
        return None;
    }
    Some((id("-u", Some("postgres"))?, id("-g", Some("postgres"))?))
}

/// Hands `dir` to the `postgres` OS user, when running as root.
fn as_postgres_user(dir: &Path) {
    if postgres_user().is_some() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status();
    }
}

/// `program`, run as the `postgres` OS user when running as root (the
/// process itself, so that its pid is the server's).
fn as_postgres(program: &Path) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(program);
    if let Some((uid, gid)) = postgres_user() {
        command.uid(uid).gid(gid);
    }
    command
}
