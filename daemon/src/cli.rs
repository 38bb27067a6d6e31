//! Command line of the `shardd` binary.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, Overrides};
use crate::daemon::Daemon;
use crate::logging::LogLevel;

/// shardd: serves tensor shards from NVMe and pinned memory to training jobs.
///
/// With no arguments it serves data in ./shardd-data on the Unix socket
/// ./shardd.sock and on TCP 127.0.0.1:7070.
#[derive(Debug, Parser)]
#[command(name = "shardd", version)]
pub struct Args {
    /// TOML config file; flags override its values.
    #[arg(long, value_name = "FILE", env = "SHARDD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory, one per drive; repeat for several. Replaces
    /// storage.data_dirs.
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dirs: Vec<PathBuf>,
    /// Unix socket path, or "off".
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
    /// TCP listen address, or "off".
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// HTTP listen address for /metrics, /healthz, /readyz and /v1/status, or "off".
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// I/O engine: auto, uring or psync.
    #[arg(long = "io-engine", value_name = "ENGINE")]
    pub io_engine: Option<String>,
    /// Size of the pinned-memory arena, e.g. 64GiB; 0 runs without one.
    #[arg(long = "pinned-memory", value_name = "SIZE")]
    pub pinned_memory: Option<String>,
    /// Log filter, e.g. info or shardd=debug.
    #[arg(long = "log-level", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: human or json.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Validate the configuration, print it, and exit.
    #[arg(long = "check-config")]
    pub check_config: bool,
}

impl Args {
    /// The configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        Config::load(
            self.config.as_deref(),
            Overrides {
                data_dirs: self.data_dirs.clone(),
                socket: self.socket.clone(),
                tcp: self.tcp.clone(),
                http: self.http.clone(),
                io_engine: self.io_engine.clone(),
                pinned_memory: self.pinned_memory.clone(),
                log_level: self.log_level.clone(),
                log_format: self.log_format.clone(),
            },
        )
    }
}

/// `shardd`'s main: parse, configure, run until SIGINT or SIGTERM.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shardd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{config:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    let log_level = match crate::logging::init(&config.log) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("shardd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shardd-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shardd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, &args, &log_level)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("shardd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM, reloading on SIGHUP.
async fn serve(config: Config, args: &Args, log_level: &LogLevel) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let daemon = Daemon::start(config).await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; reloading is off");
            None
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = async { hangup.as_mut()?.recv().await } => reload(&daemon, args, log_level),
        }
    }
    daemon.stop().await
}

/// SIGHUP: reads the configuration again (same flags) and applies what can
/// change safely; says what it applied and what needs a restart.
fn reload(daemon: &Daemon, args: &Args, log_level: &LogLevel) {
    tracing::info!("SIGHUP received: reloading the configuration");
    let new = match args.config() {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e:#}");
            return;
        }
    };
    let reloaded = daemon.reload(&new);
    if reloaded.applied.iter().any(|a| a.starts_with("log.level"))
        && let Err(e) = log_level.set(&new.log.level)
    {
        tracing::error!("reload could not change the log level: {e:#}");
    }
    if reloaded.applied.is_empty() {
        tracing::info!("reloaded: nothing that can change while running has changed");
    } else {
        tracing::info!(applied = ?reloaded.applied, "reloaded");
    }
    if !reloaded.need_restart.is_empty() {
        tracing::warn!(
            sections = ?reloaded.need_restart,
            "these settings changed but take effect only after a restart"
        );
    }
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
