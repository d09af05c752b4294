//! The demo (`examples/demo.rs`) in a real browser: headless Chromium,
//! driven over WebDriver, signs in through the form, counts visits across
//! reloads, cannot read the HttpOnly session cookie from JavaScript, is
//! not signed in as someone else by a form posted from another origin
//! (login CSRF: another port of 127.0.0.1 is another origin, and the same
//! site, so the `SameSite=Lax` cookie goes along), signs out, and gets
//! nowhere with the old cookie put back.
//!
//! Needs Chromium and chromedriver (Debian: `chromium`, `chromium-driver`);
//! `CHROMIUM` and `CHROMEDRIVER` override their paths. Without them the
//! test prints a `SKIPPED` line and passes, unless `REQUIRE_BROWSER=1`.
#![cfg(unix)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cookie::SameSite;
use fantoccini::cookies::Cookie;
use fantoccini::error::CmdError;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// The demo's development cookie.
const COOKIE: &str = "id";

/// The longest any one step may take: a page load, an element to appear.
const STEP: Duration = Duration::from_secs(5);

/// The longest the whole walk through the site may take.
const WHOLE_VISIT: Duration = Duration::from_secs(60);

/// Chromium flags: headless, and nothing that reaches the network or
/// outlives the test.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
];

#[tokio::test]
async fn the_demo_signs_in_counts_signs_out_and_refuses_the_old_cookie() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let demo = demo_binary();
    let profile = ScratchDir::new("chromium-profile");
    let demo_address = free_address();
    let driver_address = free_address();

    let mut processes = Processes::default();
    processes.start(
        "demo",
        Command::new(&demo)
            .env("DEMO_ADDR", demo_address.to_string())
            .stdout(Stdio::null()),
    );
    processes.start(
        "chromedriver",
        Command::new(&tools.driver)
            .arg(format!("--port={}", driver_address.port()))
            .stdout(Stdio::null()),
    );
    processes.wait_until_listening("demo", demo_address);
    processes.wait_until_listening("chromedriver", driver_address);

    let attacker = serve_attacker(demo_address).await;
    let client = connect(&tools, driver_address, profile.path()).await;
    let visit =
        tokio::time::timeout(WHOLE_VISIT, walk_through(&client, demo_address, attacker)).await;
    // End the browser session before the processes go; the guard kills
    // whatever is left either way.
    let _ = tokio::time::timeout(STEP, client.close()).await;
    drop(processes);
    drop(profile);
    match visit {
        Err(_) => panic!("the browser walk-through took longer than {WHOLE_VISIT:?}"),
        Ok(Err(err)) => panic!("WebDriver command failed: {err}"),
        Ok(Ok(())) => {}
    }
}

