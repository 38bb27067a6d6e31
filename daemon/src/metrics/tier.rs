//! The hot tier's metrics, read from the cache's own counters whenever the
//! registry is gathered: each event is counted once, where it happens (in
//! [`crate::cache`]), and `/metrics`, `status` and `/v1/status` show the
//! same numbers.

use prometheus::IntCounter;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use shardd_protocol::ArenaStatus;

use crate::cache::Cache;

/// How a series is exported.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its name, help, kind and label (if any), and its
/// values by label value (`""` for none) from the arena's status and the
/// drive tier's misses.
struct Family {
    name: &'static str,
    values: fn(&ArenaStatus, u64) -> Vec<(&'static str, u64)>,
    help: &'static str,
    kind: Kind,
    label: Option<&'static str>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "shardd_arena_capacity_bytes",
        values: |a, _| vec![("", a.capacity_bytes)],
        help: "Bytes of the pinned-memory arena.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_arena_populated_bytes",
        values: |a, _| vec![("", a.populated_bytes)],
        help: "Bytes of the arena made resident and in use; below capacity while it is populated after a start.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_arena_used_bytes",
        values: |a, _| vec![("", a.used_bytes)],
        help: "Bytes of the arena holding shards.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_arena_locked_bytes",
        values: |a, _| vec![("", a.locked_bytes)],
        help: "Bytes of the arena locked in RAM (mlock); below capacity when RLIMIT_MEMLOCK is lower.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_arena_dirty_bytes",
        values: |a, _| vec![("", a.dirty_bytes)],
        help: "Bytes of write-back shards not yet on a drive.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_arena_leased_shards",
        values: |a, _| vec![("", a.leased_shards)],
        help: "Shards in the arena held by a lease (being sent, or viewed in place): not evictable.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_cache_hits_total",
        values: |a, _| vec![("arena", a.hits), ("nvme", a.loads + a.bypassed)],
        help: "Fetches served by a tier: the arena, or a drive after the arena missed.",
        kind: Kind::Counter,
        label: Some("tier"),
    },
    Family {
        name: "shardd_cache_misses_total",
        values: |a, nvme_misses| vec![("arena", a.misses + a.bypassed), ("nvme", nvme_misses)],
        help: "Fetches a tier could not serve: not in the arena, or on no drive (not found).",
        kind: Kind::Counter,
        label: Some("tier"),
    },
    Family {
        name: "shardd_arena_scrubbed_bytes_total",
        values: |a, _| vec![("", a.scrubbed_bytes)],
        help: "Bytes of arena blocks zeroed as they were freed, because the shard they held was deleted or replaced.",
        kind: Kind::Counter,
        label: None,
    },
    Family {
        name: "shardd_arena_evictions_total",
        values: |a, _| vec![("pressure", a.evictions), ("request", a.demoted)],
        help: "Shards removed from the arena: under memory pressure, or on request (evict).",
        kind: Kind::Counter,
        label: Some("reason"),
    },
    Family {
        name: "shardd_prefetches_total",
        values: |a, _| {
            vec![
                ("issued", a.prefetch_queued),
                ("completed", a.prefetch_completed),
                ("late", a.prefetch_late),
                ("unused", a.prefetch_unused),
            ]
        },
        help: "Prefetch hints: issued (queued loads), completed (loaded), late (a fetch came while \
               loading) and unused (evicted before any fetch).",
        kind: Kind::Counter,
        label: Some("outcome"),
    },
    Family {
        name: "shardd_write_back_puts_total",
        values: |a, _| vec![("", a.write_back_puts)],
        help: "Puts acknowledged from the arena before reaching a drive.",
        kind: Kind::Counter,
        label: None,
    },
    Family {
        name: "shardd_write_back_superseded_total",
        values: |a, _| vec![("", a.flushes_superseded)],
        help: "Write-back shards replaced or deleted before their flush finished (not written, or written only in part).",
        kind: Kind::Counter,
        label: None,
    },
    Family {
        name: "shardd_write_back_flush_failures_total",
        values: |a, _| vec![("", a.flush_failures)],
        help: "Write-back shards whose flush to a drive failed.",
        kind: Kind::Counter,
        label: None,
    },
    Family {
        name: "shardd_write_back_flush_retries_total",
        values: |a, _| vec![("", a.flush_retries)],
        help: "Failed write-back flushes tried again (after 1 s, backing off to a minute, while the shard \
               is current).",
        kind: Kind::Counter,
        label: None,
    },
    Family {
        name: "shardd_write_back_flushes_recovered_total",
        values: |a, _| vec![("", a.flushes_recovered)],
        help: "Write-back shards whose flush failed and that a later try wrote to a drive.",
        kind: Kind::Counter,
        label: None,
    },
    Family {
        name: "shardd_arena_shards_placed_total",
        values: |a, _| vec![("contiguous", a.contiguous_shards), ("scattered", a.scattered_shards)],
        help: "Shards of several chunks placed in the arena: in one range (contiguous), or in blocks \
               wherever they were free (scattered: no range long enough, the arena fragmented).",
        kind: Kind::Counter,
        label: Some("placement"),
    },
    Family {
        name: "shardd_arena_adopted_shards",
        values: |a, _| vec![("adopted", a.adopted_shards), ("discarded", a.adoption_discarded)],
        help: "Shards of the arena the previous daemon kept across its restart: taken back and served \
               from memory (adopted), or left out because the drive changed or their bytes no longer \
               matched its checksums (discarded). Zero after a cold start.",
        kind: Kind::Gauge,
        label: Some("result"),
    },
    Family {
        name: "shardd_arena_adopted_bytes",
        values: |a, _| vec![("", a.adopted_bytes)],
        help: "Bytes of the shards adopted from the arena the previous daemon kept.",
        kind: Kind::Gauge,
        label: None,
    },
    Family {
        name: "shardd_arena_checksum_failures_total",
        values: |a, _| vec![("", a.checksum_failures)],
        help: "Copies in the arena that no longer matched their CRC32C when checked again (memory \
               corruption); dropped, never served again.",
        kind: Kind::Counter,
        label: None,
    },
];

