//! `[log]`: log filter and format.

use serde::Deserialize;

use super::{LogConfig, LogFormat, Overrides, invalid};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

/// Checks a `tracing` filter such as `info` or `shardd=debug,info`.
pub fn check_filter(level: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| level.to_string())
        .map_err(|e| format!("{level:?}: {e}"))
}

impl FileLog {
    /// `[log]`; the level from `--log-level`, else `SHARDD_LOG`, else the
    /// file, else `info`.
    pub(super) fn resolve(self, flags: &Overrides) -> anyhow::Result<LogConfig> {
        let level = flags
            .log_level
            .clone()
            .or_else(|| std::env::var("SHARDD_LOG").ok())
            .or(self.level)
            .unwrap_or_else(|| "info".to_string());
        check_filter(&level).map_err(|e| invalid("log.level", e))?;
        Ok(LogConfig {
            level,
            format: flags.log_format.or(self.format).unwrap_or_default(),
        })
    }
}
