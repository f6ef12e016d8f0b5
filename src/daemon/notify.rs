//! systemd notification (`Type=notify`): READY, STATUS, WATCHDOG, RELOADING + MONOTONIC_USEC and
//! STOPPING, sent to `$NOTIFY_SOCKET` whenever it is set, whoever the parent process is. Behind
//! the small [`Notifier`] trait so the daemon's state machine is tested with a recording fake.
//! Owns the one sender thread; a failed or dropped send is logged at debug level and never stops,
//! blocks or slows the daemon.

use std::sync::mpsc::{self, SyncSender, TrySendError};

use sd_notify::NotifyState;

/// Datagrams waiting for a service manager that reads slowly; beyond this they are dropped.
const QUEUED_NOTIFICATIONS: usize = 256;

/// Where the daemon's notifications go.
pub trait Notifier: Send + Sync {
    /// Send these states as one datagram.
    fn notify(&self, states: &[NotifyState<'_>]);
}

/// The real one: each datagram handed to a thread of its own that sends it with
/// `sd_notify::notify` (a no-op when `$NOTIFY_SOCKET` is unset). A datagram socket whose reader
/// is slow blocks its sender (`unix_wait_for_peer`): a storm of SIGHUPs once filled systemd's
/// queue and froze the daemon's loop, triggers and SIGTERM included. Now only that thread waits;
/// the loop never does, and past [`QUEUED_NOTIFICATIONS`] datagrams are dropped (the next STATUS
/// says the same thing anew).
#[derive(Debug, Clone)]
pub struct SystemdNotifier {
    queue: SyncSender<Message>,
}

#[derive(Debug)]
enum Message {
    Datagram(String),
    /// Answered once every datagram queued before it has been sent.
    Drained(mpsc::Sender<()>),
}

impl SystemdNotifier {
    /// Start the sender thread. Fails only if the thread cannot be spawned.
    pub fn start() -> std::io::Result<SystemdNotifier> {
        let (queue, messages) = mpsc::sync_channel::<Message>(QUEUED_NOTIFICATIONS);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for message in messages {
                    match message {
                        // One datagram, its lines as joined (Custom writes them verbatim).
                        Message::Datagram(text) => {
                            if let Err(err) = sd_notify::notify(&[NotifyState::Custom(&text)]) {
                                tracing::debug!(cause = %err, "cannot notify the service manager");
                            }
                        }
                        Message::Drained(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(SystemdNotifier { queue })
    }

    /// Wait, at most `within`, for every datagram queued so far to be sent (STOPPING=1 before
    /// the process exits).
    pub fn drain(&self, within: std::time::Duration) {
        let (done, drained) = mpsc::channel();
        if self.queue.try_send(Message::Drained(done)).is_ok() {
            let _ = drained.recv_timeout(within);
        }
    }
}

impl Notifier for SystemdNotifier {
    fn notify(&self, states: &[NotifyState<'_>]) {
        let lines: Vec<String> = states.iter().map(|s| s.to_string()).collect();
        match self.queue.try_send(Message::Datagram(lines.join("\n"))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("the service manager is not reading its notifications; one dropped")
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!("the notification thread has stopped; one dropped")
            }
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
