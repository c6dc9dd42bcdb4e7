//! The dashboard's segments and settings end to end in a real headless Chromium, driven
//! through chromedriver as `dashboard_e2e.rs` does (its helpers are repeated here so the two
//! files can change apart): sign in, create a segment (first with a problem next to its key),
//! create an SDK key and see its secret once, look at the environments and make a webhook.
//! Screenshots go to `target/dashboard-screenshots/admin-*.png`.
//!
//! Without `/usr/bin/chromedriver` the test fails and says how to install it: a browser test
//! that passes without a browser would prove nothing.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::json;
use support::{PASSWORD, Server};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
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

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
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

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
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

async fn click(client: &Client, locator: Locator<'_>) {
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

/// Waits for `css` to say `expected`: after a click the old page may still be the one read.
async fn until_text(client: &Client, css: &str, expected: &str) {
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

async fn fill(client: &Client, css: &str, text: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn an_admin_makes_a_segment_an_sdk_key_and_a_webhook() {
    let server = Server::start(None).await;
    let driver = start_driver().await;
    let profile = std::env::temp_dir().join(format!("anchor-chromium-{}", uuid::Uuid::new_v4()));
    let client = browser(&driver, &profile).await;
    // Close the browser whatever happens, so no Chromium outlives the test.
    let outcome = std::panic::AssertUnwindSafe(story(&server, &client))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn story(server: &Server, client: &Client) {
    let url = &server.url;
    server
        .api_create_flag("checkout", "The checkout flow")
        .await;

    client.goto(url).await.unwrap();
    fill(client, "#username", "admin").await;
    fill(client, "#password", PASSWORD).await;
    click(client, Locator::Css("form button[type=submit]")).await;
    until_text(client, "main h1", "Flags").await;

    // Segments, from the project's navigation: a bad key first, its problem next to it.
    click(client, Locator::LinkText("Segments")).await;
    until_text(client, "main h1", "Segments in Development").await;
    click(client, Locator::LinkText("New segment")).await;
    fill(client, "#key", "beta testers").await;
    fill(client, "#description", "People who try things first").await;
    fill(client, "#included", "alice\nbob").await;
    fill(client, "#attribute_0", "country").await;
    fill(client, "#values_0", "DE\nAT").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    let problem = text_of(client, "#key ~ .field-problem").await;
    assert!(!problem.is_empty());
    screenshot(client, "admin-01-new-segment-problem").await;
    fill(client, "#key", "beta-testers").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    until_text(client, "main h1", "Segment beta-testers in Development").await;
    assert_eq!(
        client
            .find(Locator::Css("#included"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("alice\nbob")
    );
    screenshot(client, "admin-02-segment").await;
    click(client, Locator::LinkText("Back to the segments")).await;
    assert!(
        text_of(client, "table.segments tbody")
            .await
            .contains("beta-testers")
    );
    screenshot(client, "admin-03-segments").await;

    // Settings: the environments, then an SDK key whose secret is shown once.
    click(client, Locator::LinkText("Settings")).await;
    assert!(text_of(client, "main table").await.contains("production"));
    screenshot(client, "admin-04-environments").await;
    click(client, Locator::LinkText("API keys")).await;
    client
        .find(Locator::Css("#key-environment"))
        .await
        .unwrap()
        .select_by_value("production")
        .await
        .unwrap();
    click(client, Locator::Css("form.filters button[type=submit]")).await;
    until_text(client, "main h1", "SDK key created").await;
    let secret = client
        .find(Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("anc_srv_"), "{secret}");
    screenshot(client, "admin-05-sdk-key-shown-once").await;
    // The key works, and the list shows its prefix only.
    let answer = server
        .http
        .post(format!("{url}/ofrep/v1/evaluate/flags/checkout"))
        .bearer_auth(&secret)
        .header("content-type", "application/json")
        .body(json!({"context": {"targetingKey": "u"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    click(client, Locator::LinkText("Done")).await;
    let keys = text_of(client, "table.keys").await;
    assert!(keys.contains(&secret[..12]) && !keys.contains(&secret));
    screenshot(client, "admin-06-api-keys").await;

    // A webhook: its form, its secret once, its (empty) delivery log.
    click(client, Locator::LinkText("Webhooks")).await;
    click(client, Locator::LinkText("New webhook")).await;
    fill(client, "#name", "Deploy channel").await;
    fill(client, "#url", "https://hooks.example/anchor").await;
    screenshot(client, "admin-07-new-webhook").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    until_text(client, "main h1", "Webhook created").await;
    click(client, Locator::LinkText("See its delivery log")).await;
    until_text(client, "main h2", "Webhook Deploy channel").await;
    // A test ping lands in the delivery log (the host does not exist: its error is shown).
    click(client, Locator::Css("form[action$='/test'] button")).await;
    until_text(
        client,
        ".notice",
        "A ping is on its way: it appears in the delivery log.",
    )
    .await;
    assert!(
        text_of(client, "table.deliveries tbody")
            .await
            .contains("ping")
    );
    screenshot(client, "admin-08-webhook").await;
}
