//! Who is calling, and what they may do.
//!
//! People sign in with a password (Argon2id, PHC strings); scripts, the CLI and the MCP server use
//! personal access tokens: `anc_pat_` followed by 32 random bytes in base64url (256 bits). Only
//! the SHA-256 of a token is stored, and a presented token is hashed and looked up by that hash.
//! The lookup needs no constant-time comparison: its timing can reveal at most how much of a
//! SHA-256 digest an attacker's guess shares with a stored one, which says nothing about a
//! 256-bit random secret. Secrets never reach a log.
//!
//! Every request that a token or an SDK key authenticates is noted in memory ([`UseLog`]), and
//! the latest use of each is written to the store in bulk once a minute, so that people can tell
//! a live credential from a dead one before revoking it without OFREP's hot path writing to the
//! store. `last_used_at` is therefore precise to within a minute.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anchor_store::{CredentialKind, CredentialUse, Role, TokenRecord, User};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

pub const TOKEN_PREFIX: &str = "anc_pat_";
/// The dashboard's session cookie: HttpOnly, SameSite=Strict.
pub const SESSION_COOKIE: &str = "anchor_session";
/// Writes authenticated by the session cookie must repeat the session's CSRF token here.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a dashboard session lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;

/// An Argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(bytes)
}

/// 32 random bytes in base64url: the secret part of tokens and SDK keys (256 bits).
pub fn random_token_body() -> Result<String, ApiError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// A new token secret and the hash to store.
pub fn new_token() -> Result<(String, String), ApiError> {
    let secret = format!("{TOKEN_PREFIX}{}", random_token_body()?);
    let hash = token_hash(&secret);
    Ok((secret, hash))
}

/// A readable random password for the first admin (20 characters, about 120 bits).
pub fn new_password() -> Result<String, ApiError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<15>()?))
}

pub fn token_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// The most a request may do: the token's role (a password sign-in: no cap).
    pub cap: Role,
    /// The token used, if any.
    pub token_id: Option<String>,
}

impl Caller {
    pub fn actor(&self) -> anchor_store::Actor {
        match &self.token_id {
            Some(id) => anchor_store::Actor {
                kind: anchor_store::ActorKind::Token,
                id: format!("{}/{id}", self.user.username),
            },
            None => anchor_store::Actor::user(self.user.username.clone()),
        }
    }

    /// The caller's effective role in a project: their membership (admin for instance admins),
    /// capped by their token's role.
    pub async fn role_in(&self, state: &AppState, project: &str) -> Result<Option<Role>, ApiError> {
        // The project must exist whatever the caller's rights, so that 404 means "no such
        // project" for everyone allowed to ask.
        state.store.project(project).await?;
        let member = if self.user.instance_admin {
            Some(Role::Admin)
        } else {
            state.store.project_role(project, &self.user.id).await?
        };
        Ok(member.map(|r| r.min(self.cap)))
    }

    /// Fails with 403 unless the caller has at least `required` in `project`.
    pub async fn require(
        &self,
        state: &AppState,
        project: &str,
        required: Role,
    ) -> Result<Role, ApiError> {
        match self.role_in(state, project).await? {
            Some(role) if role >= required => Ok(role),
            Some(role) => Err(ApiError::Forbidden(format!(
                "this needs the {} role in project `{project}`; you have {}",
                required.as_str(),
                role.as_str()
            ))),
            None => Err(ApiError::Forbidden(format!(
                "you are not a member of project `{project}`"
            ))),
        }
    }

    pub fn require_instance_admin(&self) -> Result<(), ApiError> {
        if self.user.instance_admin && self.cap == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this needs an instance administrator".into(),
            ))
        }
    }
}

enum Credentials {
    Bearer(String),
    Basic { username: String, password: String },
    Session(String),
}

/// The value of the session cookie, if the request carries one.
fn session_cookie(parts: &Parts) -> Option<String> {
    session_cookie_in(&parts.headers)
}

/// The value of the session cookie among these headers.
pub(crate) fn session_cookie_in(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Equality that takes as long whatever the inputs share.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn credentials(parts: &Parts) -> Result<Option<Credentials>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(session_cookie(parts).map(Credentials::Session));
    };
    let value = value.to_str().map_err(|_| ApiError::Unauthenticated)?;
    let (scheme, rest) = value.split_once(' ').ok_or(ApiError::Unauthenticated)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Some(Credentials::Bearer(rest.trim().to_string())))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest.trim())
            .map_err(|_| ApiError::Unauthenticated)?;
        let text = String::from_utf8(decoded).map_err(|_| ApiError::Unauthenticated)?;
        let (username, password) = text.split_once(':').ok_or(ApiError::Unauthenticated)?;
        Ok(Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }))
    } else {
        Err(ApiError::Unauthenticated)
    }
}

