//! The flag list of a project, kept between requests. A thousand flags with their
//! configurations in three environments take tens of milliseconds to read and parse, and the
//! list is the dashboard's busiest page; it changes only when something is written.
//!
//! Every write to a flag, its configuration or the set of environments increments the
//! revision counters of the project's environments in the same transaction (`anchor_store`).
//! A cached list is tagged with the counters read *before* the flags were, so it is reused
//! only while the counters are unchanged, which means nothing was written since it was read,
//! on this server or on any other sharing the store. The lifecycle's "serving one variant
//! since" depends on the configurations and revisions only and is kept too; the last
//! evaluations (telemetry) and the verdicts, which depend on the time, are not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anchor_store::{Environment, FlagFilter, FlagRecord, Store, StoreError};

use crate::lifecycle::{self, FlagEnvironment};

/// One project's flags (archived ones too) in key order, as read at `revisions`.
#[derive(Debug)]
pub struct Listed {
    revisions: Vec<(String, u64)>,
    pub records: Vec<FlagRecord>,
    pub serving_since: HashMap<FlagEnvironment, i64>,
}

#[derive(Debug, Default)]
pub struct FlagListCache {
    projects: Mutex<HashMap<String, Arc<Listed>>>,
}

impl FlagListCache {
    /// The flags of `project`. `environments` must have been read just now, before this call:
    /// their revision counters say whether the kept list is still the current one.
    pub async fn flags(
        &self,
        store: &dyn Store,
        project: &str,
        environments: &[Environment],
    ) -> Result<Arc<Listed>, StoreError> {
        let revisions: Vec<(String, u64)> = environments
            .iter()
            .map(|e| (e.key.clone(), e.revision))
            .collect();
        let kept = self
            .projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(project)
            .filter(|listed| listed.revisions == revisions)
            .cloned();
        if let Some(listed) = kept {
            return Ok(listed);
        }
        // The flags and their earlier configurations at once: on two cores the reads overlap.
        let (records, earlier) = tokio::try_join!(
            all_flags(store, project),
            store.earlier_flag_revisions(project)
        )?;
        let serving_since = lifecycle::serving_since_from(&records, earlier);
        let listed = Arc::new(Listed {
            revisions,
            records,
            serving_since,
        });
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(project.to_string(), Arc::clone(&listed));
        Ok(listed)
    }
}

/// Every flag of `project`, archived ones too, in key order.
async fn all_flags(store: &dyn Store, project: &str) -> Result<Vec<FlagRecord>, StoreError> {
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .flags(
                project,
                &FlagFilter {
                    include_archived: true,
                    after,
                    limit: 1000,
                    ..FlagFilter::default()
                },
            )
            .await?;
        records.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(records),
        }
    }
}
