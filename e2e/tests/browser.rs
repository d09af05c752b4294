//! The demo (`examples/demo.rs`) in a real browser: headless Chromium,
//! driven over WebDriver as two devices (two WebDriver sessions, each with
//! a profile of its own). A first visit stores nothing and gets no cookie;
//! the counter's button does. Both devices sign in as the same user (one
//! with "remember me": a persistent cookie), see each other in the
//! sessions list, and one revokes the other. A password change asks for
//! the password again once the sign-in is no longer recent, then signs the
//! other device out; so does "sign out other devices". The session cookie
//! is out of JavaScript's reach; a form posted from another origin (login
//! CSRF: another port of 127.0.0.1 is another origin, and the same site, so
//! the `SameSite=Lax` cookie goes along) is refused; a signed-out cookie
//! put back gets nowhere. On a second demo with a two-second idle timeout,
//! a session left alone ends, and its page notices.
//!
//! With `DEMO_SCREENSHOT` (a path relative to the workspace root) it saves
//! the main page, with both devices listed, as a PNG; the README's picture
//! is made so:
//!
//! ```text
//! cargo build --example demo &&
//!     DEMO_SCREENSHOT=docs/demo.png REQUIRE_BROWSER=1 cargo test --all-features -p e2e --test browser
//! ```
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
const WHOLE_VISIT: Duration = Duration::from_secs(120);

/// How recent a sign-in the demo's password change needs, here.
const RECENT_AUTH: Duration = Duration::from_secs(2);

/// The short-idle demo's idle timeout.
const SHORT_IDLE: Duration = Duration::from_secs(2);

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
    // A modest window: the screenshot's size.
    "--window-size=960,1700",
];

#[tokio::test]
async fn the_demo_shows_sessions_devices_deadlines_and_refuses_forgeries() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let demo = demo_binary();
    let profiles = [
        ScratchDir::new("chromium-profile-one"),
        ScratchDir::new("chromium-profile-two"),
    ];
    let demo_address = free_address();
    let short_idle_address = free_address();
    let driver_address = free_address();

    let mut processes = Processes::default();
    processes.start(
        "demo",
        Command::new(&demo)
            .env("DEMO_ADDR", demo_address.to_string())
            .env("DEMO_RECENT_AUTH_SECS", RECENT_AUTH.as_secs().to_string())
            .stdout(Stdio::null()),
    );
    // The same demo with a short idle timeout, to watch a session end.
    processes.start(
        "short-idle demo",
        Command::new(&demo)
            .env("DEMO_ADDR", short_idle_address.to_string())
            .env("DEMO_IDLE_SECS", SHORT_IDLE.as_secs().to_string())
            .stdout(Stdio::null()),
    );
    processes.start(
        "chromedriver",
        Command::new(&tools.driver)
            .arg(format!("--port={}", driver_address.port()))
            .stdout(Stdio::null()),
    );
    processes.wait_until_listening("demo", demo_address);
    processes.wait_until_listening("short-idle demo", short_idle_address);
    processes.wait_until_listening("chromedriver", driver_address);

    let attacker = serve_attacker(demo_address).await;
    // Two WebDriver sessions with profiles of their own: two devices.
    let one = connect(&tools, driver_address, profiles[0].path()).await;
    let two = connect(&tools, driver_address, profiles[1].path()).await;
    let visit = tokio::time::timeout(WHOLE_VISIT, async {
        walk_through(&one, &two, demo_address, attacker).await?;
        watch_idle_timeout(&two, short_idle_address).await
    })
    .await;
    // End the browser sessions before the processes go; the guard kills
    // whatever is left either way.
    let _ = tokio::time::timeout(STEP, one.close()).await;
    let _ = tokio::time::timeout(STEP, two.close()).await;
    drop(processes);
    drop(profiles);
    match visit {
        Err(_) => panic!("the browser walk-through took longer than {WHOLE_VISIT:?}"),
        Ok(Err(err)) => panic!("WebDriver command failed: {err}"),
        Ok(Ok(())) => {}
    }
}

