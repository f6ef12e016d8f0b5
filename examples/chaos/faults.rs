//! AWS misbehaving, as windows of time: outages (every connection dropped), 500s, throttling
//! storms and eventual-consistency lag, composed into the simulator's fault rules whenever one
//! opens or closes. Also answers the invariant's questions "has AWS been reachable, and
//! consistent, since when?" and "how many attempts does one success take since then?". Owns only
//! the simulator's fault rules; it must not touch the daemon.

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

/// The windows open now, when AWS last became reachable and consistent, and the error storms
/// seen (which do not stop the invariant's clock but stretch its bound).
pub struct FaultWindows {
    open: Vec<Window>,
    /// When the last outage or lag window closed (or the run started): the clock starts here.
    calm_since: Instant,
    /// Every 500 or throttling storm: (opened, closes, how many attempts one success takes).
    storms: Vec<(Instant, Instant, f64)>,
}

impl Misbehaviour {
    /// An outage or a lag hides the truth from the daemon: the clock waits for them to end.
    fn blinds(self) -> bool {
        matches!(self, Misbehaviour::Outage | Misbehaviour::ConsistencyLag(_))
    }
}

impl FaultWindows {
    pub fn new(sim: &SimHandle) -> FaultWindows {
        let windows = FaultWindows {
            open: Vec::new(),
            calm_since: Instant::now(),
            storms: Vec::new(),
        };
        sim.set_faults(windows.rules());
        windows
    }

    /// Open a window for `length` from now; false (nothing opened) for an outage while one is
    /// open, so AWS is never unreachable for longer than one outage's 30 s.
    pub fn open(&mut self, sim: &SimHandle, misbehaviour: Misbehaviour, length: Duration) -> bool {
        if misbehaviour == Misbehaviour::Outage && self.is_outage() {
            return false;
        }
        let now = Instant::now();
        if let Misbehaviour::InternalErrors(rate) | Misbehaviour::ThrottlingStorm(rate) =
            misbehaviour
        {
            self.storms
                .push((now, now + length, 1.0 / (1.0 - rate.min(0.99))));
        }
        self.open.push(Window {
            misbehaviour,
            until: now + length,
        });
        sim.set_faults(self.rules());
        true
    }

    /// How much the error storms overlapping `since..now` stretch the bound: each multiplies the
    /// attempts one success takes (1 when none).
    pub fn stretch(&self, since: Instant) -> f64 {
        self.storms
            .iter()
            .filter(|(opened, closes, _)| *closes >= since && *opened <= Instant::now())
            .map(|(_, _, factor)| *factor)
            .product()
    }

    /// Close the windows whose time is up; true when the rules changed.
    pub fn expire(&mut self, sim: &SimHandle) -> bool {
        let now = Instant::now();
        let before = self.open.len();
        let blinded = self.open.iter().any(|w| w.misbehaviour.blinds());
        self.open.retain(|w| w.until > now);
        if self.open.len() == before {
            return false;
        }
        if blinded && !self.open.iter().any(|w| w.misbehaviour.blinds()) {
            self.calm_since = now;
        }
        sim.set_faults(self.rules());
        true
    }

    /// Close every window now (the end of the run).
    pub fn close_all(&mut self, sim: &SimHandle) {
        if self.open.iter().any(|w| w.misbehaviour.blinds()) {
            self.calm_since = Instant::now();
        }
        self.open.clear();
        sim.set_faults(self.rules());
    }

    /// `None` while an outage or lag window is open; otherwise when the last one closed.
    pub fn calm_since(&self) -> Option<Instant> {
        if self.open.iter().any(|w| w.misbehaviour.blinds()) {
            None
        } else {
            Some(self.calm_since)
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
