//! `all: true` entries ([`KeyStoreSelector::All`]): every custom key store of an account and
//! region, found by the same paginated DescribeCustomKeyStores that verification uses, at the
//! time of the trip (so a store created a minute ago is disconnected too) and again in every
//! enforcement round. Also the stores no entry covers ([`Engine::unprotected`], for `status` and
//! `check --online`). Owns only the expansion of an `all: true` entry into one entry per store;
//! the Disconnects, verification and enforcement stay in the engine's own paths.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Engine, StoreState, StoreStatus, aws_error, group_by_target};
use crate::aws::{AwsError, KeyStore, KeyStoreControl};
use crate::model::{KeyStoreSelector, KeyStoreSpec, Target};

/// How long the first look at an `all: true` account-region may retry (throttling, 5xx) before
/// the lockdown starts without its list: one Describe is a few milliseconds when KMS answers,
/// and the stores listed one by one must not wait longer than this for it. An entry not
/// resolved by then is resolved by its target's own Describe in the lockdown, with every retry
/// up to `verify_timeout`.
const FIRST_LOOK_RETRIES: Duration = Duration::from_secs(1);

/// The request's entries with every `all: true` replaced by what it covers now.
pub(super) struct Expanded {
    /// Listed entries as they are; each resolved `all: true` replaced, in place, by one `id`
    /// entry per store of its account-region that no `id` entry lists already; an `all: true`
    /// whose first look failed stays as it is (its target's lockdown resolves it).
    pub(super) specs: Vec<KeyStoreSpec>,
    /// Parallel to `specs`: the entry came from an `all: true`.
    pub(super) from_all: Vec<bool>,
}

/// A store that no entry of the policy covers, in one of the policy's account-regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnprotectedStore {
    pub target: Target,
    pub account: Option<String>,
    pub key_store: KeyStore,
}

impl<C: KeyStoreControl> Engine<C> {
    /// Resolve every `all: true` entry with one Describe per target, all at once. Without an
    /// `all: true` entry this returns the entries as they are, with no AWS call.
    pub(super) async fn expand_all(
        &self,
        key_stores: &[KeyStoreSpec],
        deadline: Instant,
    ) -> Expanded {
        let all_targets: Vec<&Target> = key_stores
            .iter()
            .filter(|s| s.selector == KeyStoreSelector::All)
            .map(|s| &s.target)
            .collect();
        if all_targets.is_empty() {
            return Expanded {
                specs: key_stores.to_vec(),
                from_all: vec![false; key_stores.len()],
            };
        }
        let retry_until = Instant::now() + FIRST_LOOK_RETRIES;
        let looks = all_targets
            .iter()
            .map(|target| self.describe_all(target, deadline, retry_until));
        let listings: Vec<Result<Vec<KeyStore>, AwsError>> = join_all(looks).await;
        let mut listings = all_targets.into_iter().zip(listings);
        let mut seen = listed_ids(key_stores);
        let mut expanded = Expanded {
            specs: Vec::with_capacity(key_stores.len()),
            from_all: Vec::with_capacity(key_stores.len()),
        };
        for spec in key_stores {
            if spec.selector != KeyStoreSelector::All {
                expanded.specs.push(spec.clone());
                expanded.from_all.push(false);
                continue;
            }
            match listings.next() {
                Some((_, Ok(listed))) => {
                    for store in covered(&spec.target, &listed, &mut seen) {
                        expanded.specs.push(store);
                        expanded.from_all.push(true);
                    }
                }
                Some((_, Err(err))) => {
                    warn!(region = %spec.target.region, cause = %err, "all: true not resolved before the lockdown starts; its account-region resolves it");
                    expanded.specs.push(spec.clone());
                    expanded.from_all.push(false);
                }
                None => {}
            }
        }
        expanded
    }

