//! `[arena]`: the pinned-memory arena and the hot tier in it.

use serde::Deserialize;

use super::units::Size;
use super::{ArenaSettings, KeepOnRestart, Overrides, invalid, within};
use crate::arena::HugePages;
use crate::cache::policy::PolicyKind;
use crate::cache::{BounceIo, CacheConfig};
use crate::io::ALIGN;
use crate::store::StoreConfig;

/// Keys in all step schedules together (262,144): enough for a model of a
/// thousand layers of a hundred shards each and twice over; at the longest
/// keys (256 bytes) they take about 100 MiB of the daemon's memory.
pub const DEFAULT_MAX_SCHEDULE_KEYS: u64 = 1 << 18;

/// `keep_on_restart` as written: a boolean or a word.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KeepSetting {
    Flag(bool),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileArena {
    size: Option<Size>,
    huge_pages: Option<HugePages>,
    keep_on_restart: Option<KeepSetting>,
    eviction: Option<PolicyKind>,
    prefetch_memory: Option<Size>,
    write_back_memory: Option<Size>,
    flush_concurrency: Option<usize>,
    bounce_io: Option<BounceIo>,
    max_schedule_keys: Option<u64>,
}

impl FileArena {
    /// `[arena]` with `--pinned-memory` overriding its size; the arena
    /// must hold a chunk of the store.
    pub(super) fn resolve(self, flags: &Overrides, store: &StoreConfig) -> anyhow::Result<ArenaSettings> {
        let chunk_size = store.chunk_size as u64;
        let (key, size) = match flags.pinned_memory {
            Some(size) => ("--pinned-memory", size),
            None => ("arena.size", self.size.map_or(1 << 30, |s| s.0)),
        };
        if size != 0 && size < chunk_size {
            return Err(invalid(
                key,
                format!("{size} bytes; use 0 (no arena) or at least one chunk ({chunk_size} bytes)"),
            ));
        }
        let write_back_memory = self.write_back_memory.map_or(size / 2, |s| s.0);
        if write_back_memory > size {
            return Err(invalid(
                "arena.write_back_memory",
                format!("{write_back_memory} bytes is more than the arena ({size} bytes)"),
            ));
        }
        let flush_concurrency = within("arena.flush_concurrency", self.flush_concurrency.unwrap_or(4), 1..=256)?;
        Ok(ArenaSettings {
            size,
            huge_pages: self.huge_pages.unwrap_or_default(),
            keep_on_restart: match self.keep_on_restart {
                None => KeepOnRestart::Auto,
                Some(KeepSetting::Flag(true)) => KeepOnRestart::On,
                Some(KeepSetting::Flag(false)) => KeepOnRestart::Off,
                Some(KeepSetting::Word(word)) if word == "auto" => KeepOnRestart::Auto,
                Some(KeepSetting::Word(word)) => {
                    return Err(invalid(
                        "arena.keep_on_restart",
                        format!("{word:?}; use true, false or \"auto\""),
                    ));
                }
            },
            cache: CacheConfig {
                policy: self.eviction.unwrap_or_default(),
                prefetch_memory: self.prefetch_memory.map_or(256 << 20, |s| s.0).max(ALIGN as u64),
                write_back_memory,
                flush_concurrency,
                bounce_io: self.bounce_io.unwrap_or_default(),
                max_schedule_keys: within(
                    "arena.max_schedule_keys",
                    self.max_schedule_keys.unwrap_or(DEFAULT_MAX_SCHEDULE_KEYS),
                    1..=1 << 28,
                )?,
            },
        })
    }
}
