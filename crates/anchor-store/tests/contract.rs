//! The storage contract: every backend passes the same stories.
//!
//! Each story runs against SQLite (a fresh database file) and, when `ANCHOR_TEST_POSTGRES_URL`
//! is set, against PostgreSQL (a fresh schema per test, dropped afterwards). `.ci/run` sets it to
//! the local server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anchor_engine::{EvaluationContext, Flag, FlagConfig, Lifecycle, Segment, Serve, compile};
use anchor_rollout::{ArmObservations, LatencySketch, MetricSums};
use anchor_store::{
    Actor, AuditEntry, AuditFilter, Change, ChangeRequest, ChangeRequestStatus, ConfigChange,
    EvaluationCount, FlagFilter, LastEvaluation, NewChangeRequest, NewEnvironment, NewSdkKey,
    NewToken, OutcomeAggregate, ReviewDecision, Role, SdkKeyKind, SegmentChange, SqlStore, Store,
    StoreError, TelemetryRetention,
};
use anchor_store::{CredentialKind, CredentialUse};
use anchor_store::{
    DeliveryOutcome, DeliveryStatus, NewWebhook, OutboxEvent, Webhook, WebhookFormat, WebhookUpdate,
};
use serde_json::json;

/// A store under test, with a clock the test moves by hand.
struct Fixture {
    store: Arc<dyn Store>,
    clock: Arc<AtomicI64>,
    cleanup: Option<(String, String)>,
}

impl Fixture {
    fn advance(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    async fn finish(self) {
        if let Some((url, schema)) = self.cleanup {
            drop(self.store);
            use sqlx::{Connection, Executor};
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            conn.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await
                .unwrap();
        }
    }
}

fn fake_clock() -> (Arc<AtomicI64>, anchor_store::Clock) {
    let clock = Arc::new(AtomicI64::new(1_800_000_000_000));
    let c = Arc::clone(&clock);
    (clock, Arc::new(move || c.load(Ordering::SeqCst)))
}

async fn sqlite() -> Fixture {
    let dir = std::env::temp_dir().join(format!("anchor-store-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqlStore::open_sqlite(&dir.join("anchor.db")).await.unwrap();
    let (clock, f) = fake_clock();
    Fixture {
        store: Arc::new(store.with_clock(f)),
        clock,
        cleanup: None,
    }
}

async fn postgres() -> Option<Fixture> {
    let url = std::env::var("ANCHOR_TEST_POSTGRES_URL").ok()?;
    let schema = format!("anchor_test_{}", uuid::Uuid::new_v4().simple());
    let store = SqlStore::open_postgres(&url, Some(&schema)).await.unwrap();
    let (clock, f) = fake_clock();
    Some(Fixture {
        store: Arc::new(store.with_clock(f)),
        clock,
        cleanup: Some((url, schema)),
    })
}

/// Declares one test per backend running the same story.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let fixture = super::sqlite().await;
                    super::$name(&fixture).await;
                    fixture.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(fixture) = super::postgres().await else {
                        eprintln!("ANCHOR_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
                        return;
                    };
                    super::$name(&fixture).await;
                    fixture.finish().await;
                }
            )*
        }
    };
}

contract!(
    sessions_are_found_by_hash_until_they_expire_or_end,
    projects_and_environments_are_created_once_and_listed_in_order,
    a_new_flag_gets_version_one_in_every_environment_with_a_revision_and_an_audit_entry,
    a_write_with_a_stale_version_fails_and_changes_nothing,
    every_change_is_an_immutable_revision_and_an_audit_entry_with_a_diff,
    concurrent_writers_never_lose_an_update,
    the_environment_config_compiles_and_leaves_archived_flags_out,
    listing_filters_and_pages_through_flags,
    a_new_environment_gets_every_existing_flag_disabled,
    definition_updates_and_archiving_are_audited,
    the_audit_log_filters_by_actor_environment_flag_and_time,
    the_audit_log_filters_by_an_exact_action_or_an_action_prefix,
    users_are_created_once_and_their_credentials_read_back,
    project_roles_are_granted_changed_and_audited,
    tokens_are_stored_as_hashes_looked_up_listed_and_revoked,
    a_segment_is_created_once_per_environment_read_back_and_listed_without_its_keys,
    a_segment_update_with_a_stale_version_fails_and_changes_nothing,
    segment_updates_write_the_key_list_difference_and_audit_counts_not_keys,
    a_deleted_segment_is_gone_but_its_revisions_stay_and_its_key_can_return,
    the_environment_config_includes_segments_with_their_keys_and_compiles,
    a_segment_with_100000_keys_round_trips_through_the_environment_config,
    sdk_keys_are_stored_as_hashes_looked_up_and_listed_newest_first,
    rotating_an_sdk_key_sets_an_expiry_on_the_old_keys_of_its_kind_only,
    sdk_keys_are_revoked_once_and_audited_without_their_hash,
    a_change_request_is_created_open_and_read_back_without_changing_the_flag,
    an_approval_makes_a_request_approved_and_its_reviews_are_listed_oldest_first,
    an_edit_voids_earlier_approvals_and_reopens_the_request,
    applying_an_approved_request_writes_a_new_version_a_revision_and_an_audit_entry,
    an_applied_request_cannot_be_applied_again,
    applying_after_the_flag_changed_fails_with_a_version_mismatch_and_writes_nothing,
    a_rejected_request_cannot_be_applied_reviewed_or_edited,
    an_open_or_approved_request_can_be_cancelled_once,
    change_requests_are_listed_newest_first_and_filtered_by_status_and_environment,
    due_change_requests_are_the_approved_ones_whose_time_has_come_oldest_first,
    two_concurrent_applies_of_one_request_apply_it_exactly_once,
    a_scheduled_request_that_cannot_apply_is_marked_failed_with_its_reason,
    a_segment_change_request_is_created_open_approved_and_applied,
    applying_a_segment_request_after_the_segment_changed_fails_and_writes_nothing,
    editing_a_segment_request_voids_its_approval_and_the_edited_segment_applies,
    a_segment_deletion_request_once_approved_and_applied_deletes_the_segment,
    a_segment_deletion_request_fails_with_a_version_mismatch_if_the_segment_changed,
    evaluation_counts_add_up_per_minute_flag_and_variant_and_a_retried_batch_counts_once,
    concurrent_telemetry_batches_all_add_up_and_a_raced_retry_counts_once,
    the_last_evaluation_of_each_flag_per_environment_only_moves_forward,
    outcomes_merge_per_minute_flag_and_variant_and_a_retried_batch_counts_once,
    coverage_counts_add_up_per_variant_attribute_and_value_over_a_range_and_a_retried_batch_counts_once,
    concurrent_outcome_batches_merge_their_sketches_and_a_raced_retry_counts_once,
    compaction_merges_old_minutes_into_hours_without_changing_totals_and_expires_old_rows,
    two_concurrent_compactions_merge_every_minute_exactly_once,
    committed_changes_reach_the_change_feed_and_a_lost_connection_resyncs,
    webhooks_are_created_updated_rotated_and_deleted_with_audit_entries_and_never_return_their_secret,
    an_event_is_queued_for_each_enabled_subscribed_webhook_and_a_test_delivery_for_one,
    a_claimed_delivery_is_leased_retried_and_finished_once,
    two_concurrent_claimers_get_disjoint_deliveries,
    the_delivery_log_is_pruned_by_age_and_by_count_per_webhook,
    a_write_carrying_an_event_records_its_deliveries_and_a_failed_write_records_none,
    release_templates_are_created_replaced_with_if_match_listed_and_deleted_with_audit_entries,
    a_release_is_created_once_per_flag_and_environment_and_its_transitions_are_written_whole,
    a_release_transition_with_a_stale_version_or_flag_configuration_changes_nothing,
    only_one_owner_holds_a_release_lease_until_it_expires,
    coverage_counts_are_merged_into_hours_with_the_same_totals_and_expire_with_the_rest,
    a_release_that_ends_without_a_flag_change_moves_the_environment_revision,
    an_environment_is_renamed_moved_and_its_approval_changed_with_one_audit_entry,
    an_environment_update_that_changes_nothing_writes_nothing_and_bad_values_change_nothing,
    deleting_an_environment_removes_everything_in_it_and_leaves_the_others_as_they_were,
    an_environment_with_an_active_release_or_alone_in_its_project_is_not_deleted,
    credential_uses_move_last_used_forward_only_and_skip_unknown_ids,
);

fn admin() -> Actor {
    Actor::user("admin")
}

fn boolean_flag(key: &str, tags: &[&str]) -> Flag {
    serde_json::from_value(json!({
        "key": key, "kind": "boolean",
        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}],
        "description": format!("The {key} feature"),
        "tags": tags,
    }))
    .unwrap()
}

fn off_config() -> FlagConfig {
    serde_json::from_value(json!({
        "enabled": false, "offVariant": "off", "defaultServe": {"variant": "off"}
    }))
    .unwrap()
}

fn on_config() -> FlagConfig {
    serde_json::from_value(json!({
        "enabled": true, "offVariant": "off", "defaultServe": {"variant": "on"}
    }))
    .unwrap()
}

fn change<'a>(
    actor: &'a Actor,
    environment: &'a str,
    flag: &'a str,
    config: &'a FlagConfig,
    expected_version: Option<u64>,
) -> ConfigChange<'a> {
    ConfigChange {
        actor,
        project: "shop",
        environment,
        flag,
        config,
        expected_version,
        comment: None,
        action: "flag.config.updated",
        event: None,
    }
}

/// A project `shop` with environments `development`, `staging` and `production`.
async fn seed(f: &Fixture) {
    let s = &f.store;
    s.create_project(&admin(), "shop", "Shop").await.unwrap();
    for key in ["development", "staging", "production"] {
        s.create_environment(
            &admin(),
            "shop",
            &NewEnvironment {
                key: key.into(),
                name: key.into(),
                requires_approval: key == "production",
                requires_comment: false,
            },
        )
        .await
        .unwrap();
    }
}

