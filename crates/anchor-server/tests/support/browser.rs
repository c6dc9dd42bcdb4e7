//! A headless Chromium driven through chromedriver (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them), for the dashboard's browser tests.
//!
//! Without `/usr/bin/chromedriver` a test fails and says how to install it: a browser test
//! that passes without a browser would prove nothing.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::json;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped when dropped.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_driver() -> Driver {
    for path in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: the dashboard's browser test needs Debian's Chromium and \
             ChromeDriver (`apt-get install -y chromium chromium-driver`, as .ci/run does)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on port {port} within 5 s");
}

pub async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            // The machine has no network beyond loopback: background networking only fails.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::rustls()
        .expect("a TLS configuration")
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

pub async fn text_of(client: &Client, css: &str) -> String {
    // A page that is still being replaced (a redirect after a form) can hand out an element
    // that is gone by the time it is read: look it up again rather than fail.
    for _ in 0..20 {
        let found = client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => match element.text().await {
                Ok(text) => return text,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("reading `{css}`: {e}"),
            },
            Err(e) => {
                let page = client.current_url().await.map(|u| u.to_string());
                panic!("no `{css}` on {page:?}: {e}")
            }
        }
    }
    panic!("`{css}` kept going stale")
}

pub async fn click(client: &Client, locator: Locator<'_>) {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("nothing to click for {locator:?}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Waits, without navigating, until the text of `css` is `expected` (at most 15 s): the page
/// a click leads to, or (on the same page) what its live updates bring.
pub async fn until_text(client: &Client, css: &str, expected: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = text_of(client, css).await;
        if text == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{css}` still says {text:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn fill(client: &Client, css: &str, text: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Runs `story` in a fresh Chromium and closes it whatever happens, so no browser outlives
/// the test; a panic in the story is the test's.
pub async fn with_browser<F, Fut>(story: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let driver = start_driver().await;
    let profile = std::env::temp_dir().join(format!("anchor-chromium-{}", uuid::Uuid::new_v4()));
    let client = browser(&driver, &profile).await;
    let outcome = std::panic::AssertUnwindSafe(story(client.clone()))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
