//! The `kms-sim` binary: parse flags, load the world, bind a loopback port, print one ready
//! line, serve until SIGINT/SIGTERM. All behaviour lives in the library.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Local simulator of AWS KMS custom key stores, CloudWatch alarms and STS.
#[derive(Debug, Parser)]
#[command(name = "kms-sim", version)]
struct Args {
    /// Address to listen on; must be a loopback address. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:4599")]
    listen: SocketAddr,
    /// World file (YAML); the built-in demo world when absent.
    #[arg(long)]
    world: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("kms-sim: {err}");
            let mut source = std::error::Error::source(err.as_ref());
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {}: kms-sim serves loopback addresses only",
            args.listen
        )
        .into());
    }
    let world = match &args.world {
        Some(path) => kms_sim::World::from_file(path)?,
        None => kms_sim::World::demo(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| kms_sim::SimError::Bind {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "kms-sim listening on http://{addr}")?;
        stdout.flush()?;
        drop(stdout);
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => info!(signal = "SIGINT", "stopping"),
                _ = terminate.recv() => info!(signal = "SIGTERM", "stopping"),
            }
        };
        kms_sim::serve(world, listener, shutdown).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
