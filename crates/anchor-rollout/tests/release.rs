//! The release-plan state machine, stage by stage: advancing, rolling back, holding for each
//! reason and clearing, approval gates, completion, and every person's command.

use anchor_rollout::release::{GuardrailNeed, SRM};
use anchor_rollout::{
    Action, ArmObservations, Command, Event, Guardrail, GuardrailPlan, GuardrailSpec, HoldReason,
    Observations, ReleaseState, ReleaseTemplate, Stage, Transition, command, step,
};

const MINUTE: i64 = 60_000;

fn template() -> ReleaseTemplate {
    let stage = |percentage, approval| Stage {
        percentage,
        dwell_ms: 10 * 60_000,
        warmup_ms: 60_000,
        approval,
        require_coverage: false,
    };
    ReleaseTemplate {
        stages: vec![
            stage(1.0, false),
            stage(5.0, true),
            stage(50.0, false),
            stage(100.0, false),
        ],
        guardrails: GuardrailPlan::new(vec![
            GuardrailSpec {
                name: "error rate".into(),
                guardrail: Guardrail::ErrorRate {
                    max_relative_increase: 0.5,
                    min_absolute_increase: 0.0,
                },
            },
            GuardrailSpec {
                name: "signups".into(),
                guardrail: Guardrail::Metric {
                    metric: "signups".into(),
                    direction: anchor_rollout::Direction::LowerIsWorse,
                    tolerance: anchor_rollout::Tolerance::Absolute(0.5),
                },
            },
        ]),
        max_extension_ms: 10 * 60_000,
        hold_only: vec!["signups".into()],
        rollback_disables_flag: false,
        p99_limit_ms: None,
        coverage: anchor_rollout::CoveragePlan::default(),
        projections: vec![],
    }
}

/// Both arms with `requests` each, the given error rates, exposures split as configured, and
/// the `signups` metric at the given means.
fn observations(
    share: f64,
    requests: u64,
    (treatment_rate, control_rate): (f64, f64),
    (treatment_signups, control_signups): (f64, f64),
) -> Observations {
    let total = 1_000_000u64;
    let treated = (total as f64 * share).round() as u64;
    let arm = |exposures, rate: f64, signups: f64| {
        let mut metric = anchor_rollout::MetricSums::default();
        for i in 0..2_000 {
            // Values around the mean with some spread.
            metric.record_capped(signups + if i % 2 == 0 { 1.0 } else { -1.0 }, 1e9);
        }
        ArmObservations {
            exposures,
            requests,
            errors: (requests as f64 * rate).round() as u64,
            metrics: [("signups".to_string(), metric)].into_iter().collect(),
            ..ArmObservations::default()
        }
    };
    Observations {
        control: arm(total - treated, control_rate, control_signups),
        treatment: arm(treated, treatment_rate, treatment_signups),
        expected_treatment_share: share,
    }
}

fn healthy(share: f64) -> Observations {
    observations(share, 400_000, (0.01, 0.01), (5.0, 5.0))
}

fn started(t: &ReleaseTemplate) -> Transition {
    command(t, &ReleaseState::Pending, &Command::Start, 0).unwrap()
}

fn running_stage(state: &ReleaseState) -> usize {
    match state {
        ReleaseState::Running { clock } => clock.stage,
        other => panic!("expected running, got {other:?}"),
    }
}

#[test]
fn the_builtin_template_is_valid_and_runs_one_five_twenty_five_fifty_hundred() {
    let t = ReleaseTemplate::builtin();
    assert!(t.problems().is_empty(), "{:?}", t.problems());
    let shares: Vec<f64> = t.stages.iter().map(|s| s.percentage).collect();
    assert_eq!(shares, [1.0, 5.0, 25.0, 50.0, 100.0]);
    assert!(t.stages.iter().all(|s| s.dwell_ms == 15 * 60_000));
    // The guardrails' tests span the release and keep its α; the sample ratio test is per
    // stage, so its α is spread over the four judged stages.
    assert!((t.stage_guardrails().alpha - 0.01).abs() < 1e-12);
    assert!((t.stage_guardrails().srm_alpha - 0.0025).abs() < 1e-12);
}

