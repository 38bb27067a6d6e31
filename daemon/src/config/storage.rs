//! `[storage]`: data directories and the data path.

use std::path::PathBuf;

use serde::Deserialize;
use shardd_protocol::DEFAULT_MAX_PAYLOAD_LEN;

use super::units::Size;
use super::{DEFAULT_DATA_DIR, Overrides, invalid, within};
use crate::store::{StoreConfig, VerifyMode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileStorage {
    data_dirs: Option<Vec<PathBuf>>,
    chunk_size: Option<Size>,
    chunks_in_flight: Option<usize>,
    min_free: Option<Size>,
    max_shard_size: Option<Size>,
    buffer_memory: Option<Size>,
    verify_on_start: Option<VerifyMode>,
    direct_io: Option<DirectIo>,
}

/// `storage.direct_io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectIo {
    /// O_DIRECT where the file system allows it.
    #[default]
    Auto,
    /// Buffered I/O through the page cache.
    Off,
}

impl FileStorage {
    /// `[storage]` with `--data-dir` replacing its data dirs.
    pub(super) fn resolve(self, flags: &Overrides) -> anyhow::Result<StoreConfig> {
        let data_dirs = if !flags.data_dirs.is_empty() {
            flags.data_dirs.clone()
        } else {
            self.data_dirs.unwrap_or_else(|| vec![PathBuf::from(DEFAULT_DATA_DIR)])
        };
        if data_dirs.is_empty() {
            return Err(invalid("storage.data_dirs", "the list is empty"));
        }
        for (i, a) in data_dirs.iter().enumerate() {
            if data_dirs[..i].contains(a) {
                return Err(invalid("storage.data_dirs", format!("{} is listed twice", a.display())));
            }
        }
        let chunk_size = self.chunk_size.map_or(1 << 20, |s| s.0);
        if !(64 << 10..=16 << 20).contains(&chunk_size) || !chunk_size.is_power_of_two() {
            return Err(invalid(
                "storage.chunk_size",
                format!("{chunk_size} bytes; use a power of two from 64KiB to 16MiB"),
            ));
        }
        let chunks_in_flight = within("storage.chunks_in_flight", self.chunks_in_flight.unwrap_or(8), 1..=256)?;
        let max_shard_bytes = self.max_shard_size.map_or(DEFAULT_MAX_PAYLOAD_LEN, |s| s.0);
        if max_shard_bytes == 0 {
            return Err(invalid("storage.max_shard_size", "must be above 0"));
        }
        Ok(StoreConfig {
            data_dirs,
            chunk_size: chunk_size as u32,
            chunks_in_flight,
            min_free_bytes: self.min_free.map_or(1 << 30, |s| s.0),
            max_shard_bytes,
            buffer_memory: self.buffer_memory.map_or(1 << 30, |s| s.0),
            verify_on_start: self.verify_on_start.unwrap_or_default(),
            direct_io: self.direct_io.unwrap_or_default() == DirectIo::Auto,
        })
    }
}
