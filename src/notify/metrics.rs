//! The metrics textfile (DESIGN.md §9) and the notifier's status file: what the daemon saw,
//! counted from the audit records it writes (observed by [`super::NotifyingAudit`]), exposed in
//! the Prometheus text format through `prometheus-client` for node_exporter's textfile collector
//! (no listening socket), and as JSON for `kms-killswitch status`. Both are written atomically
//! (temp file + rename) every [`WRITE_INTERVAL`] and on every change, by one task, off the
//! async workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::health::{Health, LogHealth};
use crate::audit::{DisconnectResult, Event, NotificationResult};

/// How often the files are rewritten when nothing changes: node_exporter reads them at each
/// scrape (15 s to 1 min), so 5 s keeps `up` and the heartbeat time fresh at no cost.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

/// A series' labels from `(name, value)` pairs.
fn label(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The last attempt for one sink, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastNotification {
    pub notified: String,
    pub result: NotificationResult,
    pub attempt: u32,
    pub message_id: Option<String>,
    pub error: Option<String>,
    pub ts: String,
}

/// The notifier's status file (`notify.json` next to the latch), read by `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusFile {
    pub healthy: bool,
    pub reasons: Vec<String>,
    pub last_heartbeat: Option<String>,
    pub notifications: BTreeMap<String, LastNotification>,
}

