//! Rebuilding the index at start.
//!
//! For each data dir: remove what interrupted puts left in `tmp/`; read the
//! header of every file under `shards/`; quarantine files whose header is
//! broken, that sit in the wrong namespace directory or that are shorter
//! than their header says; keep the newest version of each key (removing
//! older ones a crash left behind); and remember the keys of files already in
//! `quarantine/` so that fetching them says why they are gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use shardd_protocol::{Key, Namespace};

use super::Store;
use super::dir::{DataDir, FileId};
use super::format::{self, ShardLayout};
use super::index::{Quarantined, ShardEntry};
use crate::io::{ALIGN, fs};

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Shards in the index.
    pub shards: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Temp files of interrupted puts removed.
    pub temp_removed: u64,
    /// Older versions removed because a newer one exists.
    pub superseded_removed: u64,
    /// Files quarantined by this recovery.
    pub quarantined: u64,
}

/// A shard file found under `shards/`.
struct Found {
    dir: usize,
    namespace_dir: String,
    path: PathBuf,
    file_id: FileId,
}

enum Checked {
    Good(ShardEntry),
    Bad {
        path: PathBuf,
        namespace_dir: String,
        reason: String,
    },
}

/// Threads reading headers in parallel.
const HEADER_READERS: usize = 8;

pub(super) async fn recover(store: &Store) -> anyhow::Result<RecoveryReport> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || recover_blocking(&store))
        .await
        .context("recovery task failed")?
}

fn recover_blocking(store: &Store) -> anyhow::Result<RecoveryReport> {
    let dirs = &store.inner.dirs;
    let mut report = RecoveryReport::default();
    let mut found = Vec::new();
    for dir in dirs {
        report.temp_removed += clean_tmp(dir)?;
        found.extend(find_shards(dir)?);
    }

    let checked = check_all(dirs, found)?;
    let mut newest: HashMap<(Namespace, Key), ShardEntry> = HashMap::new();
    for c in checked {
        match c {
            Checked::Bad {
                path,
                namespace_dir,
                reason,
            } => {
                let dir = dirs.iter().find(|d| path.starts_with(&d.path));
                let Some(dir) = dir else { continue };
                let name = format!(
                    "{namespace_dir}.{}",
                    path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                );
                match move_to_quarantine(&path, &dir.quarantine_dir(), &name) {
                    Ok(to) => tracing::error!(
                        file = %path.display(), moved_to = %to.display(), %reason,
                        "shard file failed verification at start and was quarantined"
                    ),
                    Err(e) => tracing::error!(
                        file = %path.display(), %reason, error = %e,
                        "shard file failed verification at start and could not be moved aside; it is not served"
                    ),
                }
                report.quarantined += 1;
            }
            Checked::Good(entry) => {
                let id = (entry.meta.namespace.clone(), entry.meta.key.clone());
                let loser = match newest.remove(&id) {
                    Some(other) if supersedes(&other, &entry) => {
                        newest.insert(id, other);
                        entry
                    }
                    Some(other) => {
                        newest.insert(id, entry);
                        other
                    }
                    None => {
                        newest.insert(id, entry);
                        continue;
                    }
                };
                let dir = &dirs[loser.dir];
                let path = dir.shard_path(&loser.meta.namespace, loser.file_id);
                fs::remove_file(&path).with_context(|| format!("remove superseded {}", path.display()))?;
                tracing::info!(file = %path.display(), version = loser.meta.version, "removed a superseded shard version");
                report.superseded_removed += 1;
            }
        }
    }

    for entry in newest.into_values() {
        report.shards += 1;
        report.bytes += entry.meta.len;
        dirs[entry.dir].account_add(entry.meta.len);
        store.inner.index.insert(Arc::new(entry));
    }

    let mut quarantined_files = 0;
    for dir in dirs {
        quarantined_files += remember_quarantined(store, dir)?;
    }
    store
        .inner
        .quarantined_files
        .store(quarantined_files, Ordering::Relaxed);
    Ok(report)
}

