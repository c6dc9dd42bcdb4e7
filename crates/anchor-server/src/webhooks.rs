//! Project webhooks: the alerting channel of flag changes and, later, of progressive rollouts.
//!
//! Events are a transactional outbox: the store write that makes a change (a flag
//! configuration, an applied change request, a release transition) is given the event
//! announcing it ([`anchor_store::OutboxEvent`]) and records one pending delivery per enabled
//! webhook of the project subscribed to the event in the same transaction, so a change is never
//! committed without its deliveries, even when the server dies right after the commit. After
//! the commit the handler only calls [`wake`]: the dispatcher ([`run`], started by `launch`)
//! claims due deliveries with a lease (so servers sharing one PostgreSQL never send the same
//! delivery at the same time) and POSTs them, retrying failures with exponential backoff until
//! they succeed or run out of attempts. Were it never woken, it would find them at its next
//! poll. Only the test ping, which changes nothing, is recorded on its own ([`queue`]).
//!
//! ## The wire format
//! Format `json` sends
//! `{"id": <delivery id>, "type": <event type>, "project": <project key>, "occurredAt": <RFC 3339>,
//! "data": {...}}`; format `slack` sends `{"text": <one line>, "blocks": [...]}`, which Slack's
//! incoming webhooks accept. Every request carries `Content-Type: application/json`,
//! `X-Anchor-Event` (the event type), `X-Anchor-Delivery` (the delivery id, the same on every
//! retry: receivers deduplicate on it), `X-Anchor-Timestamp` (unix seconds of this attempt) and
//! `X-Anchor-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` keyed with the
//! webhook's secret (the secret string's UTF-8 bytes, `whsec_` prefix included).
//!
//! A receiver verifies a request by recomputing the HMAC over the timestamp header, a `.` and
//! the raw body bytes, comparing it with the signature in constant time, and rejecting
//! timestamps more than five minutes from its own clock, so that a captured request cannot be
//! replayed later. Each attempt is signed anew with its own timestamp.
//!
//! Delivery is at least once: an attempt cut short (the server stopped, the outcome could not be
//! recorded) is made again once its lease ends.
//!
//! ## Why the secret is stored as given
//! Unlike personal access tokens and SDK keys, which are only compared, a webhook secret must be
//! read back to sign every delivery, so the store keeps it as given. The API shows it once, when
//! the webhook is made or its secret rotated; no read returns it, and it never reaches an audit
//! entry or a log.

pub(crate) mod routes;

use std::sync::Arc;
use std::time::Duration;

use anchor_store::{
    ClaimedDelivery, DeliveryOutcome, DeliveryStatus, StoreError, WEBHOOK_DELIVERIES_KEPT,
    WEBHOOK_DELIVERY_MAX_AGE_MS, WebhookDelivery, WebhookFormat,
};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::AppState;
use crate::error::ApiError;

pub(crate) use routes::routes;

/// The event types. Rollout events are recorded by the release transitions that cause them.
pub mod events {
    /// A test delivery, sent by `POST …/webhooks/{id}/test`.
    pub const PING: &str = "ping";
    /// A flag's configuration changed in one environment: an edit, a kill switch, a revert, an
    /// applied change request. Data: `flag`, `environment`, `version`, `actor`, `action`,
    /// `comment` (and `changeRequest` when one was applied).
    pub const FLAG_CHANGED: &str = "flag.changed";
    /// A release moved to its next stage.
    pub const RELEASE_STAGE_ADVANCED: &str = "release.stage_advanced";
    /// A release waits for someone to approve its next stage.
    pub const RELEASE_WAITING_FOR_APPROVAL: &str = "release.waiting_for_approval";
    /// A release holds its stage (not enough data yet, or paused).
    pub const RELEASE_HOLDING: &str = "release.holding";
    /// A release was rolled back.
    pub const RELEASE_ROLLED_BACK: &str = "release.rolled_back";
    /// A release reached its last stage.
    pub const RELEASE_COMPLETED: &str = "release.completed";
    /// A guardrail metric crossed its tolerance.
    pub const RELEASE_GUARDRAIL_BREACHED: &str = "release.guardrail_breached";

