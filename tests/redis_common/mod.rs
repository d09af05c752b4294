//! Helpers for the tests against a real Redis: the shared server at
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) with a unique key prefix
//! per test, and private `redis-server` processes the tests may stop.
//!
//! Without Redis the tests print a `SKIPPED` line and pass, unless
//! `REQUIRE_REDIS=1`, which makes a missing Redis a failure.
#![allow(dead_code)]

#[path = "../common/external.rs"]
mod external;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses a different part
pub use external::eventually;

use tower_session_guard::store::RedisStore;

/// The shared Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Says a test is skipped, or fails it when `REQUIRE_REDIS=1`.
pub fn skip(test: &str, why: &str) {
    external::skip(test, why, "REQUIRE_REDIS");
}

/// A key prefix no other test (or test run) uses.
pub fn unique_prefix(test: &str) -> String {
    format!("tsg-test:{test}:{}:", external::unique_suffix('-'))
}

/// A store on the shared Redis under a fresh prefix, whose keys are
/// deleted when the guard drops (also when the test panics).
pub struct SharedRedis {
    pub store: RedisStore,
    pub prefix: String,
    pub url: String,
}

impl SharedRedis {
    /// Connects, or prints a skip line and returns `None`.
    pub async fn connect(test: &str) -> Option<Self> {
        let url = redis_url();
        match RedisStore::connect(&url).await {
            Ok(store) => {
                let prefix = unique_prefix(test);
                Some(Self {
                    store: store.with_prefix(prefix.clone()),
                    prefix,
                    url,
                })
            }
            Err(err) => {
                skip(
                    test,
                    &format!("no Redis at {url} ({err}); start one or set REDIS_URL"),
                );
                None
            }
        }
    }

    /// Another instance's store: its own connection, the same prefix.
    pub async fn another_instance(&self) -> RedisStore {
        RedisStore::connect(&self.url)
            .await
            .unwrap()
            .with_prefix(self.prefix.clone())
    }

    /// A plain client for looking at the keys.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).unwrap()
    }

    /// The keys under this test's prefix.
    pub fn keys(&self) -> Vec<String> {
        keys_under(&self.client(), &self.prefix)
    }
}

impl Drop for SharedRedis {
    fn drop(&mut self) {
        let client = self.client();
        let keys = keys_under(&client, &self.prefix);
        if let Ok(mut connection) = client.get_connection() {
            for key in keys {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query(&mut connection);
            }
        }
    }
}

fn keys_under(client: &redis::Client, prefix: &str) -> Vec<String> {
    let Ok(mut connection) = client.get_connection() else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut connection)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The `redis-server` program: `REDIS_SERVER`, or found on `PATH`.
fn redis_server_program() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("REDIS_SERVER") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    })
}

/// A port free on 127.0.0.1 now (and, with `with_bus`, its Cluster bus
/// port, 10 000 higher).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A `redis-server` of this test's own, which it may freeze, stop and
/// restart without disturbing anyone. Killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    program: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one, or prints a skip line and returns `None` when there is
    /// no `redis-server` program.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false, Vec::new())
    }

    /// Starts one with extra `redis-server` arguments.
    pub fn start_with(test: &str, cluster_bus: bool, extra: Vec<String>) -> Option<Self> {
        let Some(program) = redis_server_program() else {
            skip(
                test,
                "no redis-server program to start a private Redis (install redis-server or set REDIS_SERVER)",
            );
            return None;
        };
        let port = free_port(cluster_bus);
        let dir =
            std::env::temp_dir().join(format!("tsg-private-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            dir,
            program,
            extra,
            child: None,
        };
        redis.launch();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (again), on the same port and data directory.
    pub fn launch(&mut self) {
        let child = Command::new(&self.program)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        while Instant::now() < deadline {
            if let Ok(mut connection) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the private redis-server on port {} did not start",
            self.port
        );
    }

    /// Stops the server after writing its data to disk (`SHUTDOWN SAVE`),
    /// so that [`launch`](Self::launch) brings the same sessions back.
    pub fn stop_saving(&mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        if let Ok(mut connection) = client.get_connection() {
            let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("SAVE").query(&mut connection);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (`SIGKILL` to its pid): no shutdown, no
    /// save; what it had written to its append-only file stays on disk for
    /// [`launch`](Self::launch).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process: connections stay open but nothing answers,
    /// like a network black hole.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process run again.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen process must be let go before it can be killed cleanly.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
