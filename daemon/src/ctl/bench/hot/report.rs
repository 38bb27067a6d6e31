//! What `bench hot` prints: the table beside its baselines, and the
//! arena's pages as this process maps them.

use super::{ArenaPages, HotReport, Mode};
use crate::ctl::show;

/// The arena's mappings in `smaps` (this process's `/proc/self/smaps`),
/// added up; `None` if it maps no arena.
pub(super) fn arena_pages(smaps: &str) -> Option<ArenaPages> {
    let name = format!("/memfd:{}", crate::arena::memory::MEMFD_NAME);
    let mut pages: Option<ArenaPages> = None;
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        // A mapping starts with its address range; its fields follow.
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.contains(&name);
            if inside {
                pages.get_or_insert_with(ArenaPages::default);
            }
            continue;
        }
        let Some(entry) = pages.as_mut().filter(|_| inside) else {
            continue;
        };
        // Fields are in kB.
        let Some(value) = words.next().and_then(|n| n.parse::<u64>().ok()).map(|k| k * 1024) else {
            continue;
        };
        match first {
            "KernelPageSize:" => entry.page_bytes = entry.page_bytes.max(value),
            "Rss:" | "Shared_Hugetlb:" | "Private_Hugetlb:" => entry.resident_bytes += value,
            "ShmemPmdMapped:" => entry.transparent_huge_bytes += value,
            _ => {}
        }
    }
    pages
}

