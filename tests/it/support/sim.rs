//! Support for the lockdown tests (`trip`, `status`, `check --online`): kms-sim with the demo
//! world (2 accounts, the second through AssumeRole, × 2 regions), a tempdir holding a policy
//! (0600) that lists every demo store — by id and by name — and the real binary run against it.

use std::path::PathBuf;
use std::process::{Command, Output};

use kms_sim::{FaultRule, Faults, SimHandle, World};

pub const ACCOUNT: &str = "111111111111";
pub const OTHER_ACCOUNT: &str = "222222222222";
pub const ROLE: &str = "arn:aws:iam::222222222222:role/kms-killswitch";
pub const REGIONS: [&str; 2] = ["eu-west-1", "us-east-1"];

/// Every store of the demo world: (account, region, id, name).
pub const DEMO_STORES: [(&str, &str, &str, &str); 8] = [
    (
        ACCOUNT,
        "eu-west-1",
        "cks-1e1c0000000000001",
        "payments-hsm",
    ),
    (
        ACCOUNT,
        "eu-west-1",
        "cks-1e1e0000000000001",
        "payments-xks",
    ),
    (
        ACCOUNT,
        "us-east-1",
        "cks-1a1c0000000000001",
        "payments-hsm",
    ),
    (
        ACCOUNT,
        "us-east-1",
        "cks-1a1e0000000000001",
        "payments-xks",
    ),
    (
        OTHER_ACCOUNT,
        "eu-west-1",
        "cks-2e1c0000000000001",
        "ledger-hsm",
    ),
    (
        OTHER_ACCOUNT,
        "eu-west-1",
        "cks-2e1e0000000000001",
        "ledger-xks",
    ),
    (
        OTHER_ACCOUNT,
        "us-east-1",
        "cks-2a1c0000000000001",
        "ledger-hsm",
    ),
    (
        OTHER_ACCOUNT,
        "us-east-1",
        "cks-2a1e0000000000001",
        "ledger-xks",
    ),
];
pub const ALARMS: [&str; 2] = ["kms-killswitch-hsm-anomaly", "kms-killswitch-red-button"];

/// A simulator and a directory with the policy, state and audit log.
pub struct SimEnv {
    pub dir: tempfile::TempDir,
    pub sim: SimHandle,
}

impl SimEnv {
    /// The demo world with 200 ms transitions and a policy listing all eight stores: in each
    /// account-region the CloudHSM store by id and the external one by name.
    pub fn demo() -> SimEnv {
        let env = SimEnv {
            sim: kms_sim::spawn(World::demo()).expect("kms-sim starts"),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        env.set_faults(vec![FaultRule {
            transition_delay_ms: Some(200),
            ..FaultRule::default()
        }]);
        env.write_policy(
            &env.key_stores_yaml(&DEMO_STORES),
            &Self::alarms_yaml(&ALARMS),
        );
        env
    }

    /// Replace the sim's fault rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.sim.set_faults(Faults { rules });
    }

    /// `key_stores:` entries: CloudHSM stores by id, the others by name; the second account
    /// through its role.
    pub fn key_stores_yaml(&self, stores: &[(&str, &str, &str, &str)]) -> String {
        let mut yaml = String::new();
        for (account, region, id, name) in stores {
            if !name.ends_with("-xks") {
                yaml.push_str(&format!("  - id: {id}\n"));
            } else {
                yaml.push_str(&format!("  - name: {name}\n"));
            }
            yaml.push_str(&format!("    region: {region}\n"));
            if *account == OTHER_ACCOUNT {
                yaml.push_str(&format!("    role_arn: {ROLE}\n"));
            }
        }
        yaml
    }

    pub fn alarms_yaml(alarms: &[&str]) -> String {
        let mut yaml = String::from("  alarms:\n");
        for alarm in alarms {
            yaml.push_str(&format!("    - name: {alarm}\n"));
        }
        yaml
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/latch.json")
    }
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit/audit.jsonl")
    }

    /// Write the policy (0600) with these `key_stores:` and `triggers.alarms:` lines.
    pub fn write_policy(&self, key_stores: &str, alarms: &str) {
        let dir = self.dir.path().display();
        let url = self.sim.endpoint_url();
        let text = format!(
            "version: 1\n\
             aws:\n  region: eu-west-1\n  endpoint_url: \"{url}\"\n\
             key_stores:\n{key_stores}\
             triggers:\n  file:\n    path: \"{dir}/kms-killswitch\"\n  signal: none\n{alarms}\
             lockdown:\n  verify_timeout: 30s\n  enforce_interval: 30s\n  rate_limit: 5\n\
             state_file: \"{dir}/state/latch.json\"\n\
             audit_log: \"{dir}/audit/audit.jsonl\"\n"
        );
        let path = self.policy_path();
        super::write_policy_file(&path, &text);
    }

    /// A hermetic command for the binary with this policy and the demo world's base credentials
    /// (from the environment, like an operator's shell).
    pub fn command(&self) -> Command {
        super::command_with_policy(&self.policy_path(), "eu-west-1")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("the binary runs")
    }

    /// The simulator's own, true view of a store's state.
    pub fn state(&self, account: &str, region: &str, id: &str) -> String {
        self.sim
            .connection_state(account, region, id)
            .unwrap_or_else(|| format!("{id} missing"))
    }

    /// The audit log's records.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.audit_log()).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// Requests the simulator saw for one operation.
    pub fn requests(&self, operation: &str) -> Vec<kms_sim::RequestRecord> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.operation == operation)
            .collect()
    }
}

/// Stdout and stderr of a run, for assertion messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
