//! Shared test support: start the simulator, build real SDK clients pointed at it.
#![allow(dead_code)]

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::Credentials;
use kms_sim::{SimHandle, World};

pub const ACCOUNT: &str = "111111111111";
pub const OTHER_ACCOUNT: &str = "222222222222";
pub const REGION: &str = "eu-west-1";
pub const OTHER_REGION: &str = "us-east-1";
pub const ACCESS_KEY_ID: &str = "AKIDKMSSIMDEMO";
pub const SECRET: &str = "kms-sim-demo-secret";
pub const ROLE_ARN: &str = "arn:aws:iam::222222222222:role/kms-killswitch";
pub const HSM_EU: &str = "cks-1e1c0000000000001";
pub const XKS_EU: &str = "cks-1e1e0000000000001";
pub const METRIC_ALARM: &str = "kms-killswitch-hsm-anomaly";
pub const COMPOSITE_ALARM: &str = "kms-killswitch-red-button";

/// The demo world with quotas off and instant transitions unless a test asks otherwise, so
/// tests are deterministic; tests of quotas and delays build their own world.
pub fn quiet_world() -> World {
    let mut world = World::demo();
    world.settings.rate_limit_rps = 0.0;
    world.settings.transition_delay_ms = 0;
    world
}

pub fn start(world: World) -> SimHandle {
    kms_sim::spawn(world).expect("the simulator starts on a loopback port")
}

/// An SdkConfig pointed at the simulator: explicit region and static credentials (nothing from
/// the environment or instance metadata), retries off so every error reaches the test.
pub async fn sdk_config(sim: &SimHandle, region: &str, key: &str, secret: &str) -> SdkConfig {
    sdk_config_with_retry(sim, region, key, secret, RetryConfig::disabled()).await
}

pub async fn sdk_config_with_retry(
    sim: &SimHandle,
    region: &str,
    key: &str,
    secret: &str,
    retry: RetryConfig,
) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(key, secret, None, None, "kms-sim-test"))
        .endpoint_url(sim.endpoint_url())
        .retry_config(retry)
        .load()
        .await
}

pub async fn kms(sim: &SimHandle, region: &str) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config(sim, region, ACCESS_KEY_ID, SECRET).await)
}

pub async fn cloudwatch(sim: &SimHandle, region: &str) -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(&sdk_config(sim, region, ACCESS_KEY_ID, SECRET).await)
}

pub async fn sts(sim: &SimHandle, region: &str) -> aws_sdk_sts::Client {
    aws_sdk_sts::Client::new(&sdk_config(sim, region, ACCESS_KEY_ID, SECRET).await)
}

pub async fn sqs(sim: &SimHandle, region: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config(sim, region, ACCESS_KEY_ID, SECRET).await)
}

pub async fn sns(sim: &SimHandle, region: &str) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(&sdk_config(sim, region, ACCESS_KEY_ID, SECRET).await)
}

/// The error code of an SDK error (service errors only).
pub fn code<E, R>(err: &aws_sdk_kms::error::SdkError<E, R>) -> Option<String>
where
    E: aws_sdk_kms::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .map(str::to_owned)
}

/// Poll the simulator's true state until `want` or until a generous bound of attempts passes.
pub async fn wait_for_state(sim: &SimHandle, account: &str, region: &str, id: &str, want: &str) {
    for _ in 0..500 {
        if sim.connection_state(account, region, id).as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "store {id} never reached {want}; it is {:?}",
        sim.connection_state(account, region, id)
    );
}

/// A one-shot HTTP/1.1 request over a fresh loopback connection; returns status and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to kms-sim");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("control API answers in UTF-8");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `ConnectionState` KMS (the simulator, through the real SDK) reports for one store: a
/// DescribeCustomKeyStores filtered by id. What a client sees, consistency lag included.
pub async fn described_state(
    kms: &aws_sdk_kms::Client,
    custom_key_store_id: &str,
) -> Option<aws_sdk_kms::types::ConnectionStateType> {
    let seen = kms
        .describe_custom_key_stores()
        .custom_key_store_id(custom_key_store_id)
        .send()
        .await
        .expect("DescribeCustomKeyStores by id succeeds");
    seen.custom_key_stores()
        .first()
        .expect("the store is listed")
        .connection_state()
        .cloned()
}
