//! AWS misbehaving, as windows of time: outages (every connection dropped), 500s, throttling
//! storms and eventual-consistency lag, composed into the simulator's fault rules whenever one
//! opens or closes. Also answers the invariant's question "has AWS been reachable, and
//! consistent, since when?". Owns only the simulator's fault rules; it must not touch the daemon.

use std::time::{Duration, Instant};

use kms_sim::{FaultRule, Faults, SimHandle};

use crate::world::TRANSITION_DELAY_MS;

/// One kind of AWS misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Misbehaviour {
    /// Every request's connection is closed without an answer.
    Outage,
    /// This share of requests answers 500 (KMSInternalException, InternalFailure).
    InternalErrors(f64),
    /// This share of requests answers 400 ThrottlingException.
    ThrottlingStorm(f64),
    /// DescribeCustomKeyStores shows stores as they were this many ms ago.
    ConsistencyLag(u64),
}

#[derive(Debug)]
struct Window {
    misbehaviour: Misbehaviour,
    until: Instant,
}

/// The windows open now, and when AWS last became fully reachable and consistent.
pub struct FaultWindows {
    open: Vec<Window>,
    /// When the last window closed (or the run started): the invariant's clock starts here.
    calm_since: Instant,
}

impl FaultWindows {
    pub fn new(sim: &SimHandle) -> FaultWindows {
        let windows = FaultWindows {
            open: Vec::new(),
            calm_since: Instant::now(),
        };
        sim.set_faults(windows.rules());
        windows
    }

    /// Open a window for `length` from now.
    pub fn open(&mut self, sim: &SimHandle, misbehaviour: Misbehaviour, length: Duration) {
        self.open.push(Window {
            misbehaviour,
            until: Instant::now() + length,
        });
        sim.set_faults(self.rules());
    }

    /// Close the windows whose time is up; true when the rules changed.
    pub fn expire(&mut self, sim: &SimHandle) -> bool {
        let now = Instant::now();
        let before = self.open.len();
        self.open.retain(|w| w.until > now);
        if self.open.len() == before {
            return false;
        }
        if self.open.is_empty() {
            self.calm_since = now;
        }
        sim.set_faults(self.rules());
        true
    }

    /// Close every window now (the end of the run).
    pub fn close_all(&mut self, sim: &SimHandle) {
        if !self.open.is_empty() {
            self.open.clear();
            self.calm_since = Instant::now();
        }
        sim.set_faults(self.rules());
    }

    /// `None` while any window is open; otherwise when the last one closed.
    pub fn calm_since(&self) -> Option<Instant> {
        if self.open.is_empty() {
            Some(self.calm_since)
        } else {
            None
        }
    }

    pub fn is_outage(&self) -> bool {
        self.open
            .iter()
            .any(|w| w.misbehaviour == Misbehaviour::Outage)
    }

    fn rules(&self) -> Faults {
        let mut rules = vec![FaultRule {
            transition_delay_ms: Some(TRANSITION_DELAY_MS),
            ..FaultRule::default()
        }];
        for window in &self.open {
            rules.push(rule(window.misbehaviour));
        }
        Faults { rules }
    }
}

fn rule(misbehaviour: Misbehaviour) -> FaultRule {
    match misbehaviour {
        Misbehaviour::Outage => FaultRule {
            drop_connection_rate: 1.0,
            ..FaultRule::default()
        },
        Misbehaviour::InternalErrors(rate) => FaultRule {
            internal_error_rate: rate,
            ..FaultRule::default()
        },
        Misbehaviour::ThrottlingStorm(rate) => FaultRule {
            throttle_rate: rate,
            ..FaultRule::default()
        },
        Misbehaviour::ConsistencyLag(ms) => FaultRule {
            consistency_lag_ms: Some(ms),
            ..FaultRule::default()
        },
    }
}
