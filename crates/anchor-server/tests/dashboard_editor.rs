//! The dashboard's targeting editor through its real HTTP surface (a server on a real port,
//! forms posted as a browser without script posts them): rules with conditions and rollouts
//! written exactly, edited, moved and deleted (after a confirmation); the individual targets,
//! the default serve and prerequisites; the JSON view; every problem next to its field with
//! nothing saved; a concurrent change refused; change requests where approval is required;
//! viewers and forged forms refused. `dashboard_e2e.rs` adds a rule in Chromium.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{PASSWORD, Server, csrf_of, hidden_value, on_every_backend};

on_every_backend!(
    a_rule_with_two_conditions_and_a_ten_ninety_rollout_is_written_exactly,
    rules_are_edited_moved_and_deleted_after_a_confirmation,
    bad_regex_bad_version_and_percentages_not_adding_up_stand_next_to_their_fields,
    individual_targets_default_serve_and_prerequisites_are_saved,
    the_json_view_saves_and_shows_what_is_wrong_with_bad_json,
    a_change_made_meanwhile_is_not_overwritten,
    environments_needing_approval_get_a_change_request,
    viewers_get_no_edit_links_and_their_posts_are_refused,
    forms_without_the_sessions_csrf_token_change_nothing,
    segments_are_named_on_the_rule_form_and_matched_by_key,
    environments_needing_a_comment_ask_for_it_on_every_change,
    prerequisite_variants_are_offered_and_a_wrong_one_is_named_next_to_its_field,
    a_new_rule_may_be_given_its_own_id_checked_like_the_apis,
);

const PRODUCTION: &str = "/projects/default/flags/checkout/environments/production/targeting";

/// The flag's configuration in an environment as the API serves it.
async fn config(server: &Server, flag: &str, environment: &str) -> Value {
    let (status, config) = server
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/projects/default/environments/{environment}/flags/{flag}"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{config}");
    config
}

async fn put_config(server: &Server, flag: &str, environment: &str, body: Value) {
    let (status, reply) = server
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/default/environments/{environment}/flags/{flag}"),
            body,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// `marker` is in `body`, and `text` is in the first field problem after it, before `until`.
fn assert_problem_between(body: &str, marker: &str, until: &str, text: &str) {
    let at = body
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} missing"));
    let rest = &body[at..];
    let end = rest.find(until).unwrap_or(rest.len());
    let rest = &rest[..end];
    assert!(
        rest.contains("field-problem\" role=\"alert\"") && rest.contains(text),
        "`{text}` is not a problem between {marker} and {until}: {rest}"
    );
}

/// The fields of the new-rule form, as someone fills them in: `conditions` as
/// (attribute, operator, values) rows, `percents` for on and off (empty: one variant, `on`).
fn rule_fields<'a>(
    csrf: &'a str,
    version: &'a str,
    description: &'a str,
    conditions: &'a [(&'a str, &'a str, &'a str)],
    percents: Option<(&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = vec![
        ("csrf".into(), csrf.into()),
        ("version".into(), version.into()),
        ("description".into(), description.into()),
        ("conditions".into(), conditions.len().to_string()),
        ("action".into(), "save".into()),
    ];
    for (k, (attribute, operator, values)) in conditions.iter().enumerate() {
        fields.push((format!("c.{k}.attribute"), attribute.to_string()));
        fields.push((format!("c.{k}.operator"), operator.to_string()));
        fields.push((format!("c.{k}.values"), values.to_string()));
    }
    match percents {
        Some((on, off)) => {
            fields.push(("serve.mode".into(), "rollout".into()));
            // The flag's variants are `on` then `off`.
            fields.push(("serve.pct.0".into(), on.into()));
            fields.push(("serve.pct.1".into(), off.into()));
        }
        None => {
            fields.push(("serve.mode".into(), "variant".into()));
            fields.push(("serve.variant".into(), "on".into()));
        }
    }
    fields
}

