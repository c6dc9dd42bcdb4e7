//! One compiled engine snapshot per environment, held in memory so that evaluations never touch
//! the database.
//!
//! Snapshots are built for every environment at start-up (the server is not ready before) and
//! rebuilt after every committed change. A rebuild reads the environment's configuration and
//! revision from the store in one snapshot read and replaces the held snapshot only when its
//! revision is newer, so rebuilds racing each other can never step back in time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anchor_engine::{Diagnostic, EnvironmentConfig, Snapshot, compile};
use anchor_store::{Store, StoreError};

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

#[derive(Debug, Default)]
pub struct Snapshots {
    held: RwLock<HashMap<(String, String), Arc<EnvironmentSnapshot>>>,
}

impl Snapshots {
    /// The current snapshot of an environment, if one was built.
    pub fn get(&self, project: &str, environment: &str) -> Option<Arc<EnvironmentSnapshot>> {
        let held = self.held.read().ok()?;
        held.get(&(project.to_string(), environment.to_string()))
            .cloned()
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
            let key = (project.to_string(), environment.to_string());
            let newer = held
                .get(&key)
                .is_none_or(|current| current.revision <= revision);
            if newer {
                held.insert(key, fresh);
            }
        }
        Ok(())
    }
}