#[test]
fn a_bad_template_reports_every_problem_with_its_pointer() {
    let mut t = template();
    t.stages[1].percentage = 0.5;
    t.stages[2].dwell_ms = 0;
    t.stages[3].percentage = 90.0;
    t.hold_only.push("nonexistent".into());
    t.guardrails.alpha = 2.0;
    let paths: Vec<String> = t.problems().into_iter().map(|p| p.path).collect();
    for expected in [
        "/stages/1/percentage",
        "/stages/2/dwellMs",
        "/stages/3/percentage",
        "/holdOnly/1",
        "/guardrails/alpha",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} in {paths:?}"
        );
    }
    let empty = ReleaseTemplate {
        stages: vec![],
        ..template()
    };
    assert!(empty.problems().iter().any(|p| p.path == "/stages"));
}

#[test]
fn starting_enters_the_first_stage_and_warm_up_data_are_not_judged() {
    let t = template();
    let start = started(&t);
    assert_eq!(running_stage(&start.state), 0);
    assert_eq!(
        start.actions,
        [
            Action::SetShare { percentage: 1.0 },
            Action::Notify {
                event: Event::StageAdvanced
            }
        ]
    );
    assert!(start.decision.unwrap().message.contains("stage 1 of 4: 1%"));
    // Even a disaster during the warm-up is not judged: its data are ignored.
    let bad = observations(0.01, 400_000, (0.5, 0.01), (5.0, 5.0));
    let during = step(&t, &start.state, Ok(&bad), 30_000);
    assert_eq!(during.state, start.state);
    assert!(during.actions.is_empty() && during.report.is_none());
}

#[test]
fn a_healthy_stage_advances_only_after_its_dwell() {
    let t = template();
    let state = started(&t).state;
    let early = step(&t, &state, Ok(&healthy(0.01)), 5 * MINUTE);
    assert_eq!(early.state, state, "safe but the dwell has not passed");
    assert!(
        early
            .report
            .unwrap()
            .checks
            .iter()
            .all(|c| c.verdict.is_safe())
    );
    // Stage 2 has an approval gate.
    let after = step(&t, &state, Ok(&healthy(0.01)), 10 * MINUTE);
    let ReleaseState::WaitingForApproval {
        stage: 1,
        since_ms,
        history,
    } = &after.state
    else {
        panic!("waits for approval to enter stage 2: {:?}", after.state);
    };
    assert_eq!(*since_ms, 10 * MINUTE);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].percentage, 1.0);
    assert_eq!(history[0].treatment_p99_ms, None);
    // The stage's counts go on into the next stages' tests, one entry per guardrail.
    let names: Vec<&str> = history[0]
        .evidence
        .iter()
        .map(|e| e.guardrail.as_str())
        .collect();
    let expected: Vec<&str> = t
        .guardrails
        .guardrails
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(names, expected);
    assert!(history[0].metrics.is_empty());
    assert_eq!(
        after.actions,
        [Action::Notify {
            event: Event::WaitingForApproval
        }]
    );
    let message = after.decision.unwrap().message;
    assert!(
        message.contains("advanced from 1% after 10 min"),
        "{message}"
    );
    assert!(message.contains("waiting for approval"), "{message}");
    // Waiting does nothing by itself.
    let waiting = step(&t, &after.state, Ok(&healthy(0.05)), 20 * MINUTE);
    assert_eq!(waiting.state, after.state);
    let approved = command(&t, &after.state, &Command::Approve, 21 * MINUTE).unwrap();
    assert_eq!(running_stage(&approved.state), 1);
    assert_eq!(approved.actions[0], Action::SetShare { percentage: 5.0 });
}

#[test]
fn the_last_stage_completes_the_release() {
    let t = template();
    let at_fifty = ReleaseState::Running {
        clock: anchor_rollout::StageClock {
            stage: 2,
            since_ms: 0,
            observe_from_ms: MINUTE,
            dismissed: vec![],
            history: vec![],
        },
    };
    let done = step(&t, &at_fifty, Ok(&healthy(0.5)), 10 * MINUTE);
    assert_eq!(done.state, ReleaseState::Completed { at_ms: 10 * MINUTE });
    assert_eq!(
        done.actions,
        [
            Action::SetShare { percentage: 100.0 },
            Action::Notify {
                event: Event::Completed
            }
        ]
    );
}

