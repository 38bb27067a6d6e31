//! `shardctl bench` against a real daemon: a short run that checks the
//! report is complete and made of measured numbers, beside fio when installed.

mod support;

use assert_cmd::Command;
use shardd::ctl::bench::baselines::installed;
use support::{Launch, Process};

/// A daemon with TCP and TLS on loopback, its certificates made by
/// `shardctl tls new`; and the CA that signs them.
fn tls_daemon(dir: &std::path::Path) -> (Process, std::path::PathBuf) {
    let pki = dir.join("pki");
    make(&["tls", "new", "--hosts", "127.0.0.1"], &pki);
    let config = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        pki.join("server.crt").display().to_string(),
        pki.join("server.key").display().to_string()
    );
    (loopback_daemon(dir, &config), pki.join("ca.crt"))
}

/// Runs `shardctl ARGS --out OUT` (key or certificate files, no daemon);
/// it must succeed.
fn make(args: &[&str], out: &std::path::Path) {
    let made = Command::cargo_bin("shardctl")
        .unwrap()
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

/// A daemon on `dir` with TCP on loopback and `extra` in its configuration.
fn loopback_daemon(dir: &std::path::Path, extra: &str) -> Process {
    let config = format!("[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\n{extra}");
    Process::launch(Launch {
        dir,
        engine: "auto",
        tcp: "127.0.0.1:0",
        config: &config,
        data_dirs: &[dir.join("data")],
        wrapper: &[],
    })
}

/// What `shardctl status --json` says of `daemon`.
fn status(daemon: &Process) -> serde_json::Value {
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .args(["--endpoint", &daemon.endpoint(), "status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `tcp://` endpoint `daemon` says it listens on.
fn tcp_endpoint(daemon: &Process) -> String {
    listening(daemon).into_iter().find(|e| e.starts_with("tcp://")).unwrap()
}

/// The endpoints `daemon` says it listens on.
fn listening(daemon: &Process) -> Vec<String> {
    let status = status(daemon);
    let listen = status["listen"].as_array().unwrap().iter();
    listen.filter_map(|e| e.as_str().map(str::to_string)).collect()
}

#[test]
fn a_short_cold_benchmark_over_tcp_puts_tls_rows_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, ca) = tls_daemon(dir.path());
    let listen = listening(&daemon);
    let tcp = listen.iter().find(|e| e.starts_with("tcp://")).unwrap();
    assert!(listen.iter().any(|e| e.starts_with("tls://")), "{listen:?}");
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .env_remove("SHARDD_ENDPOINT")
        .arg("--auth-key-file")
        .arg(daemon.key_file())
        .arg("--tls-ca")
        .arg(&ca)
        .args(["--endpoint", tcp, "bench", "cold", "--json", "--runs", "1"])
        .args([
            "--sizes",
            "1MiB",
            "--concurrency",
            "2",
            "--total",
            "4MiB",
            "--fio",
            "off",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let case = &report["cases"][0];
    assert!(case["fetch_bytes_per_sec"].as_f64().unwrap() > 0.0, "{case}");
    assert!(case["tls_put_bytes_per_sec"].as_f64().unwrap() > 0.0, "{case}");
    assert!(case["tls_fetch_bytes_per_sec"].as_f64().unwrap() > 0.0, "{case}");
}

#[test]
fn a_short_benchmark_reports_every_case_beside_fio() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Process::start(dir.path(), "auto");
    let fio = installed("fio");
    if !fio {
        support::skipped("fio's baseline in the cold benchmark check: fio is not installed");
    }
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .env_remove("SHARDD_ENDPOINT")
        .args([
            "--endpoint",
            &daemon.endpoint(),
            "bench",
            "cold",
            "--json",
            "--runs",
            "2",
        ])
        .args([
            "--sizes",
            "1MiB,4MiB",
            "--concurrency",
            "1,3",
            "--total",
            "8MiB",
            "--fio-size",
            "16MiB",
        ])
        .args(["--fio", if fio { "on" } else { "off" }])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        assert!(case["put_bytes_per_sec"].as_f64().unwrap() > 0.0, "{case}");
        assert!(case["fetch_bytes_per_sec"].as_f64().unwrap() > 0.0, "{case}");
        assert!(case["region_fetch_bytes_per_sec"].as_f64().unwrap() > 0.0, "{case}");
        assert_eq!(case["put_vs_fio"].is_number(), fio, "{case}");
        assert_eq!(case["fetch_vs_fio_fixedbufs"].is_number(), fio, "{case}");
    }
    let shards: Vec<u64> = cases.iter().map(|c| c["shards"].as_u64().unwrap()).collect();
    assert_eq!(shards, [8, 8, 2, 3]);
    if fio {
        assert!(report["fio"]["read_bytes_per_sec"].as_f64().unwrap() > 0.0);
        assert!(report["fio"]["write_bytes_per_sec"].as_f64().unwrap() > 0.0);
        assert!(report["fio"]["fixedbufs_read_bytes_per_sec"].as_f64().unwrap() > 0.0);
        assert!(report["fio"]["fixedbufs_write_bytes_per_sec"].as_f64().unwrap() > 0.0);
    }
    // The benchmark cleans up after itself (shards and fio files).
    let status = status(&daemon);
    assert_eq!(status["shards"], 0);
    // The fetches read the drive: every shard was loaded, none was a hit;
    // each run fetches every shard twice (into buffers, then into regions).
    let fetched: u64 = shards.iter().sum::<u64>() * 2 * 2;
    assert_eq!(status["arena"]["loads"], fetched, "{}", status["arena"]);
    assert_eq!(status["arena"]["hits"], 0, "{}", status["arena"]);
    let leftovers: Vec<_> = std::fs::read_dir(&daemon.data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("fio"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_short_hot_benchmark_reports_every_transport_beside_its_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, ca) = tls_daemon(dir.path());
    let iperf3 = installed("iperf3");
    let redis = installed("redis-server") && installed("redis-benchmark");
    if !iperf3 || !redis {
        support::skipped("iperf3's and redis's baselines in the hot benchmark check: they are not installed");
    }
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .env_remove("SHARDD_ENDPOINT")
        .env_remove("SHARDD_AUTH_KEY_FILE")
        // The TCP and TLS rows authenticate with the key the daemon made;
        // the TLS rows trust the CA that signed its certificate.
        .arg("--auth-key-file")
        .arg(daemon.key_file())
        .arg("--tls-ca")
        .arg(&ca)
        .args([
            "--endpoint",
            &daemon.endpoint(),
            "bench",
            "hot",
            "--json",
            "--runs",
            "1",
        ])
        .args(["--sizes", "1MiB", "--total", "16MiB", "--small-requests", "400"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = &report["sizes"][0];
    assert!(size["memcpy_bytes_per_sec"].as_f64().unwrap() > 0.0);
    assert!(size["views_held_bytes_per_sec"].as_f64().unwrap() > 0.0);
    let modes: Vec<&str> = size["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[0].as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        [
            "zero_copy_unix",
            "zero_copy_unix_batch",
            "copying_unix",
            "region_unix",
            "tcp",
            "region_tcp",
            "tls",
            "region_tls"
        ]
    );
    assert!(size["memcpy_batch_bytes_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        size["modes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m[1].as_f64().unwrap() > 0.0)
    );
    let small = report["small"].as_array().unwrap();
    assert_eq!(
        small.len(),
        8,
        "two concurrencies and a batched run, two Unix modes; batched into regions, sent whole and prepared"
    );
    let batches: Vec<(u64, u64, &str, bool)> = small
        .iter()
        .map(|s| {
            (
                s["concurrency"].as_u64().unwrap(),
                s["batch"].as_u64().unwrap(),
                s["mode"].as_str().unwrap(),
                s["prepared"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        batches[4..],
        [
            (4, 64, "zero_copy_unix", false),
            (4, 64, "copying_unix", false),
            (4, 64, "region_unix", false),
            (4, 64, "region_unix", true)
        ]
    );
    assert!(
        batches[..4]
            .iter()
            .all(|(_, batch, _, prepared)| *batch == 1 && !prepared)
    );
    for s in small {
        assert!(
            s["ops_per_sec"].as_f64().unwrap() > 0.0 && s["p50_us"].as_f64().unwrap() > 0.0,
            "{s}"
        );
        assert!(s["p99_us"].as_f64().unwrap() >= s["p50_us"].as_f64().unwrap());
    }
    assert_eq!(report["arena_misses"], 0, "every fetch was an arena hit");
    // The zero-copy fetches mapped the arena; the report says with what pages.
    let pages = &report["arena_pages"];
    assert!(pages["page_bytes"].as_u64().unwrap() >= 4096, "{pages}");
    assert!(pages["resident_bytes"].as_u64().unwrap() >= 1 << 20, "{pages}");
    let floor = &report["round_trip"];
    assert!(
        floor["per_sec"].as_f64().unwrap() > 0.0 && floor["p50_us"].as_f64().unwrap() > 0.0,
        "{floor}"
    );
    assert_eq!(report["iperf3_bytes_per_sec"].is_number(), iperf3);
    // Plain GETs at each concurrency, and pipelined ones beside the batches.
    let redis_runs = report["redis"].as_array().unwrap();
    assert_eq!(redis_runs.len(), if redis { 3 } else { 0 });
    if redis {
        assert_eq!(
            (redis_runs[2]["clients"].as_u64(), redis_runs[2]["pipeline"].as_u64()),
            (Some(8), Some(16))
        );
    }
}

#[test]
fn a_short_training_loop_over_two_daemons_reports_step_and_stall() {
    // Two nodes that share a key; the second is reached over TCP.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let key = dirs[0].path().join("job.key");
    make(&["key", "new", "--id", "job"], &key);
    let config = format!("[auth]\nkeys = [{:?}]\n", key.display().to_string());
    let daemons: Vec<Process> = dirs.iter().map(|d| loopback_daemon(d.path(), &config)).collect();
    let remote = tcp_endpoint(&daemons[1]);
    let endpoints = format!("{},{remote}", daemons[0].endpoint());
    for prefetch in [true, false] {
        let mut command = Command::cargo_bin("shardctl").unwrap();
        command
            .env_remove("SHARDD_ENDPOINT")
            .arg("--auth-key-file")
            .arg(&key)
            .args([
                "bench",
                "train",
                "--json",
                "--endpoints",
                &endpoints,
                "--layers",
                "3",
                "--layer-bytes",
                "1MiB",
                "--compute-ms",
                "20",
                "--steps",
                "3",
            ]);
        if !prefetch {
            command.arg("--no-prefetch");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(report["prefetch"], prefetch);
        assert_eq!(report["compute_ms_per_step"].as_f64(), Some(120.0));
        let step = report["step_ms"].as_f64().unwrap();
        let stall = report["stall_ms"].as_f64().unwrap();
        assert!(step >= 120.0, "a step lasts at least its compute: {report}");
        assert!(stall > 0.0 && stall < step, "{report}");
        assert!(report["stall_pct"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["gather_bytes_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    }
    // The benchmark leaves nothing behind.
    for daemon in &daemons {
        let out = Command::cargo_bin("shardctl")
            .unwrap()
            .env_remove("SHARDD_ENDPOINT")
            .args(["--endpoint", &daemon.endpoint(), "ls", "shardctl-bench-train"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("0 shards"), "{listing}");
    }
}

#[test]
fn a_short_files_benchmark_over_tcp_authenticates_with_the_daemons_key() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = loopback_daemon(dir.path(), "");
    let tcp = tcp_endpoint(&daemon);
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .env_remove("SHARDD_ENDPOINT")
        .arg("--auth-key-file")
        .arg(daemon.key_file())
        .args(["--endpoint", &tcp, "bench", "files", "--json", "--runs", "1"])
        .args(["--size", "4MiB", "--tensors", "2", "--dir"])
        .arg(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert!(row["bytes_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["baseline_bytes_per_sec"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[test]
fn a_short_soak_over_unix_and_tcp_checks_every_byte_and_reports_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = loopback_daemon(dir.path(), "");
    let tcp = tcp_endpoint(&daemon);
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .env_remove("SHARDD_ENDPOINT")
        .arg("--auth-key-file")
        .arg(daemon.key_file())
        .args(["--endpoint", &daemon.endpoint(), "bench", "soak", "--json"])
        .args(["--duration", "6s", "--clients", "16", "--keys-per-client", "4"])
        .args(["--max-size", "256KiB", "--tcp", &tcp])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["clients"], 16);
    assert_eq!(report["tcp_clients"], 8);
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["bytes_checked"].as_u64().unwrap() > 0, "{report}");
    let ops = report["ops"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o["op"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["put", "put_write_back", "fetch", "view", "prefetch", "evict", "delete"]
    );
    for op in ops {
        assert!(op["count"].as_u64().unwrap() > 0, "{op}");
        assert!(op["p99_us"].as_f64().unwrap() >= op["p50_us"].as_f64().unwrap(), "{op}");
    }
    // The daemon, found as the peer of its socket.
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(report["peak_anon_bytes"].as_u64().unwrap() > 0, "{report}");
    // The soak's shards are gone afterwards.
    assert_eq!(status(&daemon)["shards"], 0);
}

#[test]
fn a_short_restart_benchmark_compares_a_cold_and_a_warm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .args(["bench", "restart", "--json", "--runs", "1", "--arena", "64MiB"])
        .args([
            "--fill",
            "32MiB",
            "--shard-size",
            "4MiB",
            "--shardd",
            env!("CARGO_BIN_EXE_shardd"),
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["shards"], 8);
    let rows = report["rows"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r["restart"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["cold", "warm"]);
    let (cold, warm) = (&rows[0], &rows[1]);
    // Cold: every shard read from the drive; warm: every one an arena hit.
    assert_eq!(
        (cold["loads"].as_u64(), cold["adopted_shards"].as_u64()),
        (Some(8), Some(0)),
        "{cold}"
    );
    assert_eq!(
        (warm["hits"].as_u64(), warm["loads"].as_u64()),
        (Some(8), Some(0)),
        "{warm}"
    );
    assert_eq!(warm["adopted_shards"], 8, "{warm}");
    for row in rows {
        assert!(row["first_answer_secs"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["first_pass_gbps"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Its directory is removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
