//! The official AWS CLI (from PyPI, in a venv under target/awscli-venv that this test creates)
//! against the simulator with --endpoint-url: KMS, CloudWatch (awsJson1_0) and STS calls succeed
//! and see the same world the SDK and the handle see. If the CLI cannot be installed, this test
//! fails: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/awscli-venv")
}

/// The venv's own `aws`, installing it first when needed.
fn aws_cli() -> PathBuf {
    let venv = venv_dir();
    let aws = venv.join("bin/aws");
    if aws.exists() {
        return aws;
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 must be installed to create the AWS CLI venv");
    assert!(
        status.success(),
        "python3 -m venv {} failed: {status:?}",
        venv.display()
    );
    let out = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "awscli",
        ])
        .output()
        .expect("the venv's pip runs");
    assert!(
        out.status.success() && aws.exists(),
        "pip install awscli failed, so the AWS CLI test cannot run:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    aws
}

struct Cli {
    aws: PathBuf,
    endpoint: String,
    home: PathBuf,
}

impl Cli {
    /// Run `aws ARGS --endpoint-url … --region … --output json` with env credentials only.
    fn run(&self, region: &str, creds: (&str, &str, Option<&str>), args: &[&str]) -> Value {
        let mut cmd = Command::new(&self.aws);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", &self.home)
            .env("AWS_CONFIG_FILE", self.home.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .env("AWS_ACCESS_KEY_ID", creds.0)
            .env("AWS_SECRET_ACCESS_KEY", creds.1);
        if let Some(token) = creds.2 {
            cmd.env("AWS_SESSION_TOKEN", token);
        }
        cmd.args(args).args([
            "--endpoint-url",
            &self.endpoint,
            "--region",
            region,
            "--output",
            "json",
        ]);
        let out = cmd.output().expect("the aws CLI runs");
        assert!(
            out.status.success(),
            "aws {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("aws printed non-JSON ({e}): {stdout}"))
        }
    }
}

/// `aws sqs`, `aws sns` and `aws cloudwatch put-metric-data` against the simulator: a fan-out
/// set up, used and torn down with the official CLI only, checked through the handle.
#[test]
fn official_aws_cli_drives_sqs_sns_and_put_metric_data() {
    let aws = aws_cli();
    let sim = start(quiet_world());
    let home = std::env::temp_dir().join(format!("kms-sim-awscli-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let cli = Cli {
        aws,
        endpoint: sim.endpoint_url(),
        home: home.clone(),
    };
    let base = (ACCESS_KEY_ID, SECRET, None);

    let created = cli.run(
        REGION,
        base,
        &["sqs", "create-queue", "--queue-name", "cli-host"],
    );
    let url = created["QueueUrl"].as_str().unwrap().to_owned();
    assert_eq!(url, sim.queue_url(ACCOUNT, "cli-host"));
    let sent = cli.run(
        REGION,
        base,
        &[
            "sqs",
            "send-message",
            "--queue-url",
            &url,
            "--message-body",
            "hello",
        ],
    );
    assert!(sent["MessageId"].as_str().is_some());
    assert_eq!(sent["MD5OfMessageBody"], "5d41402abc4b2a76b9719d911017c592");
    let received = cli.run(
        REGION,
        base,
        &[
            "sqs",
            "receive-message",
            "--queue-url",
            &url,
            "--wait-time-seconds",
            "2",
            "--attribute-names",
            "All",
        ],
    );
    let message = &received["Messages"][0];
    assert_eq!(message["Body"], "hello");
    assert_eq!(message["Attributes"]["ApproximateReceiveCount"], "1");
    let handle = message["ReceiptHandle"].as_str().unwrap();
    cli.run(
        REGION,
        base,
        &[
            "sqs",
            "delete-message",
            "--queue-url",
            &url,
            "--receipt-handle",
            handle,
        ],
    );
    assert!(
        sim.queue_messages(ACCOUNT, REGION, "cli-host")
            .unwrap()
            .is_empty()
    );

    let topic = cli.run(
        REGION,
        base,
        &["sns", "create-topic", "--name", "cli-fleet"],
    );
    let topic_arn = topic["TopicArn"].as_str().unwrap().to_owned();
    cli.run(
        REGION,
        base,
        &[
            "sns",
            "subscribe",
            "--topic-arn",
            &topic_arn,
            "--protocol",
            "sqs",
            "--notification-endpoint",
            "arn:aws:sqs:eu-west-1:111111111111:cli-host",
        ],
    );
    let published = cli.run(
        REGION,
        base,
        &[
            "sns",
            "publish",
            "--topic-arn",
            &topic_arn,
            "--subject",
            "red button",
            "--message",
            "{\"action\":\"trip\"}",
        ],
    );
    let message_id = published["MessageId"].as_str().unwrap();
    let held = sim.queue_messages(ACCOUNT, REGION, "cli-host").unwrap();
    let envelope: Value = serde_json::from_str(&held[0].body).unwrap();
    assert_eq!(envelope["MessageId"], message_id);
    assert_eq!(envelope["Subject"], "red button");

    cli.run(
        REGION,
        base,
        &[
            "cloudwatch",
            "put-metric-data",
            "--namespace",
            "KmsKillswitch",
            "--metric-name",
            "Heartbeat",
            "--value",
            "1",
            "--unit",
            "Count",
            "--dimensions",
            "Host=cli-host",
        ],
    );
    let data = sim.metric_data();
    assert_eq!(data.len(), 1);
    assert_eq!(
        data[0].dimensions,
        [("Host".to_owned(), "cli-host".to_owned())]
    );
    assert_eq!(data[0].value, Some(1.0));

    let log = sim.requests();
    let spoken: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.service.as_str(), r.protocol.as_str()))
        .collect();
    eprintln!("the AWS CLI spoke {spoken:?}");
    for op in [
        "SendMessage",
        "ReceiveMessage",
        "DeleteMessage",
        "Publish",
        "PutMetricData",
    ] {
        assert!(
            log.iter().any(|r| r.operation == op && r.status == 200),
            "{op} missing from {log:?}"
        );
    }
    std::fs::remove_dir_all(&home).ok();
}

