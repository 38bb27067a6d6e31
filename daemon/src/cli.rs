//! Command line of the `shardd` binary.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, Overrides};
use crate::daemon::{self, Reloader};

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

/// `shardd`'s main: parse, configure, and [`daemon::run`] until SIGINT or
/// SIGTERM (SIGHUP reloads).
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
    let reloader = Reloader {
        load: Box::new(move || args.config()),
        log_level: Some(log_level),
    };
    match runtime.block_on(daemon::run(config, reloader, daemon::shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("shardd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