/// What a person would do on the demo site with two devices (`one`, `two`),
/// with what they should see.
async fn walk_through(
    one: &Client,
    two: &Client,
    address: SocketAddr,
    attacker: SocketAddr,
) -> Result<(), CmdError> {
    let base = format!("http://{address}");
    let host = address.ip().to_string();

    // A first visit stores nothing and sets no cookie, and says so.
    one.goto(&format!("{base}/")).await?;
    assert!(shown(one, "#user-anonymous").await?);
    assert!(shown(one, "#nothing-stored").await?);
    assert_eq!(visits(one).await?, 0);
    assert!(
        session_cookie(one).await?.is_none(),
        "reading a page set a cookie"
    );

    // The counter writes when asked: now there is a session and a cookie.
    click(one, "#count").await?;
    wait_for_text(one, "#visits", "1").await?;
    assert!(!shown(one, "#nothing-stored").await?);
    let anonymous_token = session_cookie(one)
        .await?
        .expect("the counter stored something, so the session has a cookie")
        .value()
        .to_owned();
    assert!(text(one, "#events").await?.contains("created"));
    // Every form now carries the session's CSRF token.
    let form_token = one
        .find(Locator::Css(
            "form[action='/login'] input[name='csrf_token']",
        ))
        .await?
        .attr("value")
        .await?
        .unwrap_or_default();
    assert_eq!(form_token.len(), 43, "a CSRF token: {form_token:?}");

    // Device one signs in for this browser session, device two with
    // "remember me".
    sign_in(one, "alice", false).await?;
    assert_eq!(visits(one).await?, 1, "the count survived the login");
    let signed_in = session_cookie(one)
        .await?
        .expect("a signed-in session has a cookie");
    assert_ne!(
        signed_in.value(),
        anonymous_token,
        "the login gave the session a new id"
    );
    let cookie = text(one, "#cookie").await?;
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax")
            && !cookie.contains("Max-Age"),
        "a session cookie as delivered: {cookie}"
    );
    assert!(
        !cookie.contains(signed_in.value()),
        "the page shows the cookie's value: {cookie}"
    );
    assert!(shown(one, "#expires").await?, "the idle deadline");
    assert!(shown(one, "#ends").await?, "the absolute deadline");
    assert!(text(one, "#events").await?.contains("logged_in"));

    two.goto(&format!("{base}/")).await?;
    sign_in(two, "alice", true).await?;
    let cookie = text(two, "#cookie").await?;
    assert!(cookie.contains("Max-Age="), "a persistent cookie: {cookie}");

    // Both devices are listed on both, each marking its own.
    one.refresh().await?;
    for device in [one, two] {
        assert_eq!(count(device, "#sessions tr.session").await?, 2);
        assert_eq!(count(device, "#sessions tr.current").await?, 1);
    }
    if let Some(path) = std::env::var_os("DEMO_SCREENSHOT") {
        // Relative to the workspace root, where the command is run.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        let png = one.screenshot().await?;
        std::fs::write(&path, png).unwrap_or_else(|err| {
            panic!("cannot write the screenshot to {}: {err}", path.display())
        });
    }

    // Another origin's page posts a sign-in form to the demo (login CSRF):
    // the browser sends the session cookie along, the layer refuses it.
    one.goto(&format!("http://{attacker}/")).await?;
    one.find(Locator::Css("#attack")).await?.click().await?;
    let refusal = one
        .wait()
        .at_most(STEP)
        .for_element(Locator::XPath(
            "//*[contains(text(), 'cross-site request refused')]",
        ))
        .await?;
    assert!(refusal.text().await?.starts_with("403 Forbidden"));
    one.goto(&format!("{base}/")).await?;
    assert_eq!(
        text(one, "#user").await?,
        "alice",
        "still signed in as alice, not as the attacker"
    );

    // HttpOnly: the browser holds the cookie, the page's scripts cannot see it.
    let script_view = one.execute("return document.cookie;", vec![]).await?;
    let script_view = script_view.as_str().unwrap_or_default();
    assert!(
        !script_view
            .split(';')
            .any(|pair| pair.trim_start().starts_with(&format!("{COOKIE}="))),
        "document.cookie shows the session cookie: {script_view:?}"
    );
    let held = session_cookie(one).await?.expect("the browser holds it");
    assert_eq!(held.http_only(), Some(true), "{held:?}");

    // Device two revokes device one.
    click(two, "#sessions tr.session:not(.current) button.revoke").await?;
    wait_for_text(two, "#notice", "That session is signed out.").await?;
    assert_eq!(count(two, "#sessions tr.session").await?, 1);
    one.refresh().await?;
    assert!(shown(one, "#user-anonymous").await?, "revoked");
    assert!(shown(one, "#cookie-refused").await?);

    // A password change needs a recent sign-in: past it, the password again.
    sign_in(one, "alice", false).await?;
    tokio::time::sleep(RECENT_AUTH + Duration::from_millis(500)).await;
    fill(one, "#new-password", "correct horse").await?;
    click(one, "#change-password").await?;
    wait_for(one, "#reauth").await?;
    fill(one, "#reauth-password", "battery staple").await?;
    click(one, "#reauth-submit").await?;
    wait_for_text(one, "#notice", "Password confirmed: you can change it now.").await?;
    fill(one, "#new-password", "correct horse").await?;
    click(one, "#change-password").await?;
    wait_for_text(
        one,
        "#notice",
        "Password changed; 1 other session(s) signed out.",
    )
    .await?;
    assert_eq!(count(one, "#sessions tr.session").await?, 1);
    two.refresh().await?;
    assert!(
        shown(two, "#user-anonymous").await?,
        "the password change signed the other device out"
    );

    // "Sign out other devices".
    sign_in(two, "alice", false).await?;
    one.refresh().await?;
    assert_eq!(count(one, "#sessions tr.session").await?, 2);
    click(one, "#logout-others").await?;
    wait_for_text(one, "#notice", "1 other session(s) signed out.").await?;
    two.refresh().await?;
    assert!(shown(two, "#user-anonymous").await?);

    // Sign out, then put the signed-out cookie back: the server refuses it
    // and replaces it.
    let old_token = session_cookie(one)
        .await?
        .expect("signed in")
        .value()
        .to_owned();
    click(one, "#logout").await?;
    wait_for(one, "#user-anonymous").await?;
    one.delete_cookie(COOKIE).await?;
    // Every attribute spelled out: WebDriver sends an unset domain as
    // `null` (which Chromium refuses) and an unset SameSite as `None`.
    let mut replay = Cookie::new(COOKIE, old_token.clone());
    replay.set_domain(host);
    replay.set_path("/");
    replay.set_http_only(true);
    replay.set_same_site(SameSite::Lax);
    one.add_cookie(replay).await?;
    one.refresh().await?;
    assert!(
        shown(one, "#user-anonymous").await?,
        "the old cookie signs no one in"
    );
    assert!(shown(one, "#cookie-refused").await?);
    assert_eq!(visits(one).await?, 0, "none of the old session's data");
    let replaced = session_cookie(one).await?;
    assert_ne!(
        replaced.as_ref().map(Cookie::value),
        Some(old_token.as_str()),
        "the server cleared the refused cookie"
    );
    Ok(())
}