/// Every series, and what the files need besides.
pub struct Metrics {
    registry: Registry,
    up: Gauge,
    latched: Gauge,
    lockdowns: Family<Labels, Counter>,
    last_lockdown_seconds: Gauge<f64, AtomicU64>,
    disconnected: Family<Labels, Gauge>,
    aws_requests: Family<Labels, Counter>,
    throttled: Counter,
    pending: Gauge,
    alarm_poll_failures: Counter,
    notifications: Family<Labels, Counter>,
    heartbeat_seconds: Gauge<f64, AtomicU64>,
    /// The account of each store, from `disconnect_requested` (`store_verified` has none).
    accounts: Mutex<BTreeMap<(String, String), String>>,
    last: Mutex<BTreeMap<String, LastNotification>>,
    /// Woken on every change: the writer writes at once.
    changed: tokio::sync::Notify,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kms_killswitch");
        let metrics = Metrics {
            up: Gauge::default(),
            latched: Gauge::default(),
            lockdowns: Family::default(),
            last_lockdown_seconds: Gauge::default(),
            disconnected: Family::default(),
            aws_requests: Family::default(),
            throttled: Counter::default(),
            pending: Gauge::default(),
            alarm_poll_failures: Counter::default(),
            notifications: Family::default(),
            heartbeat_seconds: Gauge::default(),
            accounts: Mutex::default(),
            last: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            registry: Registry::default(),
        };
        registry.register("up", "1 while the daemon is healthy", metrics.up.clone());
        registry.register(
            "latched",
            "1 while the switch is latched",
            metrics.latched.clone(),
        );
        registry.register(
            "lockdowns",
            "Lockdowns finished, by outcome",
            metrics.lockdowns.clone(),
        );
        registry.register(
            "last_lockdown_duration_seconds",
            "How long the last lockdown took",
            metrics.last_lockdown_seconds.clone(),
        );
        registry.register(
            "key_store_disconnected",
            "1 when the store was last seen DISCONNECTED, 0 otherwise",
            metrics.disconnected.clone(),
        );
        registry.register(
            "aws_requests",
            "Audited AWS requests (DisconnectCustomKeyStore), by result",
            metrics.aws_requests.clone(),
        );
        registry.register(
            "throttled",
            "Disconnects AWS throttled",
            metrics.throttled.clone(),
        );
        registry.register(
            "audit_records_pending",
            "Audit records held in memory because the log cannot be written",
            metrics.pending.clone(),
        );
        registry.register(
            "alarm_poll_failures",
            "CloudWatch alarm polls that failed",
            metrics.alarm_poll_failures.clone(),
        );
        registry.register(
            "notifications",
            "Notification attempts, by sink and result",
            metrics.notifications.clone(),
        );
        registry.register(
            "heartbeat_last_success_timestamp_seconds",
            "When CloudWatch last accepted a heartbeat (Unix time)",
            metrics.heartbeat_seconds.clone(),
        );
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// Count what one audit record says.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::DisconnectRequested {
                key_store_id,
                region,
                account: Some(account),
                ..
            } => {
                self.accounts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((key_store_id.clone(), region.clone()), account.clone());
            }
            Event::DisconnectResult { result, error, .. } => {
                self.observe_disconnect_result(*result, error.as_deref())
            }
            Event::StoreVerified {
                key_store_id,
                region,
                ..
            } => self.set_store(key_store_id, region, 1),
            Event::DriftDetected {
                key_store_id,
                region,
                ..
            } => self.set_store(key_store_id, region, 0),
            Event::LockdownFinished {
                outcome,
                failed,
                elapsed_ms,
                ..
            } => self.observe_lockdown_finished(*outcome, failed, *elapsed_ms),
            Event::AlarmPollFailed { .. } => {
                self.alarm_poll_failures.inc();
            }
            Event::NotificationSent {
                sink,
                notified,
                result,
                message_id,
                error,
                attempt,
            } => {
                let last = LastNotification {
                    notified: notified.clone(),
                    result: *result,
                    attempt: *attempt,
                    message_id: message_id.clone(),
                    error: error.clone(),
                    ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                };
                self.observe_notification(sink, last);
            }
            _ => return,
        }
        self.changed.notify_one();
    }

    /// `key_store_disconnected` of one store, labelled with the account its Disconnect named.
    fn set_store(&self, key_store_id: &str, region: &str, value: i64) {
        let account = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key_store_id.to_string(), region.to_string()))
            .cloned()
            .unwrap_or_default();
        self.disconnected
            .get_or_create(&label(&[
                ("key_store_id", key_store_id),
                ("region", region),
                ("account", &account),
            ]))
            .set(value);
    }

    fn observe_disconnect_result(&self, result: DisconnectResult, error: Option<&str>) {
        let result = match result {
            DisconnectResult::Accepted => "accepted",
            DisconnectResult::AlreadyDisconnected => "already_disconnected",
            DisconnectResult::Error => "error",
        };
        self.aws_requests
            .get_or_create(&label(&[
                ("operation", "DisconnectCustomKeyStore"),
                ("result", result),
            ]))
            .inc();
        if error.is_some_and(|e| e.contains("Throttl")) {
            self.throttled.inc();
        }
    }

    fn observe_lockdown_finished(
        &self,
        outcome: crate::audit::LockdownOutcome,
        failed: &[crate::audit::Failed],
        elapsed_ms: u64,
    ) {
        let outcome = match outcome {
            crate::audit::LockdownOutcome::Complete => "complete",
            crate::audit::LockdownOutcome::Partial => "partial",
            crate::audit::LockdownOutcome::DryRun => "dry_run",
        };
        self.lockdowns
            .get_or_create(&label(&[("outcome", outcome)]))
            .inc();
        self.last_lockdown_seconds.set(elapsed_ms as f64 / 1000.0);
        for failed in failed {
            if let crate::audit::Failed::Store(failed) = failed {
                self.set_store(&failed.key_store_id, &failed.region, 0);
            }
        }
    }

    fn observe_notification(&self, sink: &str, last: LastNotification) {
        let result = match last.result {
            NotificationResult::Delivered => "delivered",
            NotificationResult::Failed => "failed",
        };
        self.notifications
            .get_or_create(&label(&[("sink", sink), ("result", result)]))
            .inc();
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sink.to_string(), last);
    }

    /// The Prometheus text exposition: the crate's OpenMetrics text without `# EOF`, and with
    /// each counter's HELP / TYPE lines naming the `_total` series it writes, as the Prometheus
    /// text format node_exporter reads wants them.
    fn exposition(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
        let counters: Vec<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.strip_suffix(" counter"))
            .map(str::to_owned)
            .collect();
        let mut out = String::with_capacity(text.len() + 16 * counters.len());
        for line in text.lines() {
            let renamed = counters.iter().find_map(|name| {
                ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                    let rest = line.strip_prefix(prefix)?.strip_prefix(name.as_str())?;
                    rest.starts_with(' ')
                        .then(|| format!("{prefix}{name}_total{rest}"))
                })
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// Write both files every [`WRITE_INTERVAL`] and on every change, until `stop`; once more at the
/// end.
pub(super) async fn write_files(
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    log: Arc<dyn LogHealth>,
    textfile: Option<PathBuf>,
    status_file: PathBuf,
    state_file: PathBuf,
    stop: CancellationToken,
) {
    let mut last_failures = String::new();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = metrics.changed.notified() => false,
            _ = tokio::time::sleep(WRITE_INTERVAL) => false,
        };
        let report = health.report();
        metrics.up.set(i64::from(report.healthy));
        metrics.pending.set(log.held() as i64);
        if let Some(at) = report.last_heartbeat_unix {
            metrics.heartbeat_seconds.set(at);
        }
        let status = StatusFile {
            healthy: report.healthy,
            reasons: report.reasons,
            last_heartbeat: report.last_heartbeat,
            notifications: metrics
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let metrics = metrics.clone();
        let (textfile, status_file, state_file) =
            (textfile.clone(), status_file.clone(), state_file.clone());
        let written = tokio::task::spawn_blocking(move || {
            let latched = matches!(crate::latch::read(&state_file), Ok(Some(_)));
            metrics.latched.set(i64::from(latched));
            let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
            let exposition = metrics.exposition();
            publish_each(
                textfile.as_deref(),
                exposition.as_bytes(),
                &status_file,
                &json,
            )
        })
        .await;
        let failures = written.unwrap_or_else(|err| format!("metrics writer failed: {err}"));
        if failures != last_failures {
            if failures.is_empty() {
                tracing::info!("the metrics and status files are written again");
            } else {
                tracing::warn!(cause = %failures, "cannot write the metrics or status file; retrying every change and every 5 s (said again only if the cause changes)");
            }
            last_failures = failures;
        }
        if stopping {
            return;
        }
    }
}

