//! A restart that keeps the arena (`arena.keep_on_restart`). The test plays
//! systemd's part ([`FdStore`]): a notification socket that keeps the
//! descriptors the daemon stores (`FDSTORE=1`), drops those it removes, and
//! passes them to the next start as systemd does (`LISTEN_FDS` from
//! descriptor 3, `LISTEN_FDNAMES`, `LISTEN_PID`).
//!
//! The real `shardd` binary, on both I/O engines: the first fetches after a
//! restart are arena hits and read the same bytes; shards changed on the
//! drive while the daemon was down, or whose bytes in the arena were
//! changed, are left out and read from the drive; an arena of another size,
//! or a configuration that no longer keeps it, starts cold and says why.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use shardd::ctl::bench::pattern;
use shardd::ctl::bench::restart::FdStore;
use shardd_client::{Client, Durability, PutOptions};
use shardd_protocol::ArenaStatus;
use support::{engines, runtime, wait_for_log};

const MIB: usize = 1 << 20;

/// `shardd` on `dir` with `config`, its socket at `socket`, run as systemd
/// would run it with what `systemd` holds.
fn shardd(systemd: &mut FdStore, dir: &Path, engine: &str, config: &str, socket: &Path) -> Command {
    let file = dir.join("shardd.toml");
    std::fs::write(&file, config).unwrap();
    let mut command = systemd.command(Path::new(env!("CARGO_BIN_EXE_shardd"))).unwrap();
    command
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(socket)
        .args([
            "--tcp",
            "off",
            "--http",
            "off",
            "--io-engine",
            engine,
            "--log-level",
            "info",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Starts `shardd` on `dir` and waits until it serves.
fn start(systemd: &mut FdStore, dir: &Path, engine: &str, config: &str, log: &Path) -> Child {
    let child = shardd(systemd, dir, engine, config, &dir.join("shardd.sock"))
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    wait_for_log(log, "serving");
    child
}

fn stop(child: &mut Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "shardd exited with {status}");
}

/// The configuration: `keep` sets `arena.keep_on_restart`; without it,
/// `"auto"` keeps the arena because systemd (this test) started the daemon.
fn config(size: &str, keep: Option<bool>) -> String {
    let keep = keep.map_or(String::new(), |keep| format!("keep_on_restart = {keep}\n"));
    format!("[storage]\nmin_free = 0\n[arena]\nsize = \"{size}\"\n{keep}")
}

/// The shards put, by key: (seed, length).
const SHARDS: &[(&str, u64, usize)] = &[
    ("layers.0.weight", 1, 3 * MIB + 5),
    ("layers.0.bias", 2, 4096),
    ("layers.1.weight", 3, 2 * MIB),
    ("layers.1.bias", 4, 100_000),
    ("layers.2.weight", 5, MIB),
    ("optimizer.step", 6, 17),
];
/// Put write-back: flushed at the stop, and kept.
const WRITE_BACK: (&str, u64, usize) = ("layers.2.bias", 7, 300_000);

async fn arena_status(client: &Client) -> ArenaStatus {
    client.status().await.unwrap().arena.expect("an arena")
}

/// Fetches every shard of `expected` (key, seed, length) and checks its bytes.
async fn fetch_all(client: &Client, expected: &[(&str, u64, usize)]) {
    for &(key, seed, len) in expected {
        let shard = client.fetch("job", key).await.unwrap();
        assert!(shard.data == pattern(len, seed), "{key}: wrong bytes");
    }
}

#[test]
fn a_restart_keeps_the_arena_and_checks_each_shard_against_the_drive() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let mut systemd = FdStore::bind(&dir.path().join("notify.sock")).unwrap();
        let rt = runtime();
        let endpoint = format!("unix://{}", dir.path().join("shardd.sock").display());
        let mut all: Vec<(&str, u64, usize)> = SHARDS.to_vec();
        all.push(WRITE_BACK);

        // A first start: nothing passed, a cold arena.
        let log = dir.path().join("first.log");
        let mut daemon = start(&mut systemd, dir.path(), engine, &config("64MiB", None), &log);
        rt.block_on(async {
            let client = Client::connect(&endpoint).await.unwrap();
            assert_eq!(arena_status(&client).await.adopted_shards, 0);
            for &(key, seed, len) in SHARDS {
                client
                    .put("job", key, pattern(len, seed), PutOptions::default())
                    .await
                    .unwrap();
            }
            let write_back = PutOptions {
                durability: Durability::WriteBack,
                ..PutOptions::default()
            };
            let (key, seed, len) = WRITE_BACK;
            client.put("job", key, pattern(len, seed), write_back).await.unwrap();
            assert_eq!(arena_status(&client).await.resident_shards, all.len() as u64);
        });
        stop(&mut daemon);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("7 shards"), "the stop says what it handed over:\n{text}");
        assert_eq!(
            systemd.names().unwrap(),
            ["shardd-arena", "shardd-arena-index"],
            "[{engine}]"
        );

        // A start that fails before it serves (its socket cannot be bound)
        // leaves them with systemd for the next.
        let unbindable = dir.path().join("missing").join("shardd.sock");
        let failed = shardd(&mut systemd, dir.path(), engine, &config("64MiB", None), &unbindable)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!failed.success());
        assert_eq!(systemd.names().unwrap(), ["shardd-arena", "shardd-arena-index"]);

        // Restarted with them: every shard is an arena hit, none is read
        // from the drive, and local clients map the kept arena.
        let log = dir.path().join("warm.log");
        let mut daemon = start(&mut systemd, dir.path(), engine, &config("64MiB", None), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("warm restart"), "{text}");
        assert!(
            systemd.names().unwrap().is_empty(),
            "the daemon told systemd to drop its copies"
        );
        let status = Command::new(env!("CARGO_BIN_EXE_shardctl"))
            .args(["--endpoint", &endpoint, "status"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&status.stdout);
        assert!(
            said.contains("warm start   7 shards") && said.contains("0 left out"),
            "shardctl status says so:\n{said}"
        );
        rt.block_on(async {
            let client = Client::connect(&endpoint).await.unwrap();
            assert!(client.zero_copy(), "{:?}", client.zero_copy_refused());
            let before = arena_status(&client).await;
            assert_eq!(
                (before.adopted_shards, before.adoption_discarded),
                (7, 0),
                "[{engine}]\n{text}"
            );
            let bytes: usize = all.iter().map(|s| s.2).sum();
            assert_eq!(before.adopted_bytes, bytes as u64);
            assert_eq!(before.resident_shards, 7);
            fetch_all(&client, &all).await;
            let after = arena_status(&client).await;
            assert_eq!(after.hits - before.hits, 7, "[{engine}] every fetch is an arena hit");
            assert_eq!(
                (after.misses, after.loads),
                (0, 0),
                "[{engine}] nothing read from the drive"
            );
        });
        stop(&mut daemon);
        assert_eq!(systemd.names().unwrap(), ["shardd-arena", "shardd-arena-index"]);

        // While it is down: another daemon (not started by systemd, so
        // handed nothing) replaces one shard and deletes another; and one
        // byte of a third changes in the kept arena itself (the first shard
        // put took its first blocks).
        let log = dir.path().join("between.log");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let mut between = FdStore::bind(&elsewhere.join("notify.sock")).unwrap();
        let mut other = start(&mut between, dir.path(), engine, &config("64MiB", Some(false)), &log);
        rt.block_on(async {
            let client = Client::connect(&endpoint).await.unwrap();
            client
                .put("job", "layers.1.weight", pattern(2 * MIB, 30), PutOptions::default())
                .await
                .unwrap();
            client.delete("job", "layers.1.bias", None).await.unwrap();
        });
        stop(&mut other);
        let arena = std::fs::File::from(systemd.get("shardd-arena").unwrap().try_clone().unwrap());
        let mut byte = [0u8];
        arena.read_exact_at(&mut byte, 0).unwrap();
        arena.write_all_at(&[!byte[0]], 0).unwrap();

        let log = dir.path().join("checked.log");
        let mut daemon = start(&mut systemd, dir.path(), engine, &config("64MiB", None), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        for (key, why) in [
            ("layers.0.weight", "CRC32C"),
            ("layers.1.weight", "the drive holds version 2 and the arena version 1"),
            ("layers.1.bias", "no longer on the drive"),
        ] {
            assert!(
                text.lines().any(|l| l.contains(key) && l.contains(why)),
                "[{engine}] {key} left out because {why}:\n{text}"
            );
        }
        rt.block_on(async {
            let client = Client::connect(&endpoint).await.unwrap();
            let before = arena_status(&client).await;
            assert_eq!((before.adopted_shards, before.adoption_discarded), (4, 3), "[{engine}]");
            let now: Vec<(&str, u64, usize)> = all
                .iter()
                .copied()
                .filter(|s| s.0 != "layers.1.bias")
                .map(|s| if s.0 == "layers.1.weight" { (s.0, 30, s.2) } else { s })
                .collect();
            fetch_all(&client, &now).await;
            let after = arena_status(&client).await;
            assert_eq!(after.hits - before.hits, 4, "[{engine}]");
            assert_eq!(after.loads, 2, "[{engine}] the two left out are read from the drive");
            let gone = client.fetch("job", "layers.1.bias").await.unwrap_err();
            assert!(gone.is_not_found(), "{gone:?}");
        });
        stop(&mut daemon);

        // Another arena size: cold, and the log says why.
        let log = dir.path().join("resized.log");
        let mut daemon = start(&mut systemd, dir.path(), engine, &config("128MiB", Some(true)), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("starting with a cold arena: arena.size changed"),
            "{text}"
        );
        assert!(systemd.names().unwrap().is_empty());
        rt.block_on(async {
            let client = Client::connect(&endpoint).await.unwrap();
            let status = arena_status(&client).await;
            assert_eq!((status.adopted_shards, status.resident_shards), (0, 0));
            client.fetch("job", "layers.0.weight").await.unwrap();
            assert_eq!(arena_status(&client).await.loads, 1);
        });
        stop(&mut daemon);

        // The arena back without its index (a stop cut short between the
        // two): cold, saying why, and systemd drops what it had.
        assert_eq!(systemd.names().unwrap(), ["shardd-arena", "shardd-arena-index"]);
        systemd.remove("shardd-arena-index").unwrap();
        let log = dir.path().join("no-index.log");
        let mut daemon = start(&mut systemd, dir.path(), engine, &config("128MiB", Some(true)), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("starting with a cold arena: systemd passed the arena without the index"),
            "{text}"
        );
        assert!(systemd.names().unwrap().is_empty(), "systemd dropped the arena");
        rt.block_on(async {
            let client = Client::connect(&endpoint).await.unwrap();
            let status = arena_status(&client).await;
            assert_eq!((status.adopted_shards, status.resident_shards), (0, 0));
        });
        stop(&mut daemon);

        // Kept by that one; the next no longer keeps its arena.
        assert_eq!(systemd.names().unwrap(), ["shardd-arena", "shardd-arena-index"]);
        let log = dir.path().join("not-kept.log");
        let mut daemon = start(&mut systemd, dir.path(), engine, &config("128MiB", Some(false)), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("arena.keep_on_restart is off"), "{text}");
        stop(&mut daemon);
        assert!(
            systemd.names().unwrap().is_empty(),
            "a daemon that does not keep its arena stores nothing"
        );
    }
}
