//! Limits no client can exhaust, against a real daemon: connection slots
//! per peer and for the Unix socket, the idle timeout after the hello
//! (and the client's pings that keep a connection open), leases of views
//! per connection and their time limit, and schedules. Each refusal names
//! its setting.

use std::time::Duration;

use shardd_client::{ByteRange, PutOptions};
use shardd_protocol::{Opcode, ScheduleRequest, Status};
use shardd_tests::{RawClient, TestDaemon, engines, eventually};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    shardd::ctl::bench::pattern(len, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_flood_leaves_unix_clients_served_and_idle_connections_are_closed() {
    let config = "[server]\nmax_connections = 16\nunix_reserved_connections = 4\nidle_timeout = \"2s\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    // TCP peers take what they may: 12 of the 16 slots; the 13th is refused.
    let mut flood = Vec::new();
    for _ in 0..12 {
        flood.push(RawClient::hello(&daemon, true, "idle", false).await);
    }
    let mut refused = RawClient::connect(&daemon, true).await;
    let (header, control) = refused.recv().await.expect("a refusal");
    assert_eq!(header.status, Status::Busy);
    let message = String::from_utf8_lossy(&control);
    assert!(message.contains("server.unix_reserved_connections"), "{message}");
    // The Unix socket is still served.
    let local = daemon.client(false).await;
    local.ping().await.unwrap();

    // Idle connections that do not ping are closed after the idle timeout;
    // the client crate pings, so its idle connection stays open.
    for raw in &mut flood {
        assert!(raw.recv().await.is_none(), "an idle raw connection is closed");
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    local.ping().await.expect("a client that pings keeps its connection");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_connection() {
    let config = "[server]\nmax_connections = 16\nmax_connections_per_peer = 5";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(RawClient::hello(&daemon, false, "hog", false).await);
    }
    let mut refused = RawClient::connect(&daemon, false).await;
    let (header, control) = refused.recv().await.expect("a refusal");
    assert_eq!(header.status, Status::Busy);
    let message = String::from_utf8_lossy(&control);
    assert!(message.contains("has 5 connections open"), "{message}");
    assert!(message.contains("server.max_connections_per_peer"), "{message}");
    // A closed connection's slot is given back (once the daemon has seen
    // the close).
    drop(held);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(client) = shardd_client::Client::connect(&daemon.unix_endpoint()).await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed connection's slot is given back");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_hog_is_cut_off_at_its_limits_and_its_leases_run_out() {
    for engine in engines() {
        let config =
            "[arena]\nsize = \"16MiB\"\n[server]\nmax_leases = 3\nmax_lease_bytes = \"8MiB\"\nlease_timeout = \"1s\"";
        let mut daemon = TestDaemon::start(engine, config).await;
        let hog = daemon.client(false).await;
        let other = daemon.client(false).await;
        assert!(hog.zero_copy());
        for i in 0..6 {
            hog.put("job", &format!("s{i}"), pattern(2 * MIB, i), PutOptions::default())
                .await
                .unwrap();
        }
        // Three views: the count limit.
        let mut views = Vec::new();
        for i in 0..3 {
            views.push(hog.fetch_view("job", &format!("s{i}"), None).await.unwrap());
        }
        let err = hog.fetch_view("job", "s3", None).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::Busy), "{engine:?}: {err}");
        assert!(err.to_string().contains("server.max_leases"), "{err}");
        // Two views of 2 MiB pinned: a view of 6 MiB would pass 8 MiB.
        views.pop();
        let big = hog.put("job", "big", pattern(6 * MIB, 9), PutOptions::default()).await;
        big.unwrap();
        let err = hog.fetch_view("job", "big", None).await.unwrap_err();
        assert!(err.to_string().contains("server.max_lease_bytes"), "{engine:?}: {err}");
        // Another client is not held back by the hog's leases.
        let view = other.fetch_view("job", "s5", None).await.unwrap();
        assert_eq!(view.to_vec().unwrap(), pattern(2 * MIB, 5));
        drop(view);

        // After the lease time limit, the hog's views say so, and the daemon
        // has taken the leases back: the hog may lease again.
        assert!(
            eventually(Duration::from_secs(5), || views.iter().all(|v| v.check().is_err())).await,
            "{engine:?}: views report their lease ran out"
        );
        let err = views[0].to_vec().unwrap_err();
        assert!(err.to_string().contains("server.lease_timeout"), "{engine:?}: {err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut again = Vec::new();
        for i in 0..3 {
            again.push(hog.fetch_view("job", &format!("s{i}"), None).await.unwrap());
        }
        assert_eq!(again[2].to_vec().unwrap(), pattern(2 * MIB, 2));
        daemon.stop().await;
    }
}

/// Views of one shard, whole or in ranges, pin its bytes once: a client
/// copying a shard piece by piece is not cut off by its own views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_one_shard_pin_its_bytes_once() {
    for engine in engines() {
        let config = "[arena]\nsize = \"16MiB\"\n[server]\nmax_lease_bytes = \"4MiB\"";
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        let data = pattern(3 * MIB, 1);
        client
            .put("job", "w", data.clone(), PutOptions::default())
            .await
            .unwrap();
        let mut views = vec![client.fetch_view("job", "w", None).await.unwrap()];
        for i in 0..3u64 {
            let range = ByteRange {
                offset: i * MIB as u64,
                len: MIB as u64,
            };
            views.push(client.fetch_view("job", "w", Some(range)).await.unwrap());
        }
        views.push(client.fetch_view("job", "w", None).await.unwrap());
        assert_eq!(views[4].to_vec().unwrap(), data, "{engine:?}");
        assert_eq!(views[2].to_vec().unwrap(), &data[MIB..2 * MIB], "{engine:?}");
        // Another shard's bytes still count.
        client
            .put("job", "x", pattern(2 * MIB, 2), PutOptions::default())
            .await
            .unwrap();
        let err = client.fetch_view("job", "x", None).await.unwrap_err();
        assert!(err.to_string().contains("server.max_lease_bytes"), "{engine:?}: {err}");
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_kept_only_for_namespaces_with_shards_and_capped_in_keys() {
    let config = "[arena]\nmax_schedule_keys = 100";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let client = daemon.client(false).await;
    let keys: Vec<String> = (0..60).map(|i| format!("layers.{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let err = client.set_schedule("empty", &refs).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::NotFound), "{err}");
    assert!(err.to_string().contains("holds no shards"), "{err}");

    for ns in ["a", "b"] {
        client.put(ns, "w", b"x".to_vec(), PutOptions::default()).await.unwrap();
    }
    client.set_schedule("a", &refs).await.unwrap();
    let err = client.set_schedule("b", &refs).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::TooLarge), "{err}");
    assert!(err.to_string().contains("arena.max_schedule_keys (100)"), "{err}");
    client.set_schedule("b", &refs[..40]).await.unwrap();
    // Replacing a's schedule counts its old keys once.
    client.set_schedule("a", &refs).await.unwrap();
    // An empty order removes a schedule, and frees its keys.
    client.set_schedule("a", &[]).await.unwrap();
    client.set_schedule("b", &refs).await.unwrap();

    // A raw request for an empty namespace is refused the same way.
    let mut raw = RawClient::hello(&daemon, false, "raw", false).await;
    let request = ScheduleRequest {
        namespace: shardd_protocol::Namespace::new("nothing").unwrap(),
        keys: vec![shardd_protocol::Key::new("k").unwrap()],
    };
    raw.request(Opcode::Schedule, 7, &request).await;
    let (header, _) = raw.recv().await.unwrap();
    assert_eq!(header.status, Status::NotFound);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_only_slow_themselves() {
    for engine in engines() {
        // No arena: every fetch reads the drive through chunk buffers. The
        // budget holds 48 MiB shared and eight floors of two 1 MiB chunks.
        let config = "[arena]\nsize = 0\n[storage]\nbuffer_memory = \"64MiB\"\n\
                      [server]\nconnection_buffer_memory = \"16MiB\"\nio_timeout = \"60s\"";
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        client
            .put("job", "big", pattern(70 * MIB, 1), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "small", pattern(MIB, 2), PutOptions::default())
            .await
            .unwrap();
        // Six peers ask for the big shard and never read their answers:
        // together they would hold every shared buffer for a minute.
        let mut slow = Vec::new();
        for i in 0..6 {
            let mut raw = RawClient::hello(&daemon, false, "slow", false).await;
            let request = shardd_protocol::FetchRequest {
                namespace: shardd_protocol::Namespace::new("job").unwrap(),
                key: shardd_protocol::Key::new("big").unwrap(),
                range: None,
                max_len: None,
            };
            raw.request(Opcode::Fetch, 10 + i, &request).await;
            slow.push(raw);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The other client's fetch goes on with its own floor of buffers.
        let started = std::time::Instant::now();
        let fetched = tokio::time::timeout(Duration::from_secs(20), client.fetch("job", "small")).await;
        let fetched = fetched.unwrap_or_else(|_| panic!("{engine:?}: a 1 MiB fetch waited 20 s behind slow readers"));
        assert_eq!(fetched.unwrap().data, pattern(MIB, 2));
        println!(
            "{engine:?}: 1 MiB fetch beside 6 slow readers took {:?}",
            started.elapsed()
        );
        drop(slow);
        daemon.stop().await;
    }
}
