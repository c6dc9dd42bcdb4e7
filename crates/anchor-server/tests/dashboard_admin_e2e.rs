//! The dashboard's segments and settings end to end in a real headless Chromium, driven
//! through chromedriver (`support::browser`, as `dashboard_e2e.rs`): sign in, create a segment
//! (first with a problem next to its key), create an SDK key and see its secret once, look at
//! the environments and make a webhook.
//! Screenshots go to `target/dashboard-screenshots/admin-*.png`.
//!
//! Without `/usr/bin/chromedriver` the test fails and says how to install it: a browser test
//! that passes without a browser would prove nothing.

mod support;

use fantoccini::{Client, Locator};
use serde_json::json;
use support::browser::{click, fill, screenshot, text_of, until_text, with_browser};
use support::{PASSWORD, Server};

#[tokio::test]
async fn an_admin_makes_a_segment_an_sdk_key_and_a_webhook() {
    let server = Server::start(None).await;
    with_browser(|client| async move { story(&server, &client).await }).await;
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
