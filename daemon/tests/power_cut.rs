//! Power cuts: a data directory on an ext4 image mounted through a loop
//! device loses everything not yet on the device at a random moment while
//! several clients put, replace, delete and fetch shards, durable and
//! write-back (`EXT4_IOC_SHUTDOWN` without a journal flush, see
//! `support/ext4.rs`). After each cut the file system is mounted again and
//! the daemon restarted on it: every acknowledged durable put is present and
//! byte-exact, every acknowledged delete is gone, a write-back put that was
//! acknowledged but maybe not flushed is either there whole or the key is as
//! it was before it, every visible shard is whole, nothing was quarantined,
//! and `tmp/` is empty.
//!
//! 50 cuts by default, alternating the I/O engines; `SHARDD_POWER_CUTS=N`
//! for more, `SHARDD_POWER_CUT_SEED=S` to replay a run. Needs root (loop
//! devices); skips, saying so, elsewhere.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shardd::ctl::bench::pattern;
use shardd_client::{Client, ClientError, Durability, PutOptions};
use support::ext4::Ext4Image;
use support::{Launch, Process, engines, skipped};

const NAMESPACE: &str = "job";
const WORKERS: usize = 4;
const KEYS_PER_WORKER: usize = 16;

/// What a key holds: nothing, or one version of a shard whose bytes are
/// `pattern(len, version)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Present { version: u64, len: usize },
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Absent => write!(f, "absent"),
            State::Present { version, len } => write!(f, "v{version} ({len} bytes)"),
        }
    }
}

/// One key as the clients know it.
#[derive(Clone, Debug)]
struct Key {
    name: String,
    /// What a fetch returns now.
    current: State,
    /// The last state an acknowledgement made durable.
    durable: State,
    /// Write-back versions acknowledged since: each may or may not have
    /// been flushed when the power went.
    write_back: Vec<State>,
    /// The target of the operation in flight at the cut: done or not.
    in_flight: Option<State>,
}

impl Key {
    fn new(name: String) -> Key {
        Key {
            name,
            current: State::Absent,
            durable: State::Absent,
            write_back: Vec::new(),
            in_flight: None,
        }
    }

    /// What the key may hold after a power cut.
    fn survivors(&self) -> Vec<State> {
        let mut states = vec![self.durable];
        states.extend(&self.write_back);
        states.extend(self.in_flight);
        states
    }

    fn settle(&mut self, state: State) {
        self.current = state;
        self.durable = state;
        self.write_back.clear();
        self.in_flight = None;
    }
}

/// Counts of a run, printed at its end.
#[derive(Default, Debug)]
struct Tally {
    durable_puts: u64,
    write_back_puts: u64,
    deletes: u64,
    fetches: u64,
    /// After a cut: keys with acknowledged write-back versions where one
    /// was found (flushed in time), or the durable state before them.
    write_back_kept: u64,
    write_back_lost: u64,
    /// Operations in flight at a cut whose effect was found, or not.
    in_flight_landed: u64,
    in_flight_lost: u64,
}

/// A small deterministic generator (SplitMix64): a run replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A shard length: small and unaligned, whole 4 KiB blocks, or anything up
/// to 768 KiB.
fn shard_len(rng: &mut Rng) -> usize {
    match rng.below(3) {
        0 => 1 + rng.below(4096) as usize,
        1 => 4096 * (1 + rng.below(256) as usize),
        _ => 1 + rng.below(768 << 10) as usize,
    }
}

/// What one worker did until the power went.
struct WorkerReport {
    keys: Vec<Key>,
    tally: Tally,
    /// An error before the cut: a failure of the daemon, not of the power.
    unexpected: Option<String>,
}

