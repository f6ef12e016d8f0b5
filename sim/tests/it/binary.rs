//! The real `kms-sim` binary: one ready line on stdout, a log line per request on stderr, a clean
//! stop on SIGTERM and SIGINT, and a readable refusal of a bad world or a non-loopback address.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::support::*;

fn sim_binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kms-sim"));
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Start the binary on a free port and read its ready line.
fn start_binary() -> (Child, SocketAddr, String) {
    let world = concat!(env!("CARGO_MANIFEST_DIR"), "/worlds/demo.yaml");
    let mut child = sim_binary()
        .args(["--listen", "127.0.0.1:0", "--world", world])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kms-sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("kms-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    (child, addr, url)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn binary_prints_its_address_logs_requests_and_stops_on_sigterm() {
    let (mut child, addr, url) = start_binary();
    assert_eq!(url, format!("http://{addr}"));
    // The real SDK against the binary.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET,
            None,
            None,
            "t",
        ))
        .endpoint_url(&url)
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&config);
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    let (status, body) = http(addr, "GET", "/_sim/requests", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("DisconnectCustomKeyStore"));

    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("DisconnectCustomKeyStore"),
        "request logged: {stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains(SECRET), "no secret in the log");
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(rest, "", "exactly one line on stdout");
}

#[test]
fn binary_stops_cleanly_on_sigint() {
    let (mut child, _, _) = start_binary();
    signal(&child, "INT");
    assert!(child.wait().unwrap().success());
}

#[test]
fn binary_refuses_a_bad_world_and_a_public_address_with_one_sentence() {
    let dir = std::env::temp_dir().join(format!("kms-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "credentials: []\naccounts: {}\nsurprise: 1\n").unwrap();
    let out = sim_binary()
        .args(["--listen", "127.0.0.1:0", "--world"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("kms-sim: world ") && stderr.contains("surprise"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = sim_binary()
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn serve_runs_inside_the_callers_runtime_until_shutdown_completes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kms_sim::serve(kms_sim::World::demo(), listener, async {
        let _ = stopped.await;
    }));
    let (status, _) = http(addr, "GET", "/_sim/health", "").await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[test]
fn handle_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<kms_sim::SimHandle>();
    shareable::<kms_sim::SimError>();
}
