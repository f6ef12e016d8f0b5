//! `cargo run --release --example chaos -- --seconds N --seed S`: the real daemon against kms-sim
//! for N seconds of random trouble — triggers of every kind (file, signal, alarm, queue, `trip`),
//! SIGHUP with good and bad policies, AWS outages up to 30 s, 500s, throttling storms,
//! consistency lag, assumed-role sessions expiring, an attacker reconnecting stores and
//! re-enabling keys, rearms, a full audit disk, SIGKILL and restart — with the invariants of
//! [`checks`] held continuously and at the end: exposure bounded while latched, no Disconnect
//! while armed, the audit chain always verifying, no record lost, the daemon never exiting unless
//! told. The seed is printed for replay (the schedule replays; the simulator's own dice and the
//! machine's timing do not). Exit 0 with no violation, 1 otherwise.
//!
//! It owns nothing but itself: it must not change the library, the simulator or the policy
//! contract. Map: `world` (what is simulated and the policy), `faults` (AWS windows), `daemon`
//! (the processes), `checks` (the invariants), `events` (what can happen), this file (the loop).
#![forbid(unsafe_code)]

#[path = "../support/binary.rs"]
mod binary;
mod checks;
mod daemon;
mod events;
mod faults;
mod world;

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;

use checks::Checks;
use daemon::{Daemon, Paths, Running};
use faults::FaultWindows;