    /// Every event type a webhook may subscribe to (besides `*`, all of them).
    pub const ALL: [&str; 8] = [
        PING,
        FLAG_CHANGED,
        RELEASE_STAGE_ADVANCED,
        RELEASE_WAITING_FOR_APPROVAL,
        RELEASE_HOLDING,
        RELEASE_ROLLED_BACK,
        RELEASE_COMPLETED,
        RELEASE_GUARDRAIL_BREACHED,
    ];
}

/// The header naming the event type.
pub const EVENT_HEADER: &str = "x-anchor-event";
/// The header carrying the delivery's id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "x-anchor-delivery";
/// The header carrying the attempt's time in unix seconds, covered by the signature.
pub const TIMESTAMP_HEADER: &str = "x-anchor-timestamp";
/// The header carrying `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-anchor-signature";

/// The default waits before the second, third, … attempt: at most six attempts over about
/// 1 h 13 min.
pub const DEFAULT_BACKOFF: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3_600),
];

/// How long one attempt may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries claimed at once; also the most attempts in flight.
const MAX_IN_FLIGHT: usize = 32;

/// How often the delivery log is pruned.
const PRUNE_EVERY_MS: i64 = 60 * 60 * 1_000;

/// How the dispatcher behaves; replaceable so tests need not wait minutes.
#[derive(Clone)]
pub struct WebhookSettings {
    /// The current time in unix milliseconds.
    pub clock: anchor_store::Clock,
    /// The wait before each retry; its length plus one is the number of attempts.
    pub backoff: Vec<Duration>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// How often the dispatcher looks for due deliveries when nothing wakes it.
    pub poll_interval: Duration,
    /// How long a claim keeps other dispatchers away: longer than an attempt can take.
    pub lease: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            clock: Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            }),
            backoff: DEFAULT_BACKOFF.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl WebhookSettings {
    /// How many attempts a delivery gets.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.backoff.len()).unwrap_or(u32::MAX - 1) + 1
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }
}

/// The dispatcher's shared parts: its settings, its HTTP client and the bell [`wake`] rings.
#[derive(Debug)]
pub struct Dispatcher {
    settings: WebhookSettings,
    client: reqwest::Client,
    wake: Notify,
}

impl Dispatcher {
    pub(crate) fn new(settings: WebhookSettings) -> Result<Self, ApiError> {
        let client = reqwest::Client::builder()
            // A receiver answers; it does not send deliveries elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "ReleaseAnchor-Webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| ApiError::Internal(format!("cannot build the webhook client: {e}")))?;
        Ok(Dispatcher {
            settings,
            client,
            wake: Notify::new(),
        })
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }
}

/// Wakes the dispatcher after a write that recorded webhook deliveries has committed, so they
/// are sent at once rather than at its next poll.
pub(crate) fn wake(state: &AppState) {
    state.webhooks.wake.notify_one();
}

/// Records deliveries (to one webhook with `only`) and wakes the dispatcher.
pub(crate) async fn queue(
    state: &AppState,
    project: &str,
    event_type: &str,
    data: &Value,
    only: Option<&str>,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let deliveries = state
        .store
        .enqueue_webhook_deliveries(project, event_type, data, only)
        .await?;
    if !deliveries.is_empty() {
        wake(state);
    }
    Ok(deliveries)
}

/// The data of a `flag.changed` event but its `version`, which the store's write sets to the
/// configuration's new version (see [`anchor_store::OutboxEvent`]).
pub(crate) fn flag_changed(
    flag: &str,
    environment: &str,
    actor: &anchor_store::Actor,
    action: &str,
    comment: Option<&str>,
) -> Value {
    json!({
        "flag": flag,
        "environment": environment,
        "actor": actor,
        "action": action,
        "comment": comment,
    })
}