/// Gathers the tier's families from the cache (zeros without an arena) and
/// the drive tier's misses from the request path's counter.
#[derive(Debug)]
pub struct TierCollector {
    cache: Option<Cache>,
    nvme_misses: IntCounter,
    descs: Vec<Desc>,
}

impl TierCollector {
    /// A collector over `cache`; `nvme_misses` is the request path's count
    /// of fetches of shards on no drive.
    pub fn new(cache: Option<Cache>, nvme_misses: IntCounter) -> TierCollector {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                let labels = f.label.map(|l| vec![l.to_string()]).unwrap_or_default();
                Desc::new(f.name.to_string(), f.help.to_string(), labels, Default::default())
                    .expect("valid metric definition")
            })
            .collect();
        TierCollector {
            cache,
            nvme_misses,
            descs,
        }
    }
}

impl Collector for TierCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.cache.as_ref().map(Cache::status).unwrap_or_default();
        let nvme_misses = self.nvme_misses.get();
        FAMILIES
            .iter()
            .map(|f| {
                let mut family = MetricFamily::default();
                family.set_name(f.name.to_string());
                family.set_help(f.help.to_string());
                family.set_field_type(match f.kind {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                });
                for (value_of_label, value) in (f.values)(&status, nvme_misses) {
                    let mut metric = Metric::default();
                    if let Some(label) = f.label {
                        let mut pair = LabelPair::default();
                        pair.set_name(label.to_string());
                        pair.set_value(value_of_label.to_string());
                        metric.set_label(vec![pair]);
                    }
                    match f.kind {
                        Kind::Counter => {
                            let mut counter = Counter::default();
                            counter.set_value(value as f64);
                            metric.set_counter(counter);
                        }
                        Kind::Gauge => {
                            let mut gauge = Gauge::default();
                            gauge.set_value(value as f64);
                            metric.set_gauge(gauge);
                        }
                    }
                    family.mut_metric().push(metric);
                }
                family
            })
            .collect()
    }
}
