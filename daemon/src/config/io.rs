//! `[io]`: the I/O engine.

use serde::Deserialize;

use super::{Overrides, invalid};
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
        let queue_depth = self.queue_depth.unwrap_or(128);
        if !(2..=4096).contains(&queue_depth) {
            return Err(invalid("io.queue_depth", format!("{queue_depth}; use 2 to 4096")));
        }
        let uring_threads = self.uring_threads.unwrap_or(1);
        if !(1..=64).contains(&uring_threads) {
            return Err(invalid("io.uring_threads", format!("{uring_threads}; use 1 to 64")));
        }
        let psync_threads = self.psync_threads.unwrap_or(16);
        if !(1..=1024).contains(&psync_threads) {
            return Err(invalid("io.psync_threads", format!("{psync_threads}; use 1 to 1024")));
        }
        Ok(IoConfig {
            engine: flags.io_engine.or(self.engine).unwrap_or_default(),
            queue_depth,
            uring_threads,
            psync_threads,
        })
    }
}
