//! `[io]`: the I/O engine.

use serde::Deserialize;

use super::{Overrides, within};
use crate::io::{EngineKind, IoConfig};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileIo {
    engine: Option<EngineKind>,
    queue_depth: Option<u32>,
    uring_threads: Option<usize>,
    psync_threads: Option<usize>,
}

impl FileIo {
    /// `[io]` with `--io-engine` overriding its engine.
    pub(super) fn resolve(self, flags: &Overrides) -> anyhow::Result<IoConfig> {
        Ok(IoConfig {
            engine: flags.io_engine.or(self.engine).unwrap_or_default(),
            queue_depth: within("io.queue_depth", self.queue_depth.unwrap_or(128), 2..=4096)?,
            uring_threads: within("io.uring_threads", self.uring_threads.unwrap_or(1), 1..=64)?,
            psync_threads: within("io.psync_threads", self.psync_threads.unwrap_or(16), 1..=1024)?,
        })
    }
}