/// Puts, replaces, deletes and fetches `keys` (this worker's alone, one
/// operation at a time) until an operation fails, which it should only
/// after `cut` is set.
async fn work(
    endpoint: String,
    mut keys: Vec<Key>,
    mut rng: Rng,
    versions: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
) -> WorkerReport {
    let mut tally = Tally::default();
    let client = match Client::connect(&endpoint).await {
        Ok(client) => client,
        Err(e) => {
            let unexpected = (!cut.load(Ordering::SeqCst)).then(|| format!("connect: {e}"));
            return WorkerReport {
                keys,
                tally,
                unexpected,
            };
        }
    };
    loop {
        let key = &mut keys[rng.below(KEYS_PER_WORKER as u64) as usize];
        let roll = rng.below(100);
        let present = key.current != State::Absent;
        let outcome: Result<(), (State, ClientError)> = if present && roll >= 85 {
            // Fetch: what the key holds now, byte for byte.
            let State::Present { version, len } = key.current else {
                unreachable!()
            };
            match client.fetch(NAMESPACE, &key.name).await {
                Ok(shard) => {
                    assert_eq!(shard.meta.version, version, "{}: fetched another version", key.name);
                    assert!(
                        shard.data == pattern(len, version),
                        "{} v{version}: wrong bytes",
                        key.name
                    );
                    tally.fetches += 1;
                    Ok(())
                }
                // A fetch changes nothing: what the key may hold stays.
                Err(e) => Err((key.current, e)),
            }
        } else if present && roll >= 65 {
            match client.delete(NAMESPACE, &key.name, None).await {
                Ok(_) => {
                    key.settle(State::Absent);
                    tally.deletes += 1;
                    Ok(())
                }
                Err(e) => Err((State::Absent, e)),
            }
        } else {
            let version = versions.fetch_add(1, Ordering::SeqCst);
            let len = shard_len(&mut rng);
            let state = State::Present { version, len };
            let durability = if roll.is_multiple_of(3) {
                Durability::WriteBack
            } else {
                Durability::Durable
            };
            let options = PutOptions {
                version: Some(version),
                durability,
                ..PutOptions::default()
            };
            match client.put(NAMESPACE, &key.name, pattern(len, version), options).await {
                Ok(meta) => {
                    assert_eq!(meta.version, version);
                    if durability == Durability::WriteBack {
                        key.current = state;
                        key.write_back.push(state);
                        tally.write_back_puts += 1;
                    } else {
                        key.settle(state);
                        tally.durable_puts += 1;
                    }
                    Ok(())
                }
                Err(e) => Err((state, e)),
            }
        };
        if let Err((target, e)) = outcome {
            // Maybe done, maybe not: both are allowed after the cut.
            key.in_flight = Some(target);
            let unexpected = (!cut.load(Ordering::SeqCst)).then(|| format!("{}: {e}", key.name));
            return WorkerReport {
                keys,
                tally,
                unexpected,
            };
        }
    }
}

/// Checks the restarted daemon against what the clients were told, then
/// takes what it holds as the known state of every key.
async fn verify(daemon: &Process, keys: &mut [Vec<Key>], tally: &mut Tally, cut: usize) {
    let client = Client::connect(&daemon.endpoint()).await.unwrap();
    let mut listed: BTreeMap<String, u64> = client
        .list(NAMESPACE, "")
        .await
        .unwrap()
        .into_iter()
        .map(|meta| (meta.key.as_str().to_string(), meta.version))
        .collect();
    for key in keys.iter_mut().flatten() {
        let survivors = key.survivors();
        let found = match listed.remove(&key.name) {
            None => State::Absent,
            Some(version) => {
                let written = survivors
                    .iter()
                    .find(|s| matches!(s, State::Present { version: v, .. } if *v == version));
                let Some(&State::Present { len, .. }) = written else {
                    panic!(
                        "after cut {cut}: {} holds v{version}, which no acknowledged or in-flight put wrote \
                         (it may hold: {})",
                        key.name,
                        list(&survivors)
                    );
                };
                let shard = client.fetch(NAMESPACE, &key.name).await.unwrap_or_else(|e| {
                    panic!("after cut {cut}: {} v{version} is listed but unreadable: {e}", key.name)
                });
                assert!(
                    shard.data == pattern(len, version),
                    "after cut {cut}: {} v{version} is not the bytes that were put",
                    key.name
                );
                State::Present { version, len }
            }
        };
        assert!(
            survivors.contains(&found),
            "after cut {cut}: {} is {found}, but the acknowledgements say it may only be: {}",
            key.name,
            list(&survivors)
        );
        match key.in_flight {
            Some(target) if target != key.current && found == target => tally.in_flight_landed += 1,
            Some(target) if target != key.current => tally.in_flight_lost += 1,
            _ => {}
        }
        if !key.write_back.is_empty() {
            if key.write_back.contains(&found) {
                tally.write_back_kept += 1;
            } else if found == key.durable {
                tally.write_back_lost += 1;
            }
        }
        key.settle(found);
    }
    assert!(listed.is_empty(), "after cut {cut}: shards no client put: {listed:?}");
    let status = client.status().await.unwrap();
    assert_eq!(status.quarantined, 0, "after cut {cut}: shards were quarantined");
    let leftovers = std::fs::read_dir(daemon.data.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "after cut {cut}: files left in tmp/");
}

