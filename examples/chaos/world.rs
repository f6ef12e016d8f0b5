//! The chaos run's simulated AWS and the policy the daemon runs on: what is covered (six custom
//! key stores in two accounts, one through AssumeRole with short sessions; two standard keys),
//! and every trigger kind (file, signal, one alarm, one queue with a `match:`). Owns only text
//! and names; it must not start anything.

use std::path::Path;

pub const ACCOUNT: &str = "111111111111";
pub const ROLE_ACCOUNT: &str = "222222222222";
pub const REGION: &str = "eu-west-1";
pub const ROLE: &str = "arn:aws:iam::222222222222:role/kms-killswitch";
pub const ACCESS_KEY_ID: &str = "AKIDKMSSIMCHAOS";
pub const SECRET_ACCESS_KEY: &str = "kms-sim-chaos-secret";
pub const ALARM: &str = "chaos-red-button";
pub const QUEUE: &str = "chaos-host";

/// Every covered custom key store: (account, id).
pub const STORES: [(&str, &str); 6] = [
    (ACCOUNT, "cks-c1a00000000000001"),
    (ACCOUNT, "cks-c1a00000000000002"),
    (ACCOUNT, "cks-c1a00000000000003"),
    (ACCOUNT, "cks-c1a00000000000004"),
    (ROLE_ACCOUNT, "cks-c2a00000000000001"),
    (ROLE_ACCOUNT, "cks-c2a00000000000002"),
];

/// Every covered standard key: (account, key id). The policy names the first by id, the second
/// by its alias.
pub const KEYS: [(&str, &str); 2] = [
    (ACCOUNT, "c1a00000-0000-4000-8000-0000000000a1"),
    (ACCOUNT, "c1a00000-0000-4000-8000-0000000000a2"),
];
pub const KEY_ALIAS: &str = "alias/chaos-payments";

/// `enforce_interval` of the policy: the invariant's clock is this plus one round.
pub const ENFORCE_INTERVAL_S: u64 = 3;
/// `verify_timeout` of the policy.
pub const VERIFY_TIMEOUT_S: u64 = 10;
/// DISCONNECTING (and CONNECTING) lasts this long in the simulator.
pub const TRANSITION_DELAY_MS: u64 = 300;

/// The world: sessions of the assumed role last 120 s, so a long run sees them expire for real
/// (the daemon must assume the role again), besides the harness forgetting them early.
pub fn world_yaml() -> String {
    let mut yaml = format!(
        "settings:\n  rate_limit_rps: 5\n  transition_delay_ms: {TRANSITION_DELAY_MS}\n  \
         consistency_lag_ms: 0\n  session_duration_seconds: 120\n\
         credentials:\n  - access_key_id: {ACCESS_KEY_ID}\n    secret_access_key: {SECRET_ACCESS_KEY}\n    \
         account: \"{ACCOUNT}\"\n    user_name: kms-killswitch-chaos\n\
         roles:\n  - arn: {ROLE}\n    assumable_by: [{ACCESS_KEY_ID}]\n\
         accounts:\n"
    );
    for account in [ACCOUNT, ROLE_ACCOUNT] {
        yaml.push_str(&format!(
            "  \"{account}\":\n    {REGION}:\n      key_stores:\n"
        ));
        for (n, (_, id)) in STORES.iter().filter(|(a, _)| *a == account).enumerate() {
            let kind = if n % 2 == 0 {
                "AWS_CLOUDHSM"
            } else {
                "EXTERNAL_KEY_STORE"
            };
            yaml.push_str(&format!(
                "        - {{ id: {id}, name: store-{id}, type: {kind} }}\n"
            ));
        }
        if account == ACCOUNT {
            yaml.push_str(&account_extras());
        }
    }
    yaml
}

fn account_extras() -> String {
    format!(
        "      keys:\n        - {{ id: {} }}\n        - {{ id: {}, aliases: [{KEY_ALIAS}] }}\n      \
         alarms:\n        - name: {ALARM}\n          type: metric\n          state: OK\n          \
         namespace: Chaos\n          metric_name: RedButton\n          threshold: 1\n      \
         queues:\n        - name: {QUEUE}\n          visibility_timeout_seconds: 5\n",
        KEYS[0].1, KEYS[1].1
    )
}

/// The policy. `variant` changes only `rate_limit` (a good reload that means something);
/// `queue_url` is the simulator's URL of [`QUEUE`].
pub fn policy(endpoint_url: &str, queue_url: &str, dir: &Path, variant: u32) -> String {
    let dir = dir.display();
    let mut yaml = format!(
        "# chaos policy, variant {variant}\nversion: 1\naws:\n  region: {REGION}\n  \
         endpoint_url: \"{endpoint_url}\"\nkey_stores:\n"
    );
    for (account, id) in STORES {
        yaml.push_str(&format!("  - id: {id}\n"));
        if account == ROLE_ACCOUNT {
            yaml.push_str(&format!("    role_arn: {ROLE}\n"));
        }
    }
    yaml.push_str(&format!(
        "keys:\n  - id: {}\n  - alias: {KEY_ALIAS}\n\
         triggers:\n  file:\n    path: \"{dir}/flags/kms-killswitch\"\n  signal: SIGUSR1\n  \
         alarms:\n    - name: {ALARM}\n      consecutive: 1\n  alarm_poll_interval: 1s\n  \
         queues:\n    - url: \"{queue_url}\"\n      match:\n        - source: aws.guardduty\n          \
         min_severity: 7\n\
         lockdown:\n  verify_timeout: {VERIFY_TIMEOUT_S}s\n  enforce_interval: {ENFORCE_INTERVAL_S}s\n  \
         rate_limit: {}\n\
         state_file: \"{dir}/state/latch.json\"\naudit_log: \"{dir}/audit/audit.jsonl\"\n",
        KEYS[0].1,
        4 + variant % 2,
    ));
    yaml
}

/// Policies a reload must refuse (the daemon keeps the one it has): a YAML error, an unknown
/// key, a store id of the wrong shape.
pub fn bad_policy(good: &str, which: u32) -> String {
    match which % 3 {
        0 => format!("{good}\nkey_stores: [unclosed\n"),
        1 => good.replacen("version: 1", "version: 1\nfrobnicate: true", 1),
        _ => good.replacen("  - id: cks-c1a00000000000001", "  - id: not-a-store-id", 1),
    }
}

/// A GuardDuty finding as EventBridge delivers it: fires when `severity` ≥ 7, ignored below.
pub fn finding(id: u64, severity: u32) -> String {
    format!(
        "{{\"version\":\"0\",\"id\":\"chaos-{id}\",\"detail-type\":\"GuardDuty Finding\",\
         \"source\":\"aws.guardduty\",\"account\":\"{ACCOUNT}\",\"region\":\"{REGION}\",\
         \"detail\":{{\"severity\":{severity},\"type\":\"chaos\"}}}}"
    )
}
