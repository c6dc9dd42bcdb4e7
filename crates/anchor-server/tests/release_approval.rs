//! Releases in an environment that requires approval, through the real HTTP surface on both
//! backends: four eyes on every widening a person makes (a non-admin's release waits for
//! another person's approval before its first stage, its approval gates and dismissals need
//! someone other than the person who started it, only admins skip or complete), while the
//! controller's own steps run on and nothing that reduces exposure is refused. An environment
//! without approval keeps the old rules. The controller ticks every 50 ms on simulated,
//! healthy telemetry (flag `skewed`: a treatment that gets half its share, a sample ratio
//! mismatch).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_rollout::{ArmObservations, Observations};
use anchor_server::releases::MetricSource;
use anchor_store::{AuditFilter, ReleaseRecord};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{MEMBER_PASSWORD, PASSWORD, Server, call, csrf_of, on_every_backend};

on_every_backend!(
    start: start;
    an_editors_release_waits_for_another_persons_approval_and_only_admins_widen_by_hand,
    the_controller_runs_an_approved_plan_and_its_gates_need_someone_other_than_the_starter,
    dismissing_and_accepting_a_split_need_someone_other_than_the_starter,
    without_approval_an_editor_steers_a_release_alone,
    the_release_page_offers_the_approval_to_the_other_person_only,
);

/// Healthy telemetry for every release; flag `skewed` gets half the treatment's share.
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
        let total = 1_000_000u64;
        let served = if release.flag == "skewed" {
            share / 2.0
        } else {
            share
        };
        let treated = (total as f64 * served).round() as u64;
        let arm = |exposures| ArmObservations {
            exposures,
            requests: 400_000,
            errors: 4_000,
            ..ArmObservations::default()
        };
        Ok(Observations {
            control: arm(total - treated),
            treatment: arm(treated),
            expected_treatment_share: share,
        })
    }
}

async fn start(postgres: Option<(String, String)>) -> Server {
    let metrics: Arc<dyn MetricSource> = Arc::new(Simulated);
    Server::start_with(postgres, Some((metrics, Duration::from_millis(50)))).await
}

/// Gives `command` to release `id` as `user`.
async fn steer(server: &Server, user: &str, id: &str, command: Value) -> (u16, Value) {
    call(
        server,
        user,
        Method::POST,
        &format!("/api/v1/projects/default/releases/{id}/commands"),
        command,
    )
    .await
}