/// Failed sign-ins per username: at most `LIMIT` in a `WINDOW`, then 429 until it passes.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    const LIMIT: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(300);

    fn check(&self, username: &str) -> Result<(), ApiError> {
        let map = self
            .failures
            .lock()
            .map_err(|_| ApiError::Internal("poisoned lock".into()))?;
        match map.get(username) {
            Some((count, since)) if *count >= Self::LIMIT && since.elapsed() < Self::WINDOW => {
                Err(ApiError::TooManyRequests)
            }
            _ => Ok(()),
        }
    }

    fn record_failure(&self, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            let entry = map
                .entry(username.to_string())
                .or_insert((0, Instant::now()));
            if entry.1.elapsed() >= Self::WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }

    fn record_success(&self, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(username);
        }
    }
}

async fn from_token(state: &AppState, secret: &str, now_ms: i64) -> Result<Caller, ApiError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Err(ApiError::Unauthenticated);
    }
    let hash = token_hash(secret);
    let record: TokenRecord = state
        .store
        .token_by_hash(&hash)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if record.revoked || record.expires_at.is_some_and(|t| t <= now_ms) {
        return Err(ApiError::Unauthenticated);
    }
    state
        .credential_uses
        .note(CredentialKind::Token, &record.id, now_ms);
    Ok(Caller {
        user: record.user,
        cap: record.role,
        token_id: Some(record.id),
    })
}

/// A dashboard session: found by the hash of its id; writes must repeat its CSRF token in
/// `X-CSRF-Token`, which a page on another origin cannot read.
async fn from_session(state: &AppState, parts: &Parts, id: &str) -> Result<Caller, ApiError> {
    let session = state
        .store
        .session(&token_hash(id), state.now_ms())
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !csrf_matches(presented, &session.csrf_hash) {
            return Err(ApiError::Forbidden(
                "writes with a session cookie need the session's X-CSRF-Token header".into(),
            ));
        }
    }
    Ok(Caller {
        user: session.user,
        cap: Role::Admin,
        token_id: None,
    })
}

/// Whether `presented` is the token whose hash the session keeps, compared in constant time.
fn csrf_matches(presented: Option<&str>, csrf_hash: &str) -> bool {
    let presented = presented.map(token_hash).unwrap_or_default();
    constant_time_eq(presented.as_bytes(), csrf_hash.as_bytes())
}

