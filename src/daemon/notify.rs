//! systemd notification (`Type=notify`): READY, STATUS, WATCHDOG, RELOADING + MONOTONIC_USEC and
//! STOPPING, sent to `$NOTIFY_SOCKET` whenever it is set, whoever the parent process is. Behind
//! the small [`Notifier`] trait so the daemon's state machine is tested with a recording fake.
//! Owns no state; a failed send is logged at debug level and never stops the daemon.

use sd_notify::NotifyState;

/// Where the daemon's notifications go.
pub trait Notifier: Send + Sync {
    /// Send these states as one datagram.
    fn notify(&self, states: &[NotifyState<'_>]);
}

/// The real one: `sd_notify::notify` (a no-op when `$NOTIFY_SOCKET` is unset).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemdNotifier;

impl Notifier for SystemdNotifier {
    fn notify(&self, states: &[NotifyState<'_>]) {
        if let Err(err) = sd_notify::notify(states) {
            tracing::debug!(cause = %err, "cannot notify the service manager");
        }
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd ≥ 253 requires alongside it.
pub fn reloading(notifier: &dyn Notifier) {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notifier.notify(&[NotifyState::Reloading, now]),
        Err(err) => {
            tracing::debug!(cause = %err, "cannot read the monotonic clock for RELOADING");
            notifier.notify(&[NotifyState::Reloading]);
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Records every datagram as its text lines.
    #[derive(Debug, Default)]
    pub struct RecordingNotifier {
        pub messages: Mutex<Vec<String>>,
    }

    impl RecordingNotifier {
        pub fn lines(&self) -> Vec<String> {
            self.messages.lock().unwrap().clone()
        }
    }

    impl Notifier for RecordingNotifier {
        fn notify(&self, states: &[NotifyState<'_>]) {
            let text: Vec<String> = states.iter().map(|s| s.to_string()).collect();
            self.messages.lock().unwrap().push(text.join("\n"));
        }
    }
}
