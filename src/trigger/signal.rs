//! The signal trigger: the configured signal (default `SIGUSR1`) fires, and the event names the
//! sender's pid and uid (signal-hook's `WithOrigin`). It owns that one signal registration and
//! nothing else: SIGHUP (reload) and SIGTERM/SIGINT (shutdown) belong to the daemon and the CLI.
//! It only sends [`TriggerEvent`]s; it never calls AWS and never exits the process.

use futures_core::Stream;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook_tokio::SignalsInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::TriggerSource;
use crate::policy::SignalTrigger;
use crate::trigger::TriggerEvent;

/// Why the signal trigger could not start.
#[derive(Debug, thiserror::Error)]
pub enum SignalTriggerError {
    #[error("signal {name} ({number}) cannot be used as a trigger")]
    Forbidden { name: &'static str, number: i32 },
    #[error("cannot register a handler for signal {name}")]
    Register {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A registered signal trigger; [`SignalWatch::run`] turns arrivals into events.
pub struct SignalWatch {
    config: SignalTrigger,
    /// The registration: from now on the signal is caught (not the default action).
    signals: SignalsInfo<WithOrigin>,
}

impl SignalWatch {
    /// Register the handler. From here on the signal no longer kills the process.
    pub fn start(config: SignalTrigger) -> Result<SignalWatch, SignalTriggerError> {
        if signal_hook::consts::FORBIDDEN.contains(&config.number) {
            return Err(SignalTriggerError::Forbidden {
                name: config.name,
                number: config.number,
            });
        }
        let signals = SignalsInfo::<WithOrigin>::new([config.number]).map_err(|source| {
            SignalTriggerError::Register {
                name: config.name,
                source,
            }
        })?;
        Ok(SignalWatch { config, signals })
    }

    /// The signal this watch is registered for.
    pub fn config(&self) -> SignalTrigger {
        self.config
    }

    /// Send one event per arrival (arrivals that coincide may be merged by the kernel) until
    /// cancelled.
    pub async fn run(mut self, events: mpsc::Sender<TriggerEvent>, cancel: CancellationToken) {
        let handle = self.signals.handle();
        loop {
            let next =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.signals).poll_next(cx));
            tokio::select! {
                // Stopped by the daemon (shutdown or a reload that changed the signal).
                _ = cancel.cancelled() => break,
                origin = next => {
                    let Some(origin) = origin else { break };
                    let detail = match origin.process {
                        Some(process) => serde_json::json!({
                            "signal": self.config.name,
                            "sender_pid": process.pid,
                            "sender_uid": process.uid,
                        }),
                        None => serde_json::json!({
                            "signal": self.config.name,
                            "sender_pid": null,
                            "sender_uid": null,
                        }),
                    };
                    tracing::info!(signal = self.config.name, detail = %detail, "trigger signal received");
                    // The receiver is gone only when the daemon is stopping.
                    let _ = events.send(TriggerEvent::Fired { source: TriggerSource::Signal, detail }).await;
                }
            }
        }
        // Unregister: later arrivals are ignored rather than queued for nobody.
        handle.close();
    }
}
