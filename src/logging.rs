//! Logging set-up for every command: the systemd journal when stderr is connected to it, else
//! stderr, human-readable (`--log-format text`) or one JSON object per line (`--log-format json`);
//! filtered by `RUST_LOG` (default `info`). Owns nothing else: it never decides what is logged,
//! and nothing logged through it may carry a credential.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use clap::ValueEnum;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// journald's native protocol socket (systemd.journal-fields(7), sd_journal_sendv(3)).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Filter used by the daemon when `RUST_LOG` is unset or unreadable: every step, for journald.
pub const DAEMON_DEFAULT_FILTER: &str = "info";

/// Filter used by one-shot commands (`trip`, `status`, `check`, `rearm`, `audit verify`) when
/// `RUST_LOG` is unset: they print their own report on stdout/stderr and every step is in the
/// audit log, so only warnings and errors are logged on top (`RUST_LOG=info` shows every step).
pub const COMMAND_DEFAULT_FILTER: &str = "warn";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// journald's native protocol: keeps levels as priorities and fields as journal fields.
    Journal,
    /// Plain text lines on stderr.
    StderrText,
    /// One JSON object per line on stderr.
    StderrJson,
}

/// Install the global tracing subscriber. Later calls in the same process do nothing.
/// `default_filter` applies when `RUST_LOG` is unset or unreadable.
pub fn init(format: LogFormat, default_filter: &str) {
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let sink = choose_sink(
        format,
        journal_stream.as_deref(),
        Path::new(JOURNAL_SOCKET).exists(),
        stderr_identity(),
    );
    let filter = cap_sdk_verbosity(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
    );
    let layer = match sink {
        Sink::Journal => match tracing_journald::layer() {
            Ok(journal) => journal.boxed(),
            // The socket exists but cannot be used: stderr still reaches the journal.
            Err(_) => stderr_text_layer(),
        },
        Sink::StderrText => stderr_text_layer(),
        Sink::StderrJson => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // An error here means a subscriber is already installed (a second call in the same process):
    // the first one stays, which is what the caller wants.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// Crates whose debug and trace output may carry credential material (access key ids of assumed
/// roles, signed headers, raw request and response bodies with session tokens). They are capped at
/// `info` whatever `RUST_LOG` says: no credential may ever reach a log line.
const CREDENTIAL_BEARING_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_sdk_sts",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

/// notify logs every inotify event of the watched flag directory at `trace`, before our own code
/// can drop the ones that do not name the flag: with the log file in that directory each line is
/// an event that is logged again, without end. Capped at `debug` (its rare debug lines stay).
const FEEDBACK_TARGETS: &[&str] = &["notify"];

/// Add the `info` caps of [`CREDENTIAL_BEARING_TARGETS`] (and the `debug` caps of
/// [`FEEDBACK_TARGETS`]) to `filter`. A target directive wins
/// over a less specific one, so `RUST_LOG=debug` still gives our own debug lines.
fn cap_sdk_verbosity(mut filter: EnvFilter) -> EnvFilter {
    let caps = CREDENTIAL_BEARING_TARGETS
        .iter()
        .map(|target| format!("{target}=info"))
        .chain(
            FEEDBACK_TARGETS
                .iter()
                .map(|target| format!("{target}=debug")),
        );
    for cap in caps {
        match cap.parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            // The strings are constants above; a parse failure cannot happen, and losing one cap
            // must not stop the kill switch from starting.
            Err(_) => continue,
        }
    }
    filter
}

/// Human-readable lines on stderr; colours only on a terminal, never in files or pipes.
fn stderr_text_layer() -> Box<dyn Layer<Registry> + Send + Sync> {
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .boxed()
}

/// The device and inode of this process's stderr, to compare with `JOURNAL_STREAM`.
fn stderr_identity() -> Option<(u64, u64)> {
    // /proc/self/fd/2 resolves to the open file itself (a socket when systemd connected it).
    let metadata = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// The journal is used only when asked for text (JSON is for machines reading stderr), when the
/// socket exists, and when stderr *is* the stream systemd set up: `JOURNAL_STREAM` is inherited by
/// children whose stderr may have been redirected (systemd.exec(5), "$JOURNAL_STREAM").
pub fn choose_sink(
    format: LogFormat,
    journal_stream: Option<&str>,
    journal_socket_exists: bool,
    stderr: Option<(u64, u64)>,
) -> Sink {
    if format == LogFormat::Json {
        return Sink::StderrJson;
    }
    let stderr_is_journal = journal_stream
        .and_then(parse_journal_stream)
        .is_some_and(|stream| Some(stream) == stderr);
    if journal_socket_exists && stderr_is_journal {
        Sink::Journal
    } else {
        Sink::StderrText
    }
}

/// `JOURNAL_STREAM` is `<device>:<inode>` in decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_is_used_only_when_stderr_is_the_journal_stream() {
        let stderr = Some((24, 5_012_345));
        assert_eq!(
            choose_sink(LogFormat::Text, Some("24:5012345"), true, stderr),
            Sink::Journal
        );
        // Inherited JOURNAL_STREAM, but stderr redirected elsewhere.
        assert_eq!(
            choose_sink(LogFormat::Text, Some("24:999"), true, stderr),
            Sink::StderrText
        );
        // No journal socket (a container without journald).
        assert_eq!(
            choose_sink(LogFormat::Text, Some("24:5012345"), false, stderr),
            Sink::StderrText
        );
        assert_eq!(
            choose_sink(LogFormat::Text, None, true, stderr),
            Sink::StderrText
        );
        assert_eq!(
            choose_sink(LogFormat::Text, Some("garbage"), true, stderr),
            Sink::StderrText
        );
    }

    #[test]
    fn json_always_goes_to_stderr() {
        assert_eq!(
            choose_sink(
                LogFormat::Json,
                Some("24:5012345"),
                true,
                Some((24, 5_012_345))
            ),
            Sink::StderrJson
        );
        assert_eq!(
            choose_sink(LogFormat::Json, None, false, None),
            Sink::StderrJson
        );
    }
}
