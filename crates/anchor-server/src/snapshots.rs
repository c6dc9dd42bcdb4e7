//! One compiled engine snapshot per environment, held in memory so that evaluations never touch
//! the database.
//!
//! Snapshots are built for every environment at start-up (the server is not ready before) and
//! rebuilt after every committed change. A rebuild reads the environment's configuration and
//! revision from the store in one snapshot read and replaces the held snapshot only when its
//! revision is newer, so rebuilds racing each other can never step back in time. Each
//! environment's snapshot sits in a watch channel: streams learn of every new one, and a slow
//! reader simply skips to the latest, so nobody falls behind without bound.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anchor_engine::{Diagnostic, EnvironmentConfig, Snapshot, compile};
use anchor_store::{Store, StoreError};
use tokio::sync::watch;

/// A compiled environment and the revision it was compiled from.
#[derive(Debug)]
pub struct EnvironmentSnapshot {
    pub project: String,
    pub environment: String,
    pub revision: u64,
    pub snapshot: Snapshot,
    /// The configuration compiled, as server-side SDKs download it.
    pub config: EnvironmentConfig,
    /// Problems the compiler found (flags with problems evaluate to `PARSE_ERROR`).
    pub diagnostics: Vec<Diagnostic>,
}

type Key = (String, String);

#[derive(Debug, Default)]
pub struct Snapshots {
    held: RwLock<HashMap<Key, watch::Sender<Arc<EnvironmentSnapshot>>>>,
}

fn key(project: &str, environment: &str) -> Key {
    (project.to_string(), environment.to_string())
}

impl Snapshots {
    /// The current snapshot of an environment, if one was built.
    pub fn get(&self, project: &str, environment: &str) -> Option<Arc<EnvironmentSnapshot>> {
        let held = self.held.read().ok()?;
        held.get(&key(project, environment))
            .map(|sender| Arc::clone(&sender.borrow()))
    }

    /// A receiver that sees every new snapshot of the environment (building one if needed).
    pub async fn subscribe(
        &self,
        store: &dyn Store,
        project: &str,
        environment: &str,
    ) -> Result<watch::Receiver<Arc<EnvironmentSnapshot>>, StoreError> {
        if self.get(project, environment).is_none() {
            self.refresh(store, project, environment).await?;
        }
        let held = self
            .held
            .read()
            .map_err(|_| StoreError::Corrupt("poisoned snapshot lock".into()))?;
        held.get(&key(project, environment))
            .map(watch::Sender::subscribe)
            .ok_or_else(|| StoreError::NotFound {
                what: "environment",
                key: environment.to_string(),
            })
    }

    /// Builds the snapshots of every environment of every project.
    pub async fn build_all(&self, store: &dyn Store) -> Result<(), StoreError> {
        for project in store.projects().await? {
            self.refresh_project(store, &project.key).await?;
        }
        Ok(())
    }

    /// Rebuilds every environment of a project (after a change that may touch several).
    pub async fn refresh_project(
        &self,
        store: &dyn Store,
        project: &str,
    ) -> Result<(), StoreError> {
        for environment in store.environments(project).await? {
            self.refresh(store, project, &environment.key).await?;
        }
        Ok(())
    }

    /// Rebuilds one environment's snapshot from the store.
    pub async fn refresh(
        &self,
        store: &dyn Store,
        project: &str,
        environment: &str,
    ) -> Result<(), StoreError> {
        let (config, revision) = store.environment_config(project, environment).await?;
        let (snapshot, diagnostics) = compile(&config);
        let fresh = Arc::new(EnvironmentSnapshot {
            project: project.to_string(),
            environment: environment.to_string(),
            revision,
            snapshot,
            config,
            diagnostics,
        });
        if let Ok(mut held) = self.held.write() {
            match held.get(&key(project, environment)) {
                Some(sender) => {
                    sender.send_if_modified(|current| {
                        let newer = current.revision < revision;
                        if newer {
                            *current = fresh;
                        }
                        newer
                    });
                }
                None => {
                    held.insert(key(project, environment), watch::Sender::new(fresh));
                }
            }
        }
        Ok(())
    }
}
