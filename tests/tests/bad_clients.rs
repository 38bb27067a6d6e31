//! Clients that misbehave get an error status or a closed connection, lose
//! nothing for anybody else, and never take the daemon down.

use std::time::Duration;

use shardd_client::{EvictMode, PutOptions};
use shardd_protocol::{FrameHeader, HelloRequest, Key, Namespace, Opcode, PutRequest, StatRequest, Status, codec};
use shardd_tests::{RawClient, TestDaemon, engines, eventually, files_under, pattern};

async fn raw_connect(daemon: &TestDaemon) -> RawClient {
    RawClient::connect(daemon, true).await
}

async fn raw_hello(daemon: &TestDaemon) -> RawClient {
    RawClient::hello(daemon, true, "raw test", false).await
}

fn stat_control(key: &str) -> Vec<u8> {
    codec::encode(&StatRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new(key).unwrap(),
    })
    .unwrap()
}

/// The daemon still serves a well-behaved client correctly.
async fn still_serves(daemon: &TestDaemon) {
    let client = daemon.client(true).await;
    let data = pattern(2 << 20, 77);
    client
        .put("job", "healthy", data.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(client.fetch("job", "healthy").await.unwrap().data, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bad_versions_and_requests_before_hello_close_the_connection() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;

    let mut raw = raw_connect(&daemon).await;
    raw.write_raw(b"GET / HTTP/1.1\r\nHost: shardd\r\n\r\n").await;
    raw.expect_error(Status::BadRequest, 0, "bad magic").await;
    raw.expect_closed().await;

    let mut raw = raw_connect(&daemon).await;
    let mut header = FrameHeader::request(Opcode::Hello, 1, 0, 0).encode();
    header[4] = 7; // protocol version 7
    raw.write_raw(&header).await;
    raw.expect_error(Status::UnsupportedVersion, 0, "version 7").await;
    raw.expect_closed().await;

    let mut raw = raw_connect(&daemon).await;
    raw.send(Opcode::Stat, 5, &stat_control("k"), &[]).await;
    raw.expect_error(Status::BadRequest, 5, "first request must be hello")
        .await;
    raw.expect_closed().await;

    let mut raw = raw_connect(&daemon).await;
    let hello = HelloRequest {
        min_version: 2,
        max_version: 3,
        client: "future".into(),
        want_arena: false,
        auth: None,
    };
    raw.send(Opcode::Hello, 1, &codec::encode(&hello).unwrap(), &[]).await;
    raw.expect_error(Status::UnsupportedVersion, 1, "2..=3").await;
    raw.expect_closed().await;

    still_serves(&daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lengths_are_refused_before_anything_is_allocated() {
    let mut daemon = TestDaemon::start(engines()[0], "[storage]\nmax_shard_size = \"64MiB\"").await;

    let mut raw = raw_hello(&daemon).await;
    let header = FrameHeader::request(Opcode::Stat, 9, u32::MAX, 0);
    raw.write_raw(&header.encode()).await;
    raw.expect_error(Status::TooLarge, 9, "control message").await;
    raw.expect_closed().await;

    let mut raw = raw_hello(&daemon).await;
    let header = FrameHeader::request(Opcode::Put, 10, 0, u64::MAX);
    raw.write_raw(&header.encode()).await;
    raw.expect_error(Status::TooLarge, 10, "payload").await;
    raw.expect_closed().await;

    // Through the client: a shard above the daemon's limit is refused
    // before it is sent, and the connection stays usable.
    let client = daemon.client(false).await;
    let err = client
        .put("job", "huge", vec![0u8; (64 << 20) + 1], PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, shardd_client::ClientError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("limit of 67108864"), "{err}");
    client.ping().await.unwrap();

    still_serves(&daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_opcodes_malformed_controls_and_stray_payloads_keep_the_connection() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let mut raw = raw_hello(&daemon).await;

    let mut header = FrameHeader::request(Opcode::Ping, 20, 3, 5).encode();
    header[6] = 0x77; // opcode 0x77
    raw.write_raw(&header).await;
    raw.write_raw(b"abcdefgh").await;
    raw.expect_error(Status::BadRequest, 20, "unknown opcode 119").await;

    raw.send(Opcode::Stat, 21, b"\xff\xff\xff", &[]).await;
    raw.expect_error(Status::BadRequest, 21, "malformed").await;

    raw.send(Opcode::Stat, 22, &stat_control("k"), b"stray payload").await;
    raw.expect_error(Status::BadRequest, 22, "takes no payload").await;

    // A put whose control does not decode: the payload is skipped, the answer says why.
    raw.send(Opcode::Put, 23, b"nonsense", &[1u8; 1000]).await;
    raw.expect_error(Status::BadRequest, 23, "malformed").await;

    raw.send(Opcode::Ping, 24, &[], &[]).await;
    let (header, _) = raw.recv().await.unwrap();
    assert_eq!((header.status, header.request_id), (Status::Ok, 24));

    // A response flag from a client is a protocol violation: the connection closes.
    let mut bad = FrameHeader::request(Opcode::Ping, 25, 0, 0);
    bad.flags = shardd_protocol::header::Flags::RESPONSE;
    raw.write_raw(&bad.encode()).await;
    raw.expect_error(Status::BadRequest, 25, "requests only").await;
    raw.expect_closed().await;

    still_serves(&daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frames_and_vanishing_writers_lose_nothing() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "").await;
        let client = daemon.client(true).await;
        client
            .put("job", "w", vec![1u8; 100], PutOptions::default())
            .await
            .unwrap();

        // Half a header, then gone.
        let mut raw = raw_hello(&daemon).await;
        raw.write_raw(&FrameHeader::request(Opcode::Ping, 2, 0, 0).encode()[..10])
            .await;
        drop(raw);

        // A put of a new version that stops after 3 of 16 MiB.
        let mut raw = raw_hello(&daemon).await;
        let put = PutRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("w").unwrap(),
            version: None,
            dtype: Default::default(),
            shape: vec![],
            crc32c: None,
            durability: Default::default(),
        };
        let control = codec::encode(&put).unwrap();
        let header = FrameHeader::request(Opcode::Put, 3, control.len() as u32, 16 << 20);
        raw.write_raw(&header.encode()).await;
        raw.write_raw(&control).await;
        raw.write_raw(&pattern(3 << 20, 1)).await;
        drop(raw);

        let tmp = daemon.data_dir().join("tmp");
        assert!(
            eventually(Duration::from_secs(10), || files_under(&tmp).is_empty()).await,
            "{engine:?}: the partial put's temp file is removed: {:?}",
            files_under(&tmp)
        );
        let shard = client.fetch("job", "w").await.unwrap();
        assert_eq!(
            (shard.meta.version, shard.data),
            (1, vec![1u8; 100]),
            "the old version is intact"
        );
        still_serves(&daemon).await;
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_harms_only_itself() {
    let config = "[server]\nio_timeout = \"2s\"\nconnection_buffer_memory = \"8MiB\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let client = daemon.client(false).await;
    client
        .put("job", "big", pattern(64 << 20, 3), PutOptions::default())
        .await
        .unwrap();
    // Off the arena, so that the greedy connection's first fetch is the one
    // that loads it back: the load must not wait for it to read.
    let demoted = client.evict("job", &["big"], EvictMode::Demote).await.unwrap();
    assert_eq!(demoted.evicted, [Key::new("big").unwrap()]);

    // Ask for 64 MiB forty times over and never read a byte.
    let mut greedy = raw_hello(&daemon).await;
    let fetch = codec::encode(&shardd_protocol::FetchRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new("big").unwrap(),
        range: None,
        max_len: None,
    })
    .unwrap();
    let flood = async {
        for id in 2..42u64 {
            let header = FrameHeader::request(Opcode::Fetch, id, fetch.len() as u32, 0);
            if greedy.try_write_raw(&header.encode()).await.is_err() {
                break;
            }
            if greedy.try_write_raw(&fetch).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;

    // Everybody else is served, while the greedy connection is stuck.
    for i in 0..5 {
        let data = pattern(1 << 20, i);
        client
            .put("job", &format!("ok{i}"), data.clone(), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(client.fetch("job", &format!("ok{i}")).await.unwrap().data, data);
    }
    let other = daemon.client(true).await;
    assert_eq!(other.fetch("job", "big").await.unwrap().data.len(), 64 << 20);
    let arena = other.status().await.unwrap().arena.unwrap();
    assert_eq!(arena.loads, 1, "one load, shared by every fetch: {arena:?}");

    // After the I/O timeout the stuck connection is closed and released:
    // what is left are `client`, `other` and the one asking.
    assert!(
        eventually(Duration::from_secs(20), || connections(&daemon) == Some(3)).await,
        "the stalled connection is closed (connections: {:?})",
        connections(&daemon)
    );
    daemon.stop().await;
}

/// Connections the daemon counts, read through a fresh blocking client
/// (which itself counts as one).
fn connections(daemon: &TestDaemon) -> Option<u64> {
    let endpoint = daemon.unix_endpoint();
    std::thread::spawn(move || {
        let client = shardd_client::blocking::Client::connect(&endpoint).ok()?;
        client.status().ok().map(|s| s.connections)
    })
    .join()
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_connection_floods_are_bounded() {
    let config = "[server]\nhandshake_timeout = \"1s\"\nmax_connections = 3";
    let mut daemon = TestDaemon::start(engines()[0], config).await;

    // Connects and says nothing: closed after the handshake timeout.
    let mut silent = raw_connect(&daemon).await;
    let started = std::time::Instant::now();
    silent.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Three connections are served; the fourth is told the daemon is busy.
    let a = daemon.client(true).await;
    let _b = daemon.client(true).await;
    let _c = daemon.client(false).await;
    let mut fourth = raw_connect(&daemon).await;
    fourth.expect_error(Status::Busy, 0, "at most 3 connections").await;
    fourth.expect_closed().await;
    a.ping().await.unwrap();
    daemon.stop().await;
}