#[test]
fn a_regression_rolls_back_at_once_whatever_the_dwell() {
    let t = template();
    let state = started(&t).state;
    let bad = observations(0.01, 400_000, (0.03, 0.01), (5.0, 5.0));
    let next = step(&t, &state, Ok(&bad), 2 * MINUTE);
    let ReleaseState::RolledBack { stage, check, .. } = &next.state else {
        panic!("expected a rollback, got {:?}", next.state);
    };
    assert_eq!(*stage, 0);
    assert_eq!(check.as_ref().unwrap().name, "error rate");
    assert_eq!(
        next.actions,
        [
            Action::RollBack {
                disable_flag: false
            },
            Action::Notify {
                event: Event::RolledBack
            }
        ]
    );
    let decision = next.decision.unwrap();
    assert!(
        decision
            .message
            .starts_with("rolled back at 1%: error rate:"),
        "{}",
        decision.message
    );
    assert!(
        decision.report.is_some(),
        "the numbers are kept with the decision"
    );
    // Finished: nothing more happens, and commands are refused.
    assert_eq!(
        step(&t, &next.state, Ok(&bad), 3 * MINUTE).state,
        next.state
    );
    let refused = command(&t, &next.state, &Command::Resume, 3 * MINUTE).unwrap_err();
    assert!(refused.message.contains("rolled back"), "{refused}");
}

#[test]
fn a_failing_metric_source_holds_and_never_rolls_back_then_clears() {
    let t = template();
    let state = started(&t).state;
    let held = step(&t, &state, Err("the telemetry store timed out"), 2 * MINUTE);
    assert!(matches!(
        held.state,
        ReleaseState::Holding {
            reason: HoldReason::SourceError { .. },
            ..
        }
    ));
    assert!(
        held.decision
            .unwrap()
            .message
            .contains("never rolling back")
    );
    // Still failing: no new decision, no repeated notification.
    let again = step(&t, &held.state, Err("still down"), 3 * MINUTE);
    assert_eq!(again.state, held.state);
    assert!(again.actions.is_empty() && again.decision.is_none());
    let back = step(&t, &held.state, Ok(&healthy(0.01)), 4 * MINUTE);
    assert_eq!(running_stage(&back.state), 0);
    assert!(back.decision.unwrap().message.contains("running again"));
}

#[test]
fn a_sample_ratio_mismatch_holds_until_a_person_accepts_the_split() {
    let t = template();
    let state = started(&t).state;
    // Configured 1%, observed 2%.
    let mut skewed = healthy(0.02);
    skewed.expected_treatment_share = 0.01;
    let held = step(&t, &state, Ok(&skewed), 11 * MINUTE);
    assert!(
        matches!(
            held.state,
            ReleaseState::Holding {
                reason: HoldReason::SampleRatioMismatch { .. },
                ..
            }
        ),
        "{:?}",
        held.state
    );
    assert!(
        held.decision
            .unwrap()
            .message
            .contains("sample ratio mismatch")
    );
    let resumed = command(&t, &held.state, &Command::Resume, 12 * MINUTE).unwrap();
    let ReleaseState::Running { clock } = &resumed.state else {
        panic!("{:?}", resumed.state)
    };
    assert!(clock.dismissed.iter().any(|d| d == SRM));
    // The dwell restarted at the resume.
    let later = step(&t, &resumed.state, Ok(&skewed), 22 * MINUTE);
    assert!(matches!(
        later.state,
        ReleaseState::WaitingForApproval { .. }
    ));
}

#[test]
fn a_stage_that_cannot_decide_is_extended_then_holds_saying_what_it_needs() {
    let t = template();
    let state = started(&t).state;
    let thin = observations(0.01, 300, (0.01, 0.01), (5.0, 5.0));
    let extended = step(&t, &state, Ok(&thin), 15 * MINUTE);
    assert_eq!(extended.state, state, "within the extension: keeps running");
    let held = step(&t, &state, Ok(&thin), 20 * MINUTE);
    let ReleaseState::Holding {
        reason: HoldReason::InsufficientData { needed },
        ..
    } = &held.state
    else {
        panic!("{:?}", held.state)
    };
    let need: &GuardrailNeed = needed.iter().find(|n| n.guardrail == "error rate").unwrap();
    assert_eq!(need.n_treatment, 300);
    let message = held.decision.unwrap().message;
    assert!(
        message.starts_with("held at 1%: not enough data")
            && message.contains("error rate: 300 of ~"),
        "{message}"
    );
    assert_eq!(
        held.actions,
        [Action::Notify {
            event: Event::Holding
        }]
    );
    // Once the data suffice, it advances by itself.
    let enough = step(&t, &held.state, Ok(&healthy(0.01)), 40 * MINUTE);
    assert!(matches!(
        enough.state,
        ReleaseState::WaitingForApproval { .. }
    ));
}

