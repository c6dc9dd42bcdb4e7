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
//!
//! After a write the list is brought up to date rather than read again, when it can be done
//! exactly: if every environment's compiled snapshot held in memory is at the revision just
//! read from the store, the snapshots are the store's current flags and configurations, and
//! the flags whose definition or configuration version differ from the kept list's (or that
//! appeared or left, archived) are the ones written since. Only those are read again. When a
//! snapshot lags (another server wrote and its change has not arrived yet), the environments
//! changed, or many flags changed, the whole list is read again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use anchor_engine::ConfiguredFlag;
use anchor_store::{EarlierConfig, Environment, FlagFilter, FlagRecord, Store, StoreError};

use crate::lifecycle::{self, FlagEnvironment};
use crate::snapshots::Snapshots;

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
        snapshots: &Snapshots,
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
            .cloned();
        if let Some(listed) = &kept
            && listed.revisions == revisions
        {
            return Ok(Arc::clone(listed));
        }
        if let Some(kept) = kept
            && let Some(listed) = refreshed(
                store,
                snapshots,
                project,
                environments,
                &kept,
                revisions.clone(),
            )
            .await?
        {
            return Ok(self.keep(project, listed));
        }
        // The flags and their earlier configurations at once: on two cores the reads overlap.
        let (records, earlier) = tokio::try_join!(
            all_flags(store, project),
            store.earlier_flag_revisions(project)
        )?;
        let serving_since = lifecycle::serving_since_from(&records, earlier);
        Ok(self.keep(
            project,
            Listed {
                revisions,
                records,
                serving_since,
            },
        ))
    }

    fn keep(&self, project: &str, listed: Listed) -> Arc<Listed> {
        let listed = Arc::new(listed);
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(project.to_string(), Arc::clone(&listed));
        listed
    }
}

/// More changed flags than this and the whole list is read again: one query for all beats
/// a few for each.
const MOST_FLAGS_REREAD: usize = 50;

/// `kept` brought up to date by reading again only the flags written since, or `None` when
/// that cannot be done exactly (see the module's documentation).
async fn refreshed(
    store: &dyn Store,
    snapshots: &Snapshots,
    project: &str,
    environments: &[Environment],
    kept: &Listed,
    revisions: Vec<(String, u64)>,
) -> Result<Option<Listed>, StoreError> {
    let same_environments = kept.revisions.len() == revisions.len()
        && kept
            .revisions
            .iter()
            .zip(&revisions)
            .all(|(a, b)| a.0 == b.0);
    if !same_environments {
        return Ok(None);
    }
    let mut current = Vec::with_capacity(environments.len());
    for env in environments {
        match snapshots.get(project, &env.key) {
            Some(snapshot) if snapshot.revision == env.revision => current.push(snapshot),
            _ => return Ok(None),
        }
    }
    // By flag key, its definition and configuration in each environment (in `environments`'
    // order), as the snapshots hold them: every flag that is not archived.
    let mut live: HashMap<&str, Vec<Option<&ConfiguredFlag>>> = HashMap::new();
    for (i, snapshot) in current.iter().enumerate() {
        for configured in &snapshot.config.flags {
            live.entry(configured.flag.key.as_str())
                .or_insert_with(|| vec![None; current.len()])[i] = Some(configured);
        }
    }
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for record in &kept.records {
        let key = record.flag.key.as_str();
        let same = match live.remove(key) {
            // Archived then and now.
            None => record.archived,
            Some(_) if record.archived => false,
            Some(now) => now.iter().zip(environments).all(|(configured, env)| {
                let was = record
                    .environments
                    .iter()
                    .find(|e| e.environment == env.key);
                match (configured, was) {
                    (Some(c), Some(was)) => {
                        c.flag == record.flag && c.config.version == was.config.version
                    }
                    _ => false,
                }
            }),
        };
        if !same {
            changed.insert(key.to_string());
        }
    }
    // Flags the kept list does not know: created since.
    changed.extend(live.into_keys().map(str::to_string));
    if changed.len() > MOST_FLAGS_REREAD {
        return Ok(None);
    }
    let mut fresh = Vec::with_capacity(changed.len());
    for key in &changed {
        match store.flag(project, key).await {
            Ok(record) => fresh.push(record),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut earlier = Vec::new();
    for record in &fresh {
        for env in &record.environments {
            if lifecycle::single_variant(&env.config).is_none() {
                continue;
            }
            for revision in store
                .flag_revisions(project, &env.environment, &record.flag.key)
                .await?
                .into_iter()
                .filter(|r| r.version < env.config.version)
            {
                earlier.push(EarlierConfig {
                    flag: record.flag.key.clone(),
                    environment: env.environment.clone(),
                    version: revision.version,
                    created_at: revision.created_at,
                    config: revision.body.to_string(),
                });
            }
        }
    }
    let mut serving_since: HashMap<FlagEnvironment, i64> = kept
        .serving_since
        .iter()
        .filter(|((flag, _), _)| !changed.contains(flag))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    serving_since.extend(lifecycle::serving_since_from(&fresh, earlier));
    let mut records: Vec<FlagRecord> = kept
        .records
        .iter()
        .filter(|r| !changed.contains(&r.flag.key))
        .cloned()
        .chain(fresh)
        .collect();
    records.sort_unstable_by(|a, b| a.flag.key.cmp(&b.flag.key));
    Ok(Some(Listed {
        revisions,
        records,
        serving_since,
    }))
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
