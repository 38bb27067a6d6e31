//! Human-readable rendering for `shardctl`.

use std::fmt::Write;

use shardd_protocol::{EvictResponse, ShardMeta, StatResponse, StatusResponse};

/// Bytes with a binary unit, e.g. `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn timestamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn shape(meta: &ShardMeta) -> String {
    let dims: Vec<String> = meta.shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// `shardctl stat`.
pub fn meta(meta: &ShardMeta) -> String {
    format!(
        "shard    {}/{}\nversion  {}\nlength   {} ({})\ndtype    {}\nshape    {}\ncrc32c   {:#010x}\ncreated  {}\n",
        meta.namespace,
        meta.key,
        meta.version,
        meta.len,
        bytes(meta.len),
        meta.dtype,
        shape(meta),
        meta.crc32c,
        timestamp(meta.created_unix_ms)
    )
}

/// `shardctl stat`: metadata and where the shard is.
pub fn stat(stat: &StatResponse) -> String {
    let cache = &stat.cache;
    let drive = match (&cache.flush_error, cache.dirty) {
        (Some(error), _) => format!("NOT WRITTEN: {error}"),
        (None, true) => "not yet (write-back pending)".to_string(),
        (None, false) => "yes".to_string(),
    };
    format!(
        "{}in arena {}\non drive {}\n",
        meta(&stat.meta),
        if cache.resident { "yes" } else { "no" },
        drive
    )
}

/// `shardctl evict`.
pub fn evicted(answer: &EvictResponse, dropped: bool) -> String {
    let mut out = String::new();
    let verb = if dropped { "deleted" } else { "evicted" };
    for key in &answer.evicted {
        let _ = writeln!(out, "{verb} {key}");
    }
    for key in &answer.not_resident {
        let _ = writeln!(out, "{key}: {}", if dropped { "not found" } else { "not in the arena" });
    }
    for key in &answer.busy {
        let _ = writeln!(out, "{key}: in use, not evicted");
    }
    for (key, reason) in &answer.failed {
        let _ = writeln!(out, "{key}: failed: {reason}");
    }
    out
}

/// `shardctl ls`: one line per shard.
pub fn listing(shards: &[ShardMeta]) -> String {
    let width = shards.iter().map(|m| m.key.as_str().len()).max().unwrap_or(3).max(3);
    let mut out = format!(
        "{:width$}  {:>8}  {:>14}  {:6}  SHAPE\n",
        "KEY", "VERSION", "BYTES", "DTYPE"
    );
    for m in shards {
        let _ = writeln!(
            out,
            "{:width$}  {:>8}  {:>14}  {:6}  {}",
            m.key.as_str(),
            m.version,
            m.len,
            m.dtype.name(),
            shape(m)
        );
    }
    let total: u64 = shards.iter().map(|m| m.len).sum();
    let _ = writeln!(out, "{} shards, {}", shards.len(), bytes(total));
    out
}

/// `shardctl status`.
pub fn status(s: &StatusResponse) -> String {
    let mut out = format!(
        "server       {}\nuptime       {} s\nio engine    {}\nshards       {} ({})\nquarantined  {}\nconnections  {}\n",
        s.server,
        s.uptime_secs,
        s.io_engine,
        s.shards,
        bytes(s.bytes),
        s.quarantined,
        s.connections
    );
    if let Some(a) = &s.arena {
        let lookups = a.hits + a.misses;
        let ratio = if lookups == 0 {
            0.0
        } else {
            a.hits as f64 / lookups as f64 * 100.0
        };
        if a.populated_bytes < a.capacity_bytes {
            let _ = writeln!(
                out,
                "arena        populating: {} of {} resident so far (shards use what is)",
                bytes(a.populated_bytes),
                bytes(a.capacity_bytes)
            );
        }
        let _ = writeln!(
            out,
            "arena        {} used of {}, {} locked in RAM{}, {} shards ({}, {} leased), {} not on drive yet",
            bytes(a.used_bytes),
            bytes(a.capacity_bytes),
            bytes(a.locked_bytes),
            if a.fixed_buffers {
                ", io_uring fixed buffers"
            } else {
                ""
            },
            a.resident_shards,
            bytes(a.resident_bytes),
            a.leased_shards,
            bytes(a.dirty_bytes)
        );
        if a.adopted_shards > 0 || a.adoption_discarded > 0 {
            let _ = writeln!(
                out,
                "warm start   {} shards ({}) taken back from the arena kept across the restart, {} left out",
                a.adopted_shards,
                bytes(a.adopted_bytes),
                a.adoption_discarded
            );
        }
        let _ = writeln!(
            out,
            "hits         {} of {} fetches ({ratio:.1}%), {} read from the drive uncached",
            a.hits, lookups, a.bypassed
        );
        let _ = writeln!(
            out,
            "evictions    {} under pressure ({} policy), {} on request",
            a.evictions, a.policy, a.demoted
        );
        let _ = writeln!(
            out,
            "prefetches   {} queued, {} loaded, {} late, {} unused",
            a.prefetch_queued, a.prefetch_completed, a.prefetch_late, a.prefetch_unused
        );
        if a.checksum_failures > 0 {
            let _ = writeln!(
                out,
                "corrupt      {} copies in the arena failed their checksum and were dropped (check the RAM)",
                a.checksum_failures
            );
        }
        if a.write_back_puts > 0 || a.flush_failures > 0 {
            let _ = writeln!(
                out,
                "write-back   {} puts, {} replaced before their flush, {} failed flushes ({} written by a later try)",
                a.write_back_puts, a.flushes_superseded, a.flush_failures, a.flushes_recovered
            );
        }
    } else {
        out.push_str("arena        none (arena.size = 0)\n");
    }
    for d in &s.data_dirs {
        let _ = writeln!(
            out,
            "data dir     {}  {} shards, {} stored, {} free of {}, {}",
            d.path,
            d.shards,
            bytes(d.bytes),
            bytes(d.free_bytes),
            bytes(d.capacity_bytes),
            if d.direct_io { "O_DIRECT" } else { "buffered I/O" }
        );
        if let Some(failed) = &d.failed {
            let _ = writeln!(out, "             FAILED: {failed}");
        }
    }
    out
}

/// A table of namespaces.
pub fn namespaces(namespaces: &[shardd_client::NamespaceUsage]) -> String {
    if namespaces.is_empty() {
        return "no namespaces\n".to_string();
    }
    let quota = |q: Option<u64>| q.map_or("-".to_string(), bytes);
    let mut out = format!(
        "{:<32} {:>8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>9}\n",
        "NAMESPACE", "SHARDS", "DRIVE", "QUOTA", "IN ARENA", "ARENA", "QUOTA", "UNFLUSHED"
    );
    for ns in namespaces {
        out.push_str(&format!(
            "{:<32} {:>8} {:>11} {:>11} {:>8} {:>11} {:>11} {:>9}\n",
            ns.namespace.as_str(),
            ns.shards,
            bytes(ns.drive_bytes),
            quota(ns.max_drive_bytes),
            ns.arena_shards,
            bytes(ns.arena_bytes),
            quota(ns.max_arena_bytes),
            ns.unflushed
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_dates() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 30), "64.0 GiB");
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
    }
}