    /// In a target's lockdown: replace each `all: true` state by one state per store in the
    /// target's Describe (`listed`) not already among `stores`; an `all: true` whose Describe
    /// failed fails with that error.
    pub(super) fn expand_all_states(
        &self,
        target: &Target,
        stores: Vec<StoreState>,
        listed: Option<&Result<Vec<KeyStore>, AwsError>>,
    ) -> Vec<StoreState> {
        if !stores
            .iter()
            .any(|s| s.spec.selector == KeyStoreSelector::All)
        {
            return stores;
        }
        let mut seen: HashSet<String> = stores
            .iter()
            .filter_map(|s| match &s.spec.selector {
                KeyStoreSelector::Id(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(stores.len());
        for mut store in stores {
            if store.spec.selector != KeyStoreSelector::All {
                out.push(store);
                continue;
            }
            match listed {
                Some(Ok(listed)) => {
                    let found = covered(target, listed, &mut seen);
                    info!(region = %target.region, key_stores = found.len(), "all: true resolved");
                    out.extend(
                        found
                            .into_iter()
                            .map(|spec| StoreState::new(store.index, spec)),
                    );
                }
                Some(Err(err)) => {
                    let error = aws_error(&store.spec, err.clone());
                    self.fail(&mut store, error);
                    out.push(store);
                }
                None => out.push(store),
            }
        }
        out
    }

    /// Every store in the account-regions of `key_stores` (and of `also`, e.g. the targets of
    /// the policy's standard keys) that no entry covers (no `id`, no `name` and no `all: true`
    /// of its target): one paginated Describe per target. A target whose Describe fails is
    /// returned with its error (nothing can be said of it).
    pub async fn unprotected(
        &self,
        key_stores: &[KeyStoreSpec],
        also: &[Target],
    ) -> (Vec<UnprotectedStore>, Vec<(Target, AwsError)>) {
        let deadline = Instant::now() + self.settings.verify_timeout;
        let mut groups = group_by_target(key_stores);
        for target in also {
            groups.entry(target.clone()).or_default();
        }
        let looks = groups.into_iter().map(|(target, specs)| async move {
            let listed = self
                .alongside_account_lookup(
                    &target,
                    deadline,
                    self.describe_all(&target, deadline, deadline),
                )
                .await;
            (target, specs, listed)
        });
        let covered_ids = listed_ids(key_stores);
        let mut unprotected: Vec<UnprotectedStore> = Vec::new();
        let mut errors = Vec::new();
        for (target, specs, listed) in join_all(looks).await {
            let listed = match listed {
                Ok(listed) => listed,
                Err(err) => {
                    errors.push((target, err));
                    continue;
                }
            };
            if specs
                .iter()
                .any(|(_, s)| s.selector == KeyStoreSelector::All)
            {
                continue;
            }
            let names: HashSet<&str> = specs
                .iter()
                .filter_map(|(_, s)| match &s.selector {
                    KeyStoreSelector::Name(name) => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            let account = self.known_account(&target);
            for store in listed {
                let by_name = store
                    .custom_key_store_name
                    .as_deref()
                    .is_some_and(|name| names.contains(name));
                let known = unprotected
                    .iter()
                    .any(|u| u.key_store.custom_key_store_id == store.custom_key_store_id);
                if !by_name && !known && !covered_ids.contains(&store.custom_key_store_id) {
                    unprotected.push(UnprotectedStore {
                        target: target.clone(),
                        account: account.clone(),
                        key_store: store,
                    });
                }
            }
        }
        // A store covered through another target of the same account-region (e.g. listed by
        // name under a role and found again with the base credentials) is not unprotected.
        let covered_elsewhere = self.covered_by_other_targets(key_stores, &unprotected);
        unprotected.retain(|u| !covered_elsewhere.contains(&u.key_store.custom_key_store_id));
        (unprotected, errors)
    }

    /// Ids in `unprotected` that an `all: true` or `name` entry of another target covers in the
    /// same region and known account.
    fn covered_by_other_targets(
        &self,
        key_stores: &[KeyStoreSpec],
        unprotected: &[UnprotectedStore],
    ) -> HashSet<String> {
        let mut covered = HashSet::new();
        for store in unprotected {
            let Some(account) = &store.account else {
                continue;
            };
            let same_place = key_stores.iter().filter(|spec| {
                spec.target != store.target
                    && spec.target.region == store.target.region
                    && self.known_account(&spec.target).as_ref() == Some(account)
            });
            for spec in same_place {
                let name = store.key_store.custom_key_store_name.as_deref();
                let hit = match &spec.selector {
                    KeyStoreSelector::All => true,
                    KeyStoreSelector::Name(listed) => Some(listed.as_str()) == name,
                    KeyStoreSelector::Id(_) => false,
                };
                if hit {
                    covered.insert(store.key_store.custom_key_store_id.clone());
                }
            }
        }
        covered
    }
}

/// An enforcement round's entries for one target: each `all: true` replaced by one `id` entry
/// per store of this round's Describe (`listed`) that no other entry covers, so a store created
/// while latched is disconnected too.
pub(super) fn expand_round(
    target: &Target,
    stores: Vec<(usize, KeyStoreSpec)>,
    listed: &[KeyStore],
) -> Vec<(usize, KeyStoreSpec)> {
    if !stores
        .iter()
        .any(|(_, s)| s.selector == KeyStoreSelector::All)
    {
        return stores;
    }
    let mut seen: HashSet<String> = stores
        .iter()
        .filter_map(|(_, spec)| match &spec.selector {
            KeyStoreSelector::Id(id) => Some(id.clone()),
            KeyStoreSelector::Name(_) => {
                super::find(listed, &spec.selector).map(|s| s.custom_key_store_id.clone())
            }
            KeyStoreSelector::All => None,
        })
        .collect();
    let mut out = Vec::with_capacity(stores.len());
    for (index, spec) in stores {
        if spec.selector == KeyStoreSelector::All {
            out.extend(
                covered(target, listed, &mut seen)
                    .into_iter()
                    .map(|spec| (index, spec)),
            );
        } else {
            out.push((index, spec));
        }
    }
    out
}

/// `describe` of an `all: true` entry: one status per store of its account-region (none when it
/// holds none), or one carrying the Describe's error.
pub(super) fn statuses(
    spec: &KeyStoreSpec,
    account: Option<&String>,
    listed: &Result<Vec<KeyStore>, AwsError>,
) -> Vec<StoreStatus> {
    match listed {
        Ok(listed) => listed
            .iter()
            .map(|store| StoreStatus {
                spec: spec.clone(),
                account: account.cloned(),
                key_store: Some(store.clone()),
                error: None,
            })
            .collect(),
        Err(err) => vec![StoreStatus {
            spec: spec.clone(),
            account: account.cloned(),
            key_store: None,
            error: Some(aws_error(spec, err.clone())),
        }],
    }
}

/// Ids listed by an `id` entry (ids are unique across AWS, whatever the target).
fn listed_ids(key_stores: &[KeyStoreSpec]) -> HashSet<String> {
    key_stores
        .iter()
        .filter_map(|s| match &s.selector {
            KeyStoreSelector::Id(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// One `id` entry in `target` per listed store not in `seen` (which gains them).
pub(super) fn covered(
    target: &Target,
    listed: &[KeyStore],
    seen: &mut HashSet<String>,
) -> Vec<KeyStoreSpec> {
    listed
        .iter()
        .filter(|store| seen.insert(store.custom_key_store_id.clone()))
        .map(|store| KeyStoreSpec {
            selector: KeyStoreSelector::Id(store.custom_key_store_id.clone()),
            target: target.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! `all: true` against the in-memory KMS on tokio's paused clock.

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::audit::{AuditSink, Event, LockdownOutcome};
    use crate::aws::fake::{DEFAULT_ACCOUNT, FakeAws, REGION};
    use crate::lockdown::LockdownRequest;
    use crate::model::ConnectionState;
    use crate::policy::LockdownSettings;

    const ROLE_B: &str = "arn:aws:iam::222222222222:role/kms-killswitch";

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Event>>);

    impl AuditSink for Recorded {
        fn record(&self, event: Event) -> crate::audit::Recorded {
            self.0.lock().unwrap().push(event);
            crate::audit::Recorded::done()
        }
    }

    fn engine(fake: &Arc<FakeAws>) -> Engine<FakeAws> {
        let settings = LockdownSettings {
            verify_timeout: Duration::from_secs(30),
            enforce_interval: None,
            rate_limit: 5,
        };
        Engine::new(fake.clone(), settings)
    }

    fn spec(selector: KeyStoreSelector, role_arn: Option<&str>) -> KeyStoreSpec {
        KeyStoreSpec {
            selector,
            target: Target {
                region: REGION.to_string(),
                role_arn: role_arn.map(str::to_string),
            },
        }
    }

    fn request(key_stores: Vec<KeyStoreSpec>) -> LockdownRequest {
        LockdownRequest {
            lockdown_id: "ld-all".to_string(),
            key_stores,
            dry_run: false,
        }
    }

    fn id(n: usize) -> String {
        format!("cks-{n:017x}")
    }

    #[tokio::test(start_paused = true)]
    async fn all_true_disconnects_every_store_present_at_the_trip_and_lists_them() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        let engine = engine(&fake);
        // Created after the engine (the daemon) started: found at the trip.
        for n in 0..5 {
            fake.add(&id(n), DEFAULT_ACCOUNT, ConnectionState::Connected);
        }
        fake.add(&id(9), "222222222222", ConnectionState::Connected);
        let audit = Recorded::default();
        let report = engine
            .lockdown(
                &request(vec![
                    spec(KeyStoreSelector::Id(id(0)), None),
                    spec(KeyStoreSelector::All, None),
                ]),
                &audit,
            )
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(report.stores.len(), 5, "id 0 listed once, not twice");
        for n in 0..5 {
            assert_eq!(fake.seen(&id(n)), ConnectionState::Disconnected);
        }
        assert_eq!(
            fake.seen(&id(9)),
            ConnectionState::Connected,
            "another account"
        );
        let events = audit.0.lock().unwrap().clone();
        let Some(Event::LockdownStarted { key_stores, .. }) = events.first() else {
            panic!("lockdown_started first: {events:?}");
        };
        assert_eq!(key_stores.len(), 5, "{key_stores:?}");
        assert_eq!(key_stores[0]["id"], id(0));
        assert!(key_stores[0].get("all").is_none());
        assert_eq!(key_stores[1]["id"], id(1));
        assert_eq!(key_stores[1]["all"], true);
    }

    #[tokio::test(start_paused = true)]
    async fn all_true_refused_fails_its_entry_and_holds_nothing_else_up() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        fake.add(&id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.add(&id(2), "222222222222", ConnectionState::Connected);
        fake.with(|s| s.denied_accounts.insert("222222222222".to_string()));
        let audit = Recorded::default();
        let report = engine(&fake)
            .lockdown(
                &request(vec![
                    spec(KeyStoreSelector::Id(id(1)), None),
                    spec(KeyStoreSelector::All, Some(ROLE_B)),
                ]),
                &audit,
            )
            .await;

        assert_eq!(report.outcome(), LockdownOutcome::Partial);
        assert!(report.stores[0].verified);
        assert_eq!(report.stores[1].spec.selector, KeyStoreSelector::All);
        let error = report.stores[1].error.as_ref().expect("an error").to_line();
        assert!(
            error.contains("custom key store all in eu-west-1"),
            "{error}"
        );
        assert!(error.contains("AccessDenied"), "{error}");
        assert!(
            report.stores[0].elapsed < Duration::from_secs(3),
            "{report:#?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_true_whose_first_look_is_throttled_is_resolved_by_its_targets_own_describe() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        for n in 1..=3 {
            fake.add(&id(n), DEFAULT_ACCOUNT, ConnectionState::Connected);
        }
        // Longer than the first look's retries (1 s of backoff), shorter than verify_timeout.
        fake.script(
            "DescribeCustomKeyStores",
            &[crate::aws::ErrorKind::Throttled; 10],
        );
        let audit = Recorded::default();
        let report = engine(&fake)
            .lockdown(&request(vec![spec(KeyStoreSelector::All, None)]), &audit)
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(report.stores.len(), 3);
        for n in 1..=3 {
            assert_eq!(fake.seen(&id(n)), ConnectionState::Disconnected);
        }
        let events = audit.0.lock().unwrap().clone();
        let Some(Event::LockdownStarted { key_stores, .. }) = events.first() else {
            panic!("lockdown_started first: {events:?}");
        };
        assert_eq!(key_stores.len(), 1, "not resolved in time: {key_stores:?}");
        assert_eq!(key_stores[0]["all"], true);
        assert!(key_stores[0].get("id").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn enforcement_with_all_true_disconnects_a_store_created_while_latched() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(100)));
        fake.add(&id(1), DEFAULT_ACCOUNT, ConnectionState::Disconnected);
        let engine = engine(&fake);
        let all = vec![spec(KeyStoreSelector::All, None)];
        let audit = Recorded::default();
        assert_eq!(engine.enforce(&all, "ld-all", &audit).await.drifted(), 0);

        fake.add(&id(2), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let round = engine.enforce(&all, "ld-all", &audit).await;
        assert_eq!(round.drifted(), 1, "{round:#?}");
        assert_eq!(
            round.stores[1].custom_key_store_id.as_deref(),
            Some(id(2).as_str())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fake.seen(&id(2)), ConnectionState::Disconnected);
        let drift: Vec<_> = audit
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::DriftDetected { .. }))
            .cloned()
            .collect();
        assert_eq!(drift.len(), 1, "{drift:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unprotected_lists_the_stores_no_entry_covers() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(100)));
        for n in 1..=4 {
            fake.add(&id(n), DEFAULT_ACCOUNT, ConnectionState::Connected);
        }
        fake.add(&id(7), "222222222222", ConnectionState::Connected);
        let engine = engine(&fake);
        let listed = vec![
            spec(KeyStoreSelector::Id(id(1)), None),
            spec(KeyStoreSelector::Name(format!("name-{}", id(2))), None),
            spec(KeyStoreSelector::All, Some(ROLE_B)),
        ];
        let (unprotected, errors) = engine.unprotected(&listed, &[]).await;
        assert!(errors.is_empty(), "{errors:?}");
        let ids: Vec<&str> = unprotected
            .iter()
            .map(|u| u.key_store.custom_key_store_id.as_str())
            .collect();
        assert_eq!(ids, [id(3), id(4)]);
        assert_eq!(unprotected[0].account.as_deref(), Some(DEFAULT_ACCOUNT));

        let covered = vec![spec(KeyStoreSelector::All, None)];
        assert!(engine.unprotected(&covered, &[]).await.0.is_empty());
    }
}