async fn projects_and_environments_are_created_once_and_listed_in_order(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.ping().await.unwrap();
    assert!(matches!(
        s.create_project(&admin(), "shop", "Again").await,
        Err(StoreError::AlreadyExists {
            what: "project",
            ..
        })
    ));
    assert!(matches!(
        s.create_project(&admin(), "bad key", "x").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.project("nope").await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    assert_eq!(s.project("shop").await.unwrap().name, "Shop");
    let envs = s.environments("shop").await.unwrap();
    let keys: Vec<&str> = envs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["development", "staging", "production"]);
    assert!(envs[2].requires_approval && !envs[0].requires_approval);
    let dup = NewEnvironment {
        key: "staging".into(),
        name: "Staging".into(),
        requires_approval: false,
        requires_comment: false,
    };
    assert!(matches!(
        s.create_environment(&admin(), "shop", &dup).await,
        Err(StoreError::AlreadyExists {
            what: "environment",
            ..
        })
    ));
    assert_eq!(s.projects().await.unwrap().len(), 1);
}

async fn a_new_flag_gets_version_one_in_every_environment_with_a_revision_and_an_audit_entry(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let record = s
        .create_flag(
            &admin(),
            "shop",
            &boolean_flag("new-checkout", &[]),
            &off_config(),
        )
        .await
        .unwrap();
    assert_eq!(record.environments.len(), 3);
    assert!(record.environments.iter().all(|e| e.config.version == 1));
    assert!(matches!(
        s.create_flag(
            &admin(),
            "shop",
            &boolean_flag("new-checkout", &[]),
            &off_config()
        )
        .await,
        Err(StoreError::AlreadyExists { what: "flag", .. })
    ));
    let history = s
        .flag_revisions("shop", "production", "new-checkout")
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].version, 1);
    let audit = s
        .audit(&AuditFilter {
            project: "shop".into(),
            resource_key: Some("new-checkout".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "flag.created");
    assert_eq!(audit[0].actor, admin());
}

async fn a_write_with_a_stale_version_fails_and_changes_nothing(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let on = on_config();
    let stored = s
        .update_flag_config(&change(&admin(), "production", "f", &on, Some(1)))
        .await
        .unwrap();
    assert_eq!(stored.version, 2);
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    let audit_before = s
        .audit(&AuditFilter {
            project: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .len();

    let off = off_config();
    let stale = s
        .update_flag_config(&change(&admin(), "production", "f", &off, Some(1)))
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "{stale:?}"
    );
    let record = s.flag("shop", "f").await.unwrap();
    let prod = record
        .environments
        .iter()
        .find(|e| e.environment == "production")
        .unwrap();
    assert_eq!(prod.config.version, 2);
    assert!(prod.config.enabled);
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision_before
    );
    let audit_after = s
        .audit(&AuditFilter {
            project: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    assert_eq!(audit_after, audit_before);
    assert!(matches!(
        s.update_flag_config(&change(&admin(), "production", "missing", &off, None))
            .await,
        Err(StoreError::NotFound { what: "flag", .. })
    ));
    assert!(matches!(
        s.update_flag_config(&change(&admin(), "qa", "f", &off, None))
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
}

async fn every_change_is_an_immutable_revision_and_an_audit_entry_with_a_diff(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let on = on_config();
    let ann = Actor::user("ann");
    let mut c = change(&ann, "staging", "f", &on, None);
    c.comment = Some("turn it on in staging");
    s.update_flag_config(&c).await.unwrap();

    let history = s.flag_revisions("shop", "staging", "f").await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    assert_eq!(history[0].actor, ann);
    assert_eq!(history[0].comment.as_deref(), Some("turn it on in staging"));
    assert_eq!(history[0].body["enabled"], json!(true));
    let first = s.flag_revision("shop", "staging", "f", 1).await.unwrap();
    assert_eq!(first.body["enabled"], json!(false));
    assert!(matches!(
        s.flag_revision("shop", "staging", "f", 9).await,
        Err(StoreError::NotFound {
            what: "revision",
            ..
        })
    ));
    // Other environments are untouched.
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        1
    );
    // Only the revisions before each configuration's current one: staging's first.
    let earlier = s.earlier_flag_revisions("shop").await.unwrap();
    assert_eq!(
        earlier
            .iter()
            .map(|r| (r.environment.as_str(), r.flag.as_str(), r.version))
            .collect::<Vec<_>>(),
        [("staging", "f", 1)]
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&earlier[0].config).unwrap()["enabled"],
        json!(false)
    );

    let audit = s
        .audit(&AuditFilter {
            project: "shop".into(),
            actor: Some("ann".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    let entry = &audit[0];
    assert_eq!(entry.environment.as_deref(), Some("staging"));
    assert_eq!(entry.comment.as_deref(), Some("turn it on in staging"));
    let ops = entry.diff.as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/enabled" && op["value"] == json!(true)),
        "{:#}",
        entry.diff
    );
}

async fn concurrent_writers_never_lose_an_update(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    // Twenty writers that all read version 1: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&f.store);
        tasks.push(tokio::spawn(async move {
            let actor = Actor::user(format!("writer-{i}"));
            let config = on_config();
            store
                .update_flag_config(&change(&actor, "production", "f", &config, Some(1)))
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => {
                won += 1;
                assert_eq!(c.version, 2);
            }
            Err(StoreError::VersionMismatch { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won, 1);
    // Twenty unconditional writers: all land, each with its own version.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&f.store);
        tasks.push(tokio::spawn(async move {
            let actor = Actor::user(format!("writer-{i}"));
            let config = if i % 2 == 0 {
                on_config()
            } else {
                off_config()
            };
            store
                .update_flag_config(&change(&actor, "production", "f", &config, None))
                .await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (3..=22).collect::<Vec<_>>());
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        22
    );
}

async fn the_environment_config_compiles_and_leaves_archived_flags_out(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let (_, revision0) = s.environment_config("shop", "production").await.unwrap();
    for key in ["a", "b", "c"] {
        s.create_flag(&admin(), "shop", &boolean_flag(key, &[]), &on_config())
            .await
            .unwrap();
    }
    s.set_flag_archived(&admin(), "shop", "b", true)
        .await
        .unwrap();
    let (config, revision) = s.environment_config("shop", "production").await.unwrap();
    assert!(revision > revision0);
    let keys: Vec<&str> = config.flags.iter().map(|f| f.flag.key.as_str()).collect();
    assert_eq!(keys, ["a", "c"]);
    let (snapshot, diagnostics) = compile(&config);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let e = anchor_engine::evaluate(&snapshot, "a", &EvaluationContext::new());
    assert_eq!(e.value(), Some(&json!(true)));
    assert_eq!(e.flag_version(), Some(1));
}

async fn listing_filters_and_pages_through_flags(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    for i in 0..25 {
        let tags: &[&str] = if i % 5 == 0 {
            &["checkout"]
        } else {
            &["search"]
        };
        let mut flag = boolean_flag(&format!("flag-{i:02}"), tags);
        if i % 2 == 0 {
            flag.lifecycle = Lifecycle::Permanent;
        }
        let config = if i < 3 { on_config() } else { off_config() };
        s.create_flag(&admin(), "shop", &flag, &config)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .flags(
                "shop",
                &FlagFilter {
                    limit: 10,
                    after: after.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|r| r.flag.key.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let by = |filter: FlagFilter| {
        let store = Arc::clone(&f.store);
        async move {
            store
                .flags("shop", &filter)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|r| r.flag.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(FlagFilter {
            tag: Some("checkout".into()),
            ..Default::default()
        })
        .await,
        ["flag-00", "flag-05", "flag-10", "flag-15", "flag-20"]
    );
    assert_eq!(
        by(FlagFilter {
            enabled_in: Some("production".into()),
            ..Default::default()
        })
        .await,
        ["flag-00", "flag-01", "flag-02"]
    );
    assert_eq!(
        by(FlagFilter {
            text: Some("FLAG-1".into()),
            lifecycle: Some(Lifecycle::Permanent),
            ..Default::default()
        })
        .await,
        ["flag-10", "flag-12", "flag-14", "flag-16", "flag-18"]
    );
    s.set_flag_archived(&admin(), "shop", "flag-00", true)
        .await
        .unwrap();
    assert_eq!(by(FlagFilter::default()).await.len(), 24);
    assert_eq!(
        by(FlagFilter {
            include_archived: true,
            ..Default::default()
        })
        .await
        .len(),
        25
    );
}

async fn a_new_environment_gets_every_existing_flag_disabled(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &on_config())
        .await
        .unwrap();
    s.create_environment(
        &admin(),
        "shop",
        &NewEnvironment {
            key: "qa".into(),
            name: "QA".into(),
            requires_approval: false,
            requires_comment: true,
        },
    )
    .await
    .unwrap();
    let record = s.flag("shop", "f").await.unwrap();
    let qa = record.environments.last().unwrap();
    assert_eq!(qa.environment, "qa");
    assert!(!qa.config.enabled);
    assert_eq!(qa.config.off_variant, "off");
    assert_eq!(qa.config.default_serve, Serve::Variant("off".into()));
    let (config, _) = s.environment_config("shop", "qa").await.unwrap();
    assert!(compile(&config).1.is_empty());
    assert_eq!(s.flag_revisions("shop", "qa", "f").await.unwrap().len(), 1);
}

async fn definition_updates_and_archiving_are_audited(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &["a"]), &off_config())
        .await
        .unwrap();
    let mut flag = boolean_flag("f", &["a", "b"]);
    flag.description = "Better words".into();
    let record = s
        .update_flag(&Actor::user("bob"), "shop", &flag, Some("describe it"))
        .await
        .unwrap();
    assert_eq!(record.flag.description, "Better words");
    let record = s
        .set_flag_archived(&admin(), "shop", "f", true)
        .await
        .unwrap();
    assert!(record.archived);
    let actions: Vec<String> = s
        .audit(&AuditFilter {
            project: "shop".into(),
            resource_key: Some("f".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["flag.archived", "flag.updated", "flag.created"]);
    assert!(matches!(
        s.update_flag(&admin(), "shop", &boolean_flag("ghost", &[]), None)
            .await,
        Err(StoreError::NotFound { what: "flag", .. })
    ));
}

async fn the_audit_log_filters_by_actor_environment_flag_and_time(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    s.create_flag(&admin(), "shop", &boolean_flag("g", &[]), &off_config())
        .await
        .unwrap();
    f.advance(60_000);
    let start = 1_800_000_060_000;
    let on = on_config();
    let ann = Actor::user("ann");
    s.update_flag_config(&change(&ann, "staging", "f", &on, None))
        .await
        .unwrap();
    f.advance(60_000);
    s.update_flag_config(&change(&admin(), "production", "g", &on, None))
        .await
        .unwrap();
    let query = |filter: AuditFilter| {
        let store = Arc::clone(&f.store);
        async move {
            store
                .audit(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|a| (a.actor.id, a.resource_key, a.environment))
                .collect::<Vec<_>>()
        }
    };
    let base = || AuditFilter {
        project: "shop".into(),
        ..Default::default()
    };
    assert_eq!(
        query(AuditFilter {
            since: Some(start),
            ..base()
        })
        .await,
        [
            (
                "admin".to_string(),
                "g".to_string(),
                Some("production".to_string())
            ),
            (
                "ann".to_string(),
                "f".to_string(),
                Some("staging".to_string())
            ),
        ]
    );
    assert_eq!(
        query(AuditFilter {
            since: Some(start),
            until: Some(start + 60_000),
            ..base()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        query(AuditFilter {
            environment: Some("production".into()),
            ..base()
        })
        .await
        .len(),
        2,
        "the environment's creation and the change to g"
    );
    assert_eq!(query(AuditFilter { limit: 2, ..base() }).await.len(), 2);
}

async fn the_audit_log_filters_by_an_exact_action_or_an_action_prefix(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let on = on_config();
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    s.update_flag_config(&change(&admin(), "staging", "f", &on, None))
        .await
        .unwrap();
    s.update_flag_config(&ConfigChange {
        action: "flag.killed",
        ..change(&admin(), "production", "f", &off_config(), None)
    })
    .await
    .unwrap();
    // Each filter and the actions it returns, newest first.
    let cases: [(&str, &[&str]); 8] = [
        ("flag.config.updated", &["flag.config.updated"]),
        ("flag.killed", &["flag.killed"]),
        // Without a trailing `.` or `*` the value is an exact action, not a prefix.
        ("flag.config", &[]),
        ("flag.config*", &["flag.config.updated"]),
        (
            "flag.",
            &["flag.killed", "flag.config.updated", "flag.created"],
        ),
        (
            "flag.*",
            &["flag.killed", "flag.config.updated", "flag.created"],
        ),
        // `_` is an ordinary character, not a `LIKE` wildcard.
        ("flag_*", &[]),
        ("environment.*", &["environment.created"; 3]),
    ];
    for (action, expected) in cases {
        let actions: Vec<String> = s
            .audit(&AuditFilter {
                project: "shop".into(),
                action: Some(action.into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, expected, "filter {action}");
    }
    let everything = s
        .audit(&AuditFilter {
            project: "shop".into(),
            action: Some(" ".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(everything.len(), 7, "a blank action filters nothing");
}

/// An Argon2 PHC string as the server would make it.
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2YQ0l2VfQ3l0b3Blbm5vdGFyZWFsaGFzaA";

async fn users_are_created_once_and_their_credentials_read_back(f: &Fixture) {
    let s = &f.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    let system = Actor::system("bootstrap");
    let root = s
        .create_user(&system, "root", PASSWORD_HASH, true)
        .await
        .unwrap();
    assert!(root.instance_admin);
    assert_eq!(root.username, "root");
    assert_eq!(root.created_at, 1_800_000_000_000);
    assert!(uuid::Uuid::parse_str(&root.id).is_ok_and(|id| id.get_version_num() == 7));
    f.advance(1_000);
    let ann = s
        .create_user(
            &Actor::user(&root.id),
            "ann.lee@shop-1_x",
            "other-hash",
            false,
        )
        .await
        .unwrap();
    assert!(!ann.instance_admin);

    let (user, hash) = s.user_credentials("root").await.unwrap();
    assert_eq!(user, root);
    assert_eq!(hash, PASSWORD_HASH, "returned verbatim");
    assert_eq!(
        s.user_credentials("ann.lee@shop-1_x").await.unwrap().1,
        "other-hash"
    );
    assert_eq!(s.user(&ann.id).await.unwrap(), ann);
    assert_eq!(s.users().await.unwrap(), [ann.clone(), root.clone()]);
    assert_eq!(s.count_users().await.unwrap(), 2);

    assert!(matches!(
        s.create_user(&system, "root", "x", false).await,
        Err(StoreError::AlreadyExists { what: "user", .. })
    ));
    let too_long = "a".repeat(65);
    for bad in [
        "",
        "with space",
        "semi;colon",
        "ünïcode",
        "slash/",
        too_long.as_str(),
    ] {
        assert!(
            matches!(
                s.create_user(&system, bad, "x", false).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(
        s.create_user(&system, &"a".repeat(64), "x", false)
            .await
            .is_ok()
    );
    assert_eq!(s.count_users().await.unwrap(), 3);
    assert!(matches!(
        s.user_credentials("nobody").await,
        Err(StoreError::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        s.user("no-such-id").await,
        Err(StoreError::NotFound { what: "user", .. })
    ));

    let audit = s.instance_audit(0).await.unwrap();
    assert_eq!(audit.len(), 3);
    let first = audit.last().unwrap();
    assert_eq!(first.action, "user.created");
    assert_eq!(first.resource_kind, "user");
    assert_eq!(first.resource_key, "root");
    assert_eq!(first.actor, system);
    assert_eq!(first.project, "");
    assert_eq!(first.environment, None);
    assert_eq!(audit[1].resource_key, "ann.lee@shop-1_x");
    let text = serde_json::to_string(&audit).unwrap();
    assert!(
        !text.contains(PASSWORD_HASH) && !text.contains("other-hash"),
        "{text}"
    );
    assert_eq!(s.instance_audit(1).await.unwrap().len(), 1);
}

async fn project_roles_are_granted_changed_and_audited(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let ann = s
        .create_user(&admin(), "ann", PASSWORD_HASH, false)
        .await
        .unwrap();
    s.create_project(&admin(), "blog", "Blog").await.unwrap();
    assert_eq!(s.project_role("shop", &ann.id).await.unwrap(), None);

    s.set_project_role(&admin(), "shop", &ann.id, Role::Viewer)
        .await
        .unwrap();
    assert_eq!(
        s.project_role("shop", &ann.id).await.unwrap(),
        Some(Role::Viewer)
    );
    assert_eq!(s.project_role("blog", &ann.id).await.unwrap(), None);
    s.set_project_role(&admin(), "shop", &ann.id, Role::Admin)
        .await
        .unwrap();
    assert_eq!(
        s.project_role("shop", &ann.id).await.unwrap(),
        Some(Role::Admin)
    );
    // Setting the same role again changes nothing.
    s.set_project_role(&admin(), "shop", &ann.id, Role::Admin)
        .await
        .unwrap();

    assert!(matches!(
        s.set_project_role(&admin(), "nope", &ann.id, Role::Editor)
            .await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    assert!(matches!(
        s.project_role("nope", &ann.id).await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    assert!(matches!(
        s.set_project_role(&admin(), "shop", "ghost", Role::Editor)
            .await,
        Err(StoreError::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        s.project_role("shop", "ghost").await,
        Err(StoreError::NotFound { what: "user", .. })
    ));

    let audit = s
        .audit(&AuditFilter {
            project: "shop".into(),
            resource_key: Some("ann".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["member.role_set", "member.role_set"]
    );
    assert!(audit.iter().all(|a| a.resource_kind == "member"));
    let ops = audit[0].diff.as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/role" && op["value"] == json!("admin")),
        "{:#}",
        audit[0].diff
    );
    assert_eq!(audit[1].diff[0]["value"]["role"], json!("viewer"));
    assert!(
        s.audit(&AuditFilter {
            project: "blog".into(),
            resource_key: Some("ann".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
    for role in [Role::Viewer, Role::Editor, Role::Admin] {
        assert_eq!(Role::parse(role.as_str()), Some(role));
        assert_eq!(serde_json::to_value(role).unwrap(), json!(role.as_str()));
    }
    assert_eq!(Role::parse("owner"), None);
}

async fn tokens_are_stored_as_hashes_looked_up_listed_and_revoked(f: &Fixture) {
    let s = &f.store;
    let ann = s
        .create_user(&Actor::system("bootstrap"), "ann", PASSWORD_HASH, false)
        .await
        .unwrap();
    let bob = s
        .create_user(&Actor::system("bootstrap"), "bob", PASSWORD_HASH, false)
        .await
        .unwrap();
    let as_ann = Actor::user(&ann.id);
    let hash = |i: u32| format!("sha256:{i:064x}");
    let new = |name: &str, i: u32, expires_at: Option<i64>| NewToken {
        user_id: ann.id.clone(),
        name: name.into(),
        token_hash: hash(i),
        role: Role::Editor,
        expires_at,
    };

    let ci = s.create_token(&as_ann, &new("ci", 1, None)).await.unwrap();
    assert_eq!(ci.user, ann);
    assert_eq!(ci.role, Role::Editor);
    assert!(!ci.revoked);
    assert!(uuid::Uuid::parse_str(&ci.id).is_ok_and(|id| id.get_version_num() == 7));
    f.advance(1_000);
    let expires = 1_900_000_000_000;
    let laptop = s
        .create_token(&as_ann, &new("laptop", 2, Some(expires)))
        .await
        .unwrap();
    assert_eq!(laptop.expires_at, Some(expires));
    s.create_token(
        &Actor::user(&bob.id),
        &NewToken {
            user_id: bob.id.clone(),
            ..new("bob's", 3, None)
        },
    )
    .await
    .unwrap();

    assert_eq!(s.token_by_hash(&hash(1)).await.unwrap(), Some(ci.clone()));
    assert_eq!(
        s.token_by_hash(&hash(2)).await.unwrap(),
        Some(laptop.clone())
    );
    assert_eq!(s.token_by_hash(&hash(9)).await.unwrap(), None);
    assert_eq!(
        s.tokens(&ann.id).await.unwrap(),
        [laptop.clone(), ci.clone()],
        "newest first, only ann's"
    );
    assert!(matches!(
        s.create_token(&as_ann, &new("again", 1, None)).await,
        Err(StoreError::AlreadyExists { what: "token", .. })
    ));
    assert!(matches!(
        s.create_token(
            &as_ann,
            &NewToken {
                user_id: "ghost".into(),
                ..new("x", 4, None)
            }
        )
        .await,
        Err(StoreError::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        s.create_token(&as_ann, &new("", 5, None)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.tokens("ghost").await,
        Err(StoreError::NotFound { what: "user", .. })
    ));

    f.advance(1_000);
    // Another user's token is not found through ann.
    assert!(matches!(
        s.revoke_token(&as_ann, &bob.id, &ci.id).await,
        Err(StoreError::NotFound { what: "token", .. })
    ));
    assert!(matches!(
        s.revoke_token(&as_ann, &ann.id, "no-such-token").await,
        Err(StoreError::NotFound { what: "token", .. })
    ));
    s.revoke_token(&as_ann, &ann.id, &ci.id).await.unwrap();
    s.revoke_token(&as_ann, &ann.id, &ci.id).await.unwrap();
    let revoked = s.token_by_hash(&hash(1)).await.unwrap().unwrap();
    assert!(revoked.revoked);
    assert_eq!(revoked.id, ci.id);
    assert!(!s.token_by_hash(&hash(2)).await.unwrap().unwrap().revoked);
    let listed = s.tokens(&ann.id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|t| (t.name.as_str(), t.revoked))
            .collect::<Vec<_>>(),
        [("laptop", false), ("ci", true)]
    );

    let audit = s.instance_audit(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "token.revoked",
            "token.created",
            "token.created",
            "token.created",
            "user.created",
            "user.created",
        ],
        "newest first; revoking twice audits once"
    );
    assert_eq!(audit[0].resource_key, ci.id);
    assert_eq!(audit[0].actor, as_ann);
    assert_eq!(audit[0].created_at, 1_800_000_002_000);
    let created = audit.iter().find(|a| a.resource_key == laptop.id).unwrap();
    assert_eq!(created.resource_kind, "token");
    assert_eq!(created.diff[0]["value"]["name"], json!("laptop"));
    assert_eq!(created.diff[0]["value"]["expiresAt"], json!(expires));
    let text = serde_json::to_string(&audit).unwrap();
    for secret in [hash(1), hash(2), hash(3), PASSWORD_HASH.to_string()] {
        assert!(!text.contains(&secret), "{secret} in {text}");
    }
}

fn segment(key: &str, included: &[&str], excluded: &[&str]) -> Segment {
    serde_json::from_value(json!({
        "key": key,
        "description": format!("The {key} segment"),
        "included": included,
        "excluded": excluded,
        "rules": [{
            "id": "staff",
            "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@anchor.dev"]}]
        }],
    }))
    .unwrap()
}

fn segment_change<'a>(
    actor: &'a Actor,
    environment: &'a str,
    segment: &'a Segment,
    expected_version: Option<u64>,
) -> SegmentChange<'a> {
    SegmentChange {
        actor,
        project: "shop",
        environment,
        segment,
        expected_version,
        comment: None,
    }
}

async fn audit_of(f: &Fixture, resource_key: &str) -> Vec<AuditEntry> {
    f.store
        .audit(&AuditFilter {
            project: "shop".into(),
            resource_key: Some(resource_key.into()),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn a_segment_is_created_once_per_environment_read_back_and_listed_without_its_keys(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let revision0 = s.environment("shop", "production").await.unwrap().revision;
    let beta = segment(
        "beta",
        &["member-3", "member-1", "member-2", "member-1"],
        &["member-9"],
    );
    let record = s
        .create_segment(&segment_change(&admin(), "production", &beta, None))
        .await
        .unwrap();
    assert_eq!(record.environment, "production");
    assert_eq!(record.updated_at, 1_800_000_000_000);
    assert_eq!(record.segment.version, 1);
    assert_eq!(
        record.segment.included,
        ["member-1", "member-2", "member-3"],
        "deduplicated, in order"
    );
    assert_eq!(record.segment.excluded, ["member-9"]);
    assert_eq!(record.segment.rules, beta.rules);
    assert_eq!(record.segment.description, beta.description);
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision0 + 1
    );
    assert_eq!(
        s.segment("shop", "production", "beta").await.unwrap(),
        record
    );

    assert!(matches!(
        s.create_segment(&segment_change(&admin(), "production", &beta, None))
            .await,
        Err(StoreError::AlreadyExists {
            what: "segment",
            ..
        })
    ));
    // Per environment: the same key elsewhere is another segment.
    let staging = segment("beta", &["member-5"], &[]);
    s.create_segment(&segment_change(&admin(), "staging", &staging, None))
        .await
        .unwrap();
    assert_eq!(
        s.segment("shop", "staging", "beta")
            .await
            .unwrap()
            .segment
            .included,
        ["member-5"]
    );
    for bad in ["bad key", "", "slash/"] {
        assert!(
            matches!(
                s.create_segment(&segment_change(
                    &admin(),
                    "production",
                    &segment(bad, &[], &[]),
                    None
                ))
                .await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.segment("shop", "production", "ghost").await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    assert!(matches!(
        s.segment("shop", "qa", "beta").await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    assert!(matches!(
        s.create_segment(&segment_change(&admin(), "qa", &beta, None))
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));

    f.advance(1_000);
    let mut alpha = segment("alpha", &[], &[]);
    alpha.rules.clear();
    alpha.description.clear();
    s.create_segment(&segment_change(&admin(), "production", &alpha, None))
        .await
        .unwrap();
    let listed = s.segments("shop", "production").await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
        ["alpha", "beta"],
        "in key order"
    );
    assert_eq!(
        (
            listed[0].included_count,
            listed[0].excluded_count,
            listed[0].rules
        ),
        (0, 0, 0)
    );
    assert_eq!(listed[0].updated_at, 1_800_000_001_000);
    let b = &listed[1];
    assert_eq!(b.description, "The beta segment");
    assert_eq!((b.included_count, b.excluded_count, b.rules), (3, 1, 1));
    assert_eq!((b.version, b.updated_at), (1, 1_800_000_000_000));
    assert_eq!(s.segments("shop", "staging").await.unwrap().len(), 1);
    assert!(s.segments("shop", "development").await.unwrap().is_empty());
}

async fn a_segment_update_with_a_stale_version_fails_and_changes_nothing(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let v1 = segment("beta", &["member-1"], &[]);
    s.create_segment(&segment_change(&admin(), "production", &v1, None))
        .await
        .unwrap();
    f.advance(1_000);
    let v2 = segment("beta", &["member-1", "member-2"], &["member-3"]);
    let stored = s
        .update_segment(&segment_change(&admin(), "production", &v2, Some(1)))
        .await
        .unwrap();
    assert_eq!(stored.segment.version, 2);
    assert_eq!(stored.updated_at, 1_800_000_001_000);
    assert_eq!(stored.segment.included, ["member-1", "member-2"]);
    assert_eq!(stored.segment.excluded, ["member-3"]);
    assert_eq!(
        s.segment("shop", "production", "beta").await.unwrap(),
        stored
    );
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    let audit_before = audit_of(f, "beta").await.len();

    f.advance(1_000);
    let mut stale = segment("beta", &["member-7"], &[]);
    stale.description = "Stale".into();
    let result = s
        .update_segment(&segment_change(&admin(), "production", &stale, Some(1)))
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::VersionMismatch {
                what: "segment",
                expected: 1,
                actual: 2,
            })
        ),
        "{result:?}"
    );
    assert_eq!(
        s.segment("shop", "production", "beta").await.unwrap(),
        stored,
        "nothing changed"
    );
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision_before
    );
    assert_eq!(audit_of(f, "beta").await.len(), audit_before);
    assert_eq!(
        s.segment_revisions("shop", "production", "beta")
            .await
            .unwrap()
            .len(),
        2
    );

    // Unconditional writes land.
    let v3 = s
        .update_segment(&segment_change(&admin(), "production", &stale, None))
        .await
        .unwrap();
    assert_eq!(v3.segment.version, 3);
    assert_eq!(v3.segment.included, ["member-7"]);
    assert!(v3.segment.excluded.is_empty());
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision_before + 1
    );
    assert!(matches!(
        s.update_segment(&segment_change(
            &admin(),
            "production",
            &segment("ghost", &[], &[]),
            None
        ))
        .await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    assert!(matches!(
        s.update_segment(&segment_change(&admin(), "staging", &v2, None))
            .await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
}

async fn segment_updates_write_the_key_list_difference_and_audit_counts_not_keys(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let created = segment(
        "beta",
        &["member-1", "member-2", "member-3", "member-4", "member-5"],
        &["member-0"],
    );
    s.create_segment(&segment_change(&admin(), "production", &created, None))
        .await
        .unwrap();
    f.advance(1_000);
    let mut updated = segment(
        "beta",
        &["member-3", "member-4", "member-5", "member-6", "member-7"],
        &[],
    );
    updated.description = "Trimmed".into();
    let ann = Actor::user("ann");
    let mut change = segment_change(&ann, "production", &updated, Some(1));
    change.comment = Some("trim the beta");
    s.update_segment(&change).await.unwrap();
    let read = s.segment("shop", "production", "beta").await.unwrap();
    assert_eq!(
        read.segment.included,
        ["member-3", "member-4", "member-5", "member-6", "member-7"]
    );
    assert!(read.segment.excluded.is_empty());
    assert_eq!(read.segment.description, "Trimmed");
    // Swapping a key from one list to the other.
    let swapped = segment("beta", &["member-4", "member-5"], &["member-3"]);
    s.update_segment(&segment_change(&admin(), "production", &swapped, Some(2)))
        .await
        .unwrap();
    let read = s.segment("shop", "production", "beta").await.unwrap();
    assert_eq!(read.segment.included, ["member-4", "member-5"]);
    assert_eq!(read.segment.excluded, ["member-3"]);

    let audit = audit_of(f, "beta").await;
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["segment.updated", "segment.updated", "segment.created"]
    );
    assert!(audit.iter().all(|a| a.resource_kind == "segment"
        && a.environment.as_deref() == Some("production")));
    let created_entry = &audit[2];
    assert_eq!(
        created_entry.diff[0]["value"]["keyChanges"],
        json!({"included": {"added": 5, "removed": 0}, "excluded": {"added": 1, "removed": 0}})
    );
    assert_eq!(created_entry.diff[0]["value"]["version"], json!(1));
    let trim = &audit[1];
    assert_eq!(trim.actor, ann);
    assert_eq!(trim.comment.as_deref(), Some("trim the beta"));
    let ops = trim.diff.as_array().unwrap();
    assert!(
        ops.iter().any(|op| op["op"] == "add"
            && op["path"] == "/keyChanges"
            && op["value"]
                == json!({"included": {"added": 2, "removed": 2}, "excluded": {"added": 0, "removed": 1}})),
        "{:#}",
        trim.diff
    );
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/description" && op["value"] == json!("Trimmed")),
        "{:#}",
        trim.diff
    );
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/version" && op["value"] == json!(2)),
        "{:#}",
        trim.diff
    );
    assert_eq!(
        audit[0]
            .diff
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/keyChanges")
            .unwrap()["value"],
        json!({"included": {"added": 0, "removed": 3}, "excluded": {"added": 1, "removed": 0}})
    );
    let text = serde_json::to_string(&audit).unwrap();
    assert!(
        !text.contains("member-"),
        "key lists in the audit log: {text}"
    );

    let history = s
        .segment_revisions("shop", "production", "beta")
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        [3, 2, 1],
        "newest first"
    );
    assert!(history.iter().all(|r| r.resource_kind == "segment"
        && r.resource_key == "beta"
        && r.environment == "production"));
    assert_eq!(history[1].actor, ann);
    assert_eq!(history[1].comment.as_deref(), Some("trim the beta"));
    assert_eq!(history[1].created_at, 1_800_000_001_000);
    // A revision is the whole segment, key lists included.
    let second: Segment = serde_json::from_value(history[1].body.clone()).unwrap();
    assert_eq!(
        second.included,
        ["member-3", "member-4", "member-5", "member-6", "member-7"]
    );
    assert_eq!(second.version, 2);
    assert_eq!(second.description, "Trimmed");
    let first: Segment = serde_json::from_value(history[2].body.clone()).unwrap();
    assert_eq!(first.excluded, ["member-0"]);
    assert_eq!(first.included.len(), 5);
}

async fn a_deleted_segment_is_gone_but_its_revisions_stay_and_its_key_can_return(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let beta = segment("beta", &["member-1", "member-2"], &["member-3"]);
    s.create_segment(&segment_change(&admin(), "production", &beta, None))
        .await
        .unwrap();
    s.update_segment(&segment_change(&admin(), "production", &beta, Some(1)))
        .await
        .unwrap();
    s.create_segment(&segment_change(&admin(), "staging", &beta, None))
        .await
        .unwrap();
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    let bob = Actor::user("bob");
    s.delete_segment(&bob, "shop", "production", "beta")
        .await
        .unwrap();
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision_before + 1
    );
    assert!(matches!(
        s.segment("shop", "production", "beta").await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    assert!(s.segments("shop", "production").await.unwrap().is_empty());
    let (config, _) = s.environment_config("shop", "production").await.unwrap();
    assert!(config.segments.is_empty());
    // The other environment's segment of the same key is untouched.
    assert_eq!(
        s.segment("shop", "staging", "beta")
            .await
            .unwrap()
            .segment
            .included,
        ["member-1", "member-2"]
    );
    assert!(matches!(
        s.delete_segment(&bob, "shop", "production", "beta").await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    assert!(matches!(
        s.delete_segment(&bob, "shop", "qa", "beta").await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    let audit = audit_of(f, "beta").await;
    let deleted = &audit[0];
    assert_eq!(deleted.action, "segment.deleted");
    assert_eq!(deleted.actor, bob);
    assert_eq!(deleted.resource_kind, "segment");
    assert_eq!(deleted.environment.as_deref(), Some("production"));
    assert_eq!(
        deleted.diff,
        json!([{"op": "replace", "path": "", "value": null}])
    );
    assert_eq!(
        s.segment_revisions("shop", "production", "beta")
            .await
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect::<Vec<_>>(),
        [2, 1],
        "the history stays"
    );
    assert!(matches!(
        s.segment_revisions("shop", "production", "ghost").await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));

    // Created again, it continues the versions, so a stale `If-Match` of the old one fails.
    let again = segment("beta", &["member-4"], &[]);
    let record = s
        .create_segment(&segment_change(&admin(), "production", &again, None))
        .await
        .unwrap();
    assert_eq!(record.segment.version, 3);
    assert_eq!(record.segment.included, ["member-4"]);
    assert!(record.segment.excluded.is_empty());
    assert!(matches!(
        s.update_segment(&segment_change(&admin(), "production", &again, Some(1)))
            .await,
        Err(StoreError::VersionMismatch {
            what: "segment",
            ..
        })
    ));
    assert_eq!(
        s.segment_revisions("shop", "production", "beta")
            .await
            .unwrap()
            .len(),
        3
    );
}

async fn the_environment_config_includes_segments_with_their_keys_and_compiles(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let uses_beta: FlagConfig = serde_json::from_value(json!({
        "enabled": true,
        "offVariant": "off",
        "rules": [{
            "id": "beta",
            "conditions": [{"attribute": "targetingKey", "operator": "segment_match", "values": ["beta"]}],
            "serve": {"variant": "on"}
        }],
        "defaultServe": {"variant": "off"}
    }))
    .unwrap();
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &uses_beta)
        .await
        .unwrap();
    let (_, revision0) = s.environment_config("shop", "production").await.unwrap();
    let beta = segment("beta", &["member-2", "member-1"], &["member-3"]);
    s.create_segment(&segment_change(&admin(), "production", &beta, None))
        .await
        .unwrap();
    let alpha = segment("alpha", &[], &["member-1"]);
    s.create_segment(&segment_change(&admin(), "production", &alpha, None))
        .await
        .unwrap();
    s.update_segment(&segment_change(&admin(), "production", &alpha, Some(1)))
        .await
        .unwrap();

    let (config, revision) = s.environment_config("shop", "production").await.unwrap();
    assert_eq!(revision, revision0 + 3, "every segment change counts");
    assert_eq!(
        config
            .segments
            .iter()
            .map(|s| (s.key.as_str(), s.version))
            .collect::<Vec<_>>(),
        [("alpha", 2), ("beta", 1)]
    );
    let stored = &config.segments[1];
    assert_eq!(stored.included, ["member-1", "member-2"]);
    assert_eq!(stored.excluded, ["member-3"]);
    assert_eq!(stored.rules, beta.rules);
    assert_eq!(stored.description, beta.description);
    assert_eq!(config.segments[0].excluded, ["member-1"]);
    assert_eq!(
        *stored,
        s.segment("shop", "production", "beta")
            .await
            .unwrap()
            .segment
    );

    let (snapshot, diagnostics) = compile(&config);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let serves = |context: EvaluationContext| {
        anchor_engine::evaluate(&snapshot, "f", &context)
            .value()
            .cloned()
    };
    assert_eq!(
        serves(EvaluationContext::with_targeting_key("member-1")),
        Some(json!(true))
    );
    assert_eq!(
        serves(EvaluationContext::with_targeting_key("member-3").with("email", "x@anchor.dev")),
        Some(json!(false)),
        "excluded"
    );
    assert_eq!(
        serves(EvaluationContext::with_targeting_key("member-8").with("email", "x@anchor.dev")),
        Some(json!(true)),
        "by rule"
    );
    assert_eq!(
        serves(EvaluationContext::with_targeting_key("member-8")),
        Some(json!(false))
    );
    // Segments belong to one environment.
    let (staging, _) = s.environment_config("shop", "staging").await.unwrap();
    assert!(staging.segments.is_empty());
}

async fn a_segment_with_100000_keys_round_trips_through_the_environment_config(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let keys: Vec<String> = (0..100_000).map(|i| format!("user-{i:06}")).collect();
    let mut big = segment("everyone", &[], &["user-000007"]);
    big.included = keys.clone();
    let record = s
        .create_segment(&segment_change(&admin(), "production", &big, None))
        .await
        .unwrap();
    assert_eq!(record.segment.included.len(), 100_000);
    let (config, _) = s.environment_config("shop", "production").await.unwrap();
    assert_eq!(config.segments.len(), 1);
    assert_eq!(config.segments[0].included, keys);
    assert_eq!(config.segments[0].excluded, ["user-000007"]);
    let (snapshot, diagnostics) = compile(&config);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    drop(snapshot);

    // A thousand keys out, a thousand in: only those are written.
    let mut next = keys[1_000..].to_vec();
    next.extend((100_000..101_000).map(|i| format!("user-{i:06}")));
    big.included = next.clone();
    let updated = s
        .update_segment(&segment_change(&admin(), "production", &big, Some(1)))
        .await
        .unwrap();
    assert_eq!(updated.segment.version, 2);
    let summary = &s.segments("shop", "production").await.unwrap()[0];
    assert_eq!(
        (summary.included_count, summary.excluded_count),
        (100_000, 1)
    );
    let audit = audit_of(f, "everyone").await;
    let key_changes = audit[0]
        .diff
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["path"] == "/keyChanges")
        .unwrap();
    assert_eq!(
        key_changes["value"]["included"],
        json!({"added": 1_000, "removed": 1_000})
    );
    let (config, _) = s.environment_config("shop", "production").await.unwrap();
    assert_eq!(config.segments[0].included, next);
    assert_eq!(config.segments[0].version, 2);
}

fn sdk_key(environment: &str, kind: SdkKeyKind, i: u32) -> NewSdkKey {
    NewSdkKey {
        project: "shop".into(),
        environment: environment.into(),
        kind,
        key_hash: sdk_hash(i),
        prefix: format!("anc_{}_{i:04}", kind.as_str()),
    }
}

fn sdk_hash(i: u32) -> String {
    format!("{i:064x}")
}

async fn sdk_keys_are_stored_as_hashes_looked_up_and_listed_newest_first(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    // The server makes an environment's keys; the store makes none.
    assert!(s.sdk_keys("shop", "production").await.unwrap().is_empty());
    let server = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 1))
        .await
        .unwrap();
    assert_eq!(server.project, "shop");
    assert_eq!(server.environment, "production");
    assert_eq!(server.kind, SdkKeyKind::Server);
    assert_eq!(server.prefix, "anc_server_0001");
    assert_eq!(server.created_at, 1_800_000_000_000);
    assert_eq!(server.expires_at, None);
    assert!(!server.revoked);
    assert!(uuid::Uuid::parse_str(&server.id).is_ok_and(|id| id.get_version_num() == 7));
    f.advance(1_000);
    let client = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Client, 2))
        .await
        .unwrap();
    f.advance(1_000);
    let staging = s
        .create_sdk_key(&admin(), &sdk_key("staging", SdkKeyKind::Server, 3))
        .await
        .unwrap();

    assert_eq!(
        s.sdk_key_by_hash(&sdk_hash(1)).await.unwrap(),
        Some(server.clone())
    );
    assert_eq!(
        s.sdk_key_by_hash(&sdk_hash(2)).await.unwrap(),
        Some(client.clone())
    );
    assert_eq!(
        s.sdk_key_by_hash(&sdk_hash(3)).await.unwrap(),
        Some(staging.clone())
    );
    assert_eq!(s.sdk_key_by_hash(&sdk_hash(99)).await.unwrap(), None);
    assert_eq!(
        s.sdk_keys("shop", "production").await.unwrap(),
        [client.clone(), server.clone()],
        "newest first, this environment's only"
    );
    assert_eq!(s.sdk_keys("shop", "staging").await.unwrap(), [staging]);

    assert!(matches!(
        s.create_sdk_key(&admin(), &sdk_key("staging", SdkKeyKind::Client, 1))
            .await,
        Err(StoreError::AlreadyExists {
            what: "sdk key",
            ..
        })
    ));
    assert!(matches!(
        s.create_sdk_key(&admin(), &sdk_key("qa", SdkKeyKind::Client, 4))
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    assert!(matches!(
        s.create_sdk_key(
            &admin(),
            &NewSdkKey {
                project: "nope".into(),
                ..sdk_key("production", SdkKeyKind::Client, 5)
            }
        )
        .await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    for bad in [
        NewSdkKey {
            key_hash: String::new(),
            ..sdk_key("production", SdkKeyKind::Client, 6)
        },
        NewSdkKey {
            prefix: String::new(),
            ..sdk_key("production", SdkKeyKind::Client, 7)
        },
        NewSdkKey {
            prefix: "x".repeat(33),
            ..sdk_key("production", SdkKeyKind::Client, 8)
        },
    ] {
        assert!(
            matches!(
                s.create_sdk_key(&admin(), &bad).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.sdk_keys("shop", "qa").await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    // Keys are not part of the evaluated configuration.
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        0
    );

    let created = audit_of(f, &server.id).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].action, "sdk_key.created");
    assert_eq!(created[0].resource_kind, "sdk_key");
    assert_eq!(created[0].environment.as_deref(), Some("production"));
    assert_eq!(
        created[0].diff,
        json!([{"op": "replace", "path": "", "value": {"kind": "server", "prefix": "anc_server_0001"}}])
    );

    for kind in [SdkKeyKind::Server, SdkKeyKind::Client] {
        assert_eq!(SdkKeyKind::parse(kind.as_str()), Some(kind));
        assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
    }
    assert_eq!(SdkKeyKind::parse("admin"), None);
}

async fn rotating_an_sdk_key_sets_an_expiry_on_the_old_keys_of_its_kind_only(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let old = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 1))
        .await
        .unwrap();
    s.create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Client, 2))
        .await
        .unwrap();
    let staging = s
        .create_sdk_key(&admin(), &sdk_key("staging", SdkKeyKind::Server, 3))
        .await
        .unwrap();
    let revoked = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 4))
        .await
        .unwrap();
    s.revoke_sdk_key(&admin(), "shop", "production", &revoked.id)
        .await
        .unwrap();

    f.advance(1_000);
    let hour = 3_600_000;
    let t1 = 1_800_000_001_000;
    let new = s
        .rotate_sdk_key(
            &admin(),
            &sdk_key("production", SdkKeyKind::Server, 5),
            hour,
        )
        .await
        .unwrap();
    assert_eq!(new.expires_at, None);
    assert_eq!(new.created_at, t1);
    let state = |i: u32| {
        let store = Arc::clone(&f.store);
        async move {
            let k = store.sdk_key_by_hash(&sdk_hash(i)).await.unwrap().unwrap();
            (k.expires_at, k.revoked)
        }
    };
    assert_eq!(state(1).await, (Some(t1 + hour), false), "the old key");
    assert_eq!(state(2).await, (None, false), "another kind");
    assert_eq!(state(3).await, (None, false), "another environment");
    assert_eq!(state(4).await, (None, true), "revoked stays as it is");
    assert_eq!(state(5).await, (None, false), "the new key");
    let rotated = audit_of(f, &new.id).await;
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0].action, "sdk_key.rotated");
    assert_eq!(rotated[0].diff[0]["value"]["kind"], json!("server"));
    assert_eq!(
        rotated[0].diff[0]["value"]["prefix"],
        json!("anc_server_0005")
    );
    assert_eq!(rotated[0].diff[0]["value"]["expiring"], json!([old.id]));
    assert_eq!(rotated[0].diff[0]["value"]["expiringAt"], json!(t1 + hour));

    // A second rotation retires the key the first one made; a key that already expires sooner
    // keeps its expiry.
    f.advance(1_000);
    let t2 = t1 + 1_000;
    let day = 24 * hour;
    let newest = s
        .rotate_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 6), day)
        .await
        .unwrap();
    assert_eq!(state(1).await, (Some(t1 + hour), false));
    assert_eq!(state(5).await, (Some(t2 + day), false));
    assert_eq!(state(6).await, (None, false));
    // Without overlap the old key expires at once; expired keys are left alone.
    f.advance(1_000);
    let t3 = t2 + 1_000;
    let immediate = s
        .rotate_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 7), 0)
        .await
        .unwrap();
    assert_eq!(state(6).await, (Some(t3), false));
    f.advance(1_000);
    s.rotate_sdk_key(
        &admin(),
        &sdk_key("production", SdkKeyKind::Client, 8),
        hour,
    )
    .await
    .unwrap();
    assert_eq!(state(2).await, (Some(t3 + 1_000 + hour), false));
    assert_eq!(state(6).await, (Some(t3), false));

    assert!(matches!(
        s.rotate_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 9), -1)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.sdk_key_by_hash(&sdk_hash(9)).await.unwrap(), None);
    assert!(matches!(
        s.rotate_sdk_key(&admin(), &sdk_key("staging", SdkKeyKind::Server, 1), hour)
            .await,
        Err(StoreError::AlreadyExists {
            what: "sdk key",
            ..
        })
    ));
    assert_eq!(
        state(3).await,
        (None, false),
        "a failed rotation changes nothing"
    );

    let listed = s.sdk_keys("shop", "production").await.unwrap();
    assert_eq!(listed.len(), 7);
    assert_eq!(
        (listed[1].id.as_str(), listed[2].id.as_str()),
        (immediate.id.as_str(), newest.id.as_str())
    );
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at)
    );
    assert_eq!(s.sdk_keys("shop", "staging").await.unwrap(), [staging]);
}

async fn sdk_keys_are_revoked_once_and_audited_without_their_hash(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let key = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Client, 1))
        .await
        .unwrap();
    let other = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Client, 2))
        .await
        .unwrap();
    f.advance(1_000);
    // Another environment's key is not found through this one.
    assert!(matches!(
        s.revoke_sdk_key(&admin(), "shop", "staging", &key.id).await,
        Err(StoreError::NotFound {
            what: "sdk key",
            ..
        })
    ));
    assert!(matches!(
        s.revoke_sdk_key(&admin(), "shop", "production", "no-such-key")
            .await,
        Err(StoreError::NotFound {
            what: "sdk key",
            ..
        })
    ));
    let bob = Actor::user("bob");
    s.revoke_sdk_key(&bob, "shop", "production", &key.id)
        .await
        .unwrap();
    s.revoke_sdk_key(&bob, "shop", "production", &key.id)
        .await
        .unwrap();
    let revoked = s.sdk_key_by_hash(&sdk_hash(1)).await.unwrap().unwrap();
    assert!(revoked.revoked);
    assert_eq!(revoked.expires_at, None);
    assert!(
        !s.sdk_key_by_hash(&sdk_hash(2))
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_eq!(
        s.sdk_keys("shop", "production")
            .await
            .unwrap()
            .iter()
            .map(|k| (k.id.as_str(), k.revoked))
            .collect::<Vec<_>>(),
        [(other.id.as_str(), false), (key.id.as_str(), true)]
    );

    let audit = audit_of(f, &key.id).await;
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["sdk_key.revoked", "sdk_key.created"],
        "revoking twice audits once"
    );
    assert_eq!(audit[0].actor, bob);
    assert_eq!(audit[0].created_at, 1_800_000_001_000);
    assert_eq!(audit[0].environment.as_deref(), Some("production"));
    let all = s
        .audit(&AuditFilter {
            project: "shop".into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let text = serde_json::to_string(&all).unwrap();
    for i in 1..=2 {
        assert!(!text.contains(&sdk_hash(i)), "a key hash in {text}");
    }
}

fn proposal<'a>(
    actor: &'a Actor,
    environment: &'a str,
    flag: &'a str,
    base_version: u64,
    proposed: &'a FlagConfig,
) -> NewChangeRequest<'a> {
    NewChangeRequest {
        actor,
        project: "shop",
        environment,
        flag,
        base_version,
        proposed,
        comment: Some("turn it on"),
        apply_at: None,
        pre_approved: false,
    }
}

fn config_in(record: &anchor_store::FlagRecord, environment: &str) -> FlagConfig {
    record
        .environments
        .iter()
        .find(|e| e.environment == environment)
        .unwrap()
        .config
        .clone()
}

/// Seeds `shop` with the flag `f` (off, version 1 everywhere) and proposes, as ann, to turn it
/// on in production; approved by bob when `approved`.
async fn proposed_change(f: &Fixture, approved: bool) -> ChangeRequest {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let on = on_config();
    let request = s
        .create_change_request(&proposal(&Actor::user("ann"), "production", "f", 1, &on))
        .await
        .unwrap();
    if !approved {
        return request;
    }
    s.review_change_request(
        &Actor::user("bob"),
        "shop",
        &request.id,
        ReviewDecision::Approve,
        None,
    )
    .await
    .unwrap()
}

fn is_invalid<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Invalid(_)))
}

async fn a_change_request_is_created_open_and_read_back_without_changing_the_flag(f: &Fixture) {
    let request = proposed_change(f, false).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    assert_eq!(request.status, ChangeRequestStatus::Open);
    assert_eq!(
        (
            request.project.as_str(),
            request.environment.as_str(),
            request.flag.as_str()
        ),
        ("shop", "production", "f")
    );
    assert_eq!(request.base_version, 1);
    assert!(request.proposed.enabled);
    assert_eq!(request.proposed.version, 1, "the proposal carries its base");
    assert_eq!(request.comment.as_deref(), Some("turn it on"));
    assert_eq!(request.author, ann);
    assert!(request.reviews.is_empty());
    assert_eq!(
        (request.apply_at, request.applied_version, request.failure),
        (None, None, None)
    );
    assert_eq!(request.created_at, 1_800_000_000_000);
    assert_eq!(request.updated_at, request.created_at);
    assert_eq!(
        s.change_request("shop", &request.id).await.unwrap(),
        s.change_requests("shop", None, None).await.unwrap()[0]
    );
    assert_eq!(
        s.change_request("shop", &request.id).await.unwrap().id,
        request.id
    );

    // Nothing evaluated changed.
    let prod = config_in(&s.flag("shop", "f").await.unwrap(), "production");
    assert!(!prod.enabled);
    assert_eq!(prod.version, 1);
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        1
    );
    let audit = audit_of(f, &request.id).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "change_request.created");
    assert_eq!(audit[0].resource_kind, "change_request");
    assert_eq!(audit[0].actor, ann);
    assert_eq!(audit[0].environment.as_deref(), Some("production"));
    assert_eq!(audit[0].comment.as_deref(), Some("turn it on"));

    // Pre-approved: a scheduled change where no approval is needed.
    let on = on_config();
    let mut scheduled = proposal(&ann, "staging", "f", 1, &on);
    scheduled.pre_approved = true;
    scheduled.apply_at = Some(1_800_000_060_000);
    scheduled.comment = None;
    let scheduled = s.create_change_request(&scheduled).await.unwrap();
    assert_eq!(scheduled.status, ChangeRequestStatus::Approved);
    assert_eq!(scheduled.apply_at, Some(1_800_000_060_000));
    assert_eq!(scheduled.comment, None);

    // Unknown project, environment, flag, request; a stale base version.
    for (project, environment, flag, what) in [
        ("nope", "production", "f", "project"),
        ("shop", "qa", "f", "environment"),
        ("shop", "production", "missing", "flag"),
    ] {
        let mut new = proposal(&ann, environment, flag, 1, &on);
        new.project = project;
        let result = s.create_change_request(&new).await;
        assert!(
            matches!(&result, Err(StoreError::NotFound { what: w, .. }) if *w == what),
            "{result:?}"
        );
    }
    assert!(matches!(
        s.change_request("shop", "no-such-request").await,
        Err(StoreError::NotFound {
            what: "change request",
            ..
        })
    ));
    s.create_project(&admin(), "other", "Other").await.unwrap();
    assert!(
        matches!(
            s.change_request("other", &request.id).await,
            Err(StoreError::NotFound {
                what: "change request",
                ..
            })
        ),
        "another project's request is not found through this one"
    );
    let stale = s
        .create_change_request(&proposal(&ann, "production", "f", 7, &on))
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                what: "flag configuration",
                expected: 7,
                actual: 1
            })
        ),
        "{stale:?}"
    );
    assert_eq!(
        s.change_requests("shop", None, None).await.unwrap().len(),
        2
    );
}

async fn an_approval_makes_a_request_approved_and_its_reviews_are_listed_oldest_first(f: &Fixture) {
    let request = proposed_change(f, false).await;
    let s = &f.store;
    let (bob, carol) = (Actor::user("bob"), Actor::user("carol"));
    f.advance(1_000);
    let approved = s
        .review_change_request(
            &bob,
            "shop",
            &request.id,
            ReviewDecision::Approve,
            Some("looks good"),
        )
        .await
        .unwrap();
    assert_eq!(approved.status, ChangeRequestStatus::Approved);
    assert_eq!(approved.updated_at, 1_800_000_001_000);
    assert_eq!(approved.reviews.len(), 1);
    let review = &approved.reviews[0];
    assert_eq!(review.reviewer, bob);
    assert_eq!(review.decision, ReviewDecision::Approve);
    assert_eq!(review.comment.as_deref(), Some("looks good"));
    assert_eq!(review.created_at, 1_800_000_001_000);

    // A second approval, in the same millisecond: still approved, both listed in order.
    let twice = s
        .review_change_request(&carol, "shop", &request.id, ReviewDecision::Approve, None)
        .await
        .unwrap();
    assert_eq!(twice.status, ChangeRequestStatus::Approved);
    assert_eq!(
        twice
            .reviews
            .iter()
            .map(|r| r.reviewer.id.as_str())
            .collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    assert_eq!(s.change_request("shop", &request.id).await.unwrap(), twice);
    let listed = s.change_requests("shop", None, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], twice);
    // The flag is untouched until the request is applied.
    assert!(!config_in(&s.flag("shop", "f").await.unwrap(), "production").enabled);

    let audit = audit_of(f, &request.id).await;
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        [
            "change_request.approved",
            "change_request.approved",
            "change_request.created"
        ]
    );
    assert_eq!(audit[1].actor, bob);
    assert_eq!(audit[1].comment.as_deref(), Some("looks good"));
    assert!(
        audit[1]
            .diff
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/status" && op["value"] == "approved"),
        "{:#}",
        audit[1].diff
    );
    assert!(matches!(
        s.review_change_request(
            &bob,
            "shop",
            "no-such-request",
            ReviewDecision::Approve,
            None
        )
        .await,
        Err(StoreError::NotFound {
            what: "change request",
            ..
        })
    ));
}

async fn an_edit_voids_earlier_approvals_and_reopens_the_request(f: &Fixture) {
    let request = proposed_change(f, true).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    assert_eq!(request.status, ChangeRequestStatus::Approved);
    assert_eq!(request.reviews.len(), 1);
    f.advance(1_000);
    let mut edited_config = on_config();
    edited_config.default_serve = Serve::Variant("off".into());
    let edited = s
        .update_change_request(
            &ann,
            "shop",
            &request.id,
            &edited_config,
            1,
            Some("on, but serving off"),
            Some(1_800_000_100_000),
        )
        .await
        .unwrap();
    assert_eq!(edited.status, ChangeRequestStatus::Open);
    assert!(edited.reviews.is_empty(), "the approval no longer counts");
    assert_eq!(edited.proposed.default_serve, Serve::Variant("off".into()));
    assert_eq!(edited.proposed.version, 1);
    assert_eq!(edited.comment.as_deref(), Some("on, but serving off"));
    assert_eq!(edited.apply_at, Some(1_800_000_100_000));
    assert_eq!(edited.updated_at, 1_800_000_001_000);
    assert_eq!(edited.created_at, request.created_at);
    assert_eq!(edited.author, ann);
    assert_eq!(s.change_request("shop", &request.id).await.unwrap(), edited);
    assert!(
        s.change_requests("shop", None, None).await.unwrap()[0]
            .reviews
            .is_empty()
    );

    // A new approval counts alone.
    let carol = Actor::user("carol");
    let approved = s
        .review_change_request(&carol, "shop", &request.id, ReviewDecision::Approve, None)
        .await
        .unwrap();
    assert_eq!(approved.status, ChangeRequestStatus::Approved);
    assert_eq!(approved.reviews.len(), 1);
    assert_eq!(approved.reviews[0].reviewer, carol);
    assert_eq!(
        s.change_requests("shop", None, None).await.unwrap()[0].reviews,
        approved.reviews
    );

    // Editing an open request also works and clears its comment and time when not given.
    let again = s
        .update_change_request(&ann, "shop", &request.id, &on_config(), 1, None, None)
        .await
        .unwrap();
    assert_eq!(again.status, ChangeRequestStatus::Open);
    assert!(again.reviews.is_empty());
    assert_eq!((again.comment, again.apply_at), (None, None));

    // An edit against a stale version fails and changes nothing.
    let stale = s
        .update_change_request(&ann, "shop", &request.id, &off_config(), 5, None, None)
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                expected: 5,
                actual: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    assert!(
        s.change_request("shop", &request.id)
            .await
            .unwrap()
            .proposed
            .enabled
    );

    let audit = audit_of(f, &request.id).await;
    assert_eq!(audit[1].action, "change_request.approved");
    assert_eq!(audit[2].action, "change_request.updated");
    assert_eq!(audit[2].comment.as_deref(), Some("on, but serving off"));
    let ops = audit[2].diff.as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/status" && op["value"] == "open"),
        "{:#}",
        audit[2].diff
    );
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/proposed/defaultServe/variant" && op["value"] == "off"),
        "{:#}",
        audit[2].diff
    );

    // A cancelled request can no longer be edited.
    s.cancel_change_request(&ann, "shop", &request.id)
        .await
        .unwrap();
    let result = s
        .update_change_request(&ann, "shop", &request.id, &on_config(), 1, None, None)
        .await;
    assert!(is_invalid(&result), "{result:?}");
}

async fn applying_an_approved_request_writes_a_new_version_a_revision_and_an_audit_entry(
    f: &Fixture,
) {
    let request = proposed_change(f, true).await;
    let s = &f.store;
    let dave = Actor::user("dave");
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    f.advance(5_000);
    let applied = s
        .apply_change_request(&dave, "shop", &request.id, None)
        .await
        .unwrap();
    assert_eq!(applied.status, ChangeRequestStatus::Applied);
    assert_eq!(applied.applied_version, Some(2));
    assert_eq!(applied.updated_at, 1_800_000_005_000);
    assert_eq!(applied.reviews.len(), 1, "the approval stays with it");
    assert_eq!(
        s.change_request("shop", &request.id).await.unwrap(),
        applied
    );

    let record = s.flag("shop", "f").await.unwrap();
    let prod = config_in(&record, "production");
    assert!(prod.enabled);
    assert_eq!(prod.version, 2);
    let mut expected = request.proposed.clone();
    expected.version = 2;
    assert_eq!(prod, expected);
    assert!(
        !config_in(&record, "staging").enabled,
        "other environments are untouched"
    );
    assert!(s.environment("shop", "production").await.unwrap().revision > revision_before);
    let (config, _) = s.environment_config("shop", "production").await.unwrap();
    assert_eq!(config.flags[0].config.version, 2);

    let history = s.flag_revisions("shop", "production", "f").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].version, 2);
    assert_eq!(history[0].actor, dave);
    assert_eq!(history[0].comment.as_deref(), Some("turn it on"));
    assert_eq!(history[0].body["enabled"], json!(true));

    let audit = audit_of(f, "f").await;
    let entry = &audit[0];
    assert_eq!(entry.action, "change_request.applied");
    assert_eq!(entry.resource_kind, "flag");
    assert_eq!(entry.actor, dave);
    assert_eq!(entry.environment.as_deref(), Some("production"));
    assert_eq!(entry.created_at, 1_800_000_005_000);
    let comment = entry.comment.as_deref().unwrap();
    assert!(
        comment.contains(&request.id) && comment.contains("turn it on"),
        "{comment}"
    );
    assert!(
        entry
            .diff
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/enabled" && op["value"] == json!(true)),
        "{:#}",
        entry.diff
    );

    // The scheduler applies too, as the system.
    let on = on_config();
    let ann = Actor::user("ann");
    let mut scheduled = proposal(&ann, "staging", "f", 1, &on);
    scheduled.pre_approved = true;
    scheduled.apply_at = Some(1_800_000_000_000);
    let scheduled = s.create_change_request(&scheduled).await.unwrap();
    let applied = s
        .apply_change_request(&Actor::system("scheduler"), "shop", &scheduled.id, None)
        .await
        .unwrap();
    assert_eq!(applied.applied_version, Some(2));
    assert_eq!(
        s.flag_revisions("shop", "staging", "f").await.unwrap()[0].actor,
        Actor::system("scheduler")
    );
    assert!(matches!(
        s.apply_change_request(&dave, "shop", "no-such-request", None)
            .await,
        Err(StoreError::NotFound {
            what: "change request",
            ..
        })
    ));
}