/// Sends due deliveries until the task is aborted (when the server stops; attempts in flight
/// are dropped with it and made again when their lease ends). Prunes the delivery log hourly.
pub async fn run(state: AppState) {
    let dispatcher = Arc::clone(&state.webhooks);
    let settings = &dispatcher.settings;
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut last_prune = i64::MIN;
    loop {
        while in_flight.try_join_next().is_some() {}
        let now = settings.now();
        if now.saturating_sub(last_prune) >= PRUNE_EVERY_MS {
            last_prune = now;
            match state
                .store
                .prune_webhook_deliveries(
                    now - WEBHOOK_DELIVERY_MAX_AGE_MS,
                    WEBHOOK_DELIVERIES_KEPT,
                )
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "pruned the webhook delivery log"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the webhook delivery log"),
            }
        }
        let free = slots.available_permits();
        let mut claimed_all = false;
        if free > 0 {
            let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
            match state
                .store
                .claim_webhook_deliveries(now, lease_ms, free as u32)
                .await
            {
                Ok(batch) => {
                    claimed_all = batch.len() == free;
                    for claimed in batch {
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            break;
                        };
                        let state = state.clone();
                        in_flight.spawn(async move {
                            attempt(&state, claimed).await;
                            drop(slot);
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries"),
            }
        }
        // A full batch suggests more are due: look again at once.
        if claimed_all {
            continue;
        }
        // With every slot taken, a finished attempt is worth waking for too.
        let busy = slots.available_permits() == 0;
        tokio::select! {
            () = dispatcher.wake.notified() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
            Some(_) = in_flight.join_next(), if busy => {}
        }
    }
}

/// Makes one attempt of a claimed delivery and records its outcome.
async fn attempt(state: &AppState, claimed: ClaimedDelivery) {
    let dispatcher = &state.webhooks;
    let settings = &dispatcher.settings;
    let delivery = &claimed.delivery;
    let max = settings.max_attempts();
    // Events queued before the webhook was disabled are not sent; test pings are.
    let disabled = !claimed.enabled && delivery.event_type != events::PING;
    let (http_status, error) = if disabled {
        (None, Some("the webhook is disabled".to_string()))
    } else if delivery.attempts > max {
        // Claims whose outcome was never recorded count as attempts too.
        (None, Some(format!("gave up after {max} attempts")))
    } else {
        send(dispatcher, &claimed).await
    };
    let succeeded = error.is_none();
    let now = settings.now();
    let (status, next_attempt_at) = if succeeded {
        (DeliveryStatus::Succeeded, None)
    } else if delivery.attempts < max && !disabled {
        let wait = settings
            .backoff
            .get(delivery.attempts.saturating_sub(1) as usize)
            .copied()
            .unwrap_or_default();
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        (DeliveryStatus::Pending, Some(now.saturating_add(wait_ms)))
    } else {
        (DeliveryStatus::Failed, None)
    };
    let outcome = DeliveryOutcome {
        id: &delivery.id,
        lease_until: claimed.lease_until,
        status,
        http_status,
        error: error.as_deref(),
        next_attempt_at,
    };
    match state.store.finish_webhook_delivery(&outcome).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            delivery = %delivery.id,
            "a webhook attempt outlived its lease; its outcome was not recorded"
        ),
        Err(e) => {
            tracing::warn!(error = %e, delivery = %delivery.id, "cannot record a webhook attempt")
        }
    }
    if !succeeded {
        tracing::info!(
            delivery = %delivery.id,
            project = %claimed.project,
            attempt = delivery.attempts,
            status = status.as_str(),
            error = error.as_deref().unwrap_or(""),
            "webhook attempt failed"
        );
    }
}