/// Signed in on the short-idle demo and left alone, the session ends: the
/// page's countdown notices (its polling is passive, so it does not keep
/// the session alive), and a reload is anonymous.
async fn watch_idle_timeout(client: &Client, address: SocketAddr) -> Result<(), CmdError> {
    // The other demo's cookie has the same name on the same host.
    client.delete_all_cookies().await?;
    client.goto(&format!("http://{address}/")).await?;
    sign_in(client, "alice", false).await?;
    assert!(shown(client, "#expires").await?);
    let deadline = Instant::now() + SHORT_IDLE * 5 + STEP;
    loop {
        let banner = client.find(Locator::Css("#session-ended")).await?;
        if banner.is_displayed().await? {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not notice the idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.refresh().await?;
    assert!(shown(client, "#user-anonymous").await?, "the session ended");
    Ok(())
}

/// Signs in through the form on the page `client` shows.
async fn sign_in(client: &Client, user: &str, remember: bool) -> Result<(), CmdError> {
    fill(client, "#username", user).await?;
    fill(client, "#password", "any password").await?;
    if remember {
        click(client, "#remember").await?;
    }
    click(client, "#login").await?;
    // The click starts a navigation (POST /login, redirect to /); the
    // signed-in page is the one with `#user`.
    let shown = wait_for(client, "#user").await?;
    assert_eq!(shown.text().await?, user);
    Ok(())
}

async fn fill(client: &Client, selector: &str, value: &str) -> Result<(), CmdError> {
    client
        .find(Locator::Css(selector))
        .await?
        .send_keys(value)
        .await
}

async fn click(client: &Client, selector: &str) -> Result<(), CmdError> {
    client.find(Locator::Css(selector)).await?.click().await
}

async fn wait_for(
    client: &Client,
    selector: &str,
) -> Result<fantoccini::elements::Element, CmdError> {
    client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css(selector))
        .await
}

/// Waits until the element `selector` reads `expected` (after a click
/// that navigates, the old page may still be there for a moment).
async fn wait_for_text(client: &Client, selector: &str, expected: &str) -> Result<(), CmdError> {
    let deadline = Instant::now() + STEP;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = client.find(Locator::Css(selector)).await {
            if let Ok(text) = element.text().await {
                if text.trim() == expected {
                    return Ok(());
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{selector} reads {last:?}, not {expected:?}");
}

async fn text(client: &Client, selector: &str) -> Result<String, CmdError> {
    client.find(Locator::Css(selector)).await?.text().await
}

async fn count(client: &Client, selector: &str) -> Result<usize, CmdError> {
    Ok(client.find_all(Locator::Css(selector)).await?.len())
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
