//! The first start on an empty store: an admin, a default project and its environments.
//!
//! Each step checks whether it is still needed, so a start interrupted half-way completes on the
//! next one; the admin's password is reported only by the start that created the admin.

use anchor_store::{Actor, NewEnvironment, Role, Store, StoreError};

use crate::auth;
use crate::config::Secret;
use crate::error::ApiError;

pub const ADMIN_USERNAME: &str = "admin";
pub const DEFAULT_PROJECT: &str = "default";
pub const DEFAULT_ENVIRONMENTS: [&str; 3] = ["development", "staging", "production"];

/// What the first start created, to be printed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    pub admin_username: String,
    /// The generated one-time password; `None` when it came from the configuration.
    pub generated_password: Option<Secret>,
}

/// Creates what an empty store lacks. Returns a report only when it created the admin.
pub async fn bootstrap(
    store: &dyn Store,
    admin_password: Option<&Secret>,
) -> Result<Option<BootstrapReport>, ApiError> {
    let system = Actor::system("bootstrap");
    let mut report = None;
    if store.count_users().await? == 0 {
        let (password, generated) = match admin_password {
            Some(p) => (p.clone(), None),
            None => {
                let p = Secret::new(auth::new_password()?);
                (p.clone(), Some(p))
            }
        };
        let hash = auth::hash_password(password.expose())?;
        store
            .create_user(&system, ADMIN_USERNAME, &hash, true)
            .await?;
        report = Some(BootstrapReport {
            admin_username: ADMIN_USERNAME.to_string(),
            generated_password: generated,
        });
    }
    if store.projects().await?.is_empty() {
        store
            .create_project(&system, DEFAULT_PROJECT, "Default project")
            .await?;
    }
    if store.project(DEFAULT_PROJECT).await.is_ok() {
        let existing = store.environments(DEFAULT_PROJECT).await?;
        if existing.is_empty() {
            for key in DEFAULT_ENVIRONMENTS {
                let environment = NewEnvironment {
                    key: key.to_string(),
                    name: capitalised(key),
                    requires_approval: false,
                    requires_comment: false,
                };
                match store
                    .create_environment(&system, DEFAULT_PROJECT, &environment)
                    .await
                {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if let Ok((admin, _)) = store.user_credentials(ADMIN_USERNAME).await
            && store
                .project_role(DEFAULT_PROJECT, &admin.id)
                .await?
                .is_none()
        {
            store
                .set_project_role(&system, DEFAULT_PROJECT, &admin.id, Role::Admin)
                .await?;
        }
    }
    Ok(report)
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