/// A SIGKILL this soon after a request may come before its result record is written.
const KILL_LOSES_US: u64 = 10_000_000;
/// How often the loop looks at everything.
const TICK: Duration = Duration::from_millis(100);
/// How often the audit chain is verified while the run goes on.
const VERIFY_EVERY: Duration = Duration::from_secs(15);
/// Every CLI command is given this long before it counts as hung.
const CLI_PATIENCE: Duration = Duration::from_secs(60);
/// A started daemon sends READY=1 within this long once AWS is reachable.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// A trigger gives a latch within this long once AWS is reachable and the daemon READY: the
/// slowest is a queue message received just before a SIGKILL, delivered again after its 5 s
/// visibility timeout, or an alarm seen on the next 1 s poll after a long-poll backoff.
const LATCH_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(about = "Random faults against the real kms-killswitch daemon and kms-sim")]
struct Args {
    /// How long to inject trouble (then the run settles, stops the daemon and checks the end).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The schedule's seed (default: from the clock); printed for replay.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the run directory (it is printed) even when no invariant was violated.
    #[arg(long)]
    keep: bool,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| now_us() % 1_000_000_007);
    println!(
        "chaos: seed {seed} (replay: cargo run --release --example chaos -- --seconds {} --seed {seed})",
        args.seconds
    );
    match run(&args, seed) {
        Ok(report) => {
            report.print();
            if report.violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("chaos FAILED to run: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, seed: u64) -> anyhow::Result<Report> {
    let binary = binary::build_daemon()?;
    let shim = build_shim()?;
    let world = kms_sim::World::from_yaml_str(&world::world_yaml()).context("the chaos world")?;
    let sim = kms_sim::spawn(world).context("starting kms-sim")?;
    let dir = tempfile::Builder::new()
        .prefix("kms-killswitch-chaos-")
        .tempdir()
        .context("creating the run directory")?;
    let paths = Paths {
        dir: dir.path().to_owned(),
    };
    prepare_dir(&paths, &sim)?;
    let daemon = Daemon::new(binary, shim, &paths)?;
    let mut chaos = Chaos::new(sim, paths, daemon, seed, Duration::from_secs(args.seconds));
    chaos.daemon.start(&chaos.paths)?;
    let report = chaos.run()?;
    if args.keep || report.violations > 0 {
        println!("run directory kept: {}", dir.keep().display());
    }
    Ok(report)
}

fn prepare_dir(paths: &Paths, sim: &kms_sim::SimHandle) -> anyhow::Result<()> {
    for (sub, mode) in [("flags", 0o755), ("state", 0o700), ("audit", 0o700)] {
        let path = paths.dir.join(sub);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    let policy = world::policy(&sim.endpoint_url(), &queue_url(sim), &paths.dir, 0);
    write_policy(&paths.policy(), &policy)
}

pub fn queue_url(sim: &kms_sim::SimHandle) -> String {
    sim.queue_url(world::ACCOUNT, world::QUEUE)
}

/// Write the policy 0600 (the daemon refuses a looser one), whole: a new file renamed in place.
pub fn write_policy(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let new = path.with_extension("yaml.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&new)
        .with_context(|| format!("writing {}", new.display()))?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(&new, path).with_context(|| format!("renaming onto {}", path.display()))
}

/// The whole run's state.
pub struct Chaos {
    pub sim: kms_sim::SimHandle,
    pub paths: Paths,
    pub daemon: Daemon,
    pub faults: FaultWindows,
    pub checks: Checks,
    pub rng: fastrand::Rng,
    pub started: Instant,
    length: Duration,
    /// Events injected, by kind.
    pub events: BTreeMap<&'static str, u32>,
    /// CLI commands running beside the daemon.
    pub running: Vec<Running>,
    /// When the switch was armed with no trigger injected (the daemon starts so; each
    /// successful rearm opens a span, the next trigger closes it).
    pub armed: checks::ArmedSpans,
    /// Triggers injected while no latch was there, and when: each must give a latch.
    pub pending_triggers: Vec<(&'static str, Instant)>,
    /// Wall-clock µs of every SIGKILL.
    pub kills_us: Vec<u64>,
    /// Wall-clock µs of the last trigger injected.
    pub last_trigger_us: u64,
    latched_since: Option<Instant>,
    /// When the audit disk stops being full, while it is.
    pub disk_full_until: Option<Instant>,
    /// Wall-clock µs spans in which a record may be lost (a SIGKILL while the disk was full).
    pub excused: Vec<(u64, u64)>,
    /// Wall-clock µs the last full-disk spell began and ended (None while it lasts).
    pub disk_full_spell_us: Option<(u64, Option<u64>)>,
    /// When to put the good policy back after a bad reload.
    pub restore_policy_at: Option<Instant>,
    pub policy_variant: u32,
    pub queue_sequence: u64,
    pub outcomes: BTreeMap<String, u32>,
    last_verify: Instant,
    last_requests: Instant,
    verifies: u32,
    next_event: Instant,
}

impl Chaos {
    fn new(
        sim: kms_sim::SimHandle,
        paths: Paths,
        daemon: Daemon,
        seed: u64,
        length: Duration,
    ) -> Chaos {
        let faults = FaultWindows::new(&sim);
        let now = Instant::now();
        Chaos {
            sim,
            paths,
            daemon,
            faults,
            checks: Checks::default(),
            rng: fastrand::Rng::with_seed(seed),
            started: now,
            length,
            events: BTreeMap::new(),
            running: Vec::new(),
            armed: vec![(now_us(), None)],
            pending_triggers: Vec::new(),
            kills_us: Vec::new(),
            last_trigger_us: 0,
            latched_since: None,
            disk_full_until: None,
            excused: Vec::new(),
            disk_full_spell_us: None,
            restore_policy_at: None,
            policy_variant: 0,
            queue_sequence: 0,
            outcomes: BTreeMap::new(),
            last_verify: now,
            last_requests: now,
            verifies: 0,
            next_event: now + Duration::from_secs(2),
        }
    }

    fn run(&mut self) -> anyhow::Result<Report> {
        let end = self.started + self.length;
        while Instant::now() < end {
            self.tick()?;
            if Instant::now() >= self.next_event && self.daemon.ready_at.is_some() {
                self.inject()?;
                self.next_event = Instant::now() + Duration::from_millis(self.rng.u64(300..3000));
            }
            std::thread::sleep(TICK);
        }
        self.settle()
    }

    /// One look at everything: the daemon alive, windows closing, children done, invariants.
    fn tick(&mut self) -> anyhow::Result<()> {
        self.watch_daemon()?;
        self.faults.expire(&self.sim);
        self.end_disk_full(false);
        if self
            .restore_policy_at
            .is_some_and(|at| Instant::now() >= at)
        {
            self.restore_policy()?;
        }
        self.reap();
        self.latched_since = match (self.paths.latch().exists(), self.latched_since) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or_else(Instant::now)),
        };
        let clock_from = match (
            self.latched_since,
            self.faults.calm_since(),
            self.daemon.ready_at,
        ) {
            (Some(latched), Some(calm), Some(ready)) => Some(latched.max(calm).max(ready)),
            _ => None,
        };
        let faults = &self.faults;
        self.checks.exposure(
            &self.sim,
            clock_from,
            |since| faults.stretch(since),
            self.started,
        );
        self.watch_triggers();
        if self.last_requests.elapsed() >= Duration::from_secs(1) {
            self.last_requests = Instant::now();
            self.checks.requests(&self.sim, &self.armed, self.started);
        }
        if self.last_verify.elapsed() >= VERIFY_EVERY {
            self.last_verify = Instant::now();
            self.verify_chain();
        }
        Ok(())
    }

    /// The daemon must never exit unasked (it is restarted on the good policy if it does), and
    /// must be READY within [`READY_DEADLINE`] of a start once AWS is reachable.
    fn watch_daemon(&mut self) -> anyhow::Result<()> {
        if self.exited_unasked() {
            self.restore_policy()?;
            self.daemon.start(&self.paths)?;
        }
        let calm = self.faults.calm_since();
        if let (None, Some(started), Some(calm)) =
            (self.daemon.ready_at, self.daemon.started_at, calm)
            && started.max(calm).elapsed() > READY_DEADLINE
        {
            let what = format!("no READY=1 {} s after the start", READY_DEADLINE.as_secs());
            self.checks.violate(self.started, what);
            self.daemon.started_at = None;
        }
        Ok(())
    }

    /// True (and a violation) if the daemon has exited without being told to.
    pub fn exited_unasked(&mut self) -> bool {
        let Some(status) = self.daemon.poll() else {
            return false;
        };
        let what = format!("the daemon exited unasked ({status})");
        self.checks.violate(self.started, what);
        true
    }

    /// Every trigger injected while armed must give a latch within [`LATCH_DEADLINE`] once AWS
    /// is reachable and the daemon READY.
    fn watch_triggers(&mut self) {
        if self.latched_since.is_some() {
            self.pending_triggers.clear();
            return;
        }
        let (Some(calm), Some(ready)) = (self.faults.calm_since(), self.daemon.ready_at) else {
            return;
        };
        let late: Vec<&'static str> = self
            .pending_triggers
            .iter()
            .filter(|(_, at)| (*at).max(calm).max(ready).elapsed() > LATCH_DEADLINE)
            .map(|(what, _)| *what)
            .collect();
        for what in late {
            let why = format!("{what} gave no latch within {} s", LATCH_DEADLINE.as_secs());
            self.checks.violate(self.started, why);
            self.pending_triggers.retain(|(w, _)| *w != what);
        }
    }

    /// The chain must verify at any moment; a line being appended right now may be read half
    /// written, so a failure is looked at again before it counts.
    fn verify_chain(&mut self) {
        self.verifies += 1;
        let mut last = String::new();
        for _ in 0..3 {
            match daemon::audit_verify(self.daemon.binary(), &self.paths) {
                Ok(()) => return,
                Err(err) => last = err,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        self.checks
            .violate(self.started, format!("audit verify failed: {last}"));
    }

    /// Collect the CLI commands that finished; a rearm that succeeded arms the run's bookkeeping.
    fn reap(&mut self) {
        let mut still = Vec::new();
        for mut running in std::mem::take(&mut self.running) {
            match running.child.try_wait() {
                Ok(Some(status)) => self.finished(&running, status),
                Ok(None) if running.started.elapsed() > CLI_PATIENCE => {
                    let what = format!(
                        "`{}` still running after {} s",
                        running.what,
                        CLI_PATIENCE.as_secs()
                    );
                    self.checks.violate(self.started, what);
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                }
                _ => still.push(running),
            }
        }
        self.running = still;
    }

    fn finished(&mut self, running: &Running, status: std::process::ExitStatus) {
        let code = status.code().map_or("signal".to_owned(), |c| c.to_string());
        *self
            .outcomes
            .entry(format!("{} exit {code}", running.what))
            .or_default() += 1;
        if running.what == "rearm" && status.success() && self.last_trigger_us < running.started_us
        {
            self.armed.push((now_us(), None));
        }
        // A `trip` that ends while its records are held on the full disk says so and exits 1:
        // they are only in its own log output (`cli.log`), like a SIGKILLed daemon's.
        if running.what == "trip" && !status.success() {
            self.ended_on_full_disk(now_us());
        }
    }

    /// A process that ends (SIGKILL, or a `trip` giving up) while the audit disk is full, or
    /// within 5 s of it freeing (the writer retries held records every second), may take
    /// records held in memory with it: the span from the spell's start is excused, and counted.
    pub fn ended_on_full_disk(&mut self, ended_us: u64) {
        if let Some((began, freed)) = self.disk_full_spell_us
            && freed.is_none_or(|freed| ended_us < freed + 5_000_000)
        {
            self.excused
                .push((began.saturating_sub(1_000_000), ended_us));
        }
    }

    /// A trigger (`what`) is about to be injected: from now on a Disconnect is expected, and
    /// if the switch is armed, a latch must follow.
    pub fn triggering(&mut self, what: &'static str) {
        let now = now_us();
        if let Some((_, until @ None)) = self.armed.last_mut() {
            *until = Some(now);
        }
        self.last_trigger_us = now;
        if self.latched_since.is_none() {
            self.pending_triggers.push((what, Instant::now()));
        }
    }

    /// How long the latch file has been there (None: armed).
    pub fn latched_for(&self) -> Option<Duration> {
        self.latched_since.map(|since| since.elapsed())
    }

    pub fn running(&self, what: &str) -> bool {
        self.running.iter().any(|r| r.what == what)
    }

    /// Put the current good policy back on disk (after a bad reload), without a SIGHUP.
    pub fn restore_policy(&mut self) -> anyhow::Result<()> {
        self.restore_policy_at = None;
        write_policy(&self.paths.policy(), &self.good_policy())
    }

    pub fn good_policy(&self) -> String {
        world::policy(
            &self.sim.endpoint_url(),
            &queue_url(&self.sim),
            &self.paths.dir,
            self.policy_variant,
        )
    }

    /// End the full-disk spell if its time is up (or `now`).
    pub fn end_disk_full(&mut self, now: bool) {
        let Some(until) = self.disk_full_until else {
            return;
        };
        if now || Instant::now() >= until {
            let _ = std::fs::remove_file(self.paths.disk_full_flag());
            self.disk_full_until = None;
            if let Some((_, freed @ None)) = &mut self.disk_full_spell_us {
                *freed = Some(now_us());
            }
        }
    }

    /// No more trouble: AWS calm, the disk free, the good policy; wait for the commands, give
    /// the daemon its bound to enforce, stop it, and check the end.
    fn settle(&mut self) -> anyhow::Result<Report> {
        println!(
            "chaos: {} s of trouble done; settling",
            self.length.as_secs()
        );
        self.faults.close_all(&self.sim);
        self.end_disk_full(true);
        self.restore_policy()?;
        let settle_until = Instant::now() + checks::bound() + Duration::from_secs(3);
        while Instant::now() < settle_until || !self.running.is_empty() {
            self.tick()?;
            std::thread::sleep(TICK);
        }
        self.checks.requests(&self.sim, &self.armed, self.started);
        match self
            .daemon
            .stop(Duration::from_secs(checks::ROUND.as_secs() + 10))
        {
            Some(status) if status.success() => {}
            other => {
                let what = format!("SIGTERM did not stop the daemon with status 0: {other:?}");
                self.checks.violate(self.started, what);
            }
        }
        self.verify_chain();
        self.check_records()?;
        Ok(self.report())
    }

    /// No record lost: every Disconnect / DisableKey served has its `*_requested` record.
    fn check_records(&mut self) -> anyhow::Result<()> {
        let audit =
            std::fs::read_to_string(self.paths.audit_log()).context("reading the audit log")?;
        let records = checks::step_records(&audit);
        let (excused, kills) = (&self.excused, &self.kills_us);
        let (missing, excused_count) = checks::unrecorded(
            &self.checks.served,
            records,
            |ts| excused.iter().any(|(from, to)| (*from..=*to).contains(&ts)),
            |ts| {
                kills
                    .iter()
                    .any(|kill| (ts..=ts + KILL_LOSES_US).contains(kill))
            },
        );
        *self
            .outcomes
            .entry("requests excused (SIGKILL before the result, or on a full disk)".into())
            .or_default() += excused_count as u32;
        if !missing.is_empty() {
            let served = serde_json::to_string_pretty(&self.checks.served).unwrap_or_default();
            let _ = std::fs::write(self.paths.dir.join("served-requests.json"), served);
        }
        for what in missing.into_iter().take(20) {
            self.checks
                .violate(self.started, format!("no audit record for {what}"));
        }
        let lockdowns = audit.matches("\"event\":\"lockdown_started\"").count();
        let drifts = audit.matches("\"event\":\"drift_detected\"").count();
        *self.outcomes.entry("lockdowns audited".into()).or_default() += lockdowns as u32;
        *self.outcomes.entry("drifts audited".into()).or_default() += drifts as u32;
        *self.outcomes.entry("audit records".into()).or_default() += audit.lines().count() as u32;
        Ok(())
    }

    fn report(&self) -> Report {
        Report {
            seconds: self.started.elapsed().as_secs_f64(),
            events: self.events.clone(),
            outcomes: self.outcomes.clone(),
            violations: self.checks.violations.len(),
            details: self
                .checks
                .violations
                .iter()
                .map(|v| format!("{:.1} s: {}", v.at_s, v.what))
                .collect(),
            worst_exposure: self.checks.worst_exposure,
            starts: self.daemon.starts,
            verifies: self.verifies,
            disconnects: self.checks.served.len(),
        }
    }
}

/// What the run prints at the end.
struct Report {
    seconds: f64,
    events: BTreeMap<&'static str, u32>,
    outcomes: BTreeMap<String, u32>,
    violations: usize,
    details: Vec<String>,
    worst_exposure: (Duration, Duration),
    starts: u32,
    verifies: u32,
    disconnects: usize,
}

impl Report {
    fn print(&self) {
        let injected: u32 = self.events.values().sum();
        println!(
            "\nchaos report: {:.0} s, {injected} events injected",
            self.seconds
        );
        for (kind, count) in &self.events {
            println!("  {kind:<22} {count}");
        }
        println!("outcomes:");
        for (what, count) in &self.outcomes {
            println!("  {what:<50} {count}");
        }
        println!(
            "daemon starts {}, chain verified {} times, Disconnect/DisableKey calls served {}",
            self.starts, self.verifies, self.disconnects
        );
        let (exposed, bound) = self.worst_exposure;
        println!(
            "exposure nearest its bound while latched with AWS reachable: {:.1} s of {:.1} s \
             (enforce_interval + one round = {} s, stretched by 500 and throttling storms)",
            exposed.as_secs_f64(),
            bound.as_secs_f64(),
            checks::bound().as_secs()
        );
        println!("violations: {}", self.violations);
        for detail in &self.details {
            println!("  {detail}");
        }
    }
}

/// Build `examples/chaos/full_disk.c` with the system's C compiler.
fn build_shim() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the chaos executable")?;
    let out = exe
        .parent()
        .context("the chaos executable's directory")?
        .join("libchaos_full_disk.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chaos/full_disk.c");
    let status = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .context("running the C compiler (cc) for the full-disk shim")?;
    if !status.success() {
        bail!("cc failed to build {} ({status})", source.display());
    }
    Ok(out)
}