pub(super) fn render(report: &HotReport) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "hot fetch (shards in the arena): medians of {} runs, {} fetches in flight; GB/s = 10^9 bytes/s\n\
         memcpy: as many threads as fetches in flight, over the same working set\n\
         views held: zero-copy views of the working set taken once, then only copied from (no requests)\n",
        report.runs, report.concurrency
    );
    match report.iperf3_bytes_per_sec {
        Some(rate) => {
            let _ = writeln!(
                out,
                "iperf3 loopback TCP ({} streams, one per connection): {:.2} GB/s",
                report.connections,
                rate / 1e9
            );
        }
        None => out.push_str("iperf3: not run\n"),
    }
    if let Some(pages) = &report.arena_pages {
        let _ = write!(
            out,
            "arena pages, as this client maps them: {}",
            show::bytes(pages.page_bytes)
        );
        if pages.page_bytes <= 4096 {
            let huge = pages.transparent_huge_bytes as f64 / pages.resident_bytes.max(1) as f64;
            let _ = write!(
                out,
                ", {:.0}% of the {} touched in transparent huge pages",
                huge * 100.0,
                show::bytes(pages.resident_bytes)
            );
        }
        out.push('\n');
    }
    let modes: Vec<Mode> = report
        .sizes
        .first()
        .map(|s| s.modes.iter().map(|(m, _)| *m).collect())
        .unwrap_or_default();
    let _ = write!(out, "\n{:>9} {:>7} {:>12}", "shard", "shards", "memcpy GB/s");
    for mode in &modes {
        let _ = write!(out, " {:>15}", mode.label());
        match mode {
            Mode::ZeroCopyUnix => {
                let _ = write!(out, " {:>9} {:>12}", "/memcpy", "views held");
            }
            Mode::ZeroCopyUnixBatch => {
                let _ = write!(out, " {:>9} {:>12}", "/memcpy b", "memcpy b");
            }
            Mode::RegionUnix => {
                let _ = write!(out, " {:>9}", "/memcpy b");
            }
            Mode::Tcp | Mode::RegionTcp => {
                let _ = write!(out, " {:>9}", "/iperf3");
            }
            Mode::Tls | Mode::RegionTls => {
                let _ = write!(out, " {:>9}", "/tcp");
            }
            Mode::CopyingUnix => {}
        }
    }
    out.push('\n');
    for size in &report.sizes {
        let _ = write!(
            out,
            "{:>9} {:>7} {:>12.2}",
            show::bytes(size.shard_bytes),
            size.shards,
            size.memcpy_bytes_per_sec / 1e9
        );
        for (mode, rate) in &size.modes {
            let _ = write!(out, " {:>15.2}", rate / 1e9);
            match mode {
                Mode::ZeroCopyUnix => {
                    let _ = write!(out, " {:>8.2}x", rate / size.memcpy_bytes_per_sec);
                    match size.views_held_bytes_per_sec {
                        Some(held) => {
                            let _ = write!(out, " {:>12.2}", held / 1e9);
                        }
                        None => {
                            let _ = write!(out, " {:>12}", "-");
                        }
                    }
                }
                Mode::ZeroCopyUnixBatch => {
                    let memcpy = size.memcpy_batch_bytes_per_sec.unwrap_or(size.memcpy_bytes_per_sec);
                    let _ = write!(out, " {:>8.2}x {:>12.2}", rate / memcpy, memcpy / 1e9);
                }
                Mode::RegionUnix => {
                    let memcpy = size.memcpy_batch_bytes_per_sec.unwrap_or(size.memcpy_bytes_per_sec);
                    let _ = write!(out, " {:>8.2}x", rate / memcpy);
                }
                Mode::Tcp | Mode::RegionTcp => match report.iperf3_bytes_per_sec {
                    Some(iperf) => {
                        let _ = write!(out, " {:>8.2}x", rate / iperf);
                    }
                    None => {
                        let _ = write!(out, " {:>9}", "-");
                    }
                },
                Mode::Tls | Mode::RegionTls => {
                    // TLS's cost: beside the same fetches over plain TCP.
                    let plain = if *mode == Mode::Tls { Mode::Tcp } else { Mode::RegionTcp };
                    match size.modes.iter().find(|(m, _)| *m == plain) {
                        Some((_, tcp)) => {
                            let _ = write!(out, " {:>8.2}x", rate / tcp);
                        }
                        None => {
                            let _ = write!(out, " {:>9}", "-");
                        }
                    }
                }
                Mode::CopyingUnix => {}
            }
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "(zc unix batch: {} shards per request, copied out of views asked for together; region unix/tcp: as many\n \
         per request into a registered region, written by the daemon (unix) or by the receiver as the payload\n \
         arrives (tcp, tls); memcpy b: memcpy into destinations as large as a batch's, as a layer gather writes;\n \
         /tcp: a TLS row beside the same fetches over plain TCP in the same run)",
        super::BATCH
    );
    let _ = writeln!(
        out,
        "\n4 KiB fetches over the Unix socket (median run), redis-benchmark GET of 4 KiB values beside:"
    );
    let _ = writeln!(
        out,
        "(a bare Unix socket round trip between two threads that sleep in read, 64-byte request,\n \
         4 KiB answer, one at a time: {:.0}/s, p50 {:.0} us: what 1 in flight costs here before any server work)",
        report.round_trip.per_sec, report.round_trip.p50_us
    );
    let _ = writeln!(
        out,
        "(batch: shards per request, ops/s counts shards, latency is per request; beside a batched row,\n \
         redis-benchmark with {} connections pipelining {} GETs each)",
        super::REDIS_PIPELINED.0,
        super::REDIS_PIPELINED.1
    );
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:>15} {:>10} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "conc", "batch", "mode", "ops/s", "p50 us", "p99 us", "redis ops/s", "redis p50", "/redis"
    );
    for s in &report.small {
        let redis = report.redis.iter().find(|r| match s.batch {
            1 => (r.clients, r.pipeline) == (s.concurrency, 1),
            _ => (r.clients, r.pipeline) == super::REDIS_PIPELINED,
        });
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:>15} {:>10.0} {:>8.0} {:>8.0} {:>12} {:>10} {:>9}",
            s.concurrency,
            s.batch,
            if s.prepared { "region prepared" } else { s.mode.label() },
            s.ops_per_sec,
            s.p50_us,
            s.p99_us,
            redis.map_or("-".into(), |r| format!("{:.0}", r.ops_per_sec)),
            redis.map_or("-".into(), |r| format!("{:.0} us", r.p50_ms * 1000.0)),
            redis.map_or("-".into(), |r| format!("{:.2}x", s.ops_per_sec / r.ops_per_sec)),
        );
    }
    let lookups = report.arena_hits + report.arena_misses;
    let _ = writeln!(
        out,
        "\narena hits during the throughput runs: {} of {lookups} fetches",
        report.arena_hits
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d1c0a00000-55d1c0a21000 r--p 00000000 fd:01 1234                       /usr/bin/shardctl
Size:                132 kB
KernelPageSize:        4 kB
Rss:                 132 kB
ShmemPmdMapped:        0 kB
7f0000000000-7f0040000000 r--s 00000000 00:01 25696                      /memfd:shardd-arena (deleted)
Size:            1048576 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:              419840 kB
ShmemPmdMapped:   409600 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
VmFlags: rd sh mr mw me ms sd
7f0040000000-7f0040021000 rw-p 00000000 00:00 0
Size:                132 kB
KernelPageSize:        4 kB
Rss:                  64 kB
ShmemPmdMapped:        0 kB
";

    #[test]
    fn the_arena_mapping_is_found_among_the_others() {
        let pages = arena_pages(SMAPS).expect("an arena mapping");
        assert_eq!(
            pages,
            ArenaPages {
                page_bytes: 4096,
                resident_bytes: 419840 * 1024,
                transparent_huge_bytes: 409600 * 1024,
            }
        );
    }

    #[test]
    fn a_hugetlb_arena_counts_its_huge_pages_as_resident() {
        let smaps = "\
7f0000000000-7f0040000000 r--s 00000000 00:0f 4321                       /memfd:shardd-arena (deleted)
Size:            1048576 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
ShmemPmdMapped:        0 kB
Shared_Hugetlb:   419840 kB
Private_Hugetlb:       0 kB
";
        let pages = arena_pages(smaps).expect("an arena mapping");
        assert_eq!(pages.page_bytes, 2 << 20);
        assert_eq!(pages.resident_bytes, 419840 * 1024);
    }

    #[test]
    fn no_arena_mapping_is_none() {
        assert_eq!(arena_pages(&SMAPS.replace("shardd-arena", "other")), None);
    }
}