fn pairs(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

async fn a_rule_with_two_conditions_and_a_ten_ninety_rollout_is_written_exactly(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    // The flag's page leads to the editor, which leads to a new rule.
    let flag = server
        .get("/projects/default/flags/checkout", Some(&session))
        .await;
    assert!(flag.body.contains(&format!("href=\"{PRODUCTION}\"")));
    let editor = server.get(PRODUCTION, Some(&session)).await;
    assert_eq!(editor.status, StatusCode::OK);
    assert!(editor.body.contains("No rules"));
    assert!(
        editor
            .body
            .contains(&format!("href=\"{PRODUCTION}/new-rule\""))
    );
    let form = server
        .get(&format!("{PRODUCTION}/new-rule"), Some(&session))
        .await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("for=\"c-0-attribute\""));
    assert!(!form.body.contains("id=\"c-1-attribute\""));
    // Every operator of the engine is offered.
    for operator in ["semver_gte", "segment_match", "matches", "exists", "after"] {
        assert!(
            form.body.contains(&format!("<option value=\"{operator}\"")),
            "{operator}"
        );
    }
    let csrf = csrf_of(&form.body);
    let version = hidden_value(&form.body, "version");
    // "Add a condition" shows the form again with one more row, keeping what was typed.
    let mut fields = rule_fields(
        &csrf,
        &version,
        "Germans on new apps",
        &[("country", "in", "DE\nAT")],
        None,
    );
    fields.retain(|(n, _)| n != "action");
    fields.push(("action".into(), "add_condition".into()));
    let more = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(more.status, StatusCode::OK, "{}", more.body);
    assert!(more.body.contains("id=\"c-1-attribute\""));
    assert!(more.body.contains("value=\"Germans on new apps\""));
    assert!(more.body.contains(">DE\nAT</textarea>"));
    assert_eq!(
        config(&server, "checkout", "production").await["version"],
        1
    );
    // Saved with two conditions and 10% / 90%.
    let fields = rule_fields(
        &csrf,
        &version,
        "Germans on new apps",
        &[
            ("country", "in", "DE\nAT"),
            ("appVersion", "semver_gte", "2.1"),
        ],
        Some(("10", "90")),
    );
    let mut fields = fields;
    fields.push(("c.0.ci".into(), "on".into()));
    fields.push(("c.1.negate".into(), "on".into()));
    fields.push(("serve.bucket_by".into(), "accountId".into()));
    let saved = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(
        saved.header("location"),
        format!("{PRODUCTION}?notice=rule-saved")
    );
    let written = config(&server, "checkout", "production").await;
    assert_eq!(
        written["rules"],
        json!([{
            "id": "rule-1",
            "description": "Germans on new apps",
            "conditions": [
                {"attribute": "country", "operator": "in", "values": ["DE", "AT"],
                 "caseInsensitive": true},
                {"attribute": "appVersion", "operator": "semver_gte", "values": ["2.1"],
                 "negate": true}
            ],
            "serve": {"rollout": {"variants": [
                {"variant": "on", "weight": 10000}, {"variant": "off", "weight": 90000}],
                "bucketBy": "accountId"}}
        }]),
        "{written}"
    );
    assert_eq!(written["version"], 2);
    // Nothing else changed: still off, the same default.
    assert_eq!(written["enabled"], false);
    assert_eq!(written["defaultServe"], json!({"variant": "off"}));
    // The editor says so and lists the rule in words; the audit has the API's entry.
    let page = server.get(&saved.header("location"), Some(&session)).await;
    assert!(page.body.contains("The rule was saved."));
    assert!(
        page.body
            .contains("country is one of “DE”, “AT” (ignoring case)")
    );
    assert!(page.body.contains("split on 10% · off 90%"));
    let (_, audit) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/audit",
            Value::Null,
        )
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "flag.config.disabled" && e["actor"]["id"] == "admin"),
        "{audit}"
    );
    // A second new rule gets its own id and comes last.
    let fields = rule_fields(
        &csrf,
        "2",
        "",
        &[("plan", "in", "pro")],
        Some(("0.001", "99.999")),
    );
    let saved = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["rules"][1]["id"], "rule-2");
    assert_eq!(
        written["rules"][1]["serve"]["rollout"]["variants"],
        json!([{"variant": "on", "weight": 1}, {"variant": "off", "weight": 99999}])
    );
}

