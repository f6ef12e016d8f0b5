//! What can happen in a chaos run, one event at a time, chosen by weight from the run's seeded
//! generator: triggers, reloads, AWS windows, expiring sessions, the attacker, rearms, a full
//! audit disk, SIGKILL and restart. Owns the choice and the act; it must not check invariants
//! (only tell the bookkeeping what it did: a trigger injected, a kill while the disk was full).

use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::process::Signal;

use crate::faults::Misbehaviour;
use crate::world::{self, ACCOUNT, ALARM, KEYS, QUEUE, REGION, STORES};
use crate::{Chaos, now_us, write_policy};

/// A rearm waits until the switch has been latched this long, so the attacker and AWS trouble
/// get time to meet enforcement.
const MIN_LATCHED: Duration = Duration::from_secs(20);

/// Every event and its weight.
const EVENTS: [(&str, u32); 18] = [
    ("trip file", 5),
    ("trip signal", 4),
    ("trip alarm", 4),
    ("trip queue", 4),
    ("trip cli", 2),
    ("queue noise", 3),
    ("rearm", 10),
    ("reload good", 4),
    ("reload bad", 3),
    ("aws outage", 2),
    ("aws 500s", 3),
    ("throttling storm", 3),
    ("consistency lag", 3),
    ("sessions expire", 3),
    ("attacker reconnects", 8),
    ("attacker enables key", 6),
    ("audit disk full", 3),
    ("sigkill restart", 3),
];

impl Chaos {
    /// Pick one event and do it (one that cannot happen now is counted under "skipped").
    pub fn inject(&mut self) -> anyhow::Result<()> {
        // While latched a trip only says `latched: true`: trips are rarer then, so the armed
        // spells (where a wrong Disconnect would show) are long and see noise and the attacker.
        let latched = self.latched_for().is_some();
        let weight = |name: &str, weight: u32| match name {
            _ if latched && name.starts_with("trip ") => weight.div_ceil(4),
            _ => weight,
        };
        let total: u32 = EVENTS.iter().map(|(n, w)| weight(n, *w)).sum();
        let mut roll = self.rng.u32(0..total);
        let mut chosen = EVENTS[0].0;
        for (name, w) in EVENTS {
            let w = weight(name, w);
            if roll < w {
                chosen = name;
                break;
            }
            roll -= w;
        }
        let done = self.act(chosen)?;
        *self
            .events
            .entry(if done {
                chosen
            } else {
                "skipped (not possible now)"
            })
            .or_default() += 1;
        Ok(())
    }

    fn act(&mut self, event: &str) -> anyhow::Result<bool> {
        // No trigger while a rearm runs: a trigger it clears the latch of would be lost by
        // design, not by the daemon.
        if event.starts_with("trip ") && self.running("rearm") {
            return Ok(false);
        }
        match event {
            "trip file" => self.trip_file(),
            "trip signal" => Ok(self.trip_signal()),
            "trip alarm" => self.trip_alarm(),
            "trip queue" => self.send_finding(8, true),
            "trip cli" => self.trip_cli(),
            "queue noise" => self.send_finding(3, false),
            "rearm" => self.rearm(),
            "reload good" => self.reload(true),
            "reload bad" => self.reload(false),
            "sigkill restart" => self.kill_restart(),
            "audit disk full" => self.disk_full(),
            other => Ok(self.trouble(other)),
        }
    }

    fn trip_file(&mut self) -> anyhow::Result<bool> {
        self.triggering("trip file");
        std::fs::write(self.paths.flag(), "chaos\n").context("creating the flag")?;
        Ok(true)
    }

    fn trip_signal(&mut self) -> bool {
        self.triggering("trip signal");
        self.daemon.signal(Signal::USR1)
    }

    fn trip_alarm(&mut self) -> anyhow::Result<bool> {
        self.triggering("trip alarm");
        self.sim
            .set_alarm_state(ACCOUNT, REGION, ALARM, "ALARM", "chaos: red button")
            .context("setting the alarm")?;
        Ok(true)
    }

    /// A GuardDuty finding on the queue: severity ≥ 7 fires, below is ignored (noise).
    fn send_finding(&mut self, severity: u32, fires: bool) -> anyhow::Result<bool> {
        if fires {
            self.triggering("trip queue");
        }
        self.queue_sequence += 1;
        let body = world::finding(self.queue_sequence, severity);
        self.sim
            .send_message(ACCOUNT, REGION, QUEUE, &body)
            .context("sending to the queue")?;
        Ok(true)
    }