/// POSTs the delivery: the receiver's HTTP status, and why it failed (`None` for a 2xx).
async fn send(dispatcher: &Dispatcher, claimed: &ClaimedDelivery) -> (Option<u16>, Option<String>) {
    let body = body(claimed);
    let timestamp = dispatcher.settings.now().div_euclid(1_000);
    let signature = signature(&claimed.secret, timestamp, &body);
    let request = dispatcher
        .client
        .post(&claimed.url)
        .timeout(dispatcher.settings.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, &claimed.delivery.event_type)
        .header(DELIVERY_HEADER, &claimed.delivery.id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body);
    match request.send().await {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => {
            let status = response.status();
            (Some(status.as_u16()), Some(format!("HTTP {status}")))
        }
        // Without the URL: a Slack-style URL is itself a secret.
        Err(e) if e.is_timeout() => (
            None,
            Some(format!(
                "no answer within {} s",
                dispatcher.settings.timeout.as_secs_f64()
            )),
        ),
        Err(e) if e.is_connect() => (None, Some(format!("cannot connect: {}", e.without_url()))),
        Err(e) => (None, Some(e.without_url().to_string())),
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `<timestamp>.<body>` keyed with the secret's bytes.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    format!(
        "sha256={}",
        hmac_sha256_hex(secret.as_bytes(), &[timestamp.as_bytes(), b".", body])
    )
}

fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The request body of a delivery, the same on every attempt.
pub fn body(claimed: &ClaimedDelivery) -> Vec<u8> {
    let d = &claimed.delivery;
    let value = match claimed.format {
        WebhookFormat::Json => json!({
            "id": d.id,
            "type": d.event_type,
            "project": claimed.project,
            "occurredAt": rfc3339(d.created_at),
            "data": d.payload,
        }),
        WebhookFormat::Slack => {
            let summary = summary(&claimed.project, &claimed.webhook_name, d);
            let text = slack_escape(&summary);
            json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "context", "elements": [{
                        "type": "mrkdwn",
                        "text": slack_escape(&format!(
                            "Release Anchor · project `{}` · `{}` · {} · delivery `{}`",
                            claimed.project, d.event_type, rfc3339(d.created_at), d.id
                        )),
                    }]},
                ],
            })
        }
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A one-line account of the event for people.
pub fn summary(project: &str, webhook: &str, d: &WebhookDelivery) -> String {
    let text = |key: &str| d.payload.get(key).and_then(Value::as_str).unwrap_or("?");
    let flag = text("flag");
    let environment = text("environment");
    match d.event_type.as_str() {
        events::PING => format!(
            "Ping from Release Anchor: webhook “{webhook}” of project `{project}` is reachable."
        ),
        events::FLAG_CHANGED => {
            let who = d
                .payload
                .pointer("/actor/id")
                .and_then(Value::as_str)
                .unwrap_or("someone");
            let what = match text("action") {
                "flag.killed" => "turned off (kill switch)",
                "flag.config.disabled" => "disabled",
                "flag.reverted" => "reverted",
                "flag.config.break_glass" => "changed (break glass)",
                "change_request.applied" => "applied a change request to",
                _ => "changed",
            };
            let version = d
                .payload
                .get("version")
                .map_or_else(|| "?".to_string(), Value::to_string);
            format!(
                "{who} {what} flag `{flag}` in `{environment}` of `{project}` (version {version})."
            )
        }
        other => {
            let what = match other {
                events::RELEASE_STAGE_ADVANCED => "advanced to its next stage",
                events::RELEASE_WAITING_FOR_APPROVAL => "is waiting for approval",
                events::RELEASE_HOLDING => "is holding",
                events::RELEASE_ROLLED_BACK => "was rolled back",
                events::RELEASE_COMPLETED => "completed",
                events::RELEASE_GUARDRAIL_BREACHED => "breached a guardrail",
                _ => return format!("Release Anchor event `{other}` in project `{project}`."),
            };
            let reason = d
                .payload
                .get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            format!("Release of flag `{flag}` in `{environment}` of `{project}` {what}{reason}.")
        }
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup: user text must not make links or mentions.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T01:07:52.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let millis = ms.rem_euclid(1_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_309_672_123), "2026-11-22T01:07:52.123Z");
    }

    #[test]
    fn the_hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        assert_eq!(
            signature("Jefe", 12, b"{}"),
            format!("sha256={}", hmac_sha256_hex(b"Jefe", &[b"12.{}"]))
        );
    }
}
