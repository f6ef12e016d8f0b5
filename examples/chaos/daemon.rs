//! The real `kms-killswitch` binary under the chaos run: the daemon (`run`, with our own
//! `NOTIFY_SOCKET` and the full-disk shim preloaded), killed and restarted on demand; and the
//! CLI commands (`trip`, `rearm`, `audit verify`) as children the main loop polls. Owns the
//! processes and the run directory's paths; it must not decide when anything happens.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::Context;

use crate::world::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};

/// The run directory's files.
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn policy(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }
    pub fn flag(&self) -> PathBuf {
        self.dir.join("flags/kms-killswitch")
    }
    pub fn latch(&self) -> PathBuf {
        self.dir.join("state/latch.json")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.join("audit")
    }
    pub fn audit_log(&self) -> PathBuf {
        self.audit_dir().join("audit.jsonl")
    }
    /// While this file exists the shim makes the audit directory's disk full.
    pub fn disk_full_flag(&self) -> PathBuf {
        self.dir.join("disk-is-full")
    }
    fn notify_socket(&self) -> PathBuf {
        self.dir.join("notify.sock")
    }
    fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    fn aws_config(&self) -> PathBuf {
        self.dir.join("aws-config")
    }
}

/// A hermetic command for the binary on the run's policy and the world's base credentials.
pub fn command(binary: &Path, paths: &Paths) -> Command {
    let mut command = crate::binary::hermetic(binary);
    command
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", paths.aws_config())
        .env("AWS_SHARED_CREDENTIALS_FILE", paths.aws_config())
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(paths.policy())
        .stdin(Stdio::null());
    command
}

/// [`command`] with the full-disk shim preloaded: the daemon and the `trip` and `rearm` it runs
/// beside it all meet the same full disk.
fn command_on_disk(binary: &Path, shim: &Path, paths: &Paths) -> Command {
    let mut command = command(binary, paths);
    command
        .env("LD_PRELOAD", shim)
        .env("FULL_DISK_FLAG", paths.disk_full_flag())
        .env("FULL_DISK_DIR", paths.audit_dir());
    command
}

/// The daemon process, its notify socket and its story.
pub struct Daemon {
    binary: PathBuf,
    shim: PathBuf,
    child: Option<Child>,
    notify: UnixDatagram,
    /// When the current process sent READY=1 (None while starting or stopped).
    pub ready_at: Option<Instant>,
    /// When the current process was started, until READY=1 (or its deadline) is seen.
    pub started_at: Option<Instant>,
    pub starts: u32,
}

impl Daemon {
    pub fn new(binary: PathBuf, shim: PathBuf, paths: &Paths) -> anyhow::Result<Daemon> {
        std::fs::write(paths.aws_config(), "").context("writing the empty AWS config")?;
        let socket = paths.notify_socket();
        let _ = std::fs::remove_file(&socket);
        let notify = UnixDatagram::bind(&socket).context("binding NOTIFY_SOCKET")?;
        notify.set_nonblocking(true)?;
        Ok(Daemon {
            binary,
            shim,
            child: None,
            notify,
            ready_at: None,
            started_at: None,
            starts: 0,
        })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Spawn `kms-killswitch ARGS` beside the daemon, on the same (possibly full) disk, its
    /// output appended to the run directory's `cli.log`.
    pub fn spawn_cli(
        &self,
        paths: &Paths,
        what: &'static str,
        args: &[&str],
    ) -> anyhow::Result<Running> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.dir.join("cli.log"))
            .context("opening cli.log")?;
        let child = command_on_disk(&self.binary, &self.shim, paths)
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `kms-killswitch {}`", args.join(" ")))?;
        Ok(Running {
            what,
            child,
            started: Instant::now(),
            started_us: crate::now_us(),
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Start `kms-killswitch run` (READY=1 is picked up by [`Daemon::poll`]).
    pub fn start(&mut self, paths: &Paths) -> anyhow::Result<()> {
        // Whatever a killed process sent (a READY=1 after a reload) is not this one's.
        let mut stale = [0u8; 4096];
        while self.notify.recv(&mut stale).is_ok() {}
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.daemon_log())
            .context("opening daemon.log")?;
        let child = command_on_disk(&self.binary, &self.shim, paths)
            .arg("run")
            .env("NOTIFY_SOCKET", paths.notify_socket())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting `kms-killswitch run`")?;
        self.child = Some(child);
        self.ready_at = None;
        self.started_at = Some(Instant::now());
        self.starts += 1;
        Ok(())
    }

    /// Read the notify socket; `Some(status)` when the process exited (not asked to).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        let mut buffer = [0u8; 4096];
        while let Ok(len) = self.notify.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..len]);
            if message.lines().any(|l| l == "READY=1") && self.ready_at.is_none() {
                self.ready_at = Some(Instant::now());
                self.started_at = None;
            }
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.ready_at = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.ready_at = None;
    }

    /// Send a signal (SIGHUP, SIGUSR1, SIGTERM) to the daemon.
    pub fn signal(&self, signal: rustix::process::Signal) -> bool {
        let Some(pid) = self.pid().and_then(rustix::process::Pid::from_raw) else {
            return false;
        };
        rustix::process::kill_process(pid, signal).is_ok()
    }

    /// SIGTERM and wait; the exit status, or None if it had to be killed after `patience`.
    pub fn stop(&mut self, patience: std::time::Duration) -> Option<ExitStatus> {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + patience;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

/// A CLI command running beside the daemon.
pub struct Running {
    pub what: &'static str,
    pub child: Child,
    pub started: Instant,
    /// Wall-clock µs at start.
    pub started_us: u64,
}

/// `kms-killswitch audit verify` on the run's log: Ok, or its stderr.
pub fn audit_verify(binary: &Path, paths: &Paths) -> Result<(), String> {
    let output = command(binary, paths)
        .args(["audit", "verify"])
        .arg(paths.audit_log())
        .output()
        .map_err(|err| format!("audit verify did not run: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{} {}", stdout.trim(), stderr.trim())
            .trim()
            .to_owned())
    }
}
