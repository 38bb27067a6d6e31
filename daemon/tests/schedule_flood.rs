//! A flood of large schedules leaves the daemon's memory bounded: a
//! schedule is kept only for a namespace that holds shards, and all
//! schedules together hold at most `arena.max_schedule_keys` keys. The
//! daemon's resident memory is read from `/proc/PID/status`.

mod support;

use shardd_client::{Client, ClientError, PutOptions};
use shardd_protocol::Status;
use support::{Launch, Process};

/// The daemon's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_flood_leaves_daemon_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Process::launch(Launch {
        dir: dir.path(),
        engine: "psync",
        tcp: "off",
        config: "[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\nmax_schedule_keys = 20000\n",
        data_dirs: &[dir.path().join("data")],
        wrapper: &[],
    });
    let pid = daemon.child.id();
    let client = Client::connect(&daemon.endpoint()).await.unwrap();
    // 4,800 keys of 190 bytes: about 960 KB per request.
    let keys: Vec<String> = (0..4800).map(|i| format!("{i:0>190}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for job in 0..30 {
        client
            .put(&format!("job{job}"), "w", b"x".to_vec(), PutOptions::default())
            .await
            .unwrap();
    }
    let before = rss_mib(pid);

    let (mut kept, mut no_shards, mut over_cap) = (0, 0, 0);
    for i in 0..60 {
        // Half for namespaces with shards, half for namespaces without.
        let namespace = if i % 2 == 0 {
            format!("job{}", i / 2)
        } else {
            format!("none{i}")
        };
        match client.set_schedule(&namespace, &refs).await {
            Ok(()) => kept += 1,
            Err(e @ ClientError::Remote { .. }) if e.status() == Some(Status::NotFound) => no_shards += 1,
            Err(e @ ClientError::Remote { .. }) if e.status() == Some(Status::TooLarge) => {
                assert!(e.to_string().contains("arena.max_schedule_keys"), "{e}");
                over_cap += 1;
            }
            Err(e) => panic!("schedule {i}: {e}"),
        }
    }
    let after = rss_mib(pid);
    println!(
        "schedule flood: {kept} kept, {no_shards} for empty namespaces, {over_cap} over the cap; RSS {before} -> {after} MiB"
    );
    assert_eq!((kept, no_shards, over_cap), (4, 30, 26));
    // 4 schedules of 4,800 keys: a few MiB. Without the limits the same
    // flood kept 60 schedules, some 600 MiB.
    assert!(after < before + 64, "RSS grew from {before} to {after} MiB");
    client.ping().await.unwrap();
}