    /// `trip` from a shell; not while a bad policy is on disk (it would refuse to start).
    fn trip_cli(&mut self) -> anyhow::Result<bool> {
        if self.running("trip") || self.restore_policy_at.is_some() {
            return Ok(false);
        }
        self.triggering("trip cli");
        let trip = self
            .daemon
            .spawn_cli(&self.paths, "trip", &["trip", "--reason", "chaos"])?;
        self.running.push(trip);
        Ok(true)
    }

    /// Clear every trigger (flag, alarm) and run `rearm`, when latched and nothing that would
    /// fire again is still on its way (a queued trip message, a `trip` running).
    fn rearm(&mut self) -> anyhow::Result<bool> {
        let queued = self
            .sim
            .queue_messages(ACCOUNT, REGION, QUEUE)
            .map(|m| !m.is_empty())
            .unwrap_or(true);
        let long_enough = self.latched_for().is_some_and(|d| d >= MIN_LATCHED);
        let busy =
            self.running("trip") || self.running("rearm") || self.restore_policy_at.is_some();
        if !long_enough || queued || busy {
            return Ok(false);
        }
        let _ = std::fs::remove_file(self.paths.flag());
        self.sim
            .set_alarm_state(ACCOUNT, REGION, ALARM, "OK", "chaos: all clear")
            .context("clearing the alarm")?;
        let rearm = self
            .daemon
            .spawn_cli(&self.paths, "rearm", &["rearm", "--reason", "chaos"])?;
        self.running.push(rearm);
        Ok(true)
    }

    /// SIGHUP with a good policy (a new rate_limit), or a bad one put back a second later.
    fn reload(&mut self, good: bool) -> anyhow::Result<bool> {
        if self.restore_policy_at.is_some() {
            return Ok(false);
        }
        let text = if good {
            self.policy_variant += 1;
            self.good_policy()
        } else {
            self.restore_policy_at = Some(Instant::now() + Duration::from_secs(1));
            world::bad_policy(&self.good_policy(), self.rng.u32(..))
        };
        write_policy(&self.paths.policy(), &text)?;
        Ok(self.daemon.signal(Signal::HUP))
    }

    /// AWS trouble and the attacker.
    fn trouble(&mut self, event: &str) -> bool {
        let seconds =
            |rng: &mut fastrand::Rng, max: u64| Duration::from_millis(rng.u64(2_000..=max * 1000));
        let window = match event {
            "aws outage" => Some((Misbehaviour::Outage, seconds(&mut self.rng, 30))),
            "aws 500s" => Some((
                Misbehaviour::InternalErrors(self.rng.f64() * 0.5 + 0.3),
                seconds(&mut self.rng, 15),
            )),
            "throttling storm" => Some((
                Misbehaviour::ThrottlingStorm(self.rng.f64() * 0.45 + 0.5),
                seconds(&mut self.rng, 15),
            )),
            "consistency lag" => Some((
                Misbehaviour::ConsistencyLag(self.rng.u64(500..=3000)),
                seconds(&mut self.rng, 20),
            )),
            _ => None,
        };
        if let Some((misbehaviour, length)) = window {
            return self.faults.open(&self.sim, misbehaviour, length);
        }
        match event {
            "sessions expire" => {
                self.sim.forget_sessions();
                true
            }
            "attacker reconnects" => {
                let (account, id) = STORES[self.rng.usize(..STORES.len())];
                self.sim
                    .set_connection_state(account, REGION, id, "CONNECTED")
                    .is_ok()
            }
            "attacker enables key" => {
                let (account, id) = KEYS[self.rng.usize(..KEYS.len())];
                self.sim
                    .set_key_state(account, REGION, id, "Enabled")
                    .is_ok()
            }
            _ => false,
        }
    }

    /// The audit directory's disk is full for 2–15 s.
    fn disk_full(&mut self) -> anyhow::Result<bool> {
        if self.disk_full_until.is_some() {
            return Ok(false);
        }
        std::fs::write(self.paths.disk_full_flag(), "").context("filling the disk")?;
        self.disk_full_until =
            Some(Instant::now() + Duration::from_millis(self.rng.u64(2_000..=15_000)));
        self.disk_full_spell_us = Some((now_us(), None));
        Ok(true)
    }

    /// SIGKILL the daemon and start it again (a kill on the full disk excuses the records it held:
    /// [`Chaos::ended_on_full_disk`]). A signal sent just before may die with the process: it no longer has to give a latch.
    fn kill_restart(&mut self) -> anyhow::Result<bool> {
        if self.restore_policy_at.is_some() {
            self.restore_policy()?;
        }
        self.exited_unasked();
        self.daemon.kill();
        let killed_us = now_us();
        self.kills_us.push(killed_us);
        self.pending_triggers
            .retain(|(what, _)| *what != "trip signal");
        self.ended_on_full_disk(killed_us);
        self.daemon.start(&self.paths)?;
        Ok(true)
    }
}
