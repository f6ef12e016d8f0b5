//! Enforcement rounds while latched ([`Engine::enforce`]): one paginated Describe per target,
//! every listed store seen in a state other than DISCONNECTED or DISCONNECTING recorded as drift
//! and disconnected again (its verification is the next round); an `all: true` entry covers every
//! store of that round's Describe. Shares the engine's pacers, name
//! cache and Disconnect path; knows nothing of the latch or of when the next round runs.

use futures_util::future::join_all;
use tokio::time::Instant;
use tracing::warn;

use super::report::{EnforceReport, EnforcedStore};
use super::{Engine, Phase, Run, StoreState, aws_error, find, group_by_target, not_found};
use crate::audit::{AuditSink, Event};
use crate::aws::{AwsError, KeyStore, KeyStoreControl};
use crate::model::{ConnectionState, KeyStoreSelector, KeyStoreSpec, Target};

impl<C: KeyStoreControl> Engine<C> {
    /// One enforcement round while latched: one Describe per account+region; every listed store
    /// seen in a state other than DISCONNECTED or DISCONNECTING is recorded as drift and
    /// disconnected again (its verification is the next round).
    pub async fn enforce(
        &self,
        key_stores: &[KeyStoreSpec],
        lockdown_id: &str,
        audit: &dyn AuditSink,
    ) -> EnforceReport {
        let run = Run {
            lockdown_id,
            deadline: Instant::now() + self.settings.verify_timeout,
            audit,
        };
        let groups = group_by_target(key_stores);
        let rounds = groups.into_iter().map(|(target, stores)| {
            let run = &run;
            async move { self.enforce_target(&target, stores, run).await }
        });
        let mut stores: Vec<(usize, EnforcedStore)> =
            join_all(rounds).await.into_iter().flatten().collect();
        stores.sort_by_key(|(index, _)| *index);
        EnforceReport {
            stores: stores.into_iter().map(|(_, s)| s).collect(),
        }
    }

    /// One enforcement round for one target; its account is looked up alongside, for the
    /// report only.
    async fn enforce_target(
        &self,
        target: &Target,
        stores: Vec<(usize, KeyStoreSpec)>,
        run: &Run<'_>,
    ) -> Vec<(usize, EnforcedStore)> {
        let work = self.enforce_stores(target, stores, run);
        let mut results = self
            .alongside_account_lookup(target, run.deadline, work)
            .await;
        let account = self.known_account(target);
        for (_, enforced) in &mut results {
            enforced.account = account.clone();
        }
        results
    }

    async fn enforce_stores(
        &self,
        target: &Target,
        stores: Vec<(usize, KeyStoreSpec)>,
        run: &Run<'_>,
    ) -> Vec<(usize, EnforcedStore)> {
        let listed = match self.describe_all(target, run.deadline, run.deadline).await {
            Ok(listed) => listed,
            Err(err) => {
                warn!(region = %target.region, cause = %err, "enforcement could not describe the key stores");
                return undescribed(stores, &err);
            }
        };
        let stores = super::all::expand_round(target, stores, &listed);
        let mut results = Vec::with_capacity(stores.len());
        let mut drifted = Vec::new();
        for (index, spec) in stores {
            let (enforced, again) = self.check_store(target, index, spec, &listed, run);
            if let Some(store) = again {
                drifted.push((results.len(), store));
            }
            results.push((index, enforced));
        }
        let again = drifted
            .iter_mut()
            .map(|(_, store)| self.disconnect(target, store, run));
        join_all(again).await;
        for (position, store) in drifted {
            if store.phase != Phase::Requested {
                let error = match &store.error {
                    Some(error) => error.to_line(),
                    None => format!(
                        "custom key store {} in {}: disconnect not accepted",
                        store.label(),
                        target.region
                    ),
                };
                results[position].1.error = Some(error);
            }
        }
        results
    }

    /// One listed store against this round's Describe: its enforcement record, and the store
    /// to disconnect again when it drifted (audited here).
    fn check_store(
        &self,
        target: &Target,
        index: usize,
        spec: KeyStoreSpec,
        listed: &[KeyStore],
        run: &Run<'_>,
    ) -> (EnforcedStore, Option<StoreState>) {
        let found = find(listed, &spec.selector);
        let mut enforced = EnforcedStore {
            custom_key_store_id: found.map(|f| f.custom_key_store_id.clone()),
            account: None,
            connection_state: found.map(|f| f.connection_state.clone()),
            verified: found.is_some_and(|f| f.connection_state == ConnectionState::Disconnected),
            drift: false,
            error: None,
            spec,
        };
        let Some(found) = found else {
            let account = self.known_account(target);
            enforced.error = Some(not_found(&enforced.spec, account.as_deref()).to_line());
            return (enforced, None);
        };
        if let KeyStoreSelector::Name(name) = &enforced.spec.selector {
            self.remember_name(target, name, &found.custom_key_store_id);
        }
        if matches!(
            found.connection_state,
            ConnectionState::Disconnected | ConnectionState::Disconnecting
        ) {
            return (enforced, None);
        }
        enforced.drift = true;
        run.audit
            .record(Event::DriftDetected {
                key_store_id: found.custom_key_store_id.clone(),
                region: target.region.clone(),
                connection_state: found.connection_state.to_string(),
            })
            .queued();
        warn!(key_store = %found.custom_key_store_id, region = %target.region, connection_state = %found.connection_state, "drift detected: disconnecting again");
        let mut again = StoreState::new(index, enforced.spec.clone());
        again.custom_key_store_id = Some(found.custom_key_store_id.clone());
        again.connection_state = Some(found.connection_state.clone());
        (enforced, Some(again))
    }
}

/// Every store of a target whose Describe failed: checked nothing, each with the error.
fn undescribed(stores: Vec<(usize, KeyStoreSpec)>, err: &AwsError) -> Vec<(usize, EnforcedStore)> {
    stores
        .into_iter()
        .map(|(index, spec)| {
            let error = Some(aws_error(&spec, err.clone()).to_line());
            let enforced = EnforcedStore {
                spec,
                custom_key_store_id: None,
                account: None,
                connection_state: None,
                verified: false,
                drift: false,
                error,
            };
            (index, enforced)
        })
        .collect()
}
