//! Logging set-up for every command: tracing to stderr, human-readable or JSON, filtered by
//! `RUST_LOG` (default `info`). Owns nothing else; it must never log a credential.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Install the global tracing subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
