//! The account of each target, for reports and audit records only: from the role ARN, or one
//! GetCallerIdentity looked up alongside the key store work and never waited for (a host may
//! reach KMS only through a VPC endpoint, and no Disconnect may wait for STS). Caches what it
//! learns in the engine; knows nothing of stores or pacing.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures_util::future::{Either, select};
use tokio::time::{Instant, timeout_at};
use tracing::warn;

use super::{Engine, backoff, deadline_error};
use crate::aws::{AwsError, KeyStoreControl};
use crate::model::Target;

/// How long an account lookup still running when the key stores are done may take to finish:
/// STS answers in well under a second and started with the first request, while an unreachable
/// STS must not hold up the report for long (the account only names things in it).
const ACCOUNT_LOOKUP_GRACE: Duration = Duration::from_secs(1);

impl<C: KeyStoreControl> Engine<C> {
    /// The target's account, retrying transient errors until the deadline.
    async fn account(&self, target: &Target, deadline: Instant) -> Result<String, AwsError> {
        let mut retries = 0u32;
        loop {
            let result = timeout_at(deadline, self.control.account(target))
                .await
                .unwrap_or_else(|_| Err(deadline_error("GetCallerIdentity", target)));
            match result {
                Err(err) if err.kind.is_retryable() => {
                    let pause = backoff(retries);
                    retries += 1;
                    if Instant::now() + pause >= deadline {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// The target's account if known without a call: from its role ARN, or from an earlier
    /// GetCallerIdentity.
    pub(super) fn known_account(&self, target: &Target) -> Option<String> {
        target.role_account().map(str::to_string).or_else(|| {
            let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            accounts.get(target).cloned()
        })
    }

    /// Learn the target's account if it is not known yet. Best effort: the account only names
    /// things in reports and the audit log, so a failure is logged and nothing else.
    async fn learn_account(&self, target: &Target, deadline: Instant) {
        if self.known_account(target).is_some() {
            return;
        }
        match self.account(target, deadline).await {
            Ok(account) => {
                let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
                accounts.insert(target.clone(), account);
            }
            Err(err) => {
                warn!(region = %target.region, cause = %err, "account unknown; key stores are handled without it")
            }
        }
    }

    /// Run `work` while the target's account is looked up alongside; once `work` is done the
    /// lookup gets at most [`ACCOUNT_LOOKUP_GRACE`] more, so an unreachable STS never stops a
    /// lockdown and hardly delays its report.
    pub(super) async fn alongside_account_lookup<T>(
        &self,
        target: &Target,
        deadline: Instant,
        work: impl Future<Output = T>,
    ) -> T {
        let work = pin!(work);
        let lookup = pin!(self.learn_account(target, deadline));
        match select(work, lookup).await {
            Either::Left((done, lookup)) => {
                if tokio::time::timeout(ACCOUNT_LOOKUP_GRACE, lookup)
                    .await
                    .is_err()
                {
                    warn!(region = %target.region, "account lookup unfinished; reported without the account");
                }
                done
            }
            Either::Right(((), work)) => work.await,
        }
    }
}
