//! Log output: human-readable lines or JSON, filtered by level; the level
//! can be changed while running (SIGHUP).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{LogConfig, LogFormat};

/// Changes the log filter of the running daemon.
#[derive(Debug, Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevel {
    /// Sets the filter to `level` (validated with the config).
    pub fn set(&self, level: &str) -> anyhow::Result<()> {
        let filter = EnvFilter::try_new(level)?;
        self.handle
            .reload(filter)
            .map_err(|e| anyhow::anyhow!("change the log level: {e}"))
    }
}

/// Installs the global subscriber. The level was validated with the config.
pub fn init(config: &LogConfig) -> anyhow::Result<LogLevel> {
    let (filter, handle) = reload::Layer::new(EnvFilter::try_new(&config.level)?);
    let output = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.format {
        LogFormat::Human => registry.with(output).try_init(),
        LogFormat::Json => registry
            .with(output.json().flatten_event(true).with_current_span(true))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("install the log subscriber: {e}"))?;
    Ok(LogLevel { handle })
}
