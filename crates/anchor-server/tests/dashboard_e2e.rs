//! The dashboard end to end in a real headless Chromium, driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them): sign in, create a flag
//! (first with a problem shown next to its field), turn it on and then off in production with
//! the confirmation, revert a revision, evaluate it for a context, filter the list with the
//! page's script, add a rule in the targeting editor, start a release from the flag's page and
//! watch it advance on simulated telemetry without a reload (live updates), approve its next
//! stage, and see another rolled back by the controller with its reason; then a change in an
//! environment that requires approval waits as a change request, which a second person
//! approves and applies. Screenshots of the main pages go to `target/dashboard-screenshots/`.
//!
//! Without `/usr/bin/chromedriver` the test fails and says how to install it: a browser test
//! that passes without a browser would prove nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anchor_rollout::{ArmObservations, Observations};
use anchor_server::releases::MetricSource;
use anchor_store::ReleaseRecord;
use fantoccini::{Client, Locator};
use serde_json::json;
use support::browser::{click, fill, screenshot, text_of, until_text, with_browser};
use support::{PASSWORD, Server};

/// Reloads `page` until the text of `css` is `expected` (at most 15 s).
async fn until_page_shows(client: &Client, page: &str, css: &str, expected: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        client.goto(page).await.unwrap();
        let text = text_of(client, css).await;
        if text == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{page}: `{css}` still says {text:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Marks the loaded page, so that [`assert_not_reloaded`] can tell it was never reloaded.
async fn stays_on_the_page(client: &Client) {
    client
        .execute("window.anchorStayed = true;", vec![])
        .await
        .unwrap();
}

/// The page marked by [`stays_on_the_page`] is the same page, and the live script replaced
/// its content.
async fn assert_not_reloaded(client: &Client) {
    let stayed = client
        .execute(
            "return [window.anchorStayed === true, document.documentElement.dataset.liveRefreshes || '0'];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stayed[0], json!(true), "the page was reloaded");
    let refreshes: u32 = stayed[1].as_str().unwrap().parse().unwrap();
    assert!(refreshes >= 1, "the live script never refreshed the page");
}

/// Telemetry as SDKs would report it: the treatment of `payments` fails five times as often
/// as its control; every other release is healthy.
struct Simulated;

#[async_trait::async_trait]
impl MetricSource for Simulated {
    async fn observe(
        &self,
        release: &ReleaseRecord,
        _: i64,
        _: i64,
        share: f64,
    ) -> Result<Observations, String> {
        let factor = if release.flag == "payments" { 5.0 } else { 1.0 };
        let total = 1_000_000u64;
        let treated = (total as f64 * share).round() as u64;
        let arm = |exposures, rate: f64| ArmObservations {
            exposures,
            requests: 400_000,
            errors: (400_000.0 * rate).round() as u64,
            ..ArmObservations::default()
        };
        Ok(Observations {
            control: arm(total - treated, 0.01),
            treatment: arm(treated, 0.01 * factor),
            expected_treatment_share: share,
        })
    }
}

#[tokio::test]
async fn a_person_signs_in_creates_a_flag_and_turns_it_off_in_production() {
    let metrics: Arc<dyn MetricSource> = Arc::new(Simulated);
    let server = Server::start_with(None, Some((metrics, Duration::from_millis(100)))).await;
    with_browser(|client| async move { story(&server, &client).await }).await;
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
    // A quick template: 1%, then 5% after an approval, then 100%.
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/release-templates/quick",
            json!({"name": "Quick", "template": {
                "stages": [
                    {"percentage": 1.0, "dwellMs": 3000},
                    {"percentage": 5.0, "dwellMs": 3000, "approval": true},
                    {"percentage": 100.0, "dwellMs": 300}
                ],
                "guardrails": {"guardrails": [
                    {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
                ]},
                "maxExtensionMs": 60000
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // (The release of `checkout` is started from the browser, below.)
    // A release whose treatment fails more often: the controller rolls it back by itself.
    server
        .api_create_flag("payments", "The new payment provider")
        .await;
    let (status, body) = server
        .api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/production/flags/payments",
            json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, failing) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/production/flags/payments/releases",
            json!({"control": "off", "treatment": "on", "template": "quick"}),
        )
        .await;
    assert_eq!(status, 201, "{failing}");
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
    until_text(client, "h1", "Sign in").await;
    screenshot(client, "01-sign-in").await;
    fill(client, "#username", "admin").await;
    fill(client, "#password", PASSWORD).await;
    click(client, Locator::Css("form button[type=submit]")).await;
    until_text(client, "main h1", "Flags").await;
    screenshot(client, "02-flags").await;

    // A new flag: a bad key first, its problem next to the field, then a good one.
    click(client, Locator::LinkText("New flag")).await;
    until_text(client, "main h1", "New flag").await;
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
    until_text(client, "main h1", "new-checkout").await;
    // The description is text, not markup.
    until_text(
        client,
        ".description",
        "<script>alert('x')</script> The one-page checkout",
    )
    .await;

    // On in production, with the confirmation naming it.
    click(client, Locator::LinkText("Turn on in Production")).await;
    until_text(client, "main h1", "Turn on new-checkout in Production?").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    until_text(client, ".notice", "Turned on in production.").await;
    assert!(server.enabled_in("new-checkout", "production").await);

    // And off again: the kill switch.
    click(client, Locator::LinkText("Turn off in Production")).await;
    until_text(client, "main h1", "Turn off new-checkout in Production?").await;
    screenshot(client, "04-kill-switch-confirmation").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    until_text(client, ".notice", "Turned off in production.").await;
    until_text(client, "section.env[aria-label=Production] h3 .b", "off").await;
    assert!(!server.enabled_in("new-checkout", "production").await);

    // History: each revision with its diff; reverting to the version that was on.
    click(client, Locator::LinkText("History of Production")).await;
    assert!(text_of(client, "ol.history").await.contains("Version 3"));
    click(client, Locator::LinkText("Revert to version 2")).await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert!(
        text_of(client, "ol.history > li")
            .await
            .starts_with("Version 4")
    );
    assert!(server.enabled_in("new-checkout", "production").await);
    screenshot(client, "06-history").await;
    click(client, Locator::LinkText("new-checkout")).await;

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
    until_text(client, "p.count", "1 flags").await;
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
    screenshot(client, "07-flag-with-rules").await;

    // A rule added in the form editor (two conditions, the second row asked for with a button,
    // and a 10% / 90% rollout), then shown in words on the flag's page.
    click(client, Locator::LinkText("Edit targeting in Staging")).await;
    click(client, Locator::LinkText("Add rule")).await;
    assert!(text_of(client, "main h1").await.starts_with("New rule for"));
    fill(client, "#description", "German-speaking pro customers").await;
    fill(client, "#c-0-attribute", "country").await;
    fill(client, "#c-0-values", "DE\nAT").await;
    click(client, Locator::Css("button[value=add_condition]")).await;
    screenshot(client, "07b-rule-editor-conditions").await;
    fill(client, "#c-1-attribute", "plan").await;
    fill(client, "#c-1-values", "pro").await;
    assert_eq!(
        client
            .find(Locator::Css("#description"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("German-speaking pro customers")
    );
    click(client, Locator::Css("#serve-mode-rollout")).await;
    fill(client, "#serve-pct-0", "10").await;
    fill(client, "#serve-pct-1", "90").await;
    screenshot(client, "07c-rule-editor-serve").await;
    // Enter in a field saves, as the keyboard expects (not "Add a condition", the form's first
    // visible button). U+E007 is WebDriver's Enter key.
    client
        .find(Locator::Css("#serve-pct-1"))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    assert_eq!(text_of(client, ".notice").await, "The rule was saved.");
    screenshot(client, "07d-targeting").await;
    click(client, Locator::LinkText("search-v2")).await;
    let staging = text_of(client, "section.env[aria-label=Staging]").await;
    assert!(
        staging.contains("country in “DE”, “AT”") && staging.contains("plan in “pro”"),
        "{staging}"
    );
    assert!(
        staging.contains("plan in “pro” → split on 10% · off 90%"),
        "{staging}"
    );
    screenshot(client, "07e-flag-with-the-new-rule").await;

    // A release started from the flag's page with the quick template, advancing on simulated
    // telemetry: the page follows it live, without a reload. It waits for approval before
    // 5%, a person approves (with a confirmation), and it goes on to the end, again live.
    client
        .goto(&format!("{url}/projects/default/flags/checkout"))
        .await
        .unwrap();
    // A change made elsewhere (the API) shows on the open page without a reload...
    stays_on_the_page(client).await;
    let staging = |enabled: bool| {
        server.api(
            reqwest::Method::PUT,
            "/api/v1/projects/default/environments/staging/flags/checkout",
            json!({"enabled": enabled, "offVariant": "off", "defaultServe": {"variant": "off"}}),
        )
    };
    assert_eq!(staging(true).await.0, 200);
    until_text(client, "section.env[aria-label=Staging] h3 .b", "on").await;
    assert_not_reloaded(client).await;
    // ...but never under someone filling in a form: the page offers a reload instead.
    fill(client, "#context", r#"{"targetingKey": "half-typed"#).await;
    assert_eq!(staging(false).await.0, 200);
    assert!(
        text_of(client, ".live-notice")
            .await
            .starts_with("This page changed")
    );
    let typed = client
        .find(Locator::Css("#context"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(typed.as_deref(), Some(r#"{"targetingKey": "half-typed"#));
    until_text(client, "section.env[aria-label=Staging] h3 .b", "on").await;
    screenshot(client, "07-flag-changed-elsewhere").await;
    click(client, Locator::LinkText("Start a release in Production")).await;
    until_text(
        client,
        "main h1",
        "Start a release of checkout in Production",
    )
    .await;
    client
        .find(Locator::Css("#template"))
        .await
        .unwrap()
        .select_by_value("quick")
        .await
        .unwrap();
    for (select, expected) in [("#control", "off"), ("#treatment", "on")] {
        let chosen = client
            .find(Locator::Css(select))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(chosen.as_deref(), Some(expected), "{select}");
    }
    screenshot(client, "08-start-a-release").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    until_text(client, "p.meta .b.rel", "running").await;
    let release_page = client.current_url().await.unwrap().to_string();
    assert!(
        release_page.contains("/projects/default/releases/"),
        "{release_page}"
    );
    stays_on_the_page(client).await;
    until_text(client, "p.meta .b.rel", "waiting for approval").await;
    until_text(client, "ol.timeline li.done strong", "1%").await;
    assert!(text_of(client, "table.report").await.contains("error rate"));
    assert_not_reloaded(client).await;
    screenshot(client, "08-release-waiting-for-approval").await;
    click(client, Locator::LinkText("Approve the next stage")).await;
    assert!(
        text_of(client, "main h1")
            .await
            .starts_with("Approve the next stage")
    );
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    until_text(client, "p.meta .b.rel", "running").await;
    until_text(client, "ol.timeline li.now strong", "5%").await;
    // The controller advances the stage (to 100%: completed) while the page is open.
    stays_on_the_page(client).await;
    until_text(client, "p.meta .b.rel", "completed").await;
    assert_not_reloaded(client).await;
    let log = text_of(client, "ol.log").await;
    assert!(log.contains("admin"), "{log}");
    assert!(log.contains("completed"), "{log}");
    client
        .find(Locator::Css("svg.guardrail-chart .chart-tolerance"))
        .await
        .expect("the guardrail's chart over time");
    screenshot(client, "08-release-completed-live").await;

    // The failing release was rolled back by the controller, and its page says why.
    let id = failing["id"].as_str().unwrap();
    let failing_page = format!("{url}/projects/default/releases/{id}");
    until_page_shows(client, &failing_page, "p.meta .b.rel", "rolled back").await;
    let log = text_of(client, "ol.log").await;
    assert!(log.contains("error rate"), "the decision log: {log}");
    assert!(text_of(client, "table.report").await.contains("regressed"));
    // The interval against the tolerance, drawn by the server, and its course over time.
    client
        .find(Locator::Css("table.report svg.interval circle"))
        .await
        .expect("the guardrail's chart");
    client
        .find(Locator::Css("svg.guardrail-chart .chart-estimate"))
        .await
        .expect("the guardrail's chart over time");
    screenshot(client, "09-release-rolled-back").await;

    // In an environment that requires approval, turning the flag on waits as a change
    // request; a second person signs in, reads its diff, approves and applies it.
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments",
            json!({"key": "gated", "name": "Gated", "requiresApproval": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server.add_user("ann", "editor").await;
    client
        .goto(&format!("{url}/projects/default/flags/new-checkout"))
        .await
        .unwrap();
    click(client, Locator::LinkText("Turn on in Gated")).await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(
        text_of(client, ".notice").await,
        "gated requires approval: the change waits as a change request."
    );
    assert!(!server.enabled_in("new-checkout", "gated").await);
    assert!(
        text_of(client, "section.env[aria-label=Gated] .pending")
            .await
            .starts_with("Change request open")
    );
    click(client, Locator::Css(".who button")).await;
    assert_eq!(text_of(client, "h1").await, "Sign in");
    fill(client, "#username", "ann").await;
    fill(client, "#password", "a long enough password").await;
    click(client, Locator::Css("form button[type=submit]")).await;
    assert_eq!(text_of(client, "main h1").await, "Flags");
    click(client, Locator::LinkText("Change requests")).await;
    assert_eq!(text_of(client, "main h1").await, "Change requests");
    screenshot(client, "10-change-requests").await;
    click(client, Locator::Css("table.requests tbody a")).await;
    assert_eq!(
        text_of(client, "main h1").await,
        "Change to flag new-checkout in Gated"
    );
    assert_eq!(text_of(client, "strong.author").await, "admin");
    assert!(text_of(client, "ul.diff").await.contains("/enabled"));
    screenshot(client, "11-change-request").await;
    click(client, Locator::LinkText("Approve")).await;
    assert_eq!(
        text_of(client, "main h1").await,
        "Approve the change to new-checkout in Gated?"
    );
    fill(client, "#comment", "Checked with the team").await;
    screenshot(client, "12-approve-confirmation").await;
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(
        text_of(client, ".notice").await,
        "Approved: its author or you can now apply it."
    );
    assert!(
        text_of(client, "ol.reviews")
            .await
            .contains("Checked with the team")
    );
    click(client, Locator::LinkText("Apply")).await;
    assert_eq!(
        text_of(client, "main h1").await,
        "Apply the change to new-checkout in Gated?"
    );
    click(client, Locator::Css("form.stack button[type=submit]")).await;
    assert_eq!(
        text_of(client, ".notice").await,
        "Applied: the configuration changed."
    );
    assert!(server.enabled_in("new-checkout", "gated").await);
    screenshot(client, "13-change-request-applied").await;
    click(client, Locator::LinkText("Audit")).await;
    assert!(
        text_of(client, "table.audit tbody")
            .await
            .contains("change_request.applied")
    );
    screenshot(client, "14-audit-log").await;

    // Signing out ends the session: pages send the browser to sign in again.
    click(client, Locator::Css(".who button")).await;
    until_text(client, "h1", "Sign in").await;
    client
        .goto(&format!("{url}/projects/default/flags"))
        .await
        .unwrap();
    until_text(client, "h1", "Sign in").await;
}