async fn rules_are_edited_moved_and_deleted_after_a_confirmation(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    put_config(
        &server,
        "checkout",
        "production",
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
               "rules": [
                   {"id": "germany", "description": "Germany",
                    "conditions": [{"attribute": "country", "operator": "in",
                                    "values": ["DE", "42", 7]}],
                    "serve": {"variant": "on"}},
                   {"id": "staff/all", "conditions": [{"attribute": "email",
                    "operator": "ends_with", "values": ["@example.com"]}],
                    "serve": {"variant": "on"}}]}),
    )
    .await;
    let session = server.sign_in("admin", PASSWORD).await;
    let editor = server.get(PRODUCTION, Some(&session)).await;
    assert!(editor.body.contains("Germany"));
    // A rule id with a slash still has its own pages.
    assert!(
        editor
            .body
            .contains(&format!("href=\"{PRODUCTION}/rules/staff%2Fall\""))
    );
    // Editing shows the rule as it is: a string that reads as a number stays quoted.
    let form = server
        .get(&format!("{PRODUCTION}/rules/germany"), Some(&session))
        .await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("value=\"Germany\""));
    assert!(
        form.body.contains(">DE\n&quot;42&quot;\n7</textarea>"),
        "{}",
        form.body
    );
    let csrf = csrf_of(&form.body);
    let version = hidden_value(&form.body, "version");
    let fields = rule_fields(
        &csrf,
        &version,
        "Germany and Austria",
        &[("country", "in", "DE\n\"42\"\n7\nAT")],
        None,
    );
    let saved = server
        .post_form(
            &format!("{PRODUCTION}/rules/germany"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["rules"][0]["id"], "germany");
    assert_eq!(written["rules"][0]["description"], "Germany and Austria");
    assert_eq!(
        written["rules"][0]["conditions"][0]["values"],
        json!(["DE", "42", 7, "AT"])
    );
    assert_eq!(written["rules"][1]["id"], "staff/all");
    // Removing a condition row with its box leaves a rule for everyone.
    let form = server
        .get(&format!("{PRODUCTION}/rules/staff%2Fall"), Some(&session))
        .await;
    let version = hidden_value(&form.body, "version");
    let mut fields = rule_fields(
        &csrf,
        &version,
        "",
        &[("email", "ends_with", "@example.com")],
        None,
    );
    fields.push(("c.0.remove".into(), "on".into()));
    let saved = server
        .post_form(
            &format!("{PRODUCTION}/rules/staff%2Fall"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["rules"][1]["conditions"], json!([]));
    let version = written["version"].to_string();
    // Moving the first rule down swaps the two.
    let moved = server
        .post_form(
            &format!("{PRODUCTION}/rules/germany/move"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("direction", "down"),
            ],
        )
        .await;
    assert_eq!(moved.status, StatusCode::SEE_OTHER, "{}", moved.body);
    assert_eq!(
        moved.header("location"),
        format!("{PRODUCTION}?notice=rule-moved")
    );
    let written = config(&server, "checkout", "production").await;
    let ids: Vec<&str> = written["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["staff/all", "germany"]);
    // And up again.
    let version = written["version"].to_string();
    let moved = server
        .post_form(
            &format!("{PRODUCTION}/rules/germany/move"),
            Some(&session),
            &[("csrf", &csrf), ("version", &version), ("direction", "up")],
        )
        .await;
    assert_eq!(moved.status, StatusCode::SEE_OTHER, "{}", moved.body);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["rules"][0]["id"], "germany");
    // Deleting asks first, naming the rule; asking changes nothing.
    let confirm = server
        .get(
            &format!("{PRODUCTION}/rules/germany/delete"),
            Some(&session),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("Delete rule 1 of"));
    assert!(confirm.body.contains("Germany and Austria"));
    assert!(confirm.body.contains("Delete the rule in Production"));
    assert_eq!(
        config(&server, "checkout", "production").await["rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let version = hidden_value(&confirm.body, "version");
    let deleted = server
        .post_form(
            &format!("{PRODUCTION}/rules/germany/delete"),
            Some(&session),
            &[("csrf", &csrf), ("version", &version)],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["rules"].as_array().unwrap().len(), 1);
    assert_eq!(written["rules"][0]["id"], "staff/all");
    // Everything else stayed: the flag is still on.
    assert_eq!(written["enabled"], true);
    let page = server
        .get(&deleted.header("location"), Some(&session))
        .await;
    assert!(page.body.contains("The rule was deleted."));
    // The history has a revision per change (the first, the API's, and the five above), so
    // each can be reverted.
    let (_, revisions) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments/production/flags/checkout/revisions",
            Value::Null,
        )
        .await;
    assert_eq!(revisions.as_array().unwrap().len(), 7, "{revisions}");
}

async fn bad_regex_bad_version_and_percentages_not_adding_up_stand_next_to_their_fields(
    server: Server,
) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let form = server
        .get(&format!("{PRODUCTION}/new-rule"), Some(&session))
        .await;
    let csrf = csrf_of(&form.body);
    let version = hidden_value(&form.body, "version");
    // All three at once: the form's own problem and the engine's two.
    let fields = rule_fields(
        &csrf,
        &version,
        "kept as typed",
        &[
            ("email", "matches", "(unclosed"),
            ("appVersion", "semver_gte", "two point one"),
        ],
        Some(("10", "80")),
    );
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let body = &reply.body;
    assert_problem_between(
        body,
        "id=\"c-0-values\"",
        "id=\"c-1-attribute\"",
        "regular expression",
    );
    assert_problem_between(
        body,
        "id=\"c-1-values\"",
        "Add a condition",
        "semantic version",
    );
    assert_problem_between(
        body,
        "id=\"serve-weights\"",
        "id=\"serve-bucket-by\"",
        "add up to 90%, not 100%",
    );
    // The percentages are marked invalid for screen readers, and point at the problem.
    let pct = &body[body.find("id=\"serve-pct-1\"").unwrap()..];
    let pct = &pct[..pct.find('>').unwrap()];
    assert!(pct.contains("aria-invalid=\"true\""), "{pct}");
    assert!(
        pct.contains("aria-describedby=\"serve-weights-help serve-weights\""),
        "{pct}"
    );
    // What was typed stays.
    assert!(body.contains("value=\"kept as typed\""));
    assert!(body.contains(">(unclosed</textarea>"));
    assert!(body.contains(">two point one</textarea>"));
    assert!(body.contains("value=\"80\""));
    // Nothing was saved.
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["version"], 1);
    assert_eq!(written["rules"], Value::Null);
    // Only the regex wrong: the API's own validation refuses it, next to the same field.
    let fields = rule_fields(
        &csrf,
        &version,
        "",
        &[("email", "matches", "[a-")],
        Some(("50", "50")),
    );
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_between(
        &reply.body,
        "id=\"c-0-values\"",
        "Add a condition",
        "regular expression",
    );
    // A percentage finer than 0.001 is refused next to its own field.
    let fields = rule_fields(
        &csrf,
        &version,
        "",
        &[("plan", "in", "pro")],
        Some(("10.0005", "89.9995")),
    );
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_between(
        &reply.body,
        "id=\"serve-pct-0\"",
        "id=\"serve-pct-1\"",
        "0.001",
    );
    assert_eq!(
        config(&server, "checkout", "production").await["version"],
        1
    );
}