fn list(states: &[State]) -> String {
    states.iter().map(State::to_string).collect::<Vec<_>>().join(", ")
}

fn start(dir: &std::path::Path, data: &std::path::Path, engine: &str) -> Process {
    let config = "[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\n";
    Process::launch(Launch {
        dir,
        engine,
        tcp: "off",
        config,
        data_dirs: &[data.to_path_buf()],
        wrapper: &[],
    })
}

#[test]
fn acknowledged_writes_survive_power_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs = match Ext4Image::create(dir.path(), "drive", "512M") {
        Ok(fs) => fs,
        Err(e) => return skipped(format!("power cut test: cannot mount an ext4 image ({e})")),
    };
    let cuts: usize = std::env::var("SHARDD_POWER_CUTS").map_or(50, |n| n.parse().expect("SHARDD_POWER_CUTS"));
    let seed: u64 = std::env::var("SHARDD_POWER_CUT_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.parse().expect("SHARDD_POWER_CUT_SEED"),
    );
    eprintln!("power cuts: {cuts}, seed {seed} (SHARDD_POWER_CUT_SEED replays it)");
    let mut rng = Rng(seed);
    let runtime = support::runtime();
    let engines = engines();
    let data = fs.path().join("data");
    let versions = Arc::new(AtomicU64::new(1));
    let mut keys: Vec<Vec<Key>> = (0..WORKERS)
        .map(|w| (0..KEYS_PER_WORKER).map(|k| Key::new(format!("w{w}/k{k}"))).collect())
        .collect();
    let mut tally = Tally::default();

    for cut_no in 0..=cuts {
        let engine = engines[cut_no % engines.len()];
        let mut daemon = start(dir.path(), &data, engine);
        runtime.block_on(verify(&daemon, &mut keys, &mut tally, cut_no));
        if cut_no == cuts {
            assert!(daemon.terminate().success());
            break;
        }

        let cut = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = keys
            .drain(..)
            .map(|worker_keys| {
                let worker_rng = Rng(rng.next());
                runtime.spawn(work(
                    daemon.endpoint(),
                    worker_keys,
                    worker_rng,
                    versions.clone(),
                    cut.clone(),
                ))
            })
            .collect();
        // From just after the start to well into a stream of puts and flushes.
        std::thread::sleep(Duration::from_millis(5 + rng.below(600)));
        cut.store(true, Ordering::SeqCst);
        fs.cut();
        daemon.kill9();
        for worker in workers {
            let report = runtime.block_on(worker).unwrap();
            if let Some(error) = report.unexpected {
                panic!("cut {cut_no} ({engine}): an operation failed before the power did: {error}");
            }
            keys.push(report.keys);
            tally.durable_puts += report.tally.durable_puts;
            tally.write_back_puts += report.tally.write_back_puts;
            tally.deletes += report.tally.deletes;
            tally.fetches += report.tally.fetches;
        }
        fs.remount();
    }
    eprintln!("power cuts: {cuts} survived on {engines:?}; {tally:?}");
    let acknowledged = tally.durable_puts + tally.write_back_puts + tally.deletes;
    assert!(acknowledged > cuts as u64, "the cuts came before any work: {tally:?}");
}
