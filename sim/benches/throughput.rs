//! Throughput of kms-sim with faults and quotas off: concurrent keep-alive loopback connections
//! replaying SigV4-signed requests (KMS DescribeCustomKeyStores in awsJson1_1 and CloudWatch
//! DescribeAlarms in RPC v2 CBOR, alternating), every one verified by the server. Bounded in
//! count and time; prints requests/s. A second phase does the same through the real
//! aws-sdk-kms client (signing every request), for the figure a real client sees.
//! Run: `cargo bench -p kms-sim --bench throughput`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Concurrent connections: enough to keep both cores busy while one waits on the other.
const CONNECTIONS: usize = 32;
/// Upper bound on requests, so the run stops by itself.
const MAX_REQUESTS: usize = 200_000;
/// Upper bound on time for the measured phase.
const MAX_DURATION: Duration = Duration::from_secs(10);
/// Warm-up requests per connection before measuring.
const WARMUP_PER_CONNECTION: usize = 50;
/// Target from issue 3.
const TARGET_RPS: f64 = 5_000.0;

const ACCESS_KEY_ID: &str = "AKIDKMSSIMDEMO";
const SECRET: &str = "kms-sim-demo-secret";

fn signed_request(addr: SocketAddr, kms: bool) -> Vec<u8> {
    let host = addr.to_string();
    let amz_date = "20261129T120000Z";
    let (path, service, content_type, target, body): (&str, &str, &str, Option<&str>, Vec<u8>) =
        if kms {
            (
                "/",
                "kms",
                "application/x-amz-json-1.1",
                Some("TrentService.DescribeCustomKeyStores"),
                br#"{"CustomKeyStoreId":"cks-1e1c0000000000001"}"#.to_vec(),
            )
        } else {
            (
                "/service/GraniteServiceVersion20100801/operation/DescribeAlarms",
                "monitoring",
                "application/cbor",
                None,
                vec![0xa0], // the empty CBOR map: DescribeAlarms with no filters
            )
        };
    let mut headers: Vec<(&str, &str)> = vec![
        ("host", &host),
        ("x-amz-date", amz_date),
        ("content-type", content_type),
    ];
    if let Some(target) = target {
        headers.push(("x-amz-target", target));
    } else {
        headers.push(("smithy-protocol", "rpc-v2-cbor"));
    }
    let authorization = kms_sim::sigv4::sign_request(
        ACCESS_KEY_ID,
        SECRET,
        "eu-west-1",
        service,
        "POST",
        path,
        &headers,
        &body,
    )
    .expect("the benchmark's own headers are valid");
    let mut request = format!("POST {path} HTTP/1.1\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "authorization: {authorization}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Read one HTTP/1.1 response from `stream` (keeping leftovers in `buf`); returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "server closed the connection mid-response");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return status;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(
    addr: SocketAddr,
    warmup: usize,
    deadline: Instant,
    budget: usize,
) -> (usize, usize) {
    let requests = [signed_request(addr, true), signed_request(addr, false)];
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let mut buf = Vec::with_capacity(16 * 1024);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..warmup + budget {
        if i >= warmup && Instant::now() >= deadline {
            break;
        }
        stream.write_all(&requests[i % 2]).await.expect("write");
        let status = read_response(&mut stream, &mut buf).await;
        if i >= warmup {
            if status == 200 { ok += 1 } else { failed += 1 }
        }
    }
    (ok, failed)
}

/// Requests through the SDK: fewer, since the client-side signing and pipeline cost CPU too.
const SDK_MAX_REQUESTS: usize = 40_000;
/// Concurrent in-flight SDK calls.
const SDK_CONCURRENCY: usize = 32;

async fn sdk_phase(endpoint: String) -> (usize, usize, Duration) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET,
            None,
            None,
            "bench",
        ))
        .endpoint_url(endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&config);
    // Warm the connection pool.
    for _ in 0..SDK_CONCURRENCY {
        let _ = kms.describe_custom_key_stores().send().await;
    }
    let begun = Instant::now();
    let deadline = begun + MAX_DURATION;
    let mut tasks = Vec::new();
    for _ in 0..SDK_CONCURRENCY {
        let kms = kms.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            for _ in 0..SDK_MAX_REQUESTS / SDK_CONCURRENCY {
                if Instant::now() >= deadline {
                    break;
                }
                match kms
                    .describe_custom_key_stores()
                    .custom_key_store_id("cks-1e1c0000000000001")
                    .send()
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await.expect("sdk task");
        ok += o;
        failed += f;
    }
    (ok, failed, begun.elapsed())
}

fn main() {
    let mut world = kms_sim::World::demo();
    world.settings.rate_limit_rps = 0.0; // quotas off: this measures the simulator, not AWS limits
    let sim = kms_sim::spawn(world).expect("the simulator starts");
    let addr = sim.addr();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let (ok, failed, elapsed) = client.block_on(async move {
        let begun = Instant::now();
        let deadline = begun + MAX_DURATION;
        let per_connection = MAX_REQUESTS / CONNECTIONS;
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            tasks.push(tokio::spawn(connection(
                addr,
                WARMUP_PER_CONNECTION,
                deadline,
                per_connection,
            )));
        }
        let (mut ok, mut failed) = (0, 0);
        for task in tasks {
            let (o, f) = task.await.expect("connection task");
            ok += o;
            failed += f;
        }
        (ok, failed, begun.elapsed())
    });
    // Warm-up requests are excluded from the count but not from the elapsed time, so the figure
    // is a slight underestimate.
    let rps = ok as f64 / elapsed.as_secs_f64();
    println!(
        "kms-sim throughput: {ok} signed requests answered 200 in {:.2} s over {CONNECTIONS} connections = {rps:.0} requests/s ({failed} non-200)",
        elapsed.as_secs_f64()
    );
    println!(
        "target ≥ {TARGET_RPS:.0} requests/s: {}",
        if rps >= TARGET_RPS && failed == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let (sdk_ok, sdk_failed, sdk_elapsed) = client.block_on(sdk_phase(sim.endpoint_url()));
    println!(
        "through aws-sdk-kms: {sdk_ok} DescribeCustomKeyStores calls in {:.2} s with {SDK_CONCURRENCY} in flight = {:.0} requests/s ({sdk_failed} failed)",
        sdk_elapsed.as_secs_f64(),
        sdk_ok as f64 / sdk_elapsed.as_secs_f64()
    );
    let logged = sim.requests().len();
    println!("request log holds {logged} records");
    if failed > 0 || sdk_failed > 0 {
        std::process::exit(1);
    }
}