/// The CSRF token of the session whose id is `session_id`: derived from the id, so a page
/// rendered for the session can put it into its forms without the server storing it in the
/// clear, and no one without the HttpOnly cookie can compute it (SHA-256 is one-way).
pub(crate) fn csrf_token_for(session_id: &str) -> String {
    let digest = Sha256::digest(format!("anchor-csrf:{session_id}").as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// A new dashboard session for a signed-in caller, as the API's sign-in and the dashboard's
/// sign-in form both start them.
#[derive(Debug)]
pub(crate) struct StartedSession {
    /// The `Set-Cookie` value.
    pub cookie: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

pub(crate) async fn start_session(
    state: &AppState,
    caller: &Caller,
) -> Result<StartedSession, ApiError> {
    let id = random_token_body()?;
    let csrf = csrf_token_for(&id);
    let now = state.now_ms();
    let expires_at = now + SESSION_TTL_MS;
    state
        .store
        .create_session(&anchor_store::NewSession {
            id_hash: token_hash(&id),
            user_id: caller.user.id.clone(),
            csrf_hash: token_hash(&csrf),
            created_at: now,
            expires_at,
        })
        .await?;
    Ok(StartedSession {
        cookie: format!(
            "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_TTL_MS / 1_000
        ),
        csrf_token: csrf,
        expires_at,
    })
}

/// The `Set-Cookie` value that ends the session cookie.
pub(crate) const CLEAR_SESSION_COOKIE: &str =
    "anchor_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";

/// The dashboard's caller: the session named by the cookie in `headers`, or `None` when there
/// is no live session. A write (`csrf` given) must carry the session's CSRF token, which a
/// page on another origin cannot read; it is compared in constant time.
pub(crate) async fn session_caller(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    csrf: Option<Option<&str>>,
) -> Result<Option<(Caller, String)>, ApiError> {
    let Some(id) = session_cookie_in(headers) else {
        return Ok(None);
    };
    let Some(session) = state
        .store
        .session(&token_hash(&id), state.now_ms())
        .await?
    else {
        return Ok(None);
    };
    if let Some(presented) = csrf
        && !csrf_matches(presented, &session.csrf_hash)
    {
        return Err(ApiError::Forbidden(
            "this form is out of date or was not sent by the dashboard: reload the page".into(),
        ));
    }
    let token = csrf_token_for(&id);
    Ok(Some((
        Caller {
            user: session.user,
            cap: Role::Admin,
            token_id: None,
        },
        token,
    )))
}

/// Signs in with a password (throttled per user name).
pub(crate) async fn sign_in(
    state: &AppState,
    username: &str,
    password: &str,
) -> Result<Caller, ApiError> {
    from_password(state, username, password).await
}

async fn from_password(
    state: &AppState,
    username: &str,
    password: &str,
) -> Result<Caller, ApiError> {
    state.login_throttle.check(username)?;
    let verified = match state.store.user_credentials(username).await {
        Ok((user, phc)) => verify_password(password, &phc).then_some(user),
        Err(anchor_store::StoreError::NotFound { .. }) => {
            // Spend the same time as a real check, so response times do not reveal which
            // usernames exist.
            let _ = verify_password(password, &state.dummy_password_hash);
            None
        }
        Err(e) => return Err(e.into()),
    };
    match verified {
        Some(user) => {
            state.login_throttle.record_success(username);
            Ok(Caller {
                user,
                cap: Role::Admin,
                token_id: None,
            })
        }
        None => {
            state.login_throttle.record_failure(username);
            Err(ApiError::Unauthenticated)
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match credentials(parts)? {
            None => Err(ApiError::Unauthenticated),
            Some(Credentials::Bearer(secret)) => from_token(state, &secret, state.now_ms()).await,
            Some(Credentials::Basic { username, password }) => {
                from_password(state, &username, &password).await
            }
            Some(Credentials::Session(id)) => from_session(state, parts, &id).await,
        }
    }
}

/// How often the uses noted in memory are written to the store: `last_used_at` is precise to
/// within this.
pub const USE_FLUSH_EVERY: Duration = Duration::from_secs(60);

/// The latest use of each token and SDK key since the last flush, in memory: noting a use on
/// the hot path costs a short lock and a map update, and the store sees each credential at most
/// once per flush however many requests it authenticated.
#[derive(Debug, Default)]
pub struct UseLog {
    pending: Mutex<PendingUses>,
}

#[derive(Debug, Default)]
struct PendingUses {
    sdk_keys: HashMap<String, i64>,
    tokens: HashMap<String, i64>,
}

impl UseLog {
    /// Notes that the credential `id` authenticated a request at `at` (unix milliseconds).
    pub fn note(&self, kind: CredentialKind, id: &str, at: i64) {
        // A panic elsewhere while holding the lock leaves the maps whole (each update is one
        // insert), so the log goes on rather than losing every later use.
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = match kind {
            CredentialKind::SdkKey => &mut pending.sdk_keys,
            CredentialKind::Token => &mut pending.tokens,
        };
        // Looked up by `&str` first: the hot path allocates only for a credential's first use
        // in each flush interval.
        match latest.get_mut(id) {
            Some(seen) => *seen = (*seen).max(at),
            None => {
                latest.insert(id.to_string(), at);
            }
        }
    }

    /// Everything noted so far, leaving the log empty.
    fn take(&self) -> Vec<CredentialUse> {
        let taken =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let of = |kind: CredentialKind, latest: HashMap<String, i64>| {
            latest
                .into_iter()
                .map(move |(id, at)| CredentialUse { kind, id, at })
        };
        of(CredentialKind::SdkKey, taken.sdk_keys)
            .chain(of(CredentialKind::Token, taken.tokens))
            .collect()
    }
}

/// Writes the uses noted since the last flush to the store, returning how many credentials it
/// recorded. When the store fails they are noted again, to be written by the next flush.
pub async fn flush_uses(state: &AppState) -> Result<usize, ApiError> {
    let uses = state.credential_uses.take();
    if uses.is_empty() {
        return Ok(0);
    }
    if let Err(e) = state.store.record_credential_uses(&uses).await {
        for used in &uses {
            state.credential_uses.note(used.kind, &used.id, used.at);
        }
        return Err(e.into());
    }
    Ok(uses.len())
}

/// Flushes the noted uses every `every` until `stop` fires (or its sender is dropped), then
/// once more, so that a graceful stop loses none. A flush under way is never cut short: the
/// stop is only heard between flushes.
pub(crate) async fn record_uses(
    state: AppState,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, when nothing has been noted yet.
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        if let Err(e) = flush_uses(&state).await {
            tracing::warn!(error = %e, "cannot record when keys and tokens were last used");
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_use_log_keeps_the_latest_use_of_each_credential_and_empties_when_taken() {
        let log = UseLog::default();
        log.note(CredentialKind::SdkKey, "k1", 2_000);
        log.note(CredentialKind::SdkKey, "k1", 1_000);
        log.note(CredentialKind::Token, "k1", 3_000);
        log.note(CredentialKind::SdkKey, "k2", 4_000);
        let mut taken = log.take();
        taken.sort_by(|a, b| (&a.id, a.at).cmp(&(&b.id, b.at)));
        let of = |kind, id: &str, at| CredentialUse {
            kind,
            id: id.into(),
            at,
        };
        assert_eq!(
            taken,
            [
                of(CredentialKind::SdkKey, "k1", 2_000),
                of(CredentialKind::Token, "k1", 3_000),
                of(CredentialKind::SdkKey, "k2", 4_000),
            ]
        );
        assert!(log.take().is_empty());
    }

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, ha) = new_token().unwrap();
        let (b, hb) = new_token().unwrap();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(ha, token_hash(&a));
        assert_eq!(ha.len(), 64);
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
    }
}