#[test]
fn official_aws_cli_sees_and_changes_the_same_world() {
    let aws = aws_cli();
    let sim = start(quiet_world());
    let home = std::env::temp_dir().join(format!("kms-sim-awscli-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let cli = Cli {
        aws,
        endpoint: sim.endpoint_url(),
        home: home.clone(),
    };
    let base = (ACCESS_KEY_ID, SECRET, None);

    let listed = cli.run(REGION, base, &["kms", "describe-custom-key-stores"]);
    let ids: Vec<&str> = listed["CustomKeyStores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["CustomKeyStoreId"].as_str())
        .collect();
    assert_eq!(ids, [HSM_EU, XKS_EU]);
    assert_eq!(listed["CustomKeyStores"][0]["ConnectionState"], "CONNECTED");

    cli.run(
        REGION,
        base,
        &[
            "kms",
            "disconnect-custom-key-store",
            "--custom-key-store-id",
            HSM_EU,
        ],
    );
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("DISCONNECTED")
    );
    let one = cli.run(
        REGION,
        base,
        &[
            "kms",
            "describe-custom-key-stores",
            "--custom-key-store-id",
            HSM_EU,
        ],
    );
    assert_eq!(one["CustomKeyStores"][0]["ConnectionState"], "DISCONNECTED");

    let alarms = cli.run(
        REGION,
        base,
        &[
            "cloudwatch",
            "describe-alarms",
            "--alarm-types",
            "MetricAlarm",
            "CompositeAlarm",
        ],
    );
    assert_eq!(alarms["MetricAlarms"][0]["AlarmName"], METRIC_ALARM);
    assert_eq!(alarms["CompositeAlarms"][0]["AlarmName"], COMPOSITE_ALARM);
    assert_eq!(alarms["CompositeAlarms"][0]["StateValue"], "OK");

    cli.run(
        REGION,
        base,
        &[
            "cloudwatch",
            "set-alarm-state",
            "--alarm-name",
            COMPOSITE_ALARM,
            "--state-value",
            "ALARM",
            "--state-reason",
            "fleet-wide red button",
        ],
    );
    let composite = sim
        .alarms(ACCOUNT, REGION)
        .into_iter()
        .find(|a| a.alarm_name == COMPOSITE_ALARM)
        .unwrap();
    assert_eq!(
        (
            composite.state_value.as_str(),
            composite.state_reason.as_str()
        ),
        ("ALARM", "fleet-wide red button")
    );

    let assumed = cli.run(
        REGION,
        base,
        &[
            "sts",
            "assume-role",
            "--role-arn",
            ROLE_ARN,
            "--role-session-name",
            "cli-test",
        ],
    );
    let creds = &assumed["Credentials"];
    let key = creds["AccessKeyId"].as_str().unwrap();
    let secret = creds["SecretAccessKey"].as_str().unwrap();
    let token = creds["SessionToken"].as_str().unwrap();
    assert!(creds["Expiration"].as_str().is_some());
    let other = cli.run(
        REGION,
        (key, secret, Some(token)),
        &["kms", "describe-custom-key-stores"],
    );
    assert_eq!(
        other["CustomKeyStores"][0]["CustomKeyStoreId"],
        "cks-2e1c0000000000001"
    );

    // The CLI spoke awsJson1_0 to CloudWatch and every call went through the simulator's log.
    let log = sim.requests();
    for op in [
        "DescribeCustomKeyStores",
        "DisconnectCustomKeyStore",
        "DescribeAlarms",
        "SetAlarmState",
        "AssumeRole",
    ] {
        assert!(
            log.iter().any(|r| r.operation == op && r.status == 200),
            "{op} missing from {log:?}"
        );
    }
    // botocore picks CloudWatch's protocol from the service model (rpc-v2-cbor first in recent
    // releases, awsJson1_0 before): either must be one the simulator speaks.
    let cloudwatch_protocols: Vec<&str> = log
        .iter()
        .filter(|r| r.service == "cloudwatch")
        .map(|r| r.protocol.as_str())
        .collect();
    eprintln!("the AWS CLI spoke {cloudwatch_protocols:?} to CloudWatch");
    assert!(
        cloudwatch_protocols
            .iter()
            .all(|p| matches!(*p, "rpcv2Cbor" | "awsJson1_0"))
    );
    std::fs::remove_dir_all(&home).ok();
}

#[test]
fn official_aws_cli_disables_keys_and_reads_alarm_history() {
    let aws = aws_cli();
    let mut world = quiet_world();
    world.settings.alarm_set_state_revert_ms = 3_600_000;
    let sim = start(world);
    let home = std::env::temp_dir().join(format!("kms-sim-awscli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let cli = Cli {
        aws,
        endpoint: sim.endpoint_url(),
        home: home.clone(),
    };
    let base = (ACCESS_KEY_ID, SECRET, None);
    let key = "1e1a0000-0000-4000-8000-000000000001";

    let described = cli.run(
        REGION,
        base,
        &["kms", "describe-key", "--key-id", "alias/payments"],
    );
    assert_eq!(described["KeyMetadata"]["KeyId"], key);
    assert_eq!(described["KeyMetadata"]["KeyState"], "Enabled");
    assert_eq!(described["KeyMetadata"]["KeyManager"], "CUSTOMER");
    let arn = described["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    cli.run(REGION, base, &["kms", "disable-key", "--key-id", &arn]);
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, key).as_deref(),
        Some("Disabled")
    );
    let again = cli.run(REGION, base, &["kms", "describe-key", "--key-id", key]);
    assert_eq!(again["KeyMetadata"]["KeyState"], "Disabled");
    assert_eq!(again["KeyMetadata"]["Enabled"], false);
    // The CLI follows NextMarker itself: pages of 2 give every alias once.
    let aliases = cli.run(REGION, base, &["kms", "list-aliases", "--page-size", "2"]);
    let names: Vec<&str> = aliases["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["AliasName"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "alias/aws/ebs",
            "alias/payments",
            "alias/payments-global",
            "alias/payments-primary",
            "alias/payments-retired"
        ]
    );

    cli.run(
        REGION,
        base,
        &[
            "cloudwatch",
            "set-alarm-state",
            "--alarm-name",
            METRIC_ALARM,
            "--state-value",
            "ALARM",
            "--state-reason",
            "drill",
        ],
    );
    sim.set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "OK", "evaluated")
        .unwrap();
    let history = cli.run(
        REGION,
        base,
        &[
            "cloudwatch",
            "describe-alarm-history",
            "--alarm-name",
            METRIC_ALARM,
            "--history-item-type",
            "StateUpdate",
            "--scan-by",
            "TimestampAscending",
            "--page-size",
            "1",
        ],
    );
    let items = history["AlarmHistoryItems"].as_array().unwrap();
    let summaries: Vec<&str> = items
        .iter()
        .filter_map(|i| i["HistorySummary"].as_str())
        .collect();
    assert_eq!(
        summaries,
        [
            "Alarm updated from OK to ALARM",
            "Alarm updated from ALARM to OK"
        ]
    );
    let data: Value = serde_json::from_str(items[0]["HistoryData"].as_str().unwrap()).unwrap();
    assert_eq!(data["oldState"]["stateValue"], "OK");
    assert_eq!(data["newState"]["stateValue"], "ALARM");

    let log = sim.requests();
    for op in [
        "DescribeKey",
        "DisableKey",
        "ListAliases",
        "SetAlarmState",
        "DescribeAlarmHistory",
    ] {
        assert!(
            log.iter().any(|r| r.operation == op && r.status == 200),
            "{op} missing from {log:?}"
        );
    }
    assert!(
        log.iter().filter(|r| r.operation == "ListAliases").count() >= 3,
        "the CLI paged through ListAliases"
    );
    std::fs::remove_dir_all(&home).ok();
}