/// Publish the textfile (if any) and the status file, each whatever became of the other (a
/// missing node_exporter directory must not stop `status` from seeing health); the failures, one
/// `path: cause` each, joined, or empty.
fn publish_each(
    textfile: Option<&Path>,
    exposition: &[u8],
    status_file: &Path,
    json: &[u8],
) -> String {
    let files = textfile
        .map(|t| (t, exposition))
        .into_iter()
        .chain([(status_file, json)]);
    files
        .filter_map(|(path, bytes)| {
            publish(path, bytes)
                .err()
                .map(|err| format!("{}: {err}", path.display()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Write `bytes` to a temp file beside `path`, then rename it over `path`: a reader sees the
/// old file or the new one, never half of one. The temp file is created new (`O_EXCL`, which
/// follows no symlink): whatever is at its name (a symlink planted there, a leftover of a
/// crashed daemon with this pid) is removed first, never written through.
fn publish(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let create = || {
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
    };
    let mut file = match create() {
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&temp)?;
            create()?
        }
        other => other?,
    };
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{FailedStore, LockdownOutcome};

    #[test]
    fn a_textfile_that_cannot_be_written_does_not_stop_the_status_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let textfile = dir.path().join("no-such-dir/kms_killswitch.prom");
        let status = dir.path().join("notify.json");
        let failures = publish_each(Some(&textfile), b"up 1\n", &status, b"{}");
        assert!(failures.contains("no-such-dir"), "{failures}");
        assert_eq!(
            std::fs::read_to_string(&status).expect("status written"),
            "{}"
        );
        assert_eq!(publish_each(None, b"", &status, b"{\"a\":1}"), "");
    }

    #[test]
    fn publish_never_writes_through_a_symlink_at_its_temp_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        let path = dir.path().join("kms_killswitch.prom");
        let temp = dir
            .path()
            .join(format!("kms_killswitch.prom.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &temp).expect("symlink");
        publish(&path, b"kms_killswitch_up 1\n").expect("published");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "kms_killswitch_up 1\n"
        );
        assert!(!temp.exists());
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_file()
        );
    }

    #[test]
    fn counts_lockdowns_stores_and_notifications_from_the_records() {
        let metrics = Metrics::new();
        metrics.observe(&Event::DisconnectRequested {
            lockdown_id: "ld".into(),
            key_store_id: "cks-1".into(),
            region: "eu-west-1".into(),
            account: Some("111111111111".into()),
            attempt: 1,
        });
        metrics.observe(&Event::StoreVerified {
            lockdown_id: "ld".into(),
            key_store_id: "cks-1".into(),
            region: "eu-west-1".into(),
            connection_state: "DISCONNECTED".into(),
        });
        metrics.observe(&Event::LockdownFinished {
            lockdown_id: "ld".into(),
            outcome: LockdownOutcome::Partial,
            verified: 1,
            keys_verified: 0,
            failed: vec![crate::audit::Failed::Store(FailedStore {
                key_store_id: "cks-2".into(),
                region: "eu-west-1".into(),
                connection_state: None,
                error: None,
            })],
            elapsed_ms: 1500,
        });
        metrics.observe(&Event::NotificationSent {
            sink: "sns:arn".into(),
            notified: "lockdown_finished".into(),
            result: NotificationResult::Delivered,
            message_id: Some("m".into()),
            error: None,
            attempt: 1,
        });
        let text = metrics.exposition();
        for line in [
            "kms_killswitch_lockdowns_total{outcome=\"partial\"} 1",
            "kms_killswitch_last_lockdown_duration_seconds 1.5",
            "kms_killswitch_key_store_disconnected{key_store_id=\"cks-1\",region=\"eu-west-1\",account=\"111111111111\"} 1",
            "kms_killswitch_key_store_disconnected{key_store_id=\"cks-2\",region=\"eu-west-1\",account=\"\"} 0",
            "kms_killswitch_notifications_total{sink=\"sns:arn\",result=\"delivered\"} 1",
            "kms_killswitch_up 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        metrics.heartbeat_seconds.set(1_800_000_000.5);
        let text = metrics.exposition();
        assert!(
            text.contains("kms_killswitch_heartbeat_last_success_timestamp_seconds 1800000000.5"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE kms_killswitch_lockdowns_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kms_killswitch_lockdowns_total Lockdowns"),
            "{text}"
        );
    }
}