#[test]
fn a_hold_only_guardrail_holds_and_notifies_and_a_person_can_dismiss_it() {
    let t = template();
    let state = started(&t).state;
    let fewer_signups = observations(0.01, 400_000, (0.01, 0.01), (3.0, 5.0));
    let held = step(&t, &state, Ok(&fewer_signups), 3 * MINUTE);
    assert!(matches!(
        held.state,
        ReleaseState::Holding {
            reason: HoldReason::GuardrailBreached { .. },
            ..
        }
    ));
    assert_eq!(
        held.actions,
        [Action::Notify {
            event: Event::GuardrailBreached
        }]
    );
    // It stays held, without repeating itself.
    let still = step(&t, &held.state, Ok(&fewer_signups), 11 * MINUTE);
    assert_eq!(still.state, held.state);
    assert!(still.actions.is_empty());
    let dismissed = command(
        &t,
        &held.state,
        &Command::Dismiss {
            guardrail: "signups".into(),
        },
        12 * MINUTE,
    )
    .unwrap();
    let next = step(&t, &dismissed.state, Ok(&fewer_signups), 13 * MINUTE);
    assert!(
        matches!(next.state, ReleaseState::WaitingForApproval { .. }),
        "{:?}",
        next.state
    );
    let unknown = command(
        &t,
        &state,
        &Command::Dismiss {
            guardrail: "nope".into(),
        },
        0,
    )
    .unwrap_err();
    assert!(unknown.message.contains("no guardrail named `nope`"));
}

#[test]
fn people_can_pause_resume_skip_roll_back_abort_and_complete() {
    let t = template();
    let state = started(&t).state;
    let paused = command(&t, &state, &Command::Pause, MINUTE).unwrap();
    assert!(matches!(paused.state, ReleaseState::Paused { .. }));
    // A paused release judges nothing, not even a regression.
    let bad = observations(0.01, 400_000, (0.05, 0.01), (5.0, 5.0));
    assert_eq!(
        step(&t, &paused.state, Ok(&bad), 2 * MINUTE).state,
        paused.state
    );
    assert!(command(&t, &paused.state, &Command::Pause, 2 * MINUTE).is_err());
    let resumed = command(&t, &paused.state, &Command::Resume, 3 * MINUTE).unwrap();
    assert_eq!(running_stage(&resumed.state), 0);
    assert!(command(&t, &resumed.state, &Command::Resume, 3 * MINUTE).is_err());
    assert!(command(&t, &resumed.state, &Command::Approve, 3 * MINUTE).is_err());
    assert!(command(&t, &resumed.state, &Command::Start, 3 * MINUTE).is_err());

    // Skipping respects the next stage's approval gate.
    let skipped = command(&t, &resumed.state, &Command::Skip, 4 * MINUTE).unwrap();
    assert!(matches!(
        skipped.state,
        ReleaseState::WaitingForApproval { stage: 1, .. }
    ));

    let rolled = command(&t, &resumed.state, &Command::RollBack, 5 * MINUTE).unwrap();
    assert!(matches!(
        rolled.state,
        ReleaseState::RolledBack { check: None, .. }
    ));
    assert_eq!(
        rolled.actions[0],
        Action::RollBack {
            disable_flag: false
        }
    );
    let aborted = command(&t, &resumed.state, &Command::Abort, 5 * MINUTE).unwrap();
    assert!(matches!(aborted.state, ReleaseState::Aborted { .. }));
    assert!(aborted.actions.is_empty(), "the share stays where it is");
    let completed = command(&t, &resumed.state, &Command::Complete, 5 * MINUTE).unwrap();
    assert_eq!(completed.actions[0], Action::SetShare { percentage: 100.0 });
    assert!(matches!(completed.state, ReleaseState::Completed { .. }));
}

#[test]
fn a_rollback_can_turn_the_flag_off_too() {
    let t = ReleaseTemplate {
        rollback_disables_flag: true,
        ..template()
    };
    let state = started(&t).state;
    let bad = observations(0.01, 400_000, (0.03, 0.01), (5.0, 5.0));
    let next = step(&t, &state, Ok(&bad), 2 * MINUTE);
    assert_eq!(next.actions[0], Action::RollBack { disable_flag: true });
}