fn clean_tmp(dir: &DataDir) -> anyhow::Result<u64> {
    let tmp = dir.tmp_dir();
    let mut removed = 0;
    for (name, is_dir) in fs::list_dir(&tmp).with_context(|| format!("list {}", tmp.display()))? {
        let path = tmp.join(&name);
        if is_dir {
            // A dropped namespace whose files were not all removed yet.
            fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        } else {
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        removed += 1;
    }
    if removed > 0 {
        fs::sync_dir(&tmp).with_context(|| format!("fsync {}", tmp.display()))?;
        tracing::info!(dir = %dir.path.display(), removed, "removed temp files of interrupted puts");
    }
    Ok(removed)
}

fn find_shards(dir: &DataDir) -> anyhow::Result<Vec<Found>> {
    let root = dir.shards_dir();
    let mut out = Vec::new();
    for (ns_name, is_dir) in fs::list_dir(&root).with_context(|| format!("list {}", root.display()))? {
        if !is_dir || Namespace::new(ns_name.as_str()).is_err() {
            tracing::warn!(path = %root.join(&ns_name).display(), "ignoring an unexpected entry in the shards directory");
            continue;
        }
        let ns_dir = root.join(&ns_name);
        for (fan, is_dir) in fs::list_dir(&ns_dir).with_context(|| format!("list {}", ns_dir.display()))? {
            let fan_dir = ns_dir.join(&fan);
            if !is_dir {
                tracing::warn!(path = %fan_dir.display(), "ignoring an unexpected file in the shards directory");
                continue;
            }
            for (name, is_dir) in fs::list_dir(&fan_dir).with_context(|| format!("list {}", fan_dir.display()))? {
                let path = fan_dir.join(&name);
                let id = name.strip_suffix(".shard").and_then(FileId::parse);
                match (is_dir, id) {
                    (false, Some(file_id)) => out.push(Found {
                        dir: dir.index,
                        namespace_dir: ns_name.clone(),
                        path,
                        file_id,
                    }),
                    _ => {
                        tracing::warn!(path = %path.display(), "ignoring an unexpected entry in the shards directory")
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Checks every found file, on several threads (start-up time is dominated
/// by reading one header per shard).
fn check_all(dirs: &[DataDir], found: Vec<Found>) -> anyhow::Result<Vec<Checked>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let per_thread = found.len().div_ceil(HEADER_READERS);
    std::thread::scope(|s| {
        let workers: Vec<_> = found
            .chunks(per_thread)
            .map(|part| s.spawn(move || part.iter().map(|f| check(dirs, f)).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::with_capacity(found.len());
        for worker in workers {
            let checked = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a thread reading shard headers failed"))?;
            out.extend(checked);
        }
        Ok(out)
    })
}

fn check(dirs: &[DataDir], found: &Found) -> Checked {
    let bad = |reason: String| Checked::Bad {
        path: found.path.clone(),
        namespace_dir: found.namespace_dir.clone(),
        reason,
    };
    let dir = &dirs[found.dir];
    let (meta, layout, file_len) = match read_header(&found.path, dir.direct_io) {
        Ok(parts) => parts,
        Err(reason) => return bad(reason),
    };
    if meta.namespace.as_str() != found.namespace_dir {
        return bad(format!(
            "header names namespace {} but the file is under {}",
            meta.namespace, found.namespace_dir
        ));
    }
    let need = ShardLayout::file_len(layout.payload_offset, meta.len);
    if file_len < need {
        return bad(format!("file has {file_len} bytes, the header needs {need}"));
    }
    Checked::Good(ShardEntry {
        meta,
        dir: found.dir,
        file_id: found.file_id,
        layout,
    })
}

/// Reads and decodes a shard file's header; returns it and the file's length.
pub(super) fn read_header(path: &Path, direct: bool) -> Result<(shardd_protocol::ShardMeta, ShardLayout, u64), String> {
    let file = fs::open_read(path, direct).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    let first = fs::read_at(&file, 0, ALIGN).map_err(|e| format!("cannot read header: {e}"))?;
    let header_len = format::header_len_from_prefix(first.as_slice()).map_err(|e| e.to_string())?;
    let header = if header_len as usize <= ALIGN {
        first
    } else {
        fs::read_at(&file, 0, header_len as usize).map_err(|e| format!("cannot read header: {e}"))?
    };
    let (meta, layout) = format::decode_header(header.as_slice()).map_err(|e| e.to_string())?;
    Ok((meta, layout, file_len))
}

/// Whether `a` is kept over `b`, two good files of one key: the higher
/// version; between equal versions (a put interrupted after it published
/// in one directory and before the old file in another was removed can
/// leave two), the one created later; then the one in the data directory
/// listed first. The same files always give the same answer.
fn supersedes(a: &ShardEntry, b: &ShardEntry) -> bool {
    (a.meta.version, a.meta.created_unix_ms, std::cmp::Reverse(a.dir))
        > (b.meta.version, b.meta.created_unix_ms, std::cmp::Reverse(b.dir))
}

/// Moves `from` into `quarantine_dir` as `name` (with a numeric suffix if
/// taken), fsyncing both directories. Returns the new path.
pub(super) fn move_to_quarantine(from: &Path, quarantine_dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let mut attempt = 0;
    loop {
        let to = if attempt == 0 {
            quarantine_dir.join(name)
        } else {
            quarantine_dir.join(format!("{name}.{attempt}"))
        };
        match fs::rename_noreplace(from, &to) {
            Ok(()) => {
                fs::sync_dir(quarantine_dir)?;
                if let Some(parent) = from.parent() {
                    fs::sync_dir(parent)?;
                }
                return Ok(to);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Counts the files in a quarantine dir and records the keys they belong to
/// (where their header is readable) so that fetches of those keys report
/// the quarantine rather than "not found".
fn remember_quarantined(store: &Store, dir: &DataDir) -> anyhow::Result<u64> {
    let qdir = dir.quarantine_dir();
    let mut count = 0;
    for (name, is_dir) in fs::list_dir(&qdir).with_context(|| format!("list {}", qdir.display()))? {
        if is_dir {
            continue;
        }
        count += 1;
        let path = qdir.join(&name);
        if let Ok((meta, _, _)) = read_header(&path, dir.direct_io) {
            let index = &store.inner.index;
            let newer_live = index
                .get(&meta.namespace, &meta.key)
                .is_some_and(|e| e.meta.version >= meta.version);
            let newer_record = index
                .quarantined(&meta.namespace, &meta.key)
                .is_some_and(|q| q.version >= meta.version);
            if !newer_live && !newer_record {
                index.set_quarantined(
                    meta.namespace,
                    meta.key,
                    Quarantined {
                        version: meta.version,
                        reason: format!("quarantined earlier; the file is {}", path.display()),
                        file: Some(path.clone()),
                    },
                );
            }
        }
    }
    Ok(count)
}
