//! What can happen in a chaos run, one event at a time, chosen by weight from the run's seeded
//! generator: triggers, reloads, AWS windows, expiring sessions, the attacker, rearms, a full
//! audit disk, SIGKILL and restart. Owns the choice and the act; it must not check invariants
//! (only tell the bookkeeping what it did: a trigger injected, a kill while the disk was full).

use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::process::Signal;

use crate::daemon::spawn_cli;
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
        let total: u32 = EVENTS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.u32(0..total);
        let mut chosen = EVENTS[0].0;
        for (name, weight) in EVENTS {
            if roll < weight {
                chosen = name;
                break;
            }
            roll -= weight;
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
        self.triggering();
        std::fs::write(self.paths.flag(), "chaos\n").context("creating the flag")?;
        Ok(true)
    }

    fn trip_signal(&mut self) -> bool {
        self.triggering();
        self.daemon.signal(Signal::USR1)
    }

    fn trip_alarm(&mut self) -> anyhow::Result<bool> {
        self.triggering();
        self.sim
            .set_alarm_state(ACCOUNT, REGION, ALARM, "ALARM", "chaos: red button")
            .context("setting the alarm")?;
        Ok(true)
    }

    /// A GuardDuty finding on the queue: severity ≥ 7 fires, below is ignored (noise).
    fn send_finding(&mut self, severity: u32, fires: bool) -> anyhow::Result<bool> {
        if fires {
            self.triggering();
        }
        self.queue_sequence += 1;
        let body = world::finding(self.queue_sequence, severity);
        self.sim
            .send_message(ACCOUNT, REGION, QUEUE, &body)
            .context("sending to the queue")?;
        Ok(true)
    }

    fn trip_cli(&mut self) -> anyhow::Result<bool> {
        if self.running("trip") {
            return Ok(false);
        }
        self.triggering();
        let binary = self.daemon.binary().to_owned();
        let trip = spawn_cli(&binary, &self.paths, "trip", &["trip", "--reason", "chaos"])?;
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
        if !long_enough || queued || self.running("trip") || self.running("rearm") {
            return Ok(false);
        }
        let _ = std::fs::remove_file(self.paths.flag());
        self.sim
            .set_alarm_state(ACCOUNT, REGION, ALARM, "OK", "chaos: all clear")
            .context("clearing the alarm")?;
        let binary = self.daemon.binary().to_owned();
        let rearm = spawn_cli(
            &binary,
            &self.paths,
            "rearm",
            &["rearm", "--reason", "chaos"],
        )?;
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
            self.faults.open(&self.sim, misbehaviour, length);
            return true;
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
        self.disk_full_began_us = Some(now_us());
        Ok(true)
    }

    /// SIGKILL the daemon and start it again. A kill while the audit disk is full (or within
    /// 5 s of it freeing, before the writer's retry lands) may lose records still held in memory:
    /// that span is excused, and counted.
    fn kill_restart(&mut self) -> anyhow::Result<bool> {
        if self.restore_policy_at.is_some() {
            self.restore_policy()?;
        }
        self.daemon.kill();
        let killed_us = now_us();
        if let Some(began) = self.disk_full_began_us {
            let freed_recently = self.disk_full_until.is_some() || killed_us < began + 20_000_000;
            if freed_recently {
                self.excused
                    .push((began.saturating_sub(1_000_000), killed_us));
            }
        }
        self.daemon.start(&self.paths)?;
        Ok(true)
    }
}