#[test]
fn states_and_transitions_round_trip_through_json() {
    let t = template();
    let mut states = vec![ReleaseState::Pending];
    let start = started(&t);
    states.push(start.state.clone());
    let bad = observations(0.01, 400_000, (0.03, 0.01), (5.0, 5.0));
    let rolled = step(&t, &start.state, Ok(&bad), 2 * MINUTE);
    states.push(rolled.state.clone());
    let held = step(&t, &start.state, Err("down"), 2 * MINUTE);
    states.push(held.state.clone());
    for state in states {
        let json = serde_json::to_string(&state).unwrap();
        let back: ReleaseState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state, "{json}");
    }
    let json = serde_json::to_value(&rolled).unwrap();
    assert_eq!(json["state"]["state"], "rolledBack");
    assert_eq!(json["actions"][0]["action"], "rollBack");
    let template_json = serde_json::to_string(&t).unwrap();
    let back: ReleaseTemplate = serde_json::from_str(&template_json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn the_treatments_p99_is_projected_to_full_traffic_from_the_stages_done() {
    let records = [(5.0, Some(50.0)), (25.0, Some(80.0)), (40.0, None)].map(
        |(percentage, treatment_p99_ms)| anchor_rollout::StageRecord {
            percentage,
            treatment_p99_ms,
            evidence: Vec::new(),
            metrics: Default::default(),
        },
    );
    let projection = anchor_rollout::Projection::of(&records).unwrap();
    assert!((projection.projected_p99_ms - 192.5).abs() < 1e-9);
    assert!(
        projection
            .describe()
            .starts_with("p99 grew from 50 ms at 5% to 80 ms at 25%: projected 19"),
        "{}",
        projection.describe()
    );
    assert!(
        anchor_rollout::Projection::of(&records[..1]).is_none(),
        "one point is no line"
    );
}

#[test]
fn a_projected_p99_above_the_limit_holds_instead_of_advancing() {
    let stage = |percentage| Stage {
        percentage,
        dwell_ms: 10 * 60_000,
        warmup_ms: 0,
        approval: false,
        require_coverage: false,
    };
    let t = ReleaseTemplate {
        stages: vec![stage(1.0), stage(5.0), stage(50.0), stage(100.0)],
        guardrails: GuardrailPlan::new(vec![GuardrailSpec {
            name: "error rate".into(),
            guardrail: Guardrail::ErrorRate {
                max_relative_increase: 0.5,
                min_absolute_increase: 0.0,
            },
        }]),
        max_extension_ms: 60_000,
        hold_only: vec![],
        rollback_disables_flag: false,
        p99_limit_ms: Some(300.0),
        coverage: anchor_rollout::CoveragePlan::default(),
        projections: vec![],
    };
    assert!(t.problems().is_empty(), "{:?}", t.problems());
    let with_latency = |share, p99: f64| {
        let mut o = healthy(share);
        for _ in 0..1_000 {
            o.treatment.latency.record(p99);
            o.control.latency.record(100.0);
        }
        o
    };
    let state = started(&t).state;
    let first = step(&t, &state, Ok(&with_latency(0.01, 100.0)), 10 * MINUTE);
    assert_eq!(
        running_stage(&first.state),
        1,
        "one point: no projection yet"
    );
    let second = step(
        &t,
        &first.state,
        Ok(&with_latency(0.05, 130.0)),
        20 * MINUTE,
    );
    let ReleaseState::Holding {
        reason: HoldReason::ProjectedLatency { projection },
        ..
    } = &second.state
    else {
        panic!("{:?}", second.state)
    };
    assert!(projection.projected_p99_ms > 800.0, "{projection:?}");
    let message = second.decision.unwrap().message;
    assert!(
        message.starts_with("held at 5%: p99 grew from 100 ms at 1% to 130 ms at 5%: projected"),
        "{message}"
    );
    assert!(message.ends_with("above the 300 ms limit"), "{message}");
    // Without a limit the projection is only reported with the advance.
    let unlimited = ReleaseTemplate {
        p99_limit_ms: None,
        ..t.clone()
    };
    let advanced = step(
        &unlimited,
        &first.state,
        Ok(&with_latency(0.05, 130.0)),
        20 * MINUTE,
    );
    assert_eq!(running_stage(&advanced.state), 2);
    assert!(
        advanced
            .decision
            .unwrap()
            .message
            .contains("p99 grew from 100 ms at 1% to 130 ms at 5%: projected"),
    );
    let mut bad = t;
    bad.p99_limit_ms = Some(-1.0);
    assert!(bad.problems().iter().any(|p| p.path == "/p99LimitMs"));
}

#[test]
fn a_custom_metrics_projection_is_reported_with_each_advance_and_holds_above_its_limit() {
    let stage = |percentage| Stage {
        percentage,
        dwell_ms: 10 * 60_000,
        warmup_ms: 0,
        approval: false,
        require_coverage: false,
    };
    let t = ReleaseTemplate {
        stages: vec![stage(1.0), stage(5.0), stage(25.0), stage(100.0)],
        guardrails: GuardrailPlan::new(vec![GuardrailSpec {
            name: "error rate".into(),
            guardrail: Guardrail::ErrorRate {
                max_relative_increase: 0.5,
                min_absolute_increase: 0.0,
            },
        }]),
        max_extension_ms: 60_000,
        hold_only: vec![],
        rollback_disables_flag: false,
        p99_limit_ms: None,
        coverage: anchor_rollout::CoveragePlan::default(),
        projections: vec![anchor_rollout::ProjectionLimit {
            metric: "cpu_ms".into(),
            limit: 250.0,
        }],
    };
    assert!(t.problems().is_empty(), "{:?}", t.problems());
    // The treatment's CPU per request grows with its share: 100 ms plus 4 ms per percent
    // (the control's stays at 100 ms and is not what is projected).
    let with_cpu = |share: f64, slope: f64| {
        let mut o = healthy(share);
        let mut treatment = anchor_rollout::MetricSums::default();
        let mut control = anchor_rollout::MetricSums::default();
        for i in 0..1_000 {
            let spread = if i % 2 == 0 { 5.0 } else { -5.0 };
            treatment.record_capped(100.0 + slope * share * 100.0 + spread, 1e9);
            control.record_capped(100.0 + spread, 1e9);
        }
        o.treatment.metrics.insert("cpu_ms".into(), treatment);
        o.control.metrics.insert("cpu_ms".into(), control);
        o
    };
    let state = started(&t).state;
    let first = step(&t, &state, Ok(&with_cpu(0.01, 4.0)), 10 * MINUTE);
    assert_eq!(running_stage(&first.state), 1, "one point: no line yet");
    let ReleaseState::Running { clock } = &first.state else {
        panic!("{:?}", first.state)
    };
    assert!((clock.history[0].metrics["cpu_ms"] - 104.0).abs() < 1e-9);
    let second = step(&t, &first.state, Ok(&with_cpu(0.05, 4.0)), 20 * MINUTE);
    let ReleaseState::Holding {
        reason: HoldReason::ProjectedMetric { projection, limit },
        ..
    } = &second.state
    else {
        panic!("{:?}", second.state)
    };
    assert_eq!(*limit, 250.0);
    assert_eq!(projection.metric, "cpu_ms");
    assert!(
        (projection.projected - 500.0).abs() < 1e-6,
        "{projection:?}"
    );
    assert_eq!(
        second.actions,
        [Action::Notify {
            event: Event::Holding
        }]
    );
    assert_eq!(
        second.decision.unwrap().message,
        "held at 5%: cpu_ms grew from 104 at 1% to 120 at 5%: projected 500 at 100%, above \
         the limit of 250"
    );
    // While it still breaches, the hold stays as it is, without another decision.
    let still = step(&t, &second.state, Ok(&with_cpu(0.05, 4.0)), 21 * MINUTE);
    assert_eq!(still.state, second.state);
    assert!(still.decision.is_none());
    // A flatter growth projects below the limit: the release advances and says why.
    let flat = step(&t, &first.state, Ok(&with_cpu(0.05, 1.0)), 20 * MINUTE);
    assert_eq!(running_stage(&flat.state), 2);
    let message = flat.decision.unwrap().message;
    assert!(
        message.contains("safe; cpu_ms held from 104 at 1% to 105 at 5%: projected 129 at 100%;"),
        "{message}"
    );
    // The same projection from a hold: it clears by advancing.
    let cleared = step(&t, &second.state, Ok(&with_cpu(0.05, 1.0)), 22 * MINUTE);
    assert_eq!(running_stage(&cleared.state), 2);
    // The template round-trips and bad projections are named by their pointers.
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(
        json["projections"],
        serde_json::json!([{"metric": "cpu_ms", "limit": 250.0}])
    );
    let back: ReleaseTemplate = serde_json::from_value(json).unwrap();
    assert_eq!(back, t);
    let mut bad = t;
    bad.projections.push(anchor_rollout::ProjectionLimit {
        metric: "cpu_ms".into(),
        limit: f64::NAN,
    });
    let paths: Vec<String> = bad.problems().into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["/projections/1/metric", "/projections/1/limit"]);
}