async fn an_applied_request_cannot_be_applied_again(f: &Fixture) {
    let request = proposed_change(f, true).await;
    let s = &f.store;
    s.apply_change_request(&admin(), "shop", &request.id, None)
        .await
        .unwrap();
    let revision = s.environment("shop", "production").await.unwrap().revision;
    let audit_count = audit_of(f, "f").await.len();

    let again = s
        .apply_change_request(&admin(), "shop", &request.id, None)
        .await;
    match &again {
        Err(StoreError::Invalid(message)) => {
            assert!(message.contains("not approved"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        config_in(&s.flag("shop", "f").await.unwrap(), "production").version,
        2
    );
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision
    );
    assert_eq!(audit_of(f, "f").await.len(), audit_count);
    let stored = s.change_request("shop", &request.id).await.unwrap();
    assert_eq!(stored.status, ChangeRequestStatus::Applied);
    assert_eq!(stored.applied_version, Some(2));

    // Nor can an applied request be reviewed, edited, cancelled or failed; nor an open one
    // applied.
    let bob = Actor::user("bob");
    for result in [
        s.review_change_request(&bob, "shop", &request.id, ReviewDecision::Reject, None)
            .await,
        s.update_change_request(&bob, "shop", &request.id, &off_config(), 2, None, None)
            .await,
        s.cancel_change_request(&bob, "shop", &request.id).await,
        s.fail_change_request(&bob, "shop", &request.id, "no").await,
    ] {
        assert!(is_invalid(&result), "{result:?}");
    }
    let on = on_config();
    let open = s
        .create_change_request(&proposal(&bob, "staging", "f", 1, &on))
        .await
        .unwrap();
    let result = s
        .apply_change_request(&admin(), "shop", &open.id, None)
        .await;
    assert!(is_invalid(&result), "{result:?}");
    assert_eq!(
        config_in(&s.flag("shop", "f").await.unwrap(), "staging").version,
        1
    );
}

async fn applying_after_the_flag_changed_fails_with_a_version_mismatch_and_writes_nothing(
    f: &Fixture,
) {
    let request = proposed_change(f, true).await;
    let s = &f.store;
    // Someone changes the flag directly after the request was made against version 1.
    let off = off_config();
    let hotfixer = admin();
    let mut direct = change(&hotfixer, "production", "f", &off, Some(1));
    direct.comment = Some("hotfix");
    s.update_flag_config(&direct).await.unwrap();
    let revision = s.environment("shop", "production").await.unwrap().revision;
    let audit_count = s
        .audit(&AuditFilter {
            project: "shop".into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len();

    let result = s
        .apply_change_request(&admin(), "shop", &request.id, None)
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::VersionMismatch {
                what: "flag configuration",
                expected: 1,
                actual: 2
            })
        ),
        "{result:?}"
    );
    let prod = config_in(&s.flag("shop", "f").await.unwrap(), "production");
    assert_eq!(prod.version, 2);
    assert!(!prod.enabled);
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision,
        "the revision counter's bump is rolled back"
    );
    assert_eq!(
        s.audit(&AuditFilter {
            project: "shop".into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        audit_count
    );
    let stored = s.change_request("shop", &request.id).await.unwrap();
    assert_eq!(stored.status, ChangeRequestStatus::Approved);
    assert_eq!(stored.applied_version, None);
}

async fn a_rejected_request_cannot_be_applied_reviewed_or_edited(f: &Fixture) {
    let request = proposed_change(f, true).await;
    let s = &f.store;
    let carol = Actor::user("carol");
    // Rejecting an approved request: a later reviewer disagrees.
    let rejected = s
        .review_change_request(
            &carol,
            "shop",
            &request.id,
            ReviewDecision::Reject,
            Some("not during the sale"),
        )
        .await
        .unwrap();
    assert_eq!(rejected.status, ChangeRequestStatus::Rejected);
    assert_eq!(
        rejected
            .reviews
            .iter()
            .map(|r| (r.reviewer.id.as_str(), r.decision))
            .collect::<Vec<_>>(),
        [
            ("bob", ReviewDecision::Approve),
            ("carol", ReviewDecision::Reject)
        ]
    );
    let result = s
        .apply_change_request(&admin(), "shop", &request.id, None)
        .await;
    match &result {
        Err(StoreError::Invalid(message)) => {
            assert!(message.contains("not approved"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!config_in(&s.flag("shop", "f").await.unwrap(), "production").enabled);
    for result in [
        s.review_change_request(&carol, "shop", &request.id, ReviewDecision::Approve, None)
            .await,
        s.update_change_request(
            &Actor::user("ann"),
            "shop",
            &request.id,
            &on_config(),
            1,
            None,
            None,
        )
        .await,
        s.cancel_change_request(&carol, "shop", &request.id).await,
    ] {
        assert!(is_invalid(&result), "{result:?}");
    }
    assert_eq!(
        s.change_request("shop", &request.id).await.unwrap(),
        rejected
    );
    let audit = audit_of(f, &request.id).await;
    assert_eq!(audit[0].action, "change_request.rejected");
    assert_eq!(audit[0].actor, carol);
    assert_eq!(audit[0].comment.as_deref(), Some("not during the sale"));
}

async fn an_open_or_approved_request_can_be_cancelled_once(f: &Fixture) {
    let open = proposed_change(f, false).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    f.advance(1_000);
    let cancelled = s
        .cancel_change_request(&ann, "shop", &open.id)
        .await
        .unwrap();
    assert_eq!(cancelled.status, ChangeRequestStatus::Cancelled);
    assert_eq!(cancelled.updated_at, 1_800_000_001_000);
    let again = s.cancel_change_request(&ann, "shop", &open.id).await;
    assert!(is_invalid(&again), "{again:?}");
    let review = s
        .review_change_request(
            &Actor::user("bob"),
            "shop",
            &open.id,
            ReviewDecision::Approve,
            None,
        )
        .await;
    assert!(is_invalid(&review), "{review:?}");
    let apply = s
        .apply_change_request(&admin(), "shop", &open.id, None)
        .await;
    assert!(is_invalid(&apply), "{apply:?}");

    let on = on_config();
    let mut approved = proposal(&ann, "staging", "f", 1, &on);
    approved.pre_approved = true;
    let approved = s.create_change_request(&approved).await.unwrap();
    let cancelled = s
        .cancel_change_request(&ann, "shop", &approved.id)
        .await
        .unwrap();
    assert_eq!(cancelled.status, ChangeRequestStatus::Cancelled);
    let apply = s
        .apply_change_request(&admin(), "shop", &approved.id, None)
        .await;
    assert!(is_invalid(&apply), "{apply:?}");
    assert!(matches!(
        s.cancel_change_request(&ann, "shop", "no-such-request")
            .await,
        Err(StoreError::NotFound {
            what: "change request",
            ..
        })
    ));

    let audit = audit_of(f, &open.id).await;
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["change_request.cancelled", "change_request.created"],
        "cancelling twice audits once"
    );
    assert_eq!(audit[0].actor, ann);
    assert_eq!(
        s.change_requests("shop", Some(ChangeRequestStatus::Cancelled), None)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn change_requests_are_listed_newest_first_and_filtered_by_status_and_environment(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    for key in ["a", "b"] {
        s.create_flag(&admin(), "shop", &boolean_flag(key, &[]), &off_config())
            .await
            .unwrap();
    }
    let (ann, bob) = (Actor::user("ann"), Actor::user("bob"));
    let on = on_config();
    // Six requests; the first three in one millisecond, so order does not rest on the clock.
    let mut ids = Vec::new();
    for (i, (environment, flag)) in [
        ("production", "a"),
        ("staging", "a"),
        ("production", "b"),
        ("staging", "b"),
        ("production", "a"),
        ("development", "b"),
    ]
    .into_iter()
    .enumerate()
    {
        if i >= 3 {
            f.advance(1_000);
        }
        let request = s
            .create_change_request(&proposal(&ann, environment, flag, 1, &on))
            .await
            .unwrap();
        ids.push(request.id);
    }
    // 0: open, 1: approved, 2: rejected, 3: cancelled, 4: approved, 5: open.
    for i in [1, 4] {
        s.review_change_request(&bob, "shop", &ids[i], ReviewDecision::Approve, Some("ok"))
            .await
            .unwrap();
    }
    s.review_change_request(&bob, "shop", &ids[2], ReviewDecision::Reject, None)
        .await
        .unwrap();
    s.cancel_change_request(&ann, "shop", &ids[3])
        .await
        .unwrap();

    let listed = |status: Option<ChangeRequestStatus>, environment: Option<&'static str>| {
        let store = Arc::clone(&f.store);
        async move {
            store
                .change_requests("shop", status, environment)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let all = listed(None, None).await;
    assert_eq!(
        all,
        [5, 4, 3, 2, 1, 0].map(|i| ids[i].clone()),
        "newest first"
    );
    assert_eq!(
        listed(Some(ChangeRequestStatus::Approved), None).await,
        [ids[4].clone(), ids[1].clone()]
    );
    assert_eq!(
        listed(Some(ChangeRequestStatus::Open), None).await,
        [ids[5].clone(), ids[0].clone()]
    );
    assert_eq!(
        listed(None, Some("production")).await,
        [ids[4].clone(), ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        listed(Some(ChangeRequestStatus::Approved), Some("staging")).await,
        [ids[1].clone()]
    );
    assert!(
        listed(Some(ChangeRequestStatus::Applied), None)
            .await
            .is_empty()
    );
    // The listing carries each request's reviews.
    let approved = s
        .change_requests("shop", Some(ChangeRequestStatus::Approved), None)
        .await
        .unwrap();
    assert!(approved.iter().all(|r| r.reviews.len() == 1
        && r.reviews[0].reviewer == bob
        && r.reviews[0].comment.as_deref() == Some("ok")));
    for r in &approved {
        assert_eq!(&s.change_request("shop", &r.id).await.unwrap(), r);
    }
    assert!(matches!(
        s.change_requests("shop", None, Some("qa")).await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    assert!(matches!(
        s.change_requests("nope", None, None).await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    // Another project's requests are its own.
    s.create_project(&admin(), "other", "Other").await.unwrap();
    assert!(
        s.change_requests("other", None, None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn due_change_requests_are_the_approved_ones_whose_time_has_come_oldest_first(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_project(&admin(), "blog", "Blog").await.unwrap();
    s.create_environment(
        &admin(),
        "blog",
        &NewEnvironment {
            key: "production".into(),
            name: "Production".into(),
            requires_approval: true,
            requires_comment: false,
        },
    )
    .await
    .unwrap();
    for project in ["shop", "blog"] {
        s.create_flag(&admin(), project, &boolean_flag("f", &[]), &off_config())
            .await
            .unwrap();
    }
    let ann = Actor::user("ann");
    let on = on_config();
    let t0 = 1_800_000_000_000;
    let create = |project: &'static str, apply_at: Option<i64>, pre_approved: bool| {
        let store = Arc::clone(&f.store);
        let (ann, on) = (ann.clone(), on.clone());
        async move {
            let mut new = proposal(&ann, "production", "f", 1, &on);
            new.project = project;
            new.apply_at = apply_at;
            new.pre_approved = pre_approved;
            store.create_change_request(&new).await.unwrap().id
        }
    };
    let late = create("shop", Some(t0 + 60_000), true).await;
    let early_blog = create("blog", Some(t0 - 5_000), true).await;
    let now_shop = create("shop", Some(t0), true).await;
    let _open = create("shop", Some(t0 - 10_000), false).await;
    let _unscheduled = create("shop", None, true).await;
    let cancelled = create("shop", Some(t0 - 20_000), true).await;
    s.cancel_change_request(&ann, "shop", &cancelled)
        .await
        .unwrap();
    let failed = create("blog", Some(t0 - 30_000), true).await;
    s.fail_change_request(&Actor::system("scheduler"), "blog", &failed, "x")
        .await
        .unwrap();
    // Approved by review (not pre-approved), due earliest of all.
    let reviewed = create("shop", Some(t0 - 40_000), false).await;
    s.review_change_request(
        &Actor::user("bob"),
        "shop",
        &reviewed,
        ReviewDecision::Approve,
        None,
    )
    .await
    .unwrap();

    let due = s.due_change_requests(t0, 100).await.unwrap();
    assert_eq!(
        due,
        [
            ("shop".to_string(), reviewed.clone()),
            ("blog".to_string(), early_blog.clone()),
            ("shop".to_string(), now_shop.clone()),
        ]
    );
    assert_eq!(
        s.due_change_requests(t0, 2).await.unwrap(),
        due[..2].to_vec(),
        "at most `limit`"
    );
    assert!(
        s.due_change_requests(t0 - 50_000, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.due_change_requests(t0 + 60_000, 100)
            .await
            .unwrap()
            .last(),
        Some(&("shop".to_string(), late.clone()))
    );
    // Applied requests are no longer due.
    s.apply_change_request(&Actor::system("scheduler"), "shop", &reviewed, None)
        .await
        .unwrap();
    assert_eq!(s.due_change_requests(t0, 100).await.unwrap(), due[1..]);
}

async fn two_concurrent_applies_of_one_request_apply_it_exactly_once(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    // Several rounds, each racing two appliers (a person and the scheduler, say) on one request.
    for round in 0..5u64 {
        let base = 1 + round;
        let config = if round % 2 == 0 {
            on_config()
        } else {
            off_config()
        };
        let ann = Actor::user("ann");
        let mut new = proposal(&ann, "production", "f", base, &config);
        new.pre_approved = true;
        let request = s.create_change_request(&new).await.unwrap();
        let tasks: Vec<_> = [Actor::user("bob"), Actor::system("scheduler")]
            .into_iter()
            .map(|actor| {
                let store = Arc::clone(&f.store);
                let id = request.id.clone();
                tokio::spawn(
                    async move { store.apply_change_request(&actor, "shop", &id, None).await },
                )
            })
            .collect();
        let mut applied = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => applied.push(r),
                Err(StoreError::Invalid(message)) => {
                    assert!(message.contains("not approved"), "{message}")
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(applied.len(), 1, "round {round}");
        assert_eq!(applied[0].applied_version, Some(base + 1));
        let prod = config_in(&s.flag("shop", "f").await.unwrap(), "production");
        assert_eq!(prod.version, base + 1);
        let applied_entries = audit_of(f, "f")
            .await
            .into_iter()
            .filter(|a| {
                a.action == "change_request.applied"
                    && a.comment.as_deref().unwrap_or("").contains(&request.id)
            })
            .count();
        assert_eq!(applied_entries, 1);
    }
    assert_eq!(
        s.flag_revisions("shop", "production", "f")
            .await
            .unwrap()
            .len(),
        6
    );
}

async fn a_scheduled_request_that_cannot_apply_is_marked_failed_with_its_reason(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let on = on_config();
    let ann = Actor::user("ann");
    let mut new = proposal(&ann, "production", "f", 1, &on);
    new.pre_approved = true;
    new.apply_at = Some(1_800_000_060_000);
    let request = s.create_change_request(&new).await.unwrap();
    // The flag changes before the request's time.
    let off = off_config();
    s.update_flag_config(&change(&admin(), "production", "f", &off, None))
        .await
        .unwrap();
    f.advance(60_000);
    let due = s.due_change_requests(1_800_000_060_000, 10).await.unwrap();
    assert_eq!(due, [("shop".to_string(), request.id.clone())]);
    let scheduler = Actor::system("scheduler");
    let result = s
        .apply_change_request(&scheduler, "shop", &request.id, None)
        .await;
    let reason = match result {
        Err(e @ StoreError::VersionMismatch { .. }) => e.to_string(),
        other => panic!("{other:?}"),
    };
    let failed = s
        .fail_change_request(&scheduler, "shop", &request.id, &reason)
        .await
        .unwrap();
    assert_eq!(failed.status, ChangeRequestStatus::Failed);
    assert_eq!(failed.failure.as_deref(), Some(reason.as_str()));
    assert_eq!(failed.updated_at, 1_800_000_060_000);
    assert_eq!(failed.applied_version, None);
    assert_eq!(s.change_request("shop", &request.id).await.unwrap(), failed);
    assert!(
        s.due_change_requests(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        config_in(&s.flag("shop", "f").await.unwrap(), "production").version,
        2
    );

    let audit = audit_of(f, &request.id).await;
    assert_eq!(audit[0].action, "change_request.failed");
    assert_eq!(audit[0].actor, scheduler);
    assert_eq!(audit[0].comment.as_deref(), Some(reason.as_str()));

    // Only an approved request can fail: not a failed, open or applied one.
    let again = s
        .fail_change_request(&scheduler, "shop", &request.id, "again")
        .await;
    assert!(is_invalid(&again), "{again:?}");
    let open = s
        .create_change_request(&proposal(&Actor::user("ann"), "staging", "f", 1, &on))
        .await
        .unwrap();
    let result = s
        .fail_change_request(&scheduler, "shop", &open.id, "no")
        .await;
    assert!(is_invalid(&result), "{result:?}");
    assert!(matches!(
        s.fail_change_request(&scheduler, "shop", "no-such-request", "no")
            .await,
        Err(StoreError::NotFound {
            what: "change request",
            ..
        })
    ));
}

async fn sessions_are_found_by_hash_until_they_expire_or_end(f: &Fixture) {
    let s = &f.store;
    let user = s
        .create_user(&Actor::system("test"), "sam", "$argon2id$stub", false)
        .await
        .unwrap();
    let now = 1_800_000_000_000;
    s.create_session(&anchor_store::NewSession {
        id_hash: "h1".into(),
        user_id: user.id.clone(),
        csrf_hash: "c1".into(),
        created_at: now,
        expires_at: now + 1_000,
    })
    .await
    .unwrap();
    let found = s.session("h1", now + 999).await.unwrap().unwrap();
    assert_eq!(found.user.username, "sam");
    assert_eq!(found.csrf_hash, "c1");
    assert!(
        s.session("h1", now + 1_000).await.unwrap().is_none(),
        "expired"
    );
    assert!(s.session("h2", now).await.unwrap().is_none(), "unknown");
    // A later sign-in sweeps expired sessions away.
    s.create_session(&anchor_store::NewSession {
        id_hash: "h2".into(),
        user_id: user.id.clone(),
        csrf_hash: "c2".into(),
        created_at: now + 5_000,
        expires_at: now + 10_000,
    })
    .await
    .unwrap();
    assert!(s.session("h1", now).await.unwrap().is_none(), "swept");
    s.delete_session("h2").await.unwrap();
    assert!(
        s.session("h2", now + 6_000).await.unwrap().is_none(),
        "signed out"
    );
}

/// Proposes, as ann, the segment `segment` in production against `base_version`; approved by
/// bob when `approved`.
async fn proposed_segment_change(
    f: &Fixture,
    segment: &Segment,
    base_version: u64,
    approved: bool,
) -> ChangeRequest {
    let s = &f.store;
    let request = s
        .create_segment_change_request(
            &Actor::user("ann"),
            "shop",
            "production",
            segment,
            base_version,
            Some("add beta"),
        )
        .await
        .unwrap();
    if !approved {
        return request;
    }
    s.review_change_request(
        &Actor::user("bob"),
        "shop",
        &request.id,
        ReviewDecision::Approve,
        None,
    )
    .await
    .unwrap()
}

async fn a_segment_change_request_is_created_open_approved_and_applied(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    let dave = Actor::user("dave");
    let proposed = segment("beta", &["m-2", "m-1", "m-1"], &["x-1"]);
    let request = proposed_segment_change(f, &proposed, 0, false).await;
    assert_eq!(request.status, ChangeRequestStatus::Open);
    assert_eq!(request.resource_kind, "segment");
    assert_eq!(
        (request.environment.as_str(), request.flag.as_str()),
        ("production", "beta")
    );
    assert_eq!(request.base_version, 0);
    assert!(!request.proposed.enabled, "no flag configuration proposed");
    let carried = request.segment.clone().unwrap();
    assert_eq!(
        carried.included,
        ["m-1", "m-2"],
        "deduplicated, in byte order"
    );
    assert_eq!(carried.excluded, ["x-1"]);
    assert_eq!(carried.rules, proposed.rules);
    assert_eq!(carried.version, 0, "the proposal carries its base");
    assert_eq!(request.author, ann);
    assert!(matches!(
        s.segment("shop", "production", "beta").await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    assert_eq!(
        s.change_request("shop", &request.id).await.unwrap(),
        request
    );
    assert_eq!(
        s.change_requests("shop", None, None).await.unwrap(),
        std::slice::from_ref(&request)
    );
    assert_eq!(
        audit_of(f, &request.id)
            .await
            .iter()
            .map(|a| a.action.as_str())
            .collect::<Vec<_>>(),
        ["change_request.created"]
    );
    // A flag request beside it keeps its kind.
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let on = on_config();
    let flag_request = s
        .create_change_request(&proposal(&ann, "production", "f", 1, &on))
        .await
        .unwrap();
    assert_eq!(flag_request.resource_kind, "flag");
    assert_eq!(flag_request.segment, None);
    let kinds = s.change_requests("shop", None, None).await.unwrap();
    assert_eq!(
        kinds
            .iter()
            .map(|r| (r.resource_kind.as_str(), r.flag.as_str()))
            .collect::<Vec<_>>(),
        [("flag", "f"), ("segment", "beta")]
    );
    // Not editable yet; a base that is not the segment's version could never apply.
    assert!(is_invalid(
        &s.update_change_request(&ann, "shop", &request.id, &on, 0, None, None)
            .await
    ));
    let stale = s
        .create_segment_change_request(&ann, "shop", "production", &proposed, 3, None)
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                what: "segment",
                expected: 3,
                actual: 0
            })
        ),
        "{stale:?}"
    );
    // Not approved yet: nothing applies.
    assert!(is_invalid(
        &s.apply_change_request(&dave, "shop", &request.id, None)
            .await
    ));

    let approved = s
        .review_change_request(
            &Actor::user("bob"),
            "shop",
            &request.id,
            ReviewDecision::Approve,
            None,
        )
        .await
        .unwrap();
    assert_eq!(approved.status, ChangeRequestStatus::Approved);
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    f.advance(5_000);
    let applied = s
        .apply_change_request(&dave, "shop", &request.id, None)
        .await
        .unwrap();
    assert_eq!(applied.status, ChangeRequestStatus::Applied);
    assert_eq!(applied.applied_version, Some(1));
    assert_eq!(applied.segment, request.segment);
    assert!(s.environment("shop", "production").await.unwrap().revision > revision_before);
    let stored = s.segment("shop", "production", "beta").await.unwrap();
    assert_eq!(stored.segment.version, 1);
    assert_eq!(stored.segment.included, ["m-1", "m-2"]);
    assert_eq!(stored.segment.excluded, ["x-1"]);
    assert_eq!(stored.segment.description, "The beta segment");
    assert_eq!(stored.updated_at, 1_800_000_005_000);
    let history = s
        .segment_revisions("shop", "production", "beta")
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].version, 1);
    assert_eq!(history[0].actor, dave);
    assert_eq!(history[0].comment.as_deref(), Some("add beta"));
    let audit = audit_of(f, "beta").await;
    assert_eq!(audit[0].action, "change_request.applied");
    assert_eq!(audit[0].resource_kind, "segment");
    assert_eq!(audit[0].actor, dave);
    assert!(
        audit[0].comment.as_deref().unwrap().contains(&request.id),
        "{:?}",
        audit[0].comment
    );
    assert!(is_invalid(
        &s.apply_change_request(&dave, "shop", &request.id, None)
            .await
    ));

    // A replacement, against version 1, writes version 2.
    let replacement = segment("beta", &["m-3"], &[]);
    let second = proposed_segment_change(f, &replacement, 1, true).await;
    let applied = s
        .apply_change_request(&dave, "shop", &second.id, None)
        .await
        .unwrap();
    assert_eq!(applied.applied_version, Some(2));
    let stored = s.segment("shop", "production", "beta").await.unwrap();
    assert_eq!(stored.segment.version, 2);
    assert_eq!(stored.segment.included, ["m-3"]);
    assert!(stored.segment.excluded.is_empty());
}

async fn applying_a_segment_request_after_the_segment_changed_fails_and_writes_nothing(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let dave = Actor::user("dave");
    s.create_segment(&segment_change(
        &admin(),
        "production",
        &segment("beta", &["m-1"], &[]),
        None,
    ))
    .await
    .unwrap();
    let request = proposed_segment_change(f, &segment("beta", &["m-9"], &[]), 1, true).await;
    let meanwhile = segment("beta", &["m-1", "m-2"], &[]);
    s.update_segment(&segment_change(&admin(), "production", &meanwhile, Some(1)))
        .await
        .unwrap();
    let before = s.segment("shop", "production", "beta").await.unwrap();
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    let audit_before = audit_of(f, "beta").await.len();
    let revisions_before = s
        .segment_revisions("shop", "production", "beta")
        .await
        .unwrap()
        .len();

    f.advance(1_000);
    let result = s
        .apply_change_request(&dave, "shop", &request.id, None)
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::VersionMismatch {
                what: "segment",
                expected: 1,
                actual: 2
            })
        ),
        "{result:?}"
    );
    assert_eq!(
        s.segment("shop", "production", "beta").await.unwrap(),
        before
    );
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision_before
    );
    assert_eq!(audit_of(f, "beta").await.len(), audit_before);
    assert_eq!(
        s.segment_revisions("shop", "production", "beta")
            .await
            .unwrap()
            .len(),
        revisions_before
    );
    let unchanged = s.change_request("shop", &request.id).await.unwrap();
    assert_eq!(unchanged.status, ChangeRequestStatus::Approved);
    assert_eq!(unchanged.applied_version, None);

    // A proposed new segment that someone created meanwhile cannot apply either.
    let gamma = segment("gamma", &["m-1"], &[]);
    let create = proposed_segment_change(f, &gamma, 0, true).await;
    s.create_segment(&segment_change(&admin(), "production", &gamma, None))
        .await
        .unwrap();
    let result = s
        .apply_change_request(&dave, "shop", &create.id, None)
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::VersionMismatch {
                what: "segment",
                expected: 0,
                actual: 1
            })
        ),
        "{result:?}"
    );
    assert_eq!(
        s.segment_revisions("shop", "production", "gamma")
            .await
            .unwrap()
            .len(),
        1
    );
    // The scheduler's way out works for segment requests too.
    let failed = s
        .fail_change_request(&Actor::system("scheduler"), "shop", &request.id, "stale")
        .await
        .unwrap();
    assert_eq!(failed.status, ChangeRequestStatus::Failed);
    assert_eq!(failed.failure.as_deref(), Some("stale"));
    assert_eq!(failed.resource_kind, "segment");
}

async fn editing_a_segment_request_voids_its_approval_and_the_edited_segment_applies(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    let bob = Actor::user("bob");
    let dave = Actor::user("dave");
    s.create_segment(&segment_change(
        &admin(),
        "production",
        &segment("beta", &["m-1"], &[]),
        None,
    ))
    .await
    .unwrap();
    let request = proposed_segment_change(f, &segment("beta", &["m-2"], &[]), 1, true).await;
    assert_eq!(request.status, ChangeRequestStatus::Approved);
    assert_eq!(request.reviews.len(), 1);

    f.advance(1_000);
    let edit = segment("beta", &["m-4", "m-3", "m-3"], &["x-1"]);
    let edited = s
        .update_segment_change_request(&ann, "shop", &request.id, &edit, 1, Some("edited"))
        .await
        .unwrap();
    assert_eq!(edited.status, ChangeRequestStatus::Open);
    assert!(edited.reviews.is_empty(), "the approval no longer counts");
    assert_eq!(edited.resource_kind, "segment");
    assert_eq!(edited.flag, "beta");
    assert_eq!(edited.base_version, 1);
    assert_eq!(edited.comment.as_deref(), Some("edited"));
    let carried = edited.segment.clone().unwrap();
    assert_eq!(
        carried.included,
        ["m-3", "m-4"],
        "deduplicated, in byte order"
    );
    assert_eq!(carried.excluded, ["x-1"]);
    assert_eq!(carried.version, 1);
    assert_eq!(edited.updated_at, 1_800_000_001_000);
    assert_eq!(s.change_request("shop", &request.id).await.unwrap(), edited);
    assert!(
        audit_of(f, &request.id)
            .await
            .iter()
            .any(|a| a.action == "change_request.updated")
    );
    // Open again: nothing applies until it is approved again.
    assert!(is_invalid(
        &s.apply_change_request(&dave, "shop", &request.id, None)
            .await
    ));
    // A stale base, another segment's key, or the flag method: refused, nothing changes.
    let stale = s
        .update_segment_change_request(&ann, "shop", &request.id, &edit, 0, None)
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                what: "segment",
                expected: 0,
                actual: 1
            })
        ),
        "{stale:?}"
    );
    assert!(is_invalid(
        &s.update_segment_change_request(
            &ann,
            "shop",
            &request.id,
            &segment("gamma", &[], &[]),
            1,
            None
        )
        .await
    ));
    assert!(is_invalid(
        &s.update_change_request(&ann, "shop", &request.id, &on_config(), 1, None, None)
            .await
    ));
    assert_eq!(s.change_request("shop", &request.id).await.unwrap(), edited);
    // A flag request is not edited as a segment request.
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let on = on_config();
    let flag_request = s
        .create_change_request(&proposal(&ann, "production", "f", 1, &on))
        .await
        .unwrap();
    assert!(is_invalid(
        &s.update_segment_change_request(&ann, "shop", &flag_request.id, &edit, 1, None)
            .await
    ));

    s.review_change_request(&bob, "shop", &request.id, ReviewDecision::Approve, None)
        .await
        .unwrap();
    let applied = s
        .apply_change_request(&dave, "shop", &request.id, None)
        .await
        .unwrap();
    assert_eq!(applied.status, ChangeRequestStatus::Applied);
    assert_eq!(applied.applied_version, Some(2));
    let stored = s.segment("shop", "production", "beta").await.unwrap();
    assert_eq!(stored.segment.version, 2);
    assert_eq!(
        stored.segment.included,
        ["m-3", "m-4"],
        "the edited proposal"
    );
    assert_eq!(stored.segment.excluded, ["x-1"]);
    // Applied: no longer editable.
    assert!(is_invalid(
        &s.update_segment_change_request(&ann, "shop", &request.id, &edit, 2, None)
            .await
    ));
}

async fn a_segment_deletion_request_once_approved_and_applied_deletes_the_segment(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    let bob = Actor::user("bob");
    let dave = Actor::user("dave");
    s.create_segment(&segment_change(
        &admin(),
        "production",
        &segment("beta", &["m-1", "m-2"], &[]),
        None,
    ))
    .await
    .unwrap();
    // The segment must exist, at the given version.
    assert!(matches!(
        s.create_segment_deletion_request(&ann, "shop", "production", "nope", 0, None)
            .await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    let stale = s
        .create_segment_deletion_request(&ann, "shop", "production", "beta", 2, None)
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                what: "segment",
                expected: 2,
                actual: 1
            })
        ),
        "{stale:?}"
    );
    let request = s
        .create_segment_deletion_request(&ann, "shop", "production", "beta", 1, Some("drop beta"))
        .await
        .unwrap();
    assert_eq!(request.status, ChangeRequestStatus::Open);
    assert_eq!(request.resource_kind, "segment_deletion");
    assert_eq!(request.segment, None);
    assert_eq!(
        (request.environment.as_str(), request.flag.as_str()),
        ("production", "beta")
    );
    assert_eq!(request.base_version, 1);
    assert_eq!(request.comment.as_deref(), Some("drop beta"));
    assert_eq!(request.author, ann);
    assert_eq!(
        s.change_request("shop", &request.id).await.unwrap(),
        request
    );
    assert_eq!(
        s.change_requests("shop", None, None).await.unwrap(),
        std::slice::from_ref(&request)
    );
    assert_eq!(
        audit_of(f, &request.id)
            .await
            .iter()
            .map(|a| a.action.as_str())
            .collect::<Vec<_>>(),
        ["change_request.created"]
    );
    // Not editable, by either method.
    assert!(is_invalid(
        &s.update_segment_change_request(
            &ann,
            "shop",
            &request.id,
            &segment("beta", &[], &[]),
            1,
            None
        )
        .await
    ));
    assert!(is_invalid(
        &s.update_change_request(&ann, "shop", &request.id, &on_config(), 1, None, None)
            .await
    ));
    assert!(is_invalid(
        &s.apply_change_request(&dave, "shop", &request.id, None)
            .await
    ));
    assert_eq!(
        s.segment("shop", "production", "beta")
            .await
            .unwrap()
            .segment
            .version,
        1
    );

    s.review_change_request(&bob, "shop", &request.id, ReviewDecision::Approve, None)
        .await
        .unwrap();
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    let audit_before = audit_of(f, "beta").await.len();
    f.advance(5_000);
    let applied = s
        .apply_change_request(&dave, "shop", &request.id, None)
        .await
        .unwrap();
    assert_eq!(applied.status, ChangeRequestStatus::Applied);
    assert_eq!(applied.applied_version, None);
    assert_eq!(applied.resource_kind, "segment_deletion");
    assert_eq!(applied.segment, None);
    assert!(matches!(
        s.segment("shop", "production", "beta").await,
        Err(StoreError::NotFound {
            what: "segment",
            ..
        })
    ));
    assert!(s.environment("shop", "production").await.unwrap().revision > revision_before);
    // As `delete_segment`: the revisions stay, one audit entry for the segment.
    let history = s
        .segment_revisions("shop", "production", "beta")
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    let audit = audit_of(f, "beta").await;
    assert_eq!(audit.len(), audit_before + 1);
    assert_eq!(audit[0].action, "change_request.applied");
    assert_eq!(audit[0].resource_kind, "segment");
    assert_eq!(audit[0].actor, dave);
    assert!(
        audit[0].comment.as_deref().unwrap().contains(&request.id),
        "{:?}",
        audit[0].comment
    );
    assert!(is_invalid(
        &s.apply_change_request(&dave, "shop", &request.id, None)
            .await
    ));
    // Its key can return, past the old revisions.
    let back = s
        .create_segment(&segment_change(
            &admin(),
            "production",
            &segment("beta", &[], &[]),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(back.segment.version, 2);
}

async fn a_segment_deletion_request_fails_with_a_version_mismatch_if_the_segment_changed(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let ann = Actor::user("ann");
    let bob = Actor::user("bob");
    let dave = Actor::user("dave");
    for key in ["beta", "gamma"] {
        s.create_segment(&segment_change(
            &admin(),
            "production",
            &segment(key, &["m-1"], &[]),
            None,
        ))
        .await
        .unwrap();
    }
    let mut requests = Vec::new();
    for key in ["beta", "gamma"] {
        let request = s
            .create_segment_deletion_request(&ann, "shop", "production", key, 1, None)
            .await
            .unwrap();
        s.review_change_request(&bob, "shop", &request.id, ReviewDecision::Approve, None)
            .await
            .unwrap();
        requests.push(request);
    }
    // beta changed, gamma was deleted meanwhile.
    s.update_segment(&segment_change(
        &admin(),
        "production",
        &segment("beta", &["m-1", "m-2"], &[]),
        Some(1),
    ))
    .await
    .unwrap();
    s.delete_segment(&admin(), "shop", "production", "gamma")
        .await
        .unwrap();
    let before = s.segment("shop", "production", "beta").await.unwrap();
    let revision_before = s.environment("shop", "production").await.unwrap().revision;
    let audit_before = audit_of(f, "beta").await.len();

    f.advance(1_000);
    for (request, actual) in requests.iter().zip([2, 0]) {
        let result = s
            .apply_change_request(&dave, "shop", &request.id, None)
            .await;
        assert!(
            matches!(
                result,
                Err(StoreError::VersionMismatch { what: "segment", expected: 1, actual: a })
                    if a == actual
            ),
            "{result:?}"
        );
        let unchanged = s.change_request("shop", &request.id).await.unwrap();
        assert_eq!(unchanged.status, ChangeRequestStatus::Approved);
        assert_eq!(unchanged.applied_version, None);
    }
    assert_eq!(
        s.segment("shop", "production", "beta").await.unwrap(),
        before
    );
    assert_eq!(
        s.environment("shop", "production").await.unwrap().revision,
        revision_before
    );
    assert_eq!(audit_of(f, "beta").await.len(), audit_before);
}

// ---- telemetry ----

fn count(minute: i64, flag: &str, variant: Option<&str>, count: u64) -> EvaluationCount {
    EvaluationCount {
        minute,
        flag: flag.into(),
        variant: variant.map(str::to_string),
        count,
    }
}

/// A minute of the fake clock's day, in unix seconds.
const MINUTE: i64 = 1_800_000_000 / 60 * 60;

async fn the_last_evaluation_of_each_flag_per_environment_only_moves_forward(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    assert!(s.last_evaluations("shop").await.unwrap().is_empty());
    let batches = [
        (
            "production",
            "b1",
            vec![count(MINUTE, "checkout", Some("on"), 1)],
        ),
        (
            "production",
            "b2",
            vec![
                count(MINUTE + 120, "checkout", None, 1),
                count(MINUTE + 60, "checkout", Some("on"), 1),
                count(MINUTE + 60, "search", Some("on"), 1),
            ],
        ),
        // A late batch of an earlier minute does not move it back.
        (
            "production",
            "b3",
            vec![count(MINUTE, "checkout", Some("off"), 9)],
        ),
        (
            "staging",
            "b1",
            vec![count(MINUTE - 60, "checkout", Some("on"), 1)],
        ),
    ];
    for (environment, batch, rows) in &batches {
        assert!(
            s.record_evaluations("shop", environment, batch, rows)
                .await
                .unwrap()
        );
    }
    let last = |environment: &str, flag: &str, minute: i64| LastEvaluation {
        environment: environment.into(),
        flag: flag.into(),
        minute,
    };
    assert_eq!(
        s.last_evaluations("shop").await.unwrap(),
        [
            last("production", "checkout", MINUTE + 120),
            last("staging", "checkout", MINUTE - 60),
            last("production", "search", MINUTE + 60),
        ]
    );
    assert!(matches!(
        s.last_evaluations("nope").await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
}

async fn evaluation_counts_add_up_per_minute_flag_and_variant_and_a_retried_batch_counts_once(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let first = [
        count(MINUTE, "checkout", Some("on"), 40),
        count(MINUTE, "checkout", Some("on"), 2),
        count(MINUTE, "checkout", Some("off"), 3),
        count(MINUTE, "checkout", None, 1),
        count(MINUTE + 60, "checkout", Some("on"), 5),
        count(MINUTE, "search", Some("on"), 7),
    ];
    assert!(
        s.record_evaluations("shop", "production", "batch-1", &first)
            .await
            .unwrap()
    );
    // The same batch again (a retry) changes nothing and says so.
    assert!(
        !s.record_evaluations("shop", "production", "batch-1", &first)
            .await
            .unwrap()
    );
    // Another batch adds to the same minute; the same id in another environment is new there.
    let second = [count(MINUTE, "checkout", Some("on"), 8)];
    assert!(
        s.record_evaluations("shop", "production", "batch-2", &second)
            .await
            .unwrap()
    );
    assert!(
        s.record_evaluations("shop", "staging", "batch-1", &second)
            .await
            .unwrap()
    );
    let counts = s
        .evaluation_counts("shop", "production", "checkout", MINUTE, MINUTE + 120)
        .await
        .unwrap();
    assert_eq!(
        counts,
        [
            count(MINUTE, "checkout", None, 1),
            count(MINUTE, "checkout", Some("off"), 3),
            count(MINUTE, "checkout", Some("on"), 50),
            count(MINUTE + 60, "checkout", Some("on"), 5),
        ]
    );
    // The range is half-open; other flags and environments stay apart.
    let counts = s
        .evaluation_counts("shop", "production", "checkout", MINUTE + 60, MINUTE + 120)
        .await
        .unwrap();
    assert_eq!(counts, [count(MINUTE + 60, "checkout", Some("on"), 5)]);
    assert!(
        s.evaluation_counts("shop", "production", "checkout", MINUTE, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
    let staging = s
        .evaluation_counts("shop", "staging", "checkout", MINUTE, MINUTE + 120)
        .await
        .unwrap();
    assert_eq!(staging, [count(MINUTE, "checkout", Some("on"), 8)]);
    assert!(
        s.evaluation_counts("shop", "production", "unknown", MINUTE, MINUTE + 120)
            .await
            .unwrap()
            .is_empty()
    );
    // Rows the store cannot keep apart, and unknown places, are refused and write nothing.
    for bad in [
        count(MINUTE, "checkout", Some(""), 1),
        count(MINUTE + 1, "checkout", Some("on"), 1),
        count(MINUTE, "checkout", Some("on"), 0),
    ] {
        assert!(matches!(
            s.record_evaluations("shop", "production", "bad", &[bad])
                .await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(matches!(
        s.record_evaluations("shop", "nowhere", "batch-3", &second)
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    assert!(matches!(
        s.evaluation_counts("nope", "production", "checkout", MINUTE, MINUTE + 60)
            .await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    // A batch id is remembered for weeks, then forgotten.
    f.advance(anchor_store::TELEMETRY_BATCH_MEMORY_MS - 1_000);
    assert!(
        !s.record_evaluations("shop", "production", "batch-2", &second)
            .await
            .unwrap()
    );
    f.advance(2_000);
    s.record_evaluations("shop", "production", "batch-9", &[])
        .await
        .unwrap();
    assert!(
        s.record_evaluations("shop", "production", "batch-2", &second)
            .await
            .unwrap()
    );
}

async fn concurrent_telemetry_batches_all_add_up_and_a_raced_retry_counts_once(f: &Fixture) {
    seed(f).await;
    // Twenty SDKs report the same minutes at once, each batch twice (a retry racing the
    // original): every batch counts exactly once.
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let store = Arc::clone(&f.store);
        tasks.push(tokio::spawn(async move {
            let rows: Vec<EvaluationCount> = (0..50)
                .map(|m| {
                    let variant = if m % 2 == 0 { Some("on") } else { None };
                    count(MINUTE + 60 * (m % 5), "checkout", variant, 1 + i % 20)
                })
                .collect();
            let batch = format!("sdk-{}", i % 20);
            store
                .record_evaluations("shop", "production", &batch, &rows)
                .await
                .unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        fresh += usize::from(t.await.unwrap());
    }
    assert_eq!(fresh, 20, "each of the twenty batches is new exactly once");
    let counts = f
        .store
        .evaluation_counts("shop", "production", "checkout", MINUTE, MINUTE + 300)
        .await
        .unwrap();
    let total: u64 = counts.iter().map(|c| c.count).sum();
    // Each batch carries 50 rows of its count (1 to 20).
    assert_eq!(total, 50 * (1..=20).sum::<u64>());
    assert_eq!(counts.len(), 10, "5 minutes, 2 variants each: {counts:?}");
}

/// Outcomes of one (flag, variant) in one minute: `latencies` recorded one each, the first
/// `errors` of the requests failed, and one `revenue` value per request (its latency: whole
/// numbers, so sums are exact in any order).
fn outcome(
    minute: i64,
    flag: &str,
    variant: &str,
    exposures: u64,
    latencies: &[f64],
    errors: u64,
) -> OutcomeAggregate {
    let mut latency = LatencySketch::new();
    let mut revenue = MetricSums::default();
    for &ms in latencies {
        latency.record(ms);
        revenue.record_capped(ms, 1e9);
    }
    OutcomeAggregate {
        minute,
        flag: flag.into(),
        variant: variant.into(),
        observations: ArmObservations {
            exposures,
            requests: latencies.len() as u64,
            errors,
            latency,
            metrics: [("revenue".to_string(), revenue)].into(),
        },
        coverage: Default::default(),
    }
}

/// The merge of several rows' observations, as the store should read them back.
fn merged<'a>(rows: impl IntoIterator<Item = &'a OutcomeAggregate>) -> ArmObservations {
    let mut arm = ArmObservations::default();
    for row in rows {
        let o = &row.observations;
        arm.exposures += o.exposures;
        arm.requests += o.requests;
        arm.errors += o.errors;
        arm.latency.merge(&o.latency);
        for (name, sums) in &o.metrics {
            arm.metrics.entry(name.clone()).or_default().merge(sums);
        }
    }
    arm
}

async fn outcomes_merge_per_minute_flag_and_variant_and_a_retried_batch_counts_once(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let on_a = outcome(MINUTE, "checkout", "on", 10, &[12.0, 15.0, 400.0], 1);
    let on_b = outcome(MINUTE, "checkout", "on", 2, &[13.0], 0);
    let off = outcome(MINUTE, "checkout", "off", 7, &[20.0, 21.0], 2);
    let later = outcome(MINUTE + 60, "checkout", "on", 4, &[30.0], 0);
    let other = outcome(MINUTE, "search", "on", 1, &[1.0], 0);
    let evaluations = [count(MINUTE, "checkout", Some("on"), 12)];
    let first = [
        on_a.clone(),
        off.clone(),
        on_b.clone(),
        later.clone(),
        other,
    ];
    assert!(
        s.record_telemetry("shop", "production", "batch-1", &evaluations, &first)
            .await
            .unwrap()
    );
    // The retry adds neither the counts nor the outcomes again.
    assert!(
        !s.record_telemetry("shop", "production", "batch-1", &evaluations, &first)
            .await
            .unwrap()
    );
    let on_c = outcome(MINUTE, "checkout", "on", 3, &[14.0, 900.0], 2);
    assert!(
        s.record_telemetry(
            "shop",
            "production",
            "batch-2",
            &[],
            std::slice::from_ref(&on_c)
        )
        .await
        .unwrap()
    );
    let minutes = s
        .outcome_minutes("shop", "production", "checkout", MINUTE, MINUTE + 120)
        .await
        .unwrap();
    let at = |minute, variant: &str, observations| OutcomeAggregate {
        minute,
        flag: "checkout".into(),
        variant: variant.into(),
        observations,
        coverage: Default::default(),
    };
    assert_eq!(
        minutes,
        [
            at(MINUTE, "off", merged([&off])),
            at(MINUTE, "on", merged([&on_a, &on_b, &on_c])),
            at(MINUTE + 60, "on", merged([&later])),
        ]
    );
    let counts = s
        .evaluation_counts("shop", "production", "checkout", MINUTE, MINUTE + 60)
        .await
        .unwrap();
    assert_eq!(counts, [count(MINUTE, "checkout", Some("on"), 12)]);
    // The controller's read merges the range per variant; the range is half-open.
    let arms = s
        .outcome_observations("shop", "production", "checkout", MINUTE, MINUTE + 120)
        .await
        .unwrap();
    assert_eq!(arms.len(), 2);
    assert_eq!(arms["on"], merged([&on_a, &on_b, &on_c, &later]));
    assert_eq!(arms["on"].requests, 7);
    assert_eq!(arms["on"].latency.count(), 7);
    assert_eq!(arms["off"], merged([&off]));
    let arms = s
        .outcome_observations("shop", "production", "checkout", MINUTE + 60, MINUTE + 120)
        .await
        .unwrap();
    assert_eq!(arms.keys().collect::<Vec<_>>(), ["on"]);
    assert_eq!(arms["on"], merged([&later]));
    assert!(
        s.outcome_observations("shop", "staging", "checkout", MINUTE, MINUTE + 120)
            .await
            .unwrap()
            .is_empty()
    );
    // Rows the store cannot keep are refused and nothing of their batch is written.
    let mut too_many_errors = outcome(MINUTE, "checkout", "on", 1, &[1.0], 0);
    too_many_errors.observations.errors = 2;
    for bad in [
        outcome(MINUTE + 1, "checkout", "on", 1, &[1.0], 0),
        outcome(MINUTE, "checkout", "", 1, &[1.0], 0),
        too_many_errors,
    ] {
        assert!(matches!(
            s.record_telemetry("shop", "production", "bad", &evaluations, &[bad])
                .await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(
        s.record_telemetry("shop", "production", "bad", &[], &[])
            .await
            .unwrap(),
        "the refused batches left no trace of their id"
    );
    assert!(matches!(
        s.outcome_observations("shop", "nowhere", "checkout", MINUTE, MINUTE + 60)
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
}

/// An outcome row carrying coverage counts: `(attribute, value, count)`.
fn covered(
    minute: i64,
    flag: &str,
    variant: &str,
    counts: &[(&str, &str, u64)],
) -> OutcomeAggregate {
    let mut row = outcome(minute, flag, variant, 1, &[], 0);
    for &(attribute, value, n) in counts {
        row.coverage
            .entry(attribute.into())
            .or_default()
            .insert(value.into(), n);
    }
    row
}

async fn coverage_counts_add_up_per_variant_attribute_and_value_over_a_range_and_a_retried_batch_counts_once(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let first = [
        covered(
            MINUTE,
            "checkout",
            "on",
            &[
                ("platform", "ios", 3),
                ("platform", "android", 1),
                ("country", "BR", 4),
            ],
        ),
        // The same key twice in one batch is summed.
        covered(MINUTE, "checkout", "on", &[("platform", "ios", 2)]),
        covered(MINUTE, "checkout", "off", &[("platform", "ios", 40)]),
        covered(MINUTE + 60, "checkout", "on", &[("platform", "ios", 5)]),
        covered(MINUTE + 120, "checkout", "on", &[("platform", "ios", 100)]),
        covered(MINUTE, "search", "on", &[("platform", "ios", 9)]),
    ];
    for _ in 0..2 {
        s.record_telemetry("shop", "production", "batch-c", &[], &first)
            .await
            .unwrap();
    }
    s.record_telemetry(
        "shop",
        "production",
        "batch-d",
        &[],
        &[covered(
            MINUTE,
            "checkout",
            "on",
            &[("platform", "(none)", 1)],
        )],
    )
    .await
    .unwrap();
    let counts = s
        .coverage_counts("shop", "production", "checkout", MINUTE, MINUTE + 120)
        .await
        .unwrap();
    let expected: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>> = [
        ("off", vec![("platform", vec![("ios", 40)])]),
        (
            "on",
            vec![
                ("country", vec![("BR", 4)]),
                ("platform", vec![("(none)", 1), ("android", 1), ("ios", 10)]),
            ],
        ),
    ]
    .into_iter()
    .map(|(variant, attributes)| {
        let attributes = attributes
            .into_iter()
            .map(|(a, values)| {
                let values = values
                    .into_iter()
                    .map(|(v, n)| (v.to_string(), n))
                    .collect();
                (a.to_string(), values)
            })
            .collect();
        (variant.to_string(), attributes)
    })
    .collect();
    assert_eq!(
        counts, expected,
        "the retry counted once; the range is half-open"
    );
    // The outcome rows themselves were stored with the counts.
    let arms = s
        .outcome_observations("shop", "production", "checkout", MINUTE, MINUTE + 60)
        .await
        .unwrap();
    assert_eq!(arms["on"].exposures, 3);
    assert!(
        s.coverage_counts("shop", "production", "nothing", MINUTE, MINUTE + 60)
            .await
            .unwrap()
            .is_empty()
    );
    // An empty attribute or value is refused, with nothing of its batch written.
    for bad in [
        covered(MINUTE, "checkout", "on", &[("", "ios", 1)]),
        covered(MINUTE, "checkout", "on", &[("platform", "", 1)]),
    ] {
        assert!(matches!(
            s.record_telemetry("shop", "production", "bad-c", &[], &[bad])
                .await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(matches!(
        s.coverage_counts("shop", "nowhere", "checkout", MINUTE, MINUTE + 60)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn concurrent_outcome_batches_merge_their_sketches_and_a_raced_retry_counts_once(
    f: &Fixture,
) {
    seed(f).await;
    // Twenty SDKs report the same two aggregates at once, each batch twice (a retry racing
    // the original): every sketch is merged exactly once, none lost to a concurrent write.
    let rows_of = |i: u64| {
        let latencies: Vec<f64> = (0..=i).map(|k| 10.0 + (i * 7 + k) as f64).collect();
        vec![
            outcome(MINUTE, "checkout", "on", 1, &latencies, i % 2),
            outcome(MINUTE, "checkout", "off", 2, &latencies[..1], 0),
        ]
    };
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let store = Arc::clone(&f.store);
        let rows = rows_of(i % 20);
        tasks.push(tokio::spawn(async move {
            let batch = format!("sdk-{}", i % 20);
            store
                .record_telemetry("shop", "production", &batch, &[], &rows)
                .await
                .unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        fresh += usize::from(t.await.unwrap());
    }
    assert_eq!(fresh, 20, "each of the twenty batches is new exactly once");
    let all: Vec<OutcomeAggregate> = (0..20).flat_map(rows_of).collect();
    let arms = f
        .store
        .outcome_observations("shop", "production", "checkout", MINUTE, MINUTE + 60)
        .await
        .unwrap();
    let expected = |variant: &str| merged(all.iter().filter(|r| r.variant == variant));
    assert_eq!(arms["on"], expected("on"));
    assert_eq!(arms["off"], expected("off"));
    assert_eq!(arms["on"].latency.count(), (1..=20).sum::<u64>());
    assert_eq!(arms["off"].exposures, 40);
}

// ---- telemetry compaction ----

const HOUR: i64 = 3_600;
const DAY: i64 = 24 * HOUR;

/// Minutes kept two days, rows 90 days, batch ids a week; `rows` per transaction.
fn retention(rows: u32) -> TelemetryRetention {
    TelemetryRetention {
        minute_secs: 2 * DAY,
        keep_secs: 90 * DAY,
        batch_ids_ms: 7 * DAY * 1_000,
        rows_per_transaction: rows,
    }
}

/// Per variant (`None` as ""), the evaluations in `[from, to)`.
async fn evaluation_totals(f: &Fixture, from: i64, to: i64) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for row in f
        .store
        .evaluation_counts("shop", "production", "checkout", from, to)
        .await
        .unwrap()
    {
        *totals.entry(row.variant.unwrap_or_default()).or_default() += row.count;
    }
    totals
}

/// Three hours of minutes from `MINUTE` (an hour's start): 7 evaluation rows and 4 outcome
/// rows per minute, each batch a minute, so 180 batches.
async fn record_three_hours(f: &Fixture) -> Vec<OutcomeAggregate> {
    assert_eq!(MINUTE % HOUR, 0);
    let mut all = Vec::new();
    for m in 0..180i64 {
        let minute = MINUTE + 60 * m;
        let k = m as u64;
        let evaluations = [
            count(minute, "checkout", Some("on"), 1 + k),
            count(minute, "checkout", Some("off"), 2),
            count(minute, "checkout", None, k % 3 + 1),
            count(minute, "search", Some("on"), 5),
        ];
        let outcomes = vec![
            outcome(
                minute,
                "checkout",
                "on",
                k % 4 + 1,
                &[10.0 + (k % 50) as f64, 500.0],
                k % 2,
            ),
            outcome(minute, "checkout", "off", 2, &[11.0], 0),
            outcome(minute, "search", "on", 1, &[3.0], 0),
        ];
        f.store
            .record_telemetry(
                "shop",
                "production",
                &format!("m{m}"),
                &evaluations,
                &outcomes,
            )
            .await
            .unwrap();
        f.store
            .record_telemetry(
                "shop",
                "staging",
                &format!("m{m}"),
                &evaluations[..1],
                &outcomes[..1],
            )
            .await
            .unwrap();
        all.extend(outcomes);
    }
    all
}

async fn compaction_merges_old_minutes_into_hours_without_changing_totals_and_expires_old_rows(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let all = record_three_hours(f).await;
    let (from, to) = (MINUTE, MINUTE + 3 * HOUR);
    let evaluations_before = evaluation_totals(f, from, to).await;
    let arms_before = s
        .outcome_observations("shop", "production", "checkout", from, to)
        .await
        .unwrap();
    let checkout = |variant: &str| {
        merged(
            all.iter()
                .filter(|r| r.flag == "checkout" && r.variant == variant),
        )
    };
    assert_eq!(arms_before["on"], checkout("on"));
    // Nothing is old enough yet.
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    assert_eq!(report.minutes_merged + report.rows_expired, 0, "{report:?}");

    // Two days and two and a half hours later, the first two hours are past the minute
    // retention; the third is not whole yet and keeps its minutes.
    f.advance((2 * DAY + 2 * HOUR + 30 * 60) * 1_000);
    // A small transaction size makes merges split hours across transactions.
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    // Per merged minute: production's 4 evaluation rows and 3 outcome rows, staging's 1 + 1.
    assert_eq!(report.minutes_merged, 120 * (4 + 3 + 1 + 1), "{report:?}");
    assert_eq!(report.rows_expired, 0);
    assert_eq!(evaluation_totals(f, from, to).await, evaluations_before);
    let arms = s
        .outcome_observations("shop", "production", "checkout", from, to)
        .await
        .unwrap();
    assert_eq!(arms, arms_before);
    // The merged hours are one row each at the hour's start; the third hour is untouched.
    let rows = s
        .evaluation_counts("shop", "production", "checkout", from, to)
        .await
        .unwrap();
    let minutes: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.minute).collect();
    assert_eq!(rows.len(), 3 * 2 + 3 * 60, "{rows:?}");
    assert!(minutes.contains(&MINUTE) && minutes.contains(&(MINUTE + HOUR)));
    assert!(!minutes.contains(&(MINUTE + 60)) && minutes.contains(&(MINUTE + 2 * HOUR + 60)));
    let hour = s
        .outcome_minutes(
            "shop",
            "production",
            "checkout",
            MINUTE + HOUR,
            MINUTE + HOUR + 60,
        )
        .await
        .unwrap();
    assert_eq!(hour.len(), 2);
    let second_hour = |variant: &str| {
        merged(all.iter().filter(|r| {
            r.flag == "checkout"
                && r.variant == variant
                && (MINUTE + HOUR..MINUTE + 2 * HOUR).contains(&r.minute)
        }))
    };
    assert_eq!(hour[0].observations, second_hour("off"));
    assert_eq!(hour[1].observations, second_hour("on"));
    // Other flags and environments were merged apart and keep their totals.
    let search = s
        .outcome_observations("shop", "production", "search", from, to)
        .await
        .unwrap();
    assert_eq!(search["on"].requests, 180);
    let staging = s
        .evaluation_counts("shop", "staging", "checkout", from, MINUTE + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(staging.len(), 2);
    assert_eq!(
        staging.iter().map(|r| r.count).sum::<u64>(),
        (1..=120).sum::<u64>()
    );
    // Compacting again changes nothing.
    let again = s.compact_telemetry(&retention(7)).await.unwrap();
    assert_eq!(again.minutes_merged + again.rows_expired, 0, "{again:?}");
    assert_eq!(evaluation_totals(f, from, to).await, evaluations_before);

    // Late data for a minute still kept at minute resolution adds to it as before.
    let late = MINUTE + 2 * HOUR + 10 * 60;
    let late_outcome = outcome(late, "checkout", "on", 1, &[42.0], 1);
    assert!(
        s.record_telemetry(
            "shop",
            "production",
            "late",
            &[count(late, "checkout", Some("on"), 1_000)],
            std::slice::from_ref(&late_outcome),
        )
        .await
        .unwrap()
    );
    let mut expected = evaluations_before.clone();
    *expected.get_mut("on").unwrap() += 1_000;
    assert_eq!(evaluation_totals(f, from, to).await, expected);
    let arms = s
        .outcome_observations("shop", "production", "checkout", late, late + 60)
        .await
        .unwrap();
    assert_eq!(
        arms["on"],
        merged(
            all.iter()
                .filter(|r| r.flag == "checkout" && r.variant == "on" && r.minute == late)
                .chain([&late_outcome])
        )
    );
    // The batch id is remembered until the batch-id retention, then forgotten.
    assert!(
        !s.record_telemetry("shop", "production", "m0", &[], &[])
            .await
            .unwrap()
    );
    f.advance(5 * DAY * 1_000);
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    // The late batch came later and is still remembered.
    assert_eq!(report.batch_ids_forgotten, 2 * 180);
    // The late data went into minute rows that were there already.
    assert_eq!(report.minutes_merged, 60 * (4 + 3 + 1 + 1), "{report:?}");
    assert_eq!(evaluation_totals(f, from, to).await, expected);
    assert!(
        s.record_telemetry("shop", "production", "m0", &[], &[])
            .await
            .unwrap()
    );
    // Past the retention, rows are deleted, hours and minutes alike.
    let recent = MINUTE + 90 * DAY;
    s.record_evaluations(
        "shop",
        "production",
        "recent",
        &[count(recent, "checkout", Some("on"), 3)],
    )
    .await
    .unwrap();
    f.advance(90 * DAY * 1_000);
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    // Three hours of production (4 evaluation and 3 outcome rows each) and of staging (1 + 1).
    assert_eq!(report.rows_expired, 3 * (4 + 3) + 3 * 2, "{report:?}");
    assert!(evaluation_totals(f, from, to).await.is_empty());
    assert!(
        s.outcome_minutes("shop", "staging", "checkout", from, to)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        evaluation_totals(f, recent, recent + 60).await["on"],
        3,
        "a row within the retention stays (merged into its hour)"
    );
}

async fn two_concurrent_compactions_merge_every_minute_exactly_once(f: &Fixture) {
    seed(f).await;
    let all = record_three_hours(f).await;
    let (from, to) = (MINUTE, MINUTE + 3 * HOUR);
    let evaluations_before = evaluation_totals(f, from, to).await;
    let arms_before = f
        .store
        .outcome_observations("shop", "production", "checkout", from, to)
        .await
        .unwrap();
    f.advance((2 * DAY + 4 * HOUR) * 1_000);
    // Two servers compact the same database at once, each in small transactions, twice over.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = Arc::clone(&f.store);
        tasks.push(tokio::spawn(async move {
            store.compact_telemetry(&retention(11)).await.unwrap()
        }));
    }
    let mut merged_minutes = 0;
    for t in tasks {
        merged_minutes += t.await.unwrap().minutes_merged;
    }
    assert_eq!(
        merged_minutes,
        180 * (4 + 3 + 1 + 1),
        "each minute merged once"
    );
    assert_eq!(evaluation_totals(f, from, to).await, evaluations_before);
    let arms = f
        .store
        .outcome_observations("shop", "production", "checkout", from, to)
        .await
        .unwrap();
    assert_eq!(arms, arms_before);
    assert_eq!(
        arms["on"],
        merged(
            all.iter()
                .filter(|r| r.flag == "checkout" && r.variant == "on")
        )
    );
    let rows = f
        .store
        .outcome_minutes("shop", "production", "checkout", from, to)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3 * 2, "one row per hour and variant: {rows:?}");
}

/// The next change within a few seconds.
async fn next_change(feed: &mut Box<dyn anchor_store::ChangeFeed>) -> Change {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
            .await
            .expect("a change within 10 s")
        {
            Ok(change) => return change,
            // A lost connection may show as an error before the feed reconnects.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

fn environment_change(environment: &str, revision: u64) -> Change {
    Change::Environment {
        project: "shop".into(),
        environment: environment.into(),
        revision,
    }
}

async fn committed_changes_reach_the_change_feed_and_a_lost_connection_resyncs(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let Some(mut feed) = s.changes() else {
        // One process alone writes an SQLite database: there is nobody to tell.
        return;
    };
    assert_eq!(next_change(&mut feed).await, Change::Resync);
    // A flag created everywhere: every environment of the project has a new revision.
    s.create_flag(&admin(), "shop", &boolean_flag("f", &[]), &off_config())
        .await
        .unwrap();
    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push(next_change(&mut feed).await);
    }
    for env in ["development", "staging", "production"] {
        assert!(heard.contains(&environment_change(env, 1)), "{heard:?}");
    }
    // A write that fails is never announced: the next change is the one that commits.
    let on = on_config();
    assert!(
        s.update_flag_config(&change(&admin(), "production", "f", &on, Some(7)))
            .await
            .is_err()
    );
    s.update_flag_config(&change(&admin(), "production", "f", &on, Some(1)))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut feed).await,
        environment_change("production", 2)
    );
    let beta = segment("beta", &["a"], &[]);
    s.create_segment(&segment_change(&admin(), "staging", &beta, None))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut feed).await,
        environment_change("staging", 2)
    );
    // SDK keys: created, rotated, revoked.
    let key = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 1))
        .await
        .unwrap();
    assert_eq!(next_change(&mut feed).await, Change::SdkKeys);
    s.rotate_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 2), 0)
        .await
        .unwrap();
    assert_eq!(next_change(&mut feed).await, Change::SdkKeys);
    s.revoke_sdk_key(&admin(), "shop", "production", &key.id)
        .await
        .unwrap();
    assert_eq!(next_change(&mut feed).await, Change::SdkKeys);
    // The feed's connection dies: it reconnects and says that changes may have been missed,
    // then hears changes again.
    let (url, schema) = f.cleanup.clone().expect("a shared database");
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let killed: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'anchor-change-feed' AND query LIKE '%anchor_changes_{schema}%'"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(killed, 1, "the change feeds' connections");
    conn.close().await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Resync);
    s.update_flag_config(&change(&admin(), "production", "f", &off_config(), None))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut feed).await,
        environment_change("production", 3)
    );
}

// ---- webhooks ----

fn new_webhook(name: &str, events: &[&str], enabled: bool) -> NewWebhook {
    NewWebhook {
        name: name.into(),
        url: format!("https://hooks.example.com/{name}"),
        secret: format!("whsec_{name}_secret"),
        events: events.iter().map(|e| e.to_string()).collect(),
        format: WebhookFormat::Json,
        enabled,
    }
}

async fn webhooks_are_created_updated_rotated_and_deleted_with_audit_entries_and_never_return_their_secret(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let created = s
        .create_webhook(&admin(), "shop", &new_webhook("ops", &["*"], true))
        .await
        .unwrap();
    assert_eq!(created.project, "shop");
    assert_eq!(created.events, vec!["*"]);
    assert!(created.subscribes_to("flag.changed"));
    assert_eq!(s.webhook("shop", &created.id).await.unwrap(), created);
    assert_eq!(s.webhooks("shop").await.unwrap(), vec![created.clone()]);
    assert!(matches!(
        s.create_webhook(&admin(), "nope", &new_webhook("x", &["*"], true))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create_webhook(&admin(), "shop", &new_webhook("x", &[], true))
            .await,
        Err(StoreError::Invalid(_))
    ));

    f.advance(1_000);
    let update = WebhookUpdate {
        name: Some("alerts".into()),
        events: Some(vec!["flag.changed".into()]),
        format: Some(WebhookFormat::Slack),
        enabled: Some(false),
        ..Default::default()
    };
    let updated = s
        .update_webhook(&admin(), "shop", &created.id, &update)
        .await
        .unwrap();
    assert_eq!(updated.name, "alerts");
    assert_eq!(updated.url, created.url);
    assert_eq!(updated.format, WebhookFormat::Slack);
    assert!(!updated.enabled);
    assert!(!updated.subscribes_to("release.completed"));
    assert_eq!(updated.updated_at, created.updated_at + 1_000);
    // The same values again change nothing and write no entry.
    let unchanged = s
        .update_webhook(&admin(), "shop", &created.id, &update)
        .await
        .unwrap();
    assert_eq!(unchanged, updated);

    f.advance(1_000);
    let rotated = s
        .rotate_webhook_secret(&admin(), "shop", &created.id, "whsec_new")
        .await
        .unwrap();
    assert_eq!(rotated.updated_at, updated.updated_at + 1_000);
    assert_eq!(s.webhook("shop", &created.id).await.unwrap(), rotated);

    let entries = audit_of(f, &created.id).await;
    let actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "webhook.secret_rotated",
            "webhook.updated",
            "webhook.created"
        ]
    );
    assert!(entries.iter().all(|e| e.resource_kind == "webhook"));
    assert!(entries.iter().all(|e| e.environment.is_none()));
    let everything = serde_json::to_string(&entries).unwrap()
        + &serde_json::to_string(&s.webhooks("shop").await.unwrap()).unwrap();
    assert!(!everything.contains("secret\""), "{everything}");
    assert!(!everything.contains("whsec_"), "{everything}");
    let created_entry = entries.last().unwrap().diff.to_string();
    assert!(
        created_entry.contains("https://hooks.example.com/…") && !created_entry.contains("/ops"),
        "the audit log keeps no URL path: {created_entry}"
    );

    s.enqueue_webhook_deliveries("shop", "ping", &json!({}), Some(&created.id))
        .await
        .unwrap();
    s.delete_webhook(&admin(), "shop", &created.id)
        .await
        .unwrap();
    assert!(matches!(
        s.webhook("shop", &created.id).await,
        Err(StoreError::NotFound {
            what: "webhook",
            ..
        })
    ));
    assert!(s.webhooks("shop").await.unwrap().is_empty());
    assert!(matches!(
        s.delete_webhook(&admin(), "shop", &created.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        s.claim_webhook_deliveries(i64::MAX / 2, 1_000, 0)
            .await
            .unwrap()
            .is_empty(),
        "a deleted webhook's deliveries go with it"
    );
    assert_eq!(audit_of(f, &created.id).await[0].action, "webhook.deleted");
}

async fn an_event_is_queued_for_each_enabled_subscribed_webhook_and_a_test_delivery_for_one(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let all = s
        .create_webhook(&admin(), "shop", &new_webhook("all", &["*"], true))
        .await
        .unwrap();
    let flags = s
        .create_webhook(
            &admin(),
            "shop",
            &new_webhook("flags", &["flag.changed"], true),
        )
        .await
        .unwrap();
    let off = s
        .create_webhook(&admin(), "shop", &new_webhook("off", &["*"], false))
        .await
        .unwrap();
    let data = json!({"flag": "checkout", "environment": "production"});
    let queued = s
        .enqueue_webhook_deliveries("shop", "flag.changed", &data, None)
        .await
        .unwrap();
    let mut targets: Vec<_> = queued.iter().map(|d| d.webhook_id.clone()).collect();
    targets.sort();
    let mut expected = vec![all.id.clone(), flags.id.clone()];
    expected.sort();
    assert_eq!(targets, expected);
    for d in &queued {
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.payload, data);
        assert_eq!(d.event_type, "flag.changed");
        assert_eq!(d.next_attempt_at, Some(d.created_at));
    }
    let release = s
        .enqueue_webhook_deliveries("shop", "release.completed", &json!({}), None)
        .await
        .unwrap();
    assert_eq!(release.len(), 1);
    assert_eq!(release[0].webhook_id, all.id);
    // A test delivery goes to the one webhook named, even a disabled one.
    let ping = s
        .enqueue_webhook_deliveries("shop", "ping", &json!({}), Some(&off.id))
        .await
        .unwrap();
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].webhook_id, off.id);
    assert!(matches!(
        s.enqueue_webhook_deliveries("shop", "ping", &json!({}), Some("missing"))
            .await,
        Err(StoreError::NotFound {
            what: "webhook",
            ..
        })
    ));
    assert!(matches!(
        s.enqueue_webhook_deliveries("nope", "ping", &json!({}), None)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let log = s.webhook_deliveries("shop", &all.id, 0).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].event_type, "release.completed", "newest first");
    assert_eq!(
        s.webhook_deliveries("shop", &off.id, 0)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Every delivery of the webhooks as (webhook name, event type, payload), sorted: what the
/// outbox holds, whatever the order rows were written in.
async fn outbox(s: &Arc<dyn Store>, hooks: &[(&str, &Webhook)]) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    for (name, hook) in hooks {
        for d in s.webhook_deliveries("shop", &hook.id, 0).await.unwrap() {
            assert_eq!(d.status, DeliveryStatus::Pending);
            rows.push((name.to_string(), d.event_type, d.payload.to_string()));
        }
    }
    rows.sort();
    rows
}

/// The deliveries an event makes for the named webhooks.
fn to(
    names: &[&str],
    event_type: &str,
    payload: &serde_json::Value,
) -> Vec<(String, String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), event_type.to_string(), payload.to_string()))
        .collect()
}

async fn a_write_carrying_an_event_records_its_deliveries_and_a_failed_write_records_none(
    f: &Fixture,
) {
    let release = start_release(f).await;
    let s = &f.store;
    let mut hooks = Vec::new();
    for (name, events, enabled) in [
        ("all", &["*"][..], true),
        ("flags", &["flag.changed"][..], true),
        ("rollbacks", &["release.rolled_back"][..], true),
        ("off", &["*"][..], false),
    ] {
        let hook = s
            .create_webhook(&admin(), "shop", &new_webhook(name, events, enabled))
            .await
            .unwrap();
        hooks.push((name, hook));
    }
    let hooks: Vec<(&str, &Webhook)> = hooks.iter().map(|(n, h)| (*n, h)).collect();
    let mut expected = Vec::new();
    let flag_data = json!({"flag": "checkout", "environment": "production", "action": "x"});
    let flag_event = OutboxEvent {
        event_type: "flag.changed",
        data: &flag_data,
    };

    // A configuration write: its event, with the new version, for the enabled subscribers.
    let current = production_config(s, "checkout").await;
    let written = s
        .update_flag_config(&ConfigChange {
            event: Some(flag_event),
            ..change(
                &admin(),
                "production",
                "checkout",
                &off_config(),
                Some(current.version),
            )
        })
        .await
        .unwrap();
    let mut with_version = flag_data.clone();
    with_version["version"] = json!(written.version);
    expected.extend(to(&["all", "flags"], "flag.changed", &with_version));
    assert_eq!(outbox(s, &hooks).await, expected);

    // A write refused for a stale If-Match, or for an event that is no event type, records
    // nothing, and the configuration stays as it was.
    let stale = s
        .update_flag_config(&ConfigChange {
            event: Some(flag_event),
            ..change(
                &admin(),
                "production",
                "checkout",
                &on_config(),
                Some(current.version),
            )
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionMismatch { .. })),
        "{stale:?}"
    );
    let not_an_event = s
        .update_flag_config(&ConfigChange {
            event: Some(OutboxEvent {
                event_type: "*",
                data: &flag_data,
            }),
            ..change(&admin(), "production", "checkout", &on_config(), None)
        })
        .await;
    assert!(is_invalid(&not_an_event), "{not_an_event:?}");
    assert_eq!(
        production_config(s, "checkout").await.version,
        written.version
    );
    assert_eq!(outbox(s, &hooks).await, expected);

    // Applying a change request: its event with the applied version; an apply that fails
    // because the flag moved on records nothing.
    let mut requests = Vec::new();
    for _ in 0..2 {
        let request = s
            .create_change_request(&proposal(
                &Actor::user("ann"),
                "production",
                "checkout",
                written.version,
                &on_config(),
            ))
            .await
            .unwrap();
        s.review_change_request(
            &Actor::user("bob"),
            "shop",
            &request.id,
            ReviewDecision::Approve,
            None,
        )
        .await
        .unwrap();
        requests.push(request);
    }
    let request_data = json!({"flag": "checkout", "changeRequest": requests[0].id});
    let request_event = OutboxEvent {
        event_type: "flag.changed",
        data: &request_data,
    };
    let applied = s
        .apply_change_request(&admin(), "shop", &requests[0].id, Some(request_event))
        .await
        .unwrap();
    let mut with_version = request_data.clone();
    with_version["version"] = json!(applied.applied_version.unwrap());
    expected.extend(to(&["all", "flags"], "flag.changed", &with_version));
    expected.sort();
    assert_eq!(outbox(s, &hooks).await, expected);
    let moved_on = s
        .apply_change_request(&admin(), "shop", &requests[1].id, Some(request_event))
        .await;
    assert!(
        matches!(moved_on, Err(StoreError::VersionMismatch { .. })),
        "{moved_on:?}"
    );
    assert_eq!(outbox(s, &hooks).await, expected);

    // A release transition: each of its events, data as given; a stale one records nothing.
    let release_data = json!({"release": release.id, "state": {"state": "rolledBack"}});
    let events = [
        OutboxEvent {
            event_type: "release.guardrail_breached",
            data: &release_data,
        },
        OutboxEvent {
            event_type: "release.rolled_back",
            data: &release_data,
        },
    ];
    let transition = anchor_store::ReleaseUpdate {
        actor: &admin(),
        project: "shop",
        id: &release.id,
        expected_version: release.version,
        state: &json!({"state": "rolledBack"}),
        active: false,
        flag_config: None,
        action: "release.rolled_back",
        message: Some("rolled back"),
        report: None,
        events: &events,
    };
    s.update_release(&transition).await.unwrap();
    expected.extend(to(&["all"], "release.guardrail_breached", &release_data));
    expected.extend(to(
        &["all", "rollbacks"],
        "release.rolled_back",
        &release_data,
    ));
    expected.sort();
    assert_eq!(outbox(s, &hooks).await, expected);
    let again = s.update_release(&transition).await;
    assert!(
        matches!(again, Err(StoreError::VersionMismatch { .. })),
        "{again:?}"
    );
    assert_eq!(outbox(s, &hooks).await, expected);
}

async fn a_claimed_delivery_is_leased_retried_and_finished_once(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let hook = s
        .create_webhook(&admin(), "shop", &new_webhook("ops", &["*"], true))
        .await
        .unwrap();
    let queued = s
        .enqueue_webhook_deliveries("shop", "ping", &json!({"n": 1}), None)
        .await
        .unwrap();
    let now = queued[0].created_at;
    let lease = 60_000;

    let claimed = s.claim_webhook_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let first = &claimed[0];
    assert_eq!(first.delivery.id, queued[0].id);
    assert_eq!(first.delivery.attempts, 1);
    assert_eq!(first.lease_until, now + lease);
    assert_eq!(first.secret, "whsec_ops_secret");
    assert_eq!(first.url, hook.url);
    assert_eq!(first.project, "shop");
    assert!(first.enabled);
    assert!(
        !format!("{first:?}").contains("whsec_"),
        "Debug redacts the secret"
    );
    // Leased: nobody else gets it meanwhile.
    assert!(
        s.claim_webhook_deliveries(now + 1, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A failed attempt: try again in 10 s.
    let retry = DeliveryOutcome {
        id: &first.delivery.id,
        lease_until: first.lease_until,
        status: DeliveryStatus::Pending,
        http_status: Some(500),
        error: Some("HTTP 500"),
        next_attempt_at: Some(now + 10_000),
    };
    assert!(s.finish_webhook_delivery(&retry).await.unwrap());
    assert!(
        !s.finish_webhook_delivery(&retry).await.unwrap(),
        "the claim is spent"
    );
    let log = s.webhook_deliveries("shop", &hook.id, 0).await.unwrap();
    assert_eq!(log[0].status, DeliveryStatus::Pending);
    assert_eq!(log[0].last_http_status, Some(500));
    assert_eq!(log[0].last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(log[0].next_attempt_at, Some(now + 10_000));
    assert!(
        s.claim_webhook_deliveries(now + 9_999, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let second = s
        .claim_webhook_deliveries(now + 10_000, lease, 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(second.delivery.attempts, 2);
    // Its claimer dies: once the lease ends, the delivery is due again, and the dead claimer's
    // late outcome is refused.
    let third = s
        .claim_webhook_deliveries(second.lease_until, lease, 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(third.delivery.attempts, 3);
    let stale = DeliveryOutcome {
        id: &second.delivery.id,
        lease_until: second.lease_until,
        status: DeliveryStatus::Failed,
        http_status: None,
        error: Some("timed out"),
        next_attempt_at: None,
    };
    assert!(!s.finish_webhook_delivery(&stale).await.unwrap());
    let done = DeliveryOutcome {
        id: &third.delivery.id,
        lease_until: third.lease_until,
        status: DeliveryStatus::Succeeded,
        http_status: Some(204),
        error: None,
        next_attempt_at: None,
    };
    assert!(s.finish_webhook_delivery(&done).await.unwrap());
    let log = s.webhook_deliveries("shop", &hook.id, 0).await.unwrap();
    assert_eq!(log[0].status, DeliveryStatus::Succeeded);
    assert_eq!(log[0].attempts, 3);
    assert_eq!(log[0].last_http_status, Some(204));
    assert_eq!(log[0].last_error, None);
    assert_eq!(log[0].next_attempt_at, None);
    assert!(
        s.claim_webhook_deliveries(i64::MAX / 2, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a finished delivery is never claimed again"
    );
    let missing_time = DeliveryOutcome {
        next_attempt_at: None,
        status: DeliveryStatus::Pending,
        ..done
    };
    assert!(matches!(
        s.finish_webhook_delivery(&missing_time).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn two_concurrent_claimers_get_disjoint_deliveries(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    for name in ["a", "b", "c"] {
        s.create_webhook(&admin(), "shop", &new_webhook(name, &["*"], true))
            .await
            .unwrap();
    }
    let mut queued = Vec::new();
    for n in 0..10 {
        for d in s
            .enqueue_webhook_deliveries("shop", "flag.changed", &json!({ "n": n }), None)
            .await
            .unwrap()
        {
            queued.push(d.id);
        }
    }
    assert_eq!(queued.len(), 30);
    let now = i64::MAX / 4;
    let claimers: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&f.store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                // Small batches, so the two interleave.
                loop {
                    let batch = store
                        .claim_webhook_deliveries(now, 60_000, 4)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|c| c.delivery.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "no delivery was claimed twice");
    queued.sort();
    assert_eq!(all, queued, "every delivery was claimed");
}

async fn the_delivery_log_is_pruned_by_age_and_by_count_per_webhook(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let a = s
        .create_webhook(&admin(), "shop", &new_webhook("a", &["*"], true))
        .await
        .unwrap();
    let b = s
        .create_webhook(&admin(), "shop", &new_webhook("b", &["*"], true))
        .await
        .unwrap();
    let start = f.clock.load(Ordering::SeqCst);
    for n in 0..5 {
        s.enqueue_webhook_deliveries("shop", "flag.changed", &json!({ "n": n }), None)
            .await
            .unwrap();
        f.advance(1_000);
    }
    // Older than the third event's time: the first two of each webhook go.
    assert_eq!(
        s.prune_webhook_deliveries(start + 2_000, 1_000)
            .await
            .unwrap(),
        4
    );
    // Beyond the newest two of each: one more of each.
    assert_eq!(s.prune_webhook_deliveries(start, 2).await.unwrap(), 2);
    for hook in [&a, &b] {
        let log = s.webhook_deliveries("shop", &hook.id, 0).await.unwrap();
        let kept: Vec<_> = log
            .iter()
            .map(|d| d.payload["n"].as_i64().unwrap())
            .collect();
        assert_eq!(kept, [4, 3]);
    }
    assert_eq!(s.prune_webhook_deliveries(start, 2).await.unwrap(), 0);
}

async fn release_templates_are_created_replaced_with_if_match_listed_and_deleted_with_audit_entries(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let body = json!({"stages": [{"percentage": 100.0, "dwellMs": 0}]});
    let created = s
        .put_release_template(&admin(), "shop", "careful", "Careful", &body, None)
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert!(matches!(
        s.put_release_template(&admin(), "shop", "careful", "Careful", &body, Some(7))
            .await,
        Err(StoreError::VersionMismatch {
            what: "release template",
            ..
        })
    ));
    let replaced = s
        .put_release_template(&admin(), "shop", "careful", "Very careful", &body, Some(1))
        .await
        .unwrap();
    assert_eq!(
        (replaced.version, replaced.name.as_str()),
        (2, "Very careful")
    );
    assert!(matches!(
        s.put_release_template(&admin(), "shop", "bad key!", "x", &body, None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let listed = s.release_templates("shop").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].template, body);
    s.delete_release_template(&admin(), "shop", "careful")
        .await
        .unwrap();
    assert!(matches!(
        s.release_template("shop", "careful").await,
        Err(StoreError::NotFound {
            what: "release template",
            ..
        })
    ));
    let actions: Vec<String> = s
        .audit(&AuditFilter {
            project: "shop".into(),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("release_template."))
        .collect();
    assert_eq!(actions.len(), 3, "created, updated, deleted: {actions:?}");
}

async fn production_config(s: &Arc<dyn Store>, flag: &str) -> FlagConfig {
    s.flag("shop", flag)
        .await
        .unwrap()
        .environments
        .into_iter()
        .find(|e| e.environment == "production")
        .unwrap()
        .config
}

async fn start_release(f: &Fixture) -> anchor_store::ReleaseRecord {
    seed(f).await;
    let s = &f.store;
    s.create_flag(
        &admin(),
        "shop",
        &boolean_flag("checkout", &[]),
        &on_config(),
    )
    .await
    .unwrap();
    s.create_release(&anchor_store::NewRelease {
        actor: &admin(),
        project: "shop",
        environment: "production",
        flag: "checkout",
        rule: None,
        control: "off",
        treatment: "on",
        template_key: "default",
        template: &json!({"stages": []}),
        state: &json!({"state": "pending"}),
        message: "created",
    })
    .await
    .unwrap()
}

async fn a_release_is_created_once_per_flag_and_environment_and_its_transitions_are_written_whole(
    f: &Fixture,
) {
    let release = start_release(f).await;
    let s = &f.store;
    assert!(release.active);
    assert_eq!(release.version, 1);
    assert_eq!(
        (release.control.as_str(), release.treatment.as_str()),
        ("off", "on")
    );
    // One active release per flag and environment.
    let again = s
        .create_release(&anchor_store::NewRelease {
            actor: &admin(),
            project: "shop",
            environment: "production",
            flag: "checkout",
            rule: None,
            control: "off",
            treatment: "on",
            template_key: "default",
            template: &json!({}),
            state: &json!({}),
            message: "again",
        })
        .await;
    assert!(matches!(
        again,
        Err(StoreError::AlreadyExists {
            what: "active release",
            ..
        })
    ));
    // A transition that moves the share: the flag's configuration, the state, the decision.
    let current = production_config(s, "checkout").await;
    let mut share: FlagConfig = current.clone();
    share.default_serve = serde_json::from_value(json!({"rollout": {"variants": [
        {"variant": "on", "weight": 1000}, {"variant": "off", "weight": 99000}]}}))
    .unwrap();
    let report = json!({"checks": []});
    let controller = Actor::system("rollout-controller");
    let updated = s
        .update_release(&anchor_store::ReleaseUpdate {
            actor: &controller,
            project: "shop",
            id: &release.id,
            expected_version: 1,
            state: &json!({"state": "running", "stage": 0}),
            active: true,
            flag_config: Some((&share, current.version)),
            action: "release.stage_advanced",
            message: Some("started; stage 1 of 5: 1%"),
            report: Some(&report),
            events: &[],
        })
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.state["state"], "running");
    assert_eq!(
        updated.report.as_ref(),
        Some(&report),
        "a decision's report is the latest"
    );
    // Between decisions the controller keeps its latest report, for the state it judged only.
    let later = json!({"checks": [1]});
    assert!(
        s.record_release_report(&release.id, 2, &later)
            .await
            .unwrap()
    );
    assert!(
        !s.record_release_report(&release.id, 1, &json!({}))
            .await
            .unwrap()
    );
    assert_eq!(
        s.release("shop", &release.id).await.unwrap().report,
        Some(later)
    );
    let now = production_config(s, "checkout").await;
    assert_eq!(now.version, current.version + 1);
    assert_eq!(now.default_serve, share.default_serve);
    let history = s
        .flag_revisions("shop", "production", "checkout")
        .await
        .unwrap();
    assert_eq!(
        history[0].actor, controller,
        "a normal revision by the controller"
    );
    let decisions = s.release_decisions("shop", &release.id).await.unwrap();
    let messages: Vec<&str> = decisions.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages, ["created", "started; stage 1 of 5: 1%"]);
    assert_eq!(decisions[1].report.as_ref(), Some(&report));
    assert_eq!(s.active_releases().await.unwrap().len(), 1);
    // Finishing it frees the flag for another release.
    s.update_release(&anchor_store::ReleaseUpdate {
        actor: &admin(),
        project: "shop",
        id: &release.id,
        expected_version: 2,
        state: &json!({"state": "aborted"}),
        active: false,
        flag_config: None,
        action: "release.aborted",
        message: Some("aborted by a person"),
        report: None,
        events: &[],
    })
    .await
    .unwrap();
    assert!(s.active_releases().await.unwrap().is_empty());
    let listed = s
        .releases("shop", Some("production"), Some("checkout"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].active);
    assert!(
        s.releases("shop", Some("staging"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.release("other", &release.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let audited = s
        .audit(&AuditFilter {
            project: "shop".into(),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.resource_kind == "release")
        .count();
    assert_eq!(audited, 3, "created, advanced, aborted");
}

async fn a_release_transition_with_a_stale_version_or_flag_configuration_changes_nothing(
    f: &Fixture,
) {
    let release = start_release(f).await;
    let s = &f.store;
    let stale = s
        .update_release(&anchor_store::ReleaseUpdate {
            actor: &admin(),
            project: "shop",
            id: &release.id,
            expected_version: 9,
            state: &json!({"state": "running"}),
            active: true,
            flag_config: None,
            action: "release.started",
            message: Some("never"),
            report: None,
            events: &[],
        })
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::VersionMismatch {
            what: "release",
            ..
        })
    ));
    let current = production_config(s, "checkout").await;
    // Someone edits the flag between the controller's read and its write.
    s.update_flag_config(&ConfigChange {
        actor: &admin(),
        project: "shop",
        environment: "production",
        flag: "checkout",
        config: &off_config(),
        expected_version: None,
        comment: None,
        action: "flag.config.updated",
        event: None,
    })
    .await
    .unwrap();
    let raced = s
        .update_release(&anchor_store::ReleaseUpdate {
            actor: &admin(),
            project: "shop",
            id: &release.id,
            expected_version: 1,
            state: &json!({"state": "running"}),
            active: true,
            flag_config: Some((&on_config(), current.version)),
            action: "release.started",
            message: Some("never"),
            report: None,
            events: &[],
        })
        .await;
    assert!(matches!(
        raced,
        Err(StoreError::VersionMismatch {
            what: "flag configuration",
            ..
        })
    ));
    let after = s.release("shop", &release.id).await.unwrap();
    assert_eq!(after.version, 1, "the state was not written either");
    assert_eq!(
        s.release_decisions("shop", &release.id)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn only_one_owner_holds_a_release_lease_until_it_expires(f: &Fixture) {
    let release = start_release(f).await;
    let s = &f.store;
    assert!(
        s.claim_release(&release.id, "server-a", 1_000, 30_000)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_release(&release.id, "server-b", 2_000, 30_000)
            .await
            .unwrap()
    );
    assert!(
        s.claim_release(&release.id, "server-a", 20_000, 30_000)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(
        !s.claim_release(&release.id, "server-b", 49_000, 30_000)
            .await
            .unwrap()
    );
    assert!(
        s.claim_release(&release.id, "server-b", 50_001, 30_000)
            .await
            .unwrap(),
        "expired"
    );
    // Racing claimers: exactly one wins.
    let (a, b) = tokio::join!(
        s.claim_release(&release.id, "server-c", 200_000, 30_000),
        s.claim_release(&release.id, "server-d", 200_000, 30_000)
    );
    assert!(a.unwrap() ^ b.unwrap());
}

// ---- coverage compaction ----

/// Per variant, attribute and value: the coverage counts of `flag` in `environment` over
/// `[from, to)`, as plain maps.
async fn coverage_totals(
    f: &Fixture,
    environment: &str,
    flag: &str,
    from: i64,
    to: i64,
) -> BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>> {
    f.store
        .coverage_counts("shop", environment, flag, from, to)
        .await
        .unwrap()
        .into_iter()
        .map(|(variant, attributes)| {
            let attributes = attributes
                .into_iter()
                .map(|(a, values)| (a, values.into_iter().collect()))
                .collect();
            (variant, attributes)
        })
        .collect()
}

async fn coverage_counts_are_merged_into_hours_with_the_same_totals_and_expire_with_the_rest(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    assert_eq!(MINUTE % HOUR, 0);
    // Three hours of minutes, each a batch: in production, `checkout` by platform (android on
    // even minutes only) and country for `on`, by platform for `off`, and `search`; in staging
    // `checkout` alone: per minute four outcome rows, and six coverage rows (eight on even
    // minutes).
    for m in 0..180i64 {
        let minute = MINUTE + 60 * m;
        let k = m as u64;
        let mut on = vec![("platform", "ios", 1 + k % 3), ("country", "BR", 2)];
        if m % 2 == 0 {
            on.push(("platform", "android", 1));
        }
        let rows = [
            covered(minute, "checkout", "on", &on),
            covered(minute, "checkout", "off", &[("platform", "ios", 4)]),
            covered(minute, "search", "on", &[("platform", "web", 1)]),
        ];
        s.record_telemetry("shop", "production", &format!("c{m}"), &[], &rows)
            .await
            .unwrap();
        s.record_telemetry("shop", "staging", &format!("c{m}"), &[], &rows[..1])
            .await
            .unwrap();
    }
    let (from, to) = (MINUTE, MINUTE + 3 * HOUR);
    let checkout = coverage_totals(f, "production", "checkout", from, to).await;
    let search = coverage_totals(f, "production", "search", from, to).await;
    let staging = coverage_totals(f, "staging", "checkout", from, to).await;
    let second_hour = coverage_totals(
        f,
        "production",
        "checkout",
        MINUTE + HOUR,
        MINUTE + 2 * HOUR,
    )
    .await;
    assert_eq!(checkout["on"]["platform"]["android"], 90);
    assert_eq!(second_hour["off"]["platform"]["ios"], 4 * 60);
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    assert_eq!(report.minutes_merged + report.rows_expired, 0, "{report:?}");

    // Past the minute retention for the first two hours, two compactions at once (in small
    // transactions) merge each minute exactly once.
    f.advance((2 * DAY + 2 * HOUR + 30 * 60) * 1_000);
    let small = retention(7);
    let (a, b) = tokio::join!(s.compact_telemetry(&small), s.compact_telemetry(&small));
    let merged = a.unwrap().minutes_merged + b.unwrap().minutes_merged;
    assert_eq!(merged, 120 * (4 + 6) + 60 * 2);
    assert_eq!(
        coverage_totals(f, "production", "checkout", from, to).await,
        checkout
    );
    assert_eq!(
        coverage_totals(f, "production", "search", from, to).await,
        search
    );
    assert_eq!(
        coverage_totals(f, "staging", "checkout", from, to).await,
        staging
    );
    // A merged hour counts at its start, whole; the third hour still has its minutes.
    assert_eq!(
        coverage_totals(
            f,
            "production",
            "checkout",
            MINUTE + HOUR,
            MINUTE + HOUR + 60
        )
        .await,
        second_hour
    );
    assert!(
        coverage_totals(
            f,
            "production",
            "checkout",
            MINUTE + HOUR + 60,
            MINUTE + 2 * HOUR
        )
        .await
        .is_empty()
    );
    let last = MINUTE + 2 * HOUR + 60;
    let last_minute = coverage_totals(f, "production", "checkout", last, last + 60).await;
    assert_eq!(last_minute["on"]["platform"]["ios"], 1 + 121 % 3);
    let again = s.compact_telemetry(&retention(7)).await.unwrap();
    assert_eq!(again.minutes_merged + again.rows_expired, 0, "{again:?}");

    // Later the third hour is merged too, and past the retention every row goes, hours and
    // minutes alike, while a recent one stays.
    f.advance(5 * DAY * 1_000);
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    assert_eq!(report.minutes_merged, 60 * (4 + 6) + 30 * 2, "{report:?}");
    assert_eq!(
        coverage_totals(f, "production", "checkout", from, to).await,
        checkout
    );
    let recent = MINUTE + 90 * DAY;
    s.record_telemetry(
        "shop",
        "production",
        "recent",
        &[],
        &[covered(recent, "checkout", "on", &[("platform", "ios", 7)])],
    )
    .await
    .unwrap();
    f.advance(90 * DAY * 1_000);
    let report = s.compact_telemetry(&retention(7)).await.unwrap();
    // Per hour: 4 outcome rows; 3 + 1 + 1 coverage rows in production and 3 in staging.
    assert_eq!(report.rows_expired, 3 * (4 + 8), "{report:?}");
    for (environment, flag) in [
        ("production", "checkout"),
        ("production", "search"),
        ("staging", "checkout"),
    ] {
        assert!(
            coverage_totals(f, environment, flag, from, to)
                .await
                .is_empty(),
            "{environment} {flag}"
        );
    }
    let kept = coverage_totals(f, "production", "checkout", recent, recent + 60).await;
    assert_eq!(
        kept["on"]["platform"]["ios"], 7,
        "a row within the retention stays (merged into its hour)"
    );
}

async fn a_release_that_ends_without_a_flag_change_moves_the_environment_revision(f: &Fixture) {
    let release = start_release(f).await;
    let s = &f.store;
    let actor = admin();
    let (paused, aborted) = (json!({"state": "paused"}), json!({"state": "aborted"}));
    let revision = || async { s.environment_config("shop", "production").await.unwrap().1 };
    let before = revision().await;
    // A step that keeps the release active and the flag as it is changes nothing SDKs see.
    let update = |expected_version, state, active| anchor_store::ReleaseUpdate {
        actor: &actor,
        project: "shop",
        id: &release.id,
        expected_version,
        state,
        active,
        flag_config: None,
        action: "release.updated",
        message: None,
        report: None,
        events: &[],
    };
    let held = s.update_release(&update(1, &paused, true)).await.unwrap();
    assert_eq!(revision().await, before);
    // Ending it does: the flag leaves the environment's watched flags.
    let ended = s
        .update_release(&update(held.version, &aborted, false))
        .await
        .unwrap();
    assert!(!ended.active);
    assert_eq!(revision().await, before + 1);
    assert!(s.active_releases().await.unwrap().is_empty());
}

// ---- changing and deleting environments ----

/// The project's environments as `(key, position)`, in display order.
async fn environment_order(s: &Arc<dyn Store>) -> Vec<(String, i64)> {
    s.environments("shop")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.position))
        .collect()
}

fn order_of(keys: &[&str]) -> Vec<(String, i64)> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), i as i64))
        .collect()
}

async fn an_environment_is_renamed_moved_and_its_approval_changed_with_one_audit_entry(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let update = anchor_store::EnvironmentUpdate {
        name: Some("Live".into()),
        requires_approval: Some(false),
        requires_comment: Some(true),
        position: Some(0),
    };
    let changed = s
        .update_environment(
            &admin(),
            "shop",
            "production",
            &update,
            Some("the release train replaces approvals"),
        )
        .await
        .unwrap();
    assert_eq!(changed.key, "production", "the key never changes");
    assert_eq!(changed.name, "Live");
    assert!(!changed.requires_approval && changed.requires_comment);
    assert_eq!(changed.position, 0);
    assert_eq!(s.environment("shop", "production").await.unwrap(), changed);
    assert_eq!(
        environment_order(s).await,
        order_of(&["production", "development", "staging"]),
        "the others shift down one, in their order"
    );
    // Moving down shifts those in between up.
    s.update_environment(
        &admin(),
        "shop",
        "production",
        &anchor_store::EnvironmentUpdate {
            position: Some(1),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        environment_order(s).await,
        order_of(&["development", "production", "staging"])
    );
    let entries: Vec<AuditEntry> = audit_of(f, "production")
        .await
        .into_iter()
        .filter(|e| e.action == "environment.updated")
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let first = &entries[1];
    assert_eq!(first.resource_kind, "environment");
    assert_eq!(first.environment.as_deref(), Some("production"));
    assert_eq!(
        first.comment.as_deref(),
        Some("the release train replaces approvals")
    );
    let diff = first.diff.to_string();
    for changed in [
        "/name",
        "/requiresApproval",
        "/requiresComment",
        "/position",
    ] {
        assert!(diff.contains(changed), "{changed} not in {diff}");
    }
    assert!(!diff.contains("/key"), "{diff}");
    // Nothing evaluated changed.
    assert_eq!(changed.revision, 0);
}

async fn an_environment_update_that_changes_nothing_writes_nothing_and_bad_values_change_nothing(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    let before = s.environments("shop").await.unwrap();
    let same = anchor_store::EnvironmentUpdate {
        name: Some("staging".into()),
        position: Some(1),
        ..Default::default()
    };
    s.update_environment(&admin(), "shop", "staging", &same, None)
        .await
        .unwrap();
    s.update_environment(&admin(), "shop", "staging", &Default::default(), None)
        .await
        .unwrap();
    for bad in [
        anchor_store::EnvironmentUpdate {
            position: Some(3),
            name: Some("Moved".into()),
            ..Default::default()
        },
        anchor_store::EnvironmentUpdate {
            position: Some(-1),
            ..Default::default()
        },
        anchor_store::EnvironmentUpdate {
            name: Some("  ".into()),
            ..Default::default()
        },
    ] {
        let refused = s
            .update_environment(&admin(), "shop", "staging", &bad, None)
            .await;
        assert!(
            matches!(refused, Err(StoreError::Invalid(_))),
            "{refused:?}"
        );
    }
    assert!(matches!(
        s.update_environment(&admin(), "shop", "nowhere", &same, None)
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    assert_eq!(s.environments("shop").await.unwrap(), before);
    assert!(
        audit_of(f, "staging")
            .await
            .iter()
            .all(|e| e.action != "environment.updated")
    );
}

async fn deleting_an_environment_removes_everything_in_it_and_leaves_the_others_as_they_were(
    f: &Fixture,
) {
    seed(f).await;
    let s = &f.store;
    s.create_flag(
        &admin(),
        "shop",
        &boolean_flag("checkout", &[]),
        &off_config(),
    )
    .await
    .unwrap();
    // Something of every kind in staging: a configuration change (a revision), a segment with
    // keys, an SDK key, a reviewed change request, a finished release and telemetry.
    s.update_flag_config(&change(&admin(), "staging", "checkout", &on_config(), None))
        .await
        .unwrap();
    s.create_segment(&segment_change(
        &admin(),
        "staging",
        &segment("beta", &["alice"], &["bob"]),
        None,
    ))
    .await
    .unwrap();
    s.create_sdk_key(&admin(), &sdk_key("staging", SdkKeyKind::Server, 7))
        .await
        .unwrap();
    let version = config_in(&s.flag("shop", "checkout").await.unwrap(), "staging").version;
    let request = s
        .create_change_request(&proposal(
            &Actor::user("editor"),
            "staging",
            "checkout",
            version,
            &off_config(),
        ))
        .await
        .unwrap();
    s.review_change_request(&admin(), "shop", &request.id, ReviewDecision::Approve, None)
        .await
        .unwrap();
    let release = s
        .create_release(&anchor_store::NewRelease {
            actor: &admin(),
            project: "shop",
            environment: "staging",
            flag: "checkout",
            rule: None,
            control: "off",
            treatment: "on",
            template_key: "default",
            template: &json!({"stages": []}),
            state: &json!({"state": "pending"}),
            message: "created",
        })
        .await
        .unwrap();
    s.update_release(&anchor_store::ReleaseUpdate {
        actor: &admin(),
        project: "shop",
        id: &release.id,
        expected_version: release.version,
        state: &json!({"state": "aborted"}),
        active: false,
        flag_config: None,
        action: "release.aborted",
        message: Some("aborted"),
        report: None,
        events: &[],
    })
    .await
    .unwrap();
    for environment in ["staging", "production"] {
        s.record_telemetry(
            "shop",
            environment,
            "batch-1",
            &[count(MINUTE, "checkout", Some("on"), 3)],
            &[covered(MINUTE, "checkout", "on", &[("country", "nl", 1)])],
        )
        .await
        .unwrap();
    }
    let production_before = s.environment_config("shop", "production").await.unwrap();

    s.delete_environment(&admin(), "shop", "staging")
        .await
        .unwrap();

    assert_eq!(
        environment_order(s).await,
        order_of(&["development", "production"]),
        "the environments after it move up"
    );
    assert!(matches!(
        s.environment_config("shop", "staging").await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    let record = s.flag("shop", "checkout").await.unwrap();
    let left: Vec<&str> = record
        .environments
        .iter()
        .map(|e| e.environment.as_str())
        .collect();
    assert_eq!(left, ["development", "production"]);
    assert_eq!(
        s.sdk_key_by_hash(&sdk_hash(7)).await.unwrap(),
        None,
        "its SDK keys stop authenticating"
    );
    assert!(
        s.change_requests("shop", None, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.releases("shop", None, None).await.unwrap().is_empty());
    assert!(
        s.last_evaluations("shop")
            .await
            .unwrap()
            .iter()
            .all(|e| e.environment != "staging")
    );
    assert_eq!(
        s.environment_config("shop", "production").await.unwrap(),
        production_before,
        "the other environments are untouched"
    );
    assert_eq!(
        s.evaluation_counts("shop", "production", "checkout", MINUTE, MINUTE + 60)
            .await
            .unwrap()
            .len(),
        1
    );
    // The audit log keeps its history, no longer tied to the environment, and says who
    // deleted it.
    let entries = audit_of(f, "staging").await;
    assert_eq!(entries[0].action, "environment.deleted");
    assert_eq!(entries[0].resource_kind, "environment");
    assert_eq!(entries[0].actor, admin());
    assert!(entries.iter().any(|e| e.action == "environment.created"));
    assert!(entries.iter().all(|e| e.environment.is_none()));
    assert!(
        audit_of(f, "checkout")
            .await
            .iter()
            .any(|e| e.action == "flag.config.updated" && e.environment.is_none())
    );
    // The key can be used again, for a new environment with nothing in it.
    s.create_environment(
        &admin(),
        "shop",
        &NewEnvironment {
            key: "staging".into(),
            name: "Staging again".into(),
            requires_approval: false,
            requires_comment: false,
        },
    )
    .await
    .unwrap();
    assert!(s.segments("shop", "staging").await.unwrap().is_empty());
    assert!(s.sdk_keys("shop", "staging").await.unwrap().is_empty());
    assert!(
        s.flag_revisions("shop", "staging", "checkout")
            .await
            .unwrap()
            .iter()
            .all(|r| r.version == 1),
        "no revision of the old environment"
    );
}

async fn an_environment_with_an_active_release_or_alone_in_its_project_is_not_deleted(f: &Fixture) {
    start_release(f).await;
    let s = &f.store;
    let refused = s.delete_environment(&admin(), "shop", "production").await;
    match refused {
        Err(StoreError::Invalid(why)) => assert!(why.contains("checkout"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(s.environment("shop", "production").await.is_ok());
    assert_eq!(s.releases("shop", None, None).await.unwrap().len(), 1);
    s.delete_environment(&admin(), "shop", "development")
        .await
        .unwrap();
    s.delete_environment(&admin(), "shop", "staging")
        .await
        .unwrap();
    assert!(matches!(
        s.delete_environment(&admin(), "shop", "staging").await,
        Err(StoreError::NotFound { .. })
    ));
    // Alone now, and its release still running: refused for being the only one first.
    match s.delete_environment(&admin(), "shop", "production").await {
        Err(StoreError::Invalid(why)) => assert!(why.contains("only environment"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(environment_order(s).await, order_of(&["production"]));
}

async fn credential_uses_move_last_used_forward_only_and_skip_unknown_ids(f: &Fixture) {
    seed(f).await;
    let s = &f.store;
    let used = |kind, id: &str, at| CredentialUse {
        kind,
        id: id.to_string(),
        at,
    };
    let ann = s
        .create_user(&Actor::system("bootstrap"), "ann", PASSWORD_HASH, false)
        .await
        .unwrap();
    let token = |name: &str, i: u32| NewToken {
        user_id: ann.id.clone(),
        name: name.into(),
        token_hash: format!("sha256:{i:064x}"),
        role: Role::Viewer,
        expires_at: None,
    };
    let ci = s
        .create_token(&Actor::user(&ann.id), &token("ci", 1))
        .await
        .unwrap();
    let idle = s
        .create_token(&Actor::user(&ann.id), &token("idle", 2))
        .await
        .unwrap();
    let server = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Server, 1))
        .await
        .unwrap();
    let client = s
        .create_sdk_key(&admin(), &sdk_key("production", SdkKeyKind::Client, 2))
        .await
        .unwrap();
    assert_eq!((ci.last_used_at, server.last_used_at), (None, None));
    let audited = s.instance_audit(100).await.unwrap().len();

    s.record_credential_uses(&[]).await.unwrap();
    s.record_credential_uses(&[
        used(CredentialKind::SdkKey, &server.id, 5_000),
        used(CredentialKind::Token, &ci.id, 6_000),
        // A token's id is not an SDK key's, nor the reverse, nor is an unknown id anything.
        used(CredentialKind::SdkKey, &ci.id, 7_000),
        used(CredentialKind::Token, &server.id, 7_000),
        used(CredentialKind::Token, "no-such-token", 7_000),
    ])
    .await
    .unwrap();
    let last_used = async || {
        let keys = s.sdk_keys("shop", "production").await.unwrap();
        let of_key = |id: &str| keys.iter().find(|k| k.id == id).unwrap().last_used_at;
        let tokens = s.tokens(&ann.id).await.unwrap();
        let of_token = |id: &str| tokens.iter().find(|t| t.id == id).unwrap().last_used_at;
        [
            of_key(&server.id),
            of_key(&client.id),
            of_token(&ci.id),
            of_token(&idle.id),
        ]
    };
    assert_eq!(last_used().await, [Some(5_000), None, Some(6_000), None]);
    assert_eq!(
        s.sdk_key_by_hash(&sdk_hash(1))
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(5_000)
    );
    assert_eq!(
        s.token_by_hash(&format!("sha256:{:064x}", 1))
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(6_000)
    );

    // An older use (another server's late flush) never moves it back; a newer one moves it on.
    s.record_credential_uses(&[
        used(CredentialKind::SdkKey, &server.id, 4_000),
        used(CredentialKind::Token, &ci.id, 9_000),
        used(CredentialKind::SdkKey, &client.id, 8_000),
    ])
    .await
    .unwrap();
    assert_eq!(
        last_used().await,
        [Some(5_000), Some(8_000), Some(9_000), None]
    );

    // Two servers flushing overlapping batches at once: both commit, the latest use wins.
    let first = [
        used(CredentialKind::SdkKey, &server.id, 20_000),
        used(CredentialKind::Token, &ci.id, 21_000),
    ];
    let second = [
        used(CredentialKind::Token, &ci.id, 20_500),
        used(CredentialKind::SdkKey, &server.id, 20_500),
    ];
    let (a, b) = tokio::join!(
        s.record_credential_uses(&first),
        s.record_credential_uses(&second)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(
        last_used().await,
        [Some(20_500), Some(8_000), Some(21_000), None]
    );

    // A revoked key still shows when it was last used.
    s.revoke_sdk_key(&admin(), "shop", "production", &server.id)
        .await
        .unwrap();
    assert_eq!(last_used().await[0], Some(20_500));
    assert_eq!(
        s.instance_audit(100).await.unwrap().len(),
        audited,
        "a use is not audited"
    );
}