/// What a person would do on the demo site, with what they should see.
async fn walk_through(
    client: &Client,
    address: SocketAddr,
    attacker: SocketAddr,
) -> Result<(), CmdError> {
    let base = format!("http://{address}");
    let host = address.ip().to_string();
    client.goto(&format!("{base}/")).await?;
    assert_eq!(visits(client).await?, 1, "a fresh visitor");
    assert!(shown(client, "#user-anonymous").await?);
    // The sign-in form carries the session's CSRF token.
    let form_token = client
        .find(Locator::Css(
            "form[action='/login'] input[name='csrf_token']",
        ))
        .await?
        .attr("value")
        .await?
        .unwrap_or_default();
    assert_eq!(
        form_token.len(),
        43,
        "a CSRF token in the form: {form_token:?}"
    );
    let anonymous_token = session_cookie(client)
        .await?
        .expect("the counter stored something, so the session has a cookie")
        .value()
        .to_owned();

    // Sign in through the form.
    client
        .find(Locator::Css("#username"))
        .await?
        .send_keys("alice")
        .await?;
    client.find(Locator::Css("#login")).await?.click().await?;
    // The click starts a navigation (POST /login, redirect to /); the
    // signed-in page is the one with `#user`.
    let user = client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css("#user"))
        .await?;
    assert_eq!(user.text().await?, "alice");
    assert_eq!(visits(client).await?, 2, "the count survived the login");
    let signed_in = session_cookie(client)
        .await?
        .expect("a signed-in session has a cookie");
    assert_ne!(
        signed_in.value(),
        anonymous_token,
        "the login gave the session a new id"
    );

    // Reloads keep counting in the same session.
    for expected in 3..=5 {
        client.refresh().await?;
        assert_eq!(visits(client).await?, expected);
        assert!(shown(client, "#user").await?, "still signed in");
    }

    // Another origin's page posts a sign-in form to the demo (login CSRF):
    // the browser sends the session cookie along, the layer refuses it.
    client.goto(&format!("http://{attacker}/")).await?;
    client.find(Locator::Css("#attack")).await?.click().await?;
    let refusal = client
        .wait()
        .at_most(STEP)
        .for_element(Locator::XPath(
            "//*[contains(text(), 'cross-site request refused')]",
        ))
        .await?;
    assert!(refusal.text().await?.starts_with("403 Forbidden"));
    client.goto(&format!("{base}/")).await?;
    assert_eq!(
        client.find(Locator::Css("#user")).await?.text().await?,
        "alice",
        "still signed in as alice, not as the attacker"
    );
    assert_eq!(visits(client).await?, 6, "the refused post changed nothing");

    // HttpOnly: the browser holds the cookie, the page's scripts cannot see it.
    let script_view = client.execute("return document.cookie;", vec![]).await?;
    let script_view = script_view.as_str().unwrap_or_default();
    assert!(
        !script_view
            .split(';')
            .any(|pair| pair.trim_start().starts_with(&format!("{COOKIE}="))),
        "document.cookie shows the session cookie: {script_view:?}"
    );
    let held = session_cookie(client).await?.expect("the browser holds it");
    assert_eq!(held.http_only(), Some(true), "{held:?}");
    assert_eq!(held.value(), signed_in.value());
    let old_token = held.value().to_owned();

    // Sign out: back to an anonymous session, counting from 1 again.
    client.find(Locator::Css("#logout")).await?.click().await?;
    client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css("#user-anonymous"))
        .await?;
    assert_eq!(visits(client).await?, 1, "the count started over");
    assert!(!shown(client, "#user").await?);
    let after_logout = session_cookie(client).await?;
    assert_ne!(
        after_logout.as_ref().map(Cookie::value),
        Some(old_token.as_str()),
        "the signed-out id is not kept"
    );

    // Put the signed-out cookie back: the server refuses it and replaces it.
    client.delete_cookie(COOKIE).await?;
    // Every attribute spelled out: WebDriver sends an unset domain as
    // `null` (which Chromium refuses) and an unset SameSite as `None`.
    let mut replay = Cookie::new(COOKIE, old_token.clone());
    replay.set_domain(host);
    replay.set_path("/");
    replay.set_http_only(true);
    replay.set_same_site(SameSite::Lax);
    client.add_cookie(replay).await?;
    assert_eq!(
        session_cookie(client).await?.map(|c| c.value().to_owned()),
        Some(old_token.clone()),
        "the old cookie is back in the browser"
    );
    client.refresh().await?;
    assert!(
        shown(client, "#user-anonymous").await?,
        "the old cookie signs no one in"
    );
    assert!(!shown(client, "#user").await?);
    assert_eq!(visits(client).await?, 1, "none of the old session's data");
    let replaced = session_cookie(client).await?;
    assert_ne!(
        replaced.as_ref().map(Cookie::value),
        Some(old_token.as_str()),
        "the server cleared the refused cookie"
    );
    Ok(())
}

/// A page on another origin (another port of 127.0.0.1) whose form posts a
/// sign-in to the demo, as an attacker's page would; returns its address.
async fn serve_attacker(demo: SocketAddr) -> SocketAddr {
    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>attacker</title></head><body>
<form method="post" action="http://{demo}/login">
  <input type="hidden" name="username" value="mallory">
  <button id="attack" type="submit">Win a prize</button>
</form></body></html>"#
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a port for the attacker's page");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

/// The number in `#visits`.
async fn visits(client: &Client) -> Result<u64, CmdError> {
    let text = client.find(Locator::Css("#visits")).await?.text().await?;
    Ok(text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("#visits is not a number: {text:?}")))
}

