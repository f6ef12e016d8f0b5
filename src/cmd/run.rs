//! `kms-killswitch run`: the daemon in the foreground. Builds a multi-thread tokio runtime,
//! loads the policy (exit 78 on error), opens the audit log, builds the AWS clients and warms
//! their credentials, starts the notifier ([`crate::notify`], when the policy asks for
//! notifications or a heartbeat), then hands everything to [`crate::daemon`] until SIGTERM/SIGINT. It spawns
//! nothing itself (the daemon does) and holds no logic beyond wiring.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::audit::AuditLog;
use crate::aws::AwsClients;
use crate::cmd::{Context, Exit, untrusted_state_path};
use crate::daemon::{Daemon, DaemonAudit, DaemonConfig, DaemonError, KeepWarm, SystemdNotifier};
use crate::notify;
use crate::policy::Policy;
use crate::trigger::signal::SignalWatch;

/// How long the exit waits for notifications still queued for systemd.
const NOTIFY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(ctx: &Context) -> anyhow::Result<Exit> {
    // A bad policy never starts a daemon: 78 via the PolicyError in the chain.
    let policy = ctx.load_policy()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kms-killswitch")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_daemon(ctx, policy))
}

async fn run_daemon(ctx: &Context, policy: Policy) -> anyhow::Result<Exit> {
    // Registered first: from here on SIGTERM/SIGINT/SIGHUP never kill the process mid-step.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // The trigger signal next, before the slow steps below (credential warm-up can take seconds):
    // one that arrives meanwhile is queued and fires as soon as the daemon's loop runs, instead
    // of killing the process with the signal's default action.
    let signal_watch = match policy.triggers.signal {
        Some(config) => {
            Some(SignalWatch::start(config).context("cannot start the signal trigger")?)
        }
        None => None,
    };

    if refuse_untrusted_state(&policy) {
        return Ok(Exit::Config);
    }
    // Webhook secrets are read now, like the policy: an unsafe or missing one refuses the start.
    let sinks = match notify::sinks(&policy) {
        Ok(sinks) => sinks,
        Err(err) => {
            eprintln!(
                "kms-killswitch: error: policy {}: {err}",
                policy.path.display()
            );
            return Ok(Exit::Config);
        }
    };
    let audit = AuditLog::open(&policy.audit_log, &policy.sha256);
    let aws = warmed_clients(&policy).await;

    let audit = Arc::new(audit);
    // Notifications and the heartbeat decorate the audit sink the daemon and the engine write
    // through: the record first, the notification after it, from its own tasks.
    let notifier = (!sinks.is_empty() || policy.heartbeat.is_some() || policy.metrics.is_some())
        .then(|| {
            let settings = notify::Settings::from_policy(&policy);
            notify::start(settings, sinks, audit.clone(), aws.clone())
        });
    let daemon_audit: Arc<dyn DaemonAudit> = match &notifier {
        Some(started) => started.audit.clone(),
        None => audit.clone(),
    };
    let keep_warm = keep_warm(aws.clone());
    let reload_ctx = ctx.clone();
    let queues: Arc<dyn crate::aws::QueueSource> = aws.clone();
    let systemd =
        SystemdNotifier::start().context("cannot start the systemd notification thread")?;
    let daemon = Daemon::new(DaemonConfig {
        policy,
        control: aws.clone(),
        alarms: aws,
        audit: daemon_audit,
        notifier: Arc::new(systemd.clone()),
        load_policy: Box::new(move || Ok(reload_ctx.load_policy()?)),
        watchdog: sd_notify::watchdog_enabled(),
        signal_watch,
        keep_warm: Some(keep_warm),
    })
    .with_queue_source(queues);
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    let ran = daemon.run(shutdown, hangup).await;
    // Notifications still queued (the lockdown's last ones) get a bounded chance to go out, and
    // STOPPING=1 reaches systemd before the process exits, unless systemd is not reading.
    if let Some(notifier) = notifier {
        notifier.stop(notify::DRAIN_TIMEOUT).await;
    }
    systemd.drain(NOTIFY_DRAIN_TIMEOUT);
    exit_status(ran, &audit).await
}

/// The latch, the audit log and the metrics textfile live in directories only root or the
/// daemon's user may change, and are regular files: anyone else could delete the latch
/// (re-arming the switch), put a FIFO there (hanging the daemon) or swap the metrics (hiding a
/// lockdown). Refused at start like an insecure policy; true (and said) if so.
fn refuse_untrusted_state(policy: &Policy) -> bool {
    let Some(refusal) = untrusted_state_path(policy) else {
        return false;
    };
    eprintln!(
        "kms-killswitch: error: policy {}: {refusal}; whoever can change it can re-arm the switch, hang the daemon or forge what it reports (fix: `chown root: DIR && chmod go-w DIR` for it and every directory above it)",
        policy.path.display(),
    );
    true
}

/// The exit status of a daemon that has stopped: a record that never reached the audit log
/// shows in it (issue 5), a configuration error is 78.
async fn exit_status(ran: Result<(), DaemonError>, audit: &AuditLog) -> anyhow::Result<Exit> {
    match ran {
        Ok(()) if !audit.flushed().await => {
            eprintln!(
                "kms-killswitch: error: {} audit records could not be written to {}; they are lost with this process",
                audit.unflushed(),
                audit.path().display()
            );
            Ok(Exit::Incomplete)
        }
        Ok(()) => Ok(Exit::Success),
        Err(err) if err.is_config() => {
            eprintln!("kms-killswitch: error: {:#}", anyhow::Error::new(err));
            Ok(Exit::Config)
        }
        Err(err) => Err(err.into()),
    }
}

/// The AWS clients of every target, credentials warmed (a failure is logged, never fatal: the
/// engine retries and reports per store; the operator sees it now).
async fn warmed_clients(policy: &Policy) -> Arc<AwsClients> {
    let aws = Arc::new(AwsClients::new(&policy.endpoints, crate::cmd::targets(policy)).await);
    for (target, result) in aws.warm_up().await {
        match result {
            Ok(account) => {
                tracing::info!(region = %target.region, role = ?target.role_arn, %account, "credentials ready")
            }
            Err(err) => {
                tracing::error!(region = %target.region, role = ?target.role_arn, cause = %err, "cannot warm up credentials")
            }
        }
    }
    aws
}

/// Renews `aws`'s credentials, for the daemon to call every `KEEP_WARM_INTERVAL`.
fn keep_warm(aws: Arc<AwsClients>) -> KeepWarm {
    Arc::new(move || {
        let aws = aws.clone();
        Box::pin(async move {
            for (target, result) in aws.warm_up().await {
                if let Err(err) = result {
                    tracing::warn!(region = %target.region, role = ?target.role_arn, cause = %err, "cannot renew credentials; retrying at the next interval");
                }
            }
        })
    })
}