async fn individual_targets_default_serve_and_prerequisites_are_saved(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    server.api_create_flag("payments", "Payments").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let payments = "/projects/default/flags/payments/environments/staging/targeting";
    let page = server.get(payments, Some(&session)).await;
    assert_eq!(page.status, StatusCode::OK);
    // The other flags are offered as prerequisites; labels name every field.
    assert!(page.body.contains("<option value=\"checkout\">"));
    assert!(page.body.contains("for=\"targets-0\""));
    assert!(page.body.contains("for=\"prereq-0-flag\""));
    assert!(page.body.contains("for=\"default-pct-1\""));
    let csrf = csrf_of(&page.body);
    let version = hidden_value(&page.body, "version");
    let base = [
        ("csrf", csrf.as_str()),
        ("version", version.as_str()),
        ("targets.0", "alice\n bob \n\n"),
        ("targets.1", "carol"),
        ("default.mode", "rollout"),
        ("default.pct.0", "25"),
        ("default.pct.1", "75"),
        ("off_variant", "off"),
        ("prereqs", "1"),
        ("prereq.0.flag", "checkout"),
        ("prereq.0.variant", "on"),
    ];
    // Another prerequisite row on request, keeping what was typed.
    let mut fields = base.to_vec();
    fields.push(("action", "add_prerequisite"));
    let more = server.post_form(payments, Some(&session), &fields).await;
    assert_eq!(more.status, StatusCode::OK);
    assert!(more.body.contains("id=\"prereq-1-flag\""));
    assert!(more.body.contains(">alice\n bob \n\n</textarea>"));
    // A prerequisite on a flag that does not exist and a key targeted twice: each next to its
    // field, nothing saved.
    let mut fields = base.to_vec();
    fields.retain(|(n, _)| !["prereq.0.flag", "targets.1"].contains(n));
    fields.extend([
        ("prereq.0.flag", "no-such-flag"),
        ("targets.1", "alice"),
        ("action", "save"),
    ]);
    let reply = server.post_form(payments, Some(&session), &fields).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_problem_between(
        &reply.body,
        "id=\"prereq-0-flag\"",
        "id=\"prereq-0-variant\"",
        "unknown flag",
    );
    // The engine reads the variants in name order: `off`'s alice first, so `on`'s is the
    // duplicate.
    assert_problem_between(
        &reply.body,
        "id=\"targets-0\"",
        "for=\"targets-1\"",
        "already a target of variant `off`",
    );
    assert_eq!(config(&server, "payments", "staging").await["version"], 1);
    // As it should be: saved.
    let mut fields = base.to_vec();
    fields.push(("action", "save"));
    let saved = server.post_form(payments, Some(&session), &fields).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let written = config(&server, "payments", "staging").await;
    assert_eq!(
        written["targets"],
        json!({"on": ["alice", "bob"], "off": ["carol"]})
    );
    assert_eq!(
        written["prerequisites"],
        json!([{"flag": "checkout", "variant": "on"}])
    );
    assert_eq!(
        written["defaultServe"],
        json!({"rollout": {"variants": [
            {"variant": "on", "weight": 25000}, {"variant": "off", "weight": 75000}]}})
    );
    assert_eq!(written["offVariant"], "off");
    // The flag's page shows them.
    let flag = server
        .get("/projects/default/flags/payments", Some(&session))
        .await;
    assert!(flag.body.contains("alice, bob"));
    // Emptying the rows removes them.
    let page = server.get(payments, Some(&session)).await;
    let version = hidden_value(&page.body, "version");
    let saved = server
        .post_form(
            payments,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("default.mode", "variant"),
                ("default.variant", "on"),
                ("off_variant", "off"),
                ("prereqs", "1"),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let written = config(&server, "payments", "staging").await;
    assert_eq!(written["targets"], Value::Null);
    assert_eq!(written["prerequisites"], Value::Null);
    assert_eq!(written["defaultServe"], json!({"variant": "on"}));
}

async fn the_json_view_saves_and_shows_what_is_wrong_with_bad_json(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let editor = server.get(PRODUCTION, Some(&session)).await;
    assert!(editor.body.contains(&format!("href=\"{PRODUCTION}/json\"")));
    let page = server
        .get(&format!("{PRODUCTION}/json"), Some(&session))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("&quot;offVariant&quot;: &quot;off&quot;")
    );
    let csrf = csrf_of(&page.body);
    let version = hidden_value(&page.body, "version");
    // Not JSON: the problem next to the box, the text kept, nothing saved.
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/json"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("json", "{\"enabled\": tru"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_between(
        &reply.body,
        "id=\"json\"",
        "id=\"comment\"",
        "not a flag configuration",
    );
    assert!(reply.body.contains("{&quot;enabled&quot;: tru</textarea>"));
    // JSON the engine refuses: its problems with their paths.
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/json"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("json", r#"{"enabled": true, "offVariant": "maybe", "defaultServe": {"variant": "on"}}"#),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_between(
        &reply.body,
        "id=\"json\"",
        "id=\"comment\"",
        "/offVariant: unknown variant `maybe`",
    );
    assert_eq!(
        config(&server, "checkout", "production").await["version"],
        1
    );
    // Good JSON is saved as it is.
    let good = json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"},
        "rules": [{"id": "beta", "conditions": [{"attribute": "beta", "operator": "in", "values": [true]}],
                   "serve": {"variant": "on"}}]});
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/json"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("json", &good.to_string()),
                ("comment", "by hand"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let mut written = config(&server, "checkout", "production").await;
    assert_eq!(written["version"], 2);
    written.as_object_mut().unwrap().remove("version");
    assert_eq!(written, good);
    let (_, revisions) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments/production/flags/checkout/revisions",
            Value::Null,
        )
        .await;
    assert_eq!(revisions[0]["comment"], "by hand");
}