async fn release(server: &Server, id: &str) -> Value {
    let (status, body) = call(
        server,
        "admin",
        Method::GET,
        &format!("/api/v1/projects/default/releases/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn state_of(release: &Value) -> &str {
    release["state"]["state"].as_str().unwrap_or("?")
}

/// Polls the release until `check` holds (or 10 s pass) and returns its last view.
async fn until(server: &Server, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = release(server, id).await;
        if check(&shown) || Instant::now() > deadline {
            return shown;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An environment `env` (requiring approval or not) with editors `ed` and `ann` and the viewer
/// `vera`; the boolean flag `flag` on there and serving `off`; templates `quick` (1% → 5%
/// behind an approval gate → 100%, 300 ms stages) and `slow` (stages of an hour).
async fn setup(server: &Server, env: &str, requires_approval: bool, flag: &str) {
    let (status, body) = call(
        server,
        "admin",
        Method::POST,
        "/api/v1/projects/default/environments",
        json!({"key": env, "name": env, "requiresApproval": requires_approval}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    server.api_create_flag(flag, "Checkout").await;
    // In an approval environment the admin breaks the glass, with a comment.
    let (status, body) = call(
        server,
        "admin",
        Method::PUT,
        &format!("/api/v1/projects/default/environments/{env}/flags/{flag}"),
        json!({"enabled": true, "offVariant": "off", "defaultServe": {"variant": "off"},
               "breakGlass": requires_approval, "comment": "on, serving off"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (user, role) in [("ed", "editor"), ("ann", "editor"), ("vera", "viewer")] {
        server.add_user(user, role).await;
    }
    for (key, stages) in [
        (
            "quick",
            json!([
                {"percentage": 1.0, "dwellMs": 300},
                {"percentage": 5.0, "dwellMs": 300, "approval": true},
                {"percentage": 100.0, "dwellMs": 300}
            ]),
        ),
        (
            "slow",
            json!([
                {"percentage": 1.0, "dwellMs": 3_600_000},
                {"percentage": 5.0, "dwellMs": 3_600_000, "approval": true},
                {"percentage": 25.0, "dwellMs": 3_600_000},
                {"percentage": 100.0, "dwellMs": 3_600_000}
            ]),
        ),
    ] {
        let (status, body) = call(
            server,
            "admin",
            Method::PUT,
            &format!("/api/v1/projects/default/release-templates/{key}"),
            json!({"name": key, "template": {
                "stages": stages,
                "guardrails": {"guardrails": [
                    {"name": "error rate", "kind": "errorRate", "maxRelativeIncrease": 0.5}
                ]},
                "maxExtensionMs": 60_000
            }}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Starts a release of `flag` in `env` from `template` as `user`; its view.
async fn start_release(
    server: &Server,
    user: &str,
    env: &str,
    flag: &str,
    template: &str,
) -> Value {
    let (status, body) = call(
        server,
        user,
        Method::POST,
        &format!("/api/v1/projects/default/environments/{env}/flags/{flag}/releases"),
        json!({"template": template, "control": "off", "treatment": "on"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// The treatment's weight (of 100,000) in the flag's default serve in `env`.
async fn treatment_weight(server: &Server, env: &str, flag: &str) -> u64 {
    let (status, config) = call(
        server,
        "admin",
        Method::GET,
        &format!("/api/v1/projects/default/environments/{env}/flags/{flag}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{config}");
    config["defaultServe"]["rollout"]["variants"]
        .as_array()
        .map_or(0, |variants| {
            variants
                .iter()
                .find(|v| v["variant"] == "on")
                .map_or(0, |v| v["weight"].as_u64().unwrap())
        })
}

/// How many of 200 users get the treatment (`true`) in `env`.
async fn treated_users(server: &Server, env: &str, flag: &str) -> usize {
    let mut treated = 0;
    for n in 0..200 {
        let (status, body) = call(
            server,
            "admin",
            Method::POST,
            &format!("/api/v1/projects/default/environments/{env}/flags/{flag}/evaluate"),
            json!({"targetingKey": format!("user-{n}")}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body["explanation"]["evaluation"]["value"] == true {
            treated += 1;
        }
    }
    treated
}

/// The release's audit entries, oldest first, as `(action, actor)`.
async fn audit_of(server: &Server, id: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = server
        .store
        .audit(&AuditFilter {
            project: "default".into(),
            resource_key: Some(id.into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.actor.id))
        .collect();
    entries.reverse();
    entries
}

fn detail(problem: &Value) -> &str {
    problem["detail"].as_str().unwrap_or_default()
}

async fn an_editors_release_waits_for_another_persons_approval_and_only_admins_widen_by_hand(
    server: Server,
) {
    setup(&server, "prod", true, "checkout").await;
    let started = start_release(&server, "ed", "prod", "checkout", "slow").await;
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(state_of(&started), "waitingForApproval", "{started}");
    assert_eq!(started["state"]["stage"], 0);
    assert_eq!(started["percentage"], 0.0);
    let log = started["decisions"].to_string();
    assert!(
        log.contains("started by ed in prod, which requires approval")
            && log.contains("waiting for approval to enter stage 1 (1%)"),
        "{log}"
    );
    // Nothing of the treatment is served while it waits, and the controller does not start it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state_of(&release(&server, &id).await), "waitingForApproval");
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 0);
    assert_eq!(treated_users(&server, "prod", "checkout").await, 0);

    // Its starter cannot approve it; a viewer cannot either; another editor can.
    let (status, problem) = steer(&server, "ed", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        detail(&problem).contains("a different person must approve it")
            && detail(&problem).contains("other than ed"),
        "{problem}"
    );
    let (status, problem) = steer(&server, "vera", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 403, "{problem}");
    // Nor complete past the approval (a waiting release has no stage to skip).
    let (status, problem) = steer(&server, "ed", &id, json!({"command": "complete"})).await;
    assert_eq!(status, 403, "{problem}");
    let (status, problem) = steer(&server, "ed", &id, json!({"command": "skip"})).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 0);
    let (status, approved) = steer(&server, "ann", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(state_of(&approved), "running");
    assert_eq!(approved["state"]["stage"], 0);
    assert_eq!(approved["percentage"], 1.0);
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 1_000);

    // Widening by hand is for admins: the editors are refused, saying why.
    for (user, command) in [("ed", "skip"), ("ed", "complete"), ("ann", "skip")] {
        let (status, problem) = steer(&server, user, &id, json!({ "command": command })).await;
        assert_eq!(status, 403, "{user} {command}: {problem}");
        assert!(
            detail(&problem).contains("widens the treatment's exposure by hand")
                && detail(&problem).contains("only an admin may skip a stage or complete"),
            "{problem}"
        );
    }
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 1_000);
    // A refused command that does not apply in the state anyway is a conflict first.
    let (status, _) = steer(&server, "ed", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 409, "not waiting for approval");
    // Pausing and resuming the approved plan stay the editors'.
    let (status, paused) = steer(&server, "ed", &id, json!({"command": "pause"})).await;
    assert_eq!(status, 200, "{paused}");
    let (status, resumed) = steer(&server, "ed", &id, json!({"command": "resume"})).await;
    assert_eq!(status, 200, "{resumed}");
    // An admin may skip: into the stage behind the approval gate, which the starter cannot
    // approve and another editor can.
    let (status, skipped) = steer(&server, "admin", &id, json!({"command": "skip"})).await;
    assert_eq!(status, 200, "{skipped}");
    assert_eq!(state_of(&skipped), "waitingForApproval");
    assert_eq!(skipped["state"]["stage"], 1);
    let (status, problem) = steer(&server, "ed", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 403, "{problem}");
    let (status, approved) = steer(&server, "ann", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["percentage"], 5.0);
    // Rolling back is never refused.
    let (status, rolled_back) = steer(&server, "ed", &id, json!({"command": "rollBack"})).await;
    assert_eq!(status, 200, "{rolled_back}");
    assert_eq!(state_of(&rolled_back), "rolledBack");
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 0);

    // Each step is in the audit log with its actor; the refusals changed nothing.
    let expected: Vec<(String, String)> = [
        ("release.created", "ed"),
        ("release.started", "ed"),
        ("release.approved", "ann"),
        ("release.paused", "ed"),
        ("release.resumed", "ed"),
        ("release.stage_skipped", "admin"),
        ("release.approved", "ann"),
        ("release.rolled_back", "ed"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(audit_of(&server, &id).await, expected);

    // An admin's own release starts at once (the admin breaks the glass), and an editor's
    // abort of a waiting one is never refused.
    let admins = start_release(&server, "admin", "prod", "checkout", "slow").await;
    assert_eq!(state_of(&admins), "running", "{admins}");
    assert_eq!(admins["percentage"], 1.0);
    let (status, aborted) = steer(
        &server,
        "ed",
        admins["id"].as_str().unwrap(),
        json!({"command": "abort"}),
    )
    .await;
    assert_eq!(status, 200, "{aborted}");
    // A pending release started later by an editor waits, and its starter cannot approve.
    let (status, pending) = call(
        &server,
        "ann",
        Method::POST,
        "/api/v1/projects/default/environments/prod/flags/checkout/releases",
        json!({"template": "slow", "control": "off", "treatment": "on", "start": false}),
    )
    .await;
    assert_eq!(status, 201, "{pending}");
    let pending = pending["id"].as_str().unwrap();
    let (status, waiting) = steer(&server, "ed", pending, json!({"command": "start"})).await;
    assert_eq!(status, 200, "{waiting}");
    assert_eq!(state_of(&waiting), "waitingForApproval");
    let (status, _) = steer(&server, "ed", pending, json!({"command": "approve"})).await;
    assert_eq!(status, 403, "ed started it");
    let (status, approved) = steer(&server, "ann", pending, json!({"command": "approve"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(state_of(&approved), "running");
}

async fn the_controller_runs_an_approved_plan_and_its_gates_need_someone_other_than_the_starter(
    server: Server,
) {
    setup(&server, "prod", true, "checkout").await;
    let started = start_release(&server, "ed", "prod", "checkout", "quick").await;
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(state_of(&started), "waitingForApproval");
    let (status, approved) = steer(&server, "ann", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 200, "{approved}");
    // The controller advances the approved plan by itself, up to the plan's approval gate.
    let gated = until(&server, &id, |r| {
        state_of(r) == "waitingForApproval" && r["state"]["stage"] == 1
    })
    .await;
    assert_eq!(state_of(&gated), "waitingForApproval", "{gated}");
    assert_eq!(gated["state"]["stage"], 1, "{gated}");
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 1_000);
    let (status, problem) = steer(&server, "ed", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 403, "{problem}");
    assert!(detail(&problem).contains("other than ed"), "{problem}");
    let (status, approved) = steer(&server, "ann", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 5_000);
    let done = until(&server, &id, |r| state_of(r) == "completed").await;
    assert_eq!(state_of(&done), "completed", "{done}");
    assert_eq!(treatment_weight(&server, "prod", "checkout").await, 100_000);
    let actions: Vec<(String, String)> = audit_of(&server, &id).await;
    assert!(
        actions.contains(&(
            "release.waiting_for_approval".into(),
            "rollout-controller".into()
        )) && actions.contains(&("release.completed".into(), "rollout-controller".into())),
        "{actions:?}"
    );

    // An admin's gate approvals count even on a release the admin started.
    let started = start_release(&server, "admin", "prod", "checkout", "quick").await;
    let id = started["id"].as_str().unwrap().to_string();
    let gated = until(&server, &id, |r| state_of(r) == "waitingForApproval").await;
    assert_eq!(gated["state"]["stage"], 1, "{gated}");
    let (status, approved) = steer(&server, "admin", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 200, "{approved}");
}

async fn dismissing_and_accepting_a_split_need_someone_other_than_the_starter(server: Server) {
    setup(&server, "prod", true, "skewed").await;
    let started = start_release(&server, "ed", "prod", "skewed", "slow").await;
    let id = started["id"].as_str().unwrap().to_string();
    let (status, _) = steer(&server, "ann", &id, json!({"command": "approve"})).await;
    assert_eq!(status, 200);
    // The treatment gets half its share: the controller holds for the mismatched split.
    let held = until(&server, &id, |r| state_of(r) == "holding").await;
    assert_eq!(
        held["state"]["reason"]["kind"], "sampleRatioMismatch",
        "{held}"
    );
    // Accepting the split (resume) or dismissing a guardrail is a second person's call.
    let (status, problem) = steer(&server, "ed", &id, json!({"command": "resume"})).await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        detail(&problem).contains("must accept its traffic split"),
        "{problem}"
    );
    let dismiss = json!({"command": "dismiss", "guardrail": "error rate"});
    let (status, problem) = steer(&server, "ed", &id, dismiss.clone()).await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        detail(&problem).contains("must dismiss its guardrails"),
        "{problem}"
    );
    let (status, resumed) = steer(&server, "ann", &id, json!({"command": "resume"})).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(state_of(&resumed), "running");
    let (status, dismissed) = steer(&server, "ann", &id, dismiss).await;
    assert_eq!(status, 200, "{dismissed}");
    // Pausing is the starter's as anyone's.
    let (status, paused) = steer(&server, "ed", &id, json!({"command": "pause"})).await;
    assert_eq!(status, 200, "{paused}");
    let tail: Vec<(String, String)> = audit_of(&server, &id).await.split_off(3);
    assert!(
        tail.starts_with(&[("release.holding".into(), "rollout-controller".into())])
            && tail.ends_with(&[
                ("release.resumed".into(), "ann".into()),
                ("release.guardrail_dismissed".into(), "ann".into()),
                ("release.paused".into(), "ed".into()),
            ]),
        "{tail:?}"
    );
}

async fn without_approval_an_editor_steers_a_release_alone(server: Server) {
    setup(&server, "open", false, "checkout").await;
    let started = start_release(&server, "ed", "open", "checkout", "slow").await;
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(state_of(&started), "running", "{started}");
    assert_eq!(started["percentage"], 1.0);
    let (status, skipped) = steer(&server, "ed", &id, json!({"command": "skip"})).await;
    assert_eq!(status, 200, "{skipped}");
    assert_eq!(state_of(&skipped), "waitingForApproval");
    let (status, approved) = steer(&server, "ed", &id, json!({"command": "approve"})).await;
    assert_eq!(
        status, 200,
        "the starter approves where no approval is required: {approved}"
    );
    assert_eq!(approved["percentage"], 5.0);
    let (status, dismissed) = steer(
        &server,
        "ed",
        &id,
        json!({"command": "dismiss", "guardrail": "error rate"}),
    )
    .await;
    assert_eq!(status, 200, "{dismissed}");
    let (status, completed) = steer(&server, "ed", &id, json!({"command": "complete"})).await;
    assert_eq!(status, 200, "{completed}");
    assert_eq!(state_of(&completed), "completed");
    assert_eq!(treatment_weight(&server, "open", "checkout").await, 100_000);
}

async fn the_release_page_offers_the_approval_to_the_other_person_only(server: Server) {
    setup(&server, "prod", true, "checkout").await;
    let started = start_release(&server, "ed", "prod", "checkout", "slow").await;
    let id = started["id"].as_str().unwrap().to_string();
    let path = format!("/projects/default/releases/{id}");
    let ed = server.sign_in("ed", MEMBER_PASSWORD).await;
    let page = server.get(&path, Some(&ed)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("waiting for approval"), "{}", page.body);
    assert!(
        page.body
            .contains("waiting for approval to enter stage 1 (1%)"),
        "the decision log says what it waits for"
    );
    assert!(
        !page.body.contains("command=approve"),
        "the starter is offered an approval they cannot give"
    );
    assert!(
        page.body.contains("a different person must approve it"),
        "the page says who may approve"
    );
    assert!(page.body.contains("command=rollBack"));
    // The starter's forged approval is refused.
    let confirm = server
        .get(&format!("{path}/commands?command=rollBack"), Some(&ed))
        .await;
    let csrf = csrf_of(&confirm.body);
    let reply = server
        .post_form(
            &format!("{path}/commands"),
            Some(&ed),
            &[("csrf", &csrf), ("command", "approve")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    let ann = server.sign_in("ann", MEMBER_PASSWORD).await;
    let page = server.get(&path, Some(&ann)).await;
    assert!(page.body.contains("command=approve"), "{}", page.body);
    let confirm = server
        .get(&format!("{path}/commands?command=approve"), Some(&ann))
        .await;
    assert_eq!(confirm.status, StatusCode::OK);
    let csrf = csrf_of(&confirm.body);
    let reply = server
        .post_form(
            &format!("{path}/commands"),
            Some(&ann),
            &[("csrf", &csrf), ("command", "approve")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let page = server.get(&path, Some(&ann)).await;
    assert!(page.body.contains("running"), "{}", page.body);
    // Editors are not offered a skip there; an admin is.
    assert!(!page.body.contains("command=skip"));
    assert!(page.body.contains("only an admin may skip a stage"));
    let admin = server.sign_in("admin", PASSWORD).await;
    let page = server.get(&path, Some(&admin)).await;
    assert!(page.body.contains("command=skip"));
}