/// Whether the page has an element matching `selector`.
async fn shown(client: &Client, selector: &str) -> Result<bool, CmdError> {
    Ok(!client.find_all(Locator::Css(selector)).await?.is_empty())
}

/// The session cookie as the browser holds it (WebDriver sees HttpOnly
/// cookies; page scripts do not).
async fn session_cookie(client: &Client) -> Result<Option<Cookie<'static>>, CmdError> {
    Ok(client
        .get_all_cookies()
        .await?
        .into_iter()
        .find(|cookie| cookie.name() == COOKIE))
}

/// Opens a WebDriver session with headless Chromium on a fresh profile.
async fn connect(tools: &BrowserTools, driver: SocketAddr, profile: &Path) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|&f| f.to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let capabilities = json!({
        "browserName": "chrome",
        "pageLoadStrategy": "normal",
        "goog:chromeOptions": {
            "binary": tools.chromium,
            "args": args,
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal")
    };
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{driver}")),
    )
    .await
    .expect("chromedriver did not start Chromium within 30 s")
    .unwrap_or_else(|err| panic!("chromedriver could not start Chromium: {err}"));
    client
        .update_timeouts(TimeoutConfiguration::new(
            Some(STEP),
            Some(STEP),
            Some(Duration::ZERO),
        ))
        .await
        .expect("WebDriver timeouts");
    client
}

/// Where Chromium and chromedriver are.
struct BrowserTools {
    chromium: PathBuf,
    driver: PathBuf,
}

impl BrowserTools {
    /// The installed tools, or `None` after printing why the test is
    /// skipped. With `REQUIRE_BROWSER=1` a missing tool fails the test.
    fn find() -> Option<Self> {
        let chromium = locate("CHROMIUM", &["chromium", "chromium-browser"]);
        let driver = locate("CHROMEDRIVER", &["chromedriver"]);
        if let (Some(chromium), Some(driver)) = (&chromium, &driver) {
            return Some(Self {
                chromium: chromium.clone(),
                driver: driver.clone(),
            });
        }
        let missing = [
            ("chromium", chromium.is_none()),
            ("chromedriver", driver.is_none()),
        ]
        .iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" and ");
        if std::env::var("REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!(
                "REQUIRE_BROWSER=1 but {missing} not found; install them \
                 (Debian: apt-get install chromium chromium-driver) or set CHROMIUM / CHROMEDRIVER"
            );
        }
        // Straight to the terminal: libtest hides what a passing test prints.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED browser test: {missing} not found \
             (install chromium and chromium-driver, or set REQUIRE_BROWSER=1 to fail instead)"
        );
        None
    }
}

/// The path in `variable`, or the first of `names` on `PATH`.
fn locate(variable: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let search = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&search)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The compiled demo, built first if it is not there yet (`cargo test`
/// builds examples; `cargo test --test browser` alone does not).
fn demo_binary() -> PathBuf {
    // This test runs as <target>/<profile>/deps/browser-<hash>.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let demo = profile_dir
        .join("examples")
        .join(format!("demo{}", std::env::consts::EXE_SUFFIX));
    if !demo.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "tower-session-guard", "--example", "demo"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --example demo");
        assert!(status.success(), "cargo build --example demo failed");
    }
    assert!(demo.is_file(), "no demo binary at {}", demo.display());
    demo
}

/// A loopback address nothing listens on right now.
fn free_address() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// The processes this test started, killed when it ends, pass or fail.
#[derive(Default)]
struct Processes(Vec<(&'static str, Child)>);

impl Processes {
    fn start(&mut self, name: &'static str, command: &mut Command) {
        // A process group of its own, so that Chromium, which chromedriver
        // starts, goes down with it.
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        self.0.push((name, child));
    }

    /// Waits (a bounded time) until `name` accepts connections on `address`.
    fn wait_until_listening(&mut self, name: &str, address: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            let child = &mut self
                .0
                .iter_mut()
                .find(|(n, _)| *n == name)
                .expect("a started process")
                .1;
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited before listening on {address}: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{name} is not listening on {address} after 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // The group id is the child's id (`process_group(0)`).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory of its own under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(purpose: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "tower-session-guard-{purpose}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
