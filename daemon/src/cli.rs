//! Command line of the `shardd` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::log::check_filter;
use crate::config::{Config, Listen, LogFormat, Overrides, units};
use crate::daemon::{self, Reloader};
use crate::io::EngineKind;

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
    pub socket: Option<Listen<PathBuf>>,
    /// TCP listen address, or "off".
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<Listen<SocketAddr>>,
    /// HTTP listen address for /metrics, /healthz, /readyz and /v1/status, or "off".
    #[arg(long, value_name = "ADDR")]
    pub http: Option<Listen<SocketAddr>>,
    /// I/O engine: auto, uring or psync.
    #[arg(long = "io-engine", value_name = "ENGINE")]
    pub io_engine: Option<EngineKind>,
    /// Size of the pinned-memory arena, e.g. 64GiB; 0 runs without one.
    #[arg(long = "pinned-memory", value_name = "SIZE", value_parser = units::parse_size)]
    pub pinned_memory: Option<u64>,
    /// Log filter, e.g. info or shardd=debug.
    #[arg(long = "log-level", value_name = "FILTER", value_parser = check_filter)]
    pub log_level: Option<String>,
    /// Log format: human or json.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
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
                io_engine: self.io_engine,
                pinned_memory: self.pinned_memory,
                log_level: self.log_level.clone(),
                log_format: self.log_format,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(args: &[&str]) -> String {
        let args = std::iter::once("shardd").chain(args.iter().copied());
        Args::try_parse_from(args).unwrap_err().to_string()
    }

    #[test]
    fn flags_are_typed_and_a_bad_one_is_named() {
        let args = Args::try_parse_from([
            "shardd",
            "--tcp",
            "off",
            "--socket",
            "/run/shardd/s.sock",
            "--pinned-memory",
            "2GiB",
            "--io-engine",
            "psync",
            "--log-format",
            "json",
        ])
        .unwrap();
        let config = args.config().unwrap();
        assert_eq!(config.server.tcp, None);
        assert_eq!(config.server.socket, Some(PathBuf::from("/run/shardd/s.sock")));
        assert_eq!(config.arena.size, 2 << 30);
        assert_eq!(config.io.engine, EngineKind::Psync);
        assert_eq!(config.log.format, LogFormat::Json);
        for (flag, value) in [
            ("--tcp", "nonsense"),
            ("--http", "localhost"),
            ("--pinned-memory", "1 parsec"),
            ("--io-engine", "aio"),
            ("--log-format", "xml"),
            ("--log-level", "[[["),
        ] {
            let e = refused(&[flag, value]);
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }
}