async fn a_change_made_meanwhile_is_not_overwritten(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let form = server
        .get(&format!("{PRODUCTION}/new-rule"), Some(&session))
        .await;
    let csrf = csrf_of(&form.body);
    let version = hidden_value(&form.body, "version");
    // Someone else turns the flag on while the form is open.
    put_config(
        &server,
        "checkout",
        "production",
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"}}),
    )
    .await;
    let fields = rule_fields(&csrf, &version, "mine", &[("plan", "in", "pro")], None);
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("Someone else changed this configuration")
    );
    assert!(reply.body.contains("value=\"mine\""));
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["version"], 2);
    assert_eq!(written["rules"], Value::Null);
    // The same for the JSON view and the environment's settings.
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/json"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                (
                    "json",
                    r#"{"enabled": false, "offVariant": "off", "defaultServe": {"variant": "on"}}"#,
                ),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(
        reply
            .body
            .contains("Someone else changed this configuration")
    );
    let reply = server
        .post_form(
            PRODUCTION,
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("default.mode", "variant"),
                ("default.variant", "on"),
                ("off_variant", "off"),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["version"], 2);
    assert_eq!(written["enabled"], true);
    assert_eq!(written["defaultServe"], json!({"variant": "off"}));
}

async fn environments_needing_approval_get_a_change_request(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments",
            json!({"key": "gated", "name": "Gated", "requiresApproval": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let gated = "/projects/default/flags/checkout/environments/gated/targeting";
    let page = server.get(gated, Some(&session)).await;
    assert!(page.body.contains("Gated requires approval"));
    let form = server
        .get(&format!("{gated}/new-rule"), Some(&session))
        .await;
    let csrf = csrf_of(&form.body);
    let version = hidden_value(&form.body, "version");
    let fields = rule_fields(&csrf, &version, "", &[("plan", "in", "pro")], None);
    let reply = server
        .post_form(
            &format!("{gated}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    // The configuration waits; the change request holds the rule.
    assert_eq!(
        config(&server, "checkout", "gated").await["rules"],
        Value::Null
    );
    let (_, requests) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/change-requests",
            Value::Null,
        )
        .await;
    let request = &requests.as_array().unwrap()[0];
    let id = request["id"].as_str().unwrap();
    assert_eq!(request["proposed"]["rules"][0]["id"], "rule-1", "{request}");
    let page = server.get(&reply.header("location"), Some(&session)).await;
    // The notice links to the request, whose page shows it for review.
    let link = format!("/projects/default/change-requests/{id}");
    assert!(
        page.body.contains(&format!(
            "<a href=\"{link}\">change request #{id}</a> was created and awaits approval"
        )),
        "{}",
        page.body
    );
    let request_page = server.get(&link, Some(&session)).await;
    assert_eq!(request_page.status, StatusCode::OK, "{}", request_page.body);
    assert!(request_page.body.contains("checkout"));
}

async fn prerequisite_variants_are_offered_and_a_wrong_one_is_named_next_to_its_field(
    server: Server,
) {
    server.api_create_flag("payments", "Payments").await;
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/flags",
            json!({"key": "theme", "kind": "string", "description": "Theme",
                   "variants": [{"name": "blue", "value": "blue"},
                                {"name": "green", "value": "green"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = server.sign_in("admin", PASSWORD).await;
    let payments = "/projects/default/flags/payments/environments/staging/targeting";
    let page = server.get(payments, Some(&session)).await;
    // An empty row suggests every other flag's variants, each labelled with its flag.
    assert!(
        page.body
            .contains("<option value=\"green\" label=\"theme: green\">"),
        "{}",
        page.body
    );
    assert!(page.body.contains(
        "id=\"prereq-0-variant\" name=\"prereq.0.variant\" value=\"\" list=\"prereq-variants\""
    ));
    let csrf = csrf_of(&page.body);
    let version = hidden_value(&page.body, "version");
    let form = |variant: &'static str, action: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("version", version.clone()),
            ("default.mode", "variant".into()),
            ("default.variant", "on".into()),
            ("off_variant", "off".into()),
            ("prereqs", "1".into()),
            ("prereq.0.flag", "theme".into()),
            ("prereq.0.variant", variant.into()),
            ("action", action.into()),
        ]
    };
    let (server, session) = (&server, &session);
    let post = |fields: Vec<(&'static str, String)>| async move {
        {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
            server.post_form(payments, Some(session), &pairs).await
        }
    };
    // Once the row names a flag, it suggests and names that flag's variants only.
    let more = post(form("", "add_prerequisite")).await;
    assert_eq!(more.status, StatusCode::OK);
    let list = more
        .body
        .split("id=\"prereq-0-variant\"")
        .nth(1)
        .and_then(|rest| rest.split("list=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("the variant field names a list");
    assert!(
        more.body.contains(&format!(
            "<datalist id=\"{list}\"><option value=\"blue\"></option><option value=\"green\"></option></datalist>"
        )),
        "{}",
        more.body
    );
    assert!(
        more.body
            .contains("theme’s variants: <code>blue</code>, <code>green</code>"),
        "{}",
        more.body
    );
    // A variant the flag does not have: named next to the variant field, typed text kept,
    // nothing saved.
    let wrong = post(form("purple", "save")).await;
    assert_eq!(
        wrong.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        wrong.body
    );
    assert_problem_between(
        &wrong.body,
        "id=\"prereq-0-variant\"",
        "Leave a row empty",
        "flag `theme` has no variant `purple`",
    );
    assert!(wrong.body.contains("value=\"purple\""));
    assert_eq!(config(server, "payments", "staging").await["version"], 1);
    let right = post(form("green", "save")).await;
    assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.body);
    assert_eq!(
        config(server, "payments", "staging").await["prerequisites"],
        json!([{"flag": "theme", "variant": "green"}])
    );
}

async fn a_new_rule_may_be_given_its_own_id_checked_like_the_apis(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let session = server.sign_in("admin", PASSWORD).await;
    let new_rule = format!("{PRODUCTION}/new-rule");
    let form = server.get(&new_rule, Some(&session)).await;
    assert!(
        form.body.contains("<label for=\"rule-id\">"),
        "{}",
        form.body
    );
    let csrf = csrf_of(&form.body);
    let save = |id: String| {
        let (csrf, new_rule, session) = (csrf.clone(), new_rule.clone(), session.clone());
        let server = &server;
        async move {
            let version = config(server, "checkout", "production").await["version"].to_string();
            let mut fields = rule_fields(&csrf, &version, "", &[("plan", "in", "pro")], None);
            fields.push(("rule_id".into(), id));
            server
                .post_form(&new_rule, Some(&session), &pairs(&fields))
                .await
        }
    };
    let saved = save(" beta-users ".into()).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let rules = config(&server, "checkout", "production").await["rules"].clone();
    assert_eq!(rules[0]["id"], "beta-users", "{rules}");
    // The rule's own page is at its id and keeps it: no id field there.
    let edit = server
        .get(&format!("{PRODUCTION}/rules/beta-users"), Some(&session))
        .await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(!edit.body.contains("id=\"rule-id\""));

    // The same id again, and one too long: each refused next to the field, what was typed kept.
    for (id, problem) in [
        ("beta-users".to_string(), "duplicate rule id `beta-users`"),
        ("x".repeat(129), "rule ids must have 1 to 128 characters"),
    ] {
        let refused = save(id.clone()).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_problem_between(
            &refused.body,
            "id=\"rule-id\"",
            "for=\"description\"",
            problem,
        );
        assert!(refused.body.contains(&format!("value=\"{id}\"")));
    }
    let rules = config(&server, "checkout", "production").await["rules"].clone();
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");

    // Left empty, the id is made up as before.
    let saved = save(String::new()).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let rules = config(&server, "checkout", "production").await["rules"].clone();
    assert_eq!(rules[1]["id"], "rule-1", "{rules}");
}

async fn viewers_get_no_edit_links_and_their_posts_are_refused(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    server.add_user("vera", "viewer").await;
    server.add_user("ed", "editor").await;
    let viewer = server.sign_in("vera", "a long enough password").await;
    let flag = server
        .get("/projects/default/flags/checkout", Some(&viewer))
        .await;
    assert_eq!(flag.status, StatusCode::OK);
    assert!(
        !flag.body.contains("/targeting"),
        "a viewer sees an edit link"
    );
    assert!(!flag.body.contains("Edit targeting"));
    let csrf = csrf_of(&flag.body);
    for path in [
        PRODUCTION.to_string(),
        format!("{PRODUCTION}/new-rule"),
        format!("{PRODUCTION}/json"),
    ] {
        assert_eq!(
            server.get(&path, Some(&viewer)).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let fields = rule_fields(&csrf, "1", "", &[("plan", "in", "pro")], None);
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&viewer),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/json"),
            Some(&viewer),
            &[
                ("csrf", &csrf),
                ("version", "1"),
                (
                    "json",
                    r#"{"enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}}"#,
                ),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        config(&server, "checkout", "production").await["version"],
        1
    );
    // An editor has the links and may use them.
    let editor = server.sign_in("ed", "a long enough password").await;
    let flag = server
        .get("/projects/default/flags/checkout", Some(&editor))
        .await;
    assert!(flag.body.contains("Edit targeting in Production"));
    let csrf = csrf_of(&flag.body);
    let fields = rule_fields(&csrf, "1", "", &[("plan", "in", "pro")], None);
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&editor),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(
        config(&server, "checkout", "production").await["version"],
        2
    );
}

async fn forms_without_the_sessions_csrf_token_change_nothing(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    put_config(
        &server,
        "checkout",
        "production",
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
               "rules": [{"id": "a", "serve": {"variant": "on"}},
                         {"id": "b", "serve": {"variant": "off"}}]}),
    )
    .await;
    let session = server.sign_in("admin", PASSWORD).await;
    let other = server.sign_in("admin", PASSWORD).await;
    let other_csrf = csrf_of(&server.get(PRODUCTION, Some(&other)).await.body);
    for csrf in ["", "forged", other_csrf.as_str()] {
        let fields = rule_fields(csrf, "2", "", &[("plan", "in", "pro")], None);
        let posts: Vec<(String, Vec<(&str, &str)>)> = vec![
            (format!("{PRODUCTION}/new-rule"), pairs(&fields)),
            (format!("{PRODUCTION}/rules/a"), pairs(&fields)),
            (
                format!("{PRODUCTION}/rules/a/delete"),
                vec![("csrf", csrf), ("version", "2")],
            ),
            (
                format!("{PRODUCTION}/rules/a/move"),
                vec![("csrf", csrf), ("version", "2"), ("direction", "down")],
            ),
            (
                format!("{PRODUCTION}/json"),
                vec![("csrf", csrf), ("version", "2"), ("json", "{}")],
            ),
            (
                PRODUCTION.to_string(),
                vec![
                    ("csrf", csrf),
                    ("version", "2"),
                    ("default.mode", "variant"),
                    ("default.variant", "on"),
                    ("off_variant", "off"),
                ],
            ),
        ];
        for (path, fields) in posts {
            let reply = server.post_form(&path, Some(&session), &fields).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} csrf {csrf:?}");
        }
    }
    // Without a session: to the sign-in page.
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/rules/a/delete"),
            None,
            &[("csrf", &other_csrf), ("version", "2")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let written = config(&server, "checkout", "production").await;
    assert_eq!(written["version"], 2);
    assert_eq!(written["rules"].as_array().unwrap().len(), 2);
}

async fn segments_are_named_on_the_rule_form_and_matched_by_key(server: Server) {
    server.api_create_flag("checkout", "Checkout").await;
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments/production/segments",
            json!({"key": "beta-testers", "included": ["user-1"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = server.sign_in("admin", PASSWORD).await;
    let form = server
        .get(&format!("{PRODUCTION}/new-rule"), Some(&session))
        .await;
    assert!(
        form.body.contains("<code>beta-testers</code>"),
        "{}",
        form.body
    );
    assert!(form.body.contains("aria-describedby=\"segments-help\""));
    assert!(form.body.contains("list=\"segment-keys\""));
    assert!(form.body.contains("<option value=\"beta-testers\">"));
    let csrf = csrf_of(&form.body);
    // A segment picked from the list becomes a condition row of its own.
    let mut fields = rule_fields(&csrf, "1", "beta", &[("", "in", "")], None);
    fields.retain(|(n, _)| n != "action");
    fields.push(("add_segment".into(), "beta-testers".into()));
    fields.push(("action".into(), "add_segment".into()));
    let more = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(more.status, StatusCode::OK, "{}", more.body);
    assert!(
        more.body
            .contains("<option value=\"segment_match\" selected>")
    );
    assert!(more.body.contains("name=\"c.1.values\" rows=\"3\" aria-describedby=\"segments-help\">beta-testers</textarea>"), "{}", more.body);
    assert_eq!(
        config(&server, "checkout", "production").await["version"],
        1
    );
    // Saving takes the segment typed even without that button.
    let mut fields = rule_fields(&csrf, "1", "beta", &[], None);
    fields.push(("add_segment".into(), "beta-testers".into()));
    let saved = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(
        config(&server, "checkout", "production").await["rules"][0]["conditions"],
        json!([{"attribute": "", "operator": "segment_match", "values": ["beta-testers"]}])
    );
    // A segment that does not exist is the engine's problem, next to the values.
    let fields = rule_fields(&csrf, "2", "", &[("", "segment_match", "nobody")], None);
    let reply = server
        .post_form(
            &format!("{PRODUCTION}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_between(
        &reply.body,
        "id=\"c-0-values\"",
        "Add a condition",
        "nobody",
    );
    // Every page of the editor keeps to the Content-Security-Policy: no inline script, style
    // or handler.
    for path in [
        PRODUCTION.to_string(),
        format!("{PRODUCTION}/new-rule"),
        format!("{PRODUCTION}/rules/rule-1"),
        format!("{PRODUCTION}/rules/rule-1/delete"),
        format!("{PRODUCTION}/json"),
    ] {
        let page = server.get(&path, Some(&session)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        for script in page.body.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap()];
            assert!(tag.contains(" src="), "{path}: an inline script");
        }
        let lower = page.body.to_ascii_lowercase();
        for handler in [" onclick=", " onsubmit=", " onchange=", " style="] {
            assert!(!lower.contains(handler), "{path} has{handler}");
        }
    }
}

async fn environments_needing_a_comment_ask_for_it_on_every_change(server: Server) {
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/default/environments",
            json!({"key": "audited", "name": "Audited", "requiresComment": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server.api_create_flag("checkout", "Checkout").await;
    put_config(
        &server,
        "checkout",
        "audited",
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
               "rules": [{"id": "a", "serve": {"variant": "on"}},
                         {"id": "b", "serve": {"variant": "off"}}],
               "comment": "set up"}),
    )
    .await;
    let session = server.sign_in("admin", PASSWORD).await;
    let audited = "/projects/default/flags/checkout/environments/audited/targeting";
    let page = server.get(audited, Some(&session)).await;
    // The move buttons carry a comment field of their own.
    assert!(page.body.contains("id=\"comment-down-0\""));
    assert!(page.body.contains("Comment (required in Audited)"));
    let csrf = csrf_of(&page.body);
    let version = hidden_value(&page.body, "version");
    let reply = server
        .post_form(
            &format!("{audited}/rules/a/move"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("direction", "down"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("need a comment"), "{}", reply.body);
    assert_eq!(
        config(&server, "checkout", "audited").await["rules"][0]["id"],
        "a"
    );
    // A rule saved without one: the problem next to the rule form's comment field.
    let fields = rule_fields(&csrf, &version, "", &[("plan", "in", "pro")], None);
    let reply = server
        .post_form(
            &format!("{audited}/new-rule"),
            Some(&session),
            &pairs(&fields),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem_between(&reply.body, "id=\"comment\"", "Save rule", "need a comment");
    let reply = server
        .post_form(
            &format!("{audited}/rules/a/move"),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("direction", "down"),
                ("comment", "b first"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(
        config(&server, "checkout", "audited").await["rules"][0]["id"],
        "b"
    );
    let (_, revisions) = server
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/default/environments/audited/flags/checkout/revisions",
            Value::Null,
        )
        .await;
    assert_eq!(revisions[0]["comment"], "b first");
}
