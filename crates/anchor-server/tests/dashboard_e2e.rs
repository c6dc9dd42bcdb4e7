//! The dashboard end to end in a real headless Chromium, driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them): sign in, create a flag
//! (first with a problem shown next to its field), turn it on and then off in production with
//! the confirmation, evaluate it for a context, filter the list with the page's script, and
//! pause a release. Screenshots of the main pages go to `target/dashboard-screenshots/`.
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
    let found = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await;
    match found {
        Ok(element) => element.text().await.unwrap(),
        Err(e) => {
            let page = client.current_url().await.map(|u| u.to_string());
            panic!("no `{css}` on {page:?}: {e}")
        }
    }
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

async fn fill(client: &Client, css: &str, text: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn a_person_signs_in_creates_a_flag_and_turns_it_off_in_production() {
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
    // Some flags to look at: one under a release, one with a rule and a rollout.
    server
        .api_create_flag("checkout", "The checkout flow")
        .await;
    server
        .api_create_flag("search-v2", "Ranking with the new index")
        .await;
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/production/flags/checkout",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, release) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/production/flags/checkout/releases",
            json!({"control": "off", "treatment": "on"}),
        )
        .await;
    assert_eq!(status, 201, "{release}");
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/staging/flags/search-v2",
            json!({"enabled": true, "offVariant": "off",
                   "rules": [{"id": "staff", "description": "Everyone at the company",
                              "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@example.com"]}],
                              "serve": {"variant": "on"}}],
                   "defaultServe": {"rollout": {"variants": [
                       {"variant": "on", "weight": 10000}, {"variant": "off", "weight": 90000}]}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Signing in.
    client.goto(url).await.unwrap();
    assert_eq!(text_of(client, "h1").await, "Sign in");
    screenshot(client, "01-sign-in").await;
    fill(client, "#username", "admin").await;
    fill(client, "#password", PASSWORD).await;
    click(client, Locator::Css("form button[type=submit]")).await;
    assert_eq!(text_of(client, "main h1").await, "Flags");
    screenshot(client, "02-flags").await;

    // A new flag: a bad key first, its problem next to the field, then a good one.
    click(client, Locator::LinkText("New flag")).await;
    assert_eq!(text_of(client, "main h1").await, "New flag");
    fill(client, "#key", "new checkout!").await;
    fill(
        client,
        "#description",
        "<script>alert('x')</script> The one-page checkout",
    )
    .await;
    fill(client, "#tags", "checkout, web").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    let problem = text_of(client, "#key ~ .field-problem").await;
    assert!(!problem.is_empty());
    screenshot(client, "03-new-flag-problem").await;
    fill(client, "#key", "new-checkout").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(text_of(client, "main h1").await, "new-checkout");
    // The description is text, not markup.
    assert_eq!(
        text_of(client, ".description").await,
        "<script>alert('x')</script> The one-page checkout"
    );

    // On in production, with the confirmation naming it.
    click(client, Locator::LinkText("Turn on in Production")).await;
    assert_eq!(
        text_of(client, "main h1").await,
        "Turn on new-checkout in Production?"
    );
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(text_of(client, ".notice").await, "Turned on in production.");
    assert!(server.enabled_in("new-checkout", "production").await);

    // And off again: the kill switch.
    click(client, Locator::LinkText("Turn off in Production")).await;
    assert_eq!(
        text_of(client, "main h1").await,
        "Turn off new-checkout in Production?"
    );
    screenshot(client, "04-kill-switch-confirmation").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(
        text_of(client, ".notice").await,
        "Turned off in production."
    );
    assert_eq!(
        text_of(client, "section.env[aria-label=Production] h3 .b").await,
        "off"
    );
    assert!(!server.enabled_in("new-checkout", "production").await);

    // Why does this user get this value?
    client
        .find(Locator::Css("#eval-env"))
        .await
        .unwrap()
        .select_by_value("production")
        .await
        .unwrap();
    fill(client, "#context", r#"{"targetingKey": "user-7"}"#).await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    let explanation = text_of(client, "pre.explain").await;
    assert!(
        explanation.contains("new-checkout"),
        "explanation: {explanation}"
    );
    screenshot(client, "05-flag").await;

    // The list, filtered by the page's script as soon as a choice changes (the
    // Content-Security-Policy lets it run: it comes from the server).
    client
        .goto(&format!("{url}/projects/default/flags"))
        .await
        .unwrap();
    client
        .find(Locator::Css("#on"))
        .await
        .unwrap()
        .select_by_value("staging")
        .await
        .unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_url(
            &format!("{url}/projects/default/flags?q=&lifecycle=&on=staging")
                .parse()
                .unwrap(),
        )
        .await
        .expect("the filter applied without a click");
    assert_eq!(text_of(client, "p.count").await, "1 flags");
    assert!(
        text_of(client, "table.flags tbody")
            .await
            .contains("search-v2")
    );
    client
        .goto(&format!("{url}/projects/default/flags/search-v2"))
        .await
        .unwrap();
    assert!(
        text_of(client, "section.env[aria-label=Staging]")
            .await
            .contains("email ends with “@example.com”")
    );
    screenshot(client, "06-flag-with-rules").await;

    // A release: the stage timeline, paused with a confirmation.
    let id = release["id"].as_str().unwrap();
    client
        .goto(&format!("{url}/projects/default/releases/{id}"))
        .await
        .unwrap();
    assert!(
        text_of(client, "main h1")
            .await
            .starts_with("Release of checkout")
    );
    assert_eq!(text_of(client, "ol.timeline li.now strong").await, "1%");
    screenshot(client, "07-release").await;
    click(client, Locator::LinkText("Pause")).await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(text_of(client, "p.meta .b.rel").await, "paused");
    assert!(text_of(client, "ol.log").await.contains("admin"));

    // Signing out ends the session: pages send the browser to sign in again.
    click(client, Locator::Css(".who button")).await;
    assert_eq!(text_of(client, "h1").await, "Sign in");
    client
        .goto(&format!("{url}/projects/default/flags"))
        .await
        .unwrap();
    assert_eq!(text_of(client, "h1").await, "Sign in");
}
