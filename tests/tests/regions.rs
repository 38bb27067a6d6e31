//! Registered regions: fetches whose bytes land at places in memory the
//! client registered, written by the daemon itself over the Unix socket
//! and by the client's receiver over TCP; every place checked.

use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use shardd_client::{ByteRange, ClientError, EvictMode, PutItem, PutOptions, Region, Status, Wanted};
use shardd_protocol::{
    BatchPart, ErrorResponse, FetchBatchRequest, FetchPreparedRequest, FetchRequest, Key, Namespace, Opcode,
    PrepareFetchResponse, PutBatchRequest, PutMember, PutRequest, RegionPlace, RegisterRegionRequest,
    RegisterRegionResponse, ReleasePreparedRequest, codec,
};
use shardd_tests::{RawClient, TestDaemon, http_get, pattern, sample, setups};

const MIB: usize = 1 << 20;

/// Bytes the daemon sent over its Unix socket.
async fn unix_bytes_out(daemon: &TestDaemon) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
    sample(
        &text,
        r#"shardd_transport_bytes_total{direction="out",transport="unix"}"#,
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_into_a_region_lands_each_member_at_its_place() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let shards: Vec<(String, Vec<u8>)> = [0, 4096, 5000, MIB, 3 * MIB + 7, 9 * MIB]
            .iter()
            .enumerate()
            .map(|(i, &len)| (format!("layers.{i}"), pattern(len, i as u64)))
            .collect();
        for (key, data) in &shards {
            client
                .put("job", key, data.clone(), PutOptions::default())
                .await
                .unwrap();
        }
        let region = Region::new(32 * MIB).unwrap();
        let registered = client.register_region(&region).await.unwrap();
        assert_eq!(registered.placed_by_daemon(), !setup.tcp, "{setup:?}");

        for round in ["hot", "cold"] {
            if round == "cold" {
                let keys: Vec<&str> = shards.iter().map(|(k, _)| k.as_str()).collect();
                client.evict("job", &keys, EvictMode::Demote).await.unwrap();
            }
            let mut at = 0;
            let mut wanted: Vec<(Wanted, Range<usize>)> = Vec::new();
            for (key, data) in &shards {
                wanted.push((Wanted::new("job", key), at..at + data.len()));
                at = (at + data.len()).next_multiple_of(4096);
            }
            let range = ByteRange {
                offset: 7,
                len: 2 * MIB as u64,
            };
            let ranged_at = at;
            wanted.push((Wanted::new("job", "layers.4").range(range), at..at + 2 * MIB));
            at += 2 * MIB;
            wanted.push((Wanted::new("job", "missing"), at..at + 4096));
            // A place too small for its shard.
            wanted.push((Wanted::new("job", "layers.3"), at + 4096..at + 8192));
            let sent_before = unix_bytes_out(&daemon).await;
            let results = client.fetch_into_region(&registered, &wanted).await.unwrap();
            let bytes = region.as_slice();
            for (i, (key, data)) in shards.iter().enumerate() {
                let info = results[i]
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{setup:?} {round} {key}: {e}"));
                assert_eq!(info.len, data.len() as u64);
                assert!(bytes[wanted[i].1.clone()] == data[..], "{setup:?} {round} {key}");
            }
            let n = shards.len();
            let expected = &shards[4].1[7..7 + 2 * MIB];
            assert!(bytes[ranged_at..ranged_at + 2 * MIB] == *expected, "{setup:?} {round}");
            assert!(results[n + 1].as_ref().unwrap_err().is_not_found(), "{setup:?} {round}");
            let err = results[n + 2].as_ref().unwrap_err();
            assert_eq!(err.status(), Some(Status::TooLarge), "{setup:?} {round}: {err}");
            if !setup.tcp {
                // The daemon wrote the bytes itself: none crossed the socket.
                let sent = unix_bytes_out(&daemon).await - sent_before;
                assert_eq!(sent, 0.0, "{setup:?} {round}");
            }
        }

        // Places outside the region are refused before anything is sent.
        let outside = [(Wanted::new("job", "layers.1"), 32 * MIB - 100..32 * MIB + 4)];
        let err = client.fetch_into_region(&registered, &outside).await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidBatch { .. }), "{err}");
        // A region registered on another connection is refused too.
        let other = daemon.connect(setup).await;
        let err = other.fetch_into_region(&registered, &wanted_one()).await.unwrap_err();
        assert!(err.to_string().contains("another connection"), "{err}");
        daemon.stop().await;
    }
}

/// A fetch kept on the daemon runs again with the shards, regions and
/// rights as they are at each run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_fetch_runs_again_with_the_shards_as_they_are_now() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let lens = [4096, MIB, 3 * MIB + 7];
        for (i, &len) in lens.iter().enumerate() {
            let key = format!("p{i}");
            let put = client.put("job", &key, pattern(len, i as u64), PutOptions::default());
            put.await.unwrap();
        }
        let mut region = Region::new(8 * MIB).unwrap();
        let registered = client.register_region(&region).await.unwrap();
        let mut wanted: Vec<(Wanted, Range<usize>)> = Vec::new();
        let mut at = 0;
        for (i, &len) in lens.iter().enumerate() {
            wanted.push((Wanted::new("job", format!("p{i}")), at..at + len));
            at = (at + len).next_multiple_of(4096);
        }
        wanted.push((Wanted::new("job", "missing"), at..at + 4096));
        let prepared = client.prepare_fetch_into_region(&registered, &wanted).await.unwrap();
        assert_eq!(prepared.len(), 4);

        // Each run: every member at its place, as the shard is now.
        let check =
            |round: &str, versions: [u64; 3], seeds: [u64; 3], results: &[Result<_, ClientError>], bytes: &[u8]| {
                for i in 0..3 {
                    let info: &shardd_client::FetchInfo = results[i]
                        .as_ref()
                        .unwrap_or_else(|e| panic!("{setup:?} {round} p{i}: {e}"));
                    assert_eq!(info.meta.key.as_str(), format!("p{i}"), "{setup:?} {round}");
                    assert_eq!(info.meta.version, versions[i], "{setup:?} {round} p{i}");
                    let expected = pattern(lens[i], seeds[i]);
                    assert!(bytes[wanted[i].1.clone()] == expected[..], "{setup:?} {round} p{i}");
                }
                let missing = results[3].as_ref().unwrap_err();
                assert!(missing.is_not_found(), "{setup:?} {round}: {missing}");
            };
        let sent_before = unix_bytes_out(&daemon).await;
        let first = client.fetch_prepared(&prepared).await.unwrap();
        check("first", [1, 1, 1], [0, 1, 2], &first, region.as_slice());
        if !setup.tcp {
            assert_eq!(unix_bytes_out(&daemon).await - sent_before, 0.0, "{setup:?}");
        }
        // A shard replaced and one demoted to its drive between runs.
        let put = client.put("job", "p1", pattern(MIB, 11), PutOptions::default());
        put.await.unwrap();
        client.evict("job", &["p2"], EvictMode::Demote).await.unwrap();
        region.as_mut_slice().fill(0);
        let second = client.fetch_prepared(&prepared).await.unwrap();
        check("second", [1, 2, 1], [0, 11, 2], &second, region.as_slice());
        // The same as a fetch of the same members sent whole.
        region.as_mut_slice().fill(0);
        let whole = client.fetch_into_region(&registered, &wanted).await.unwrap();
        check("whole", [1, 2, 1], [0, 11, 2], &whole, region.as_slice());

        // Another connection cannot run it.
        let other = daemon.connect(setup).await;
        let err = other.fetch_prepared(&prepared).await.unwrap_err();
        assert!(err.to_string().contains("prepared on another connection"), "{err}");

        // Its region released: each member fails, saying why.
        let kept_region = Region::new(MIB).unwrap();
        let second_region = client.register_region(&kept_region).await.unwrap();
        let small = client
            .prepare_fetch_into_region(&second_region, &wanted_one_of("p0"))
            .await
            .unwrap();
        let region_id = second_region.id();
        drop(second_region);
        let failed = client.fetch_prepared(&small).await.unwrap();
        let err = failed[0].as_ref().unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("region {region_id} is not registered")),
            "{setup:?}: {err}"
        );
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_fetch_follows_its_shards_through_evictions_deletes_and_new_puts() {
    const SHARD: usize = MIB / 2;
    for setup in setups() {
        // An arena of 8 MiB: the 16 other shards fetched between runs evict
        // the batch's members, and each run loads them again.
        let mut daemon = TestDaemon::start(setup.engine, "[arena]\nsize = \"8MiB\"").await;
        let client = daemon.connect(setup).await;
        let shards = (0..4)
            .map(|i| (format!("k{i}"), i))
            .chain((0..16).map(|i| (format!("other{i}"), 100 + i)));
        for (key, seed) in shards {
            let put = client.put("job", &key, pattern(SHARD, seed), PutOptions::default());
            put.await.unwrap();
        }
        let mut region = Region::new(4 * SHARD).unwrap();
        let registered = client.register_region(&region).await.unwrap();
        let wanted: Vec<(Wanted, Range<usize>)> = (0..4)
            .map(|i| (Wanted::new("job", format!("k{i}")), i * SHARD..(i + 1) * SHARD))
            .collect();
        let prepared = client.prepare_fetch_into_region(&registered, &wanted).await.unwrap();
        let evictions = || async {
            let (_, text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
            sample(&text, r#"shardd_arena_evictions_total{reason="pressure"}"#).unwrap_or(0.0)
        };
        let evicted_before = evictions().await;
        // What each member holds: its seed, or None once deleted.
        let mut seeds: [Option<u64>; 4] = [Some(0), Some(1), Some(2), Some(3)];
        for round in 0..6u64 {
            region.as_mut_slice().fill(0);
            let results = client.fetch_prepared(&prepared).await.unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                match seed {
                    Some(seed) => {
                        results[i]
                            .as_ref()
                            .unwrap_or_else(|e| panic!("{setup:?} round {round} k{i}: {e}"));
                        let expected = pattern(SHARD, *seed);
                        assert!(
                            region.as_slice()[wanted[i].1.clone()] == expected[..],
                            "{setup:?} round {round} k{i}"
                        );
                    }
                    None => {
                        let err = results[i].as_ref().unwrap_err();
                        assert!(err.is_not_found(), "{setup:?} round {round} k{i}: {err}");
                    }
                }
            }
            // Between runs: other shards fetched (evicting the members), one
            // member deleted, and put again with new bytes a round later.
            for i in 0..16 {
                client.fetch("job", &format!("other{i}")).await.unwrap();
            }
            match round {
                1 => {
                    client.delete("job", "k1", None).await.unwrap();
                    seeds[1] = None;
                }
                2 => {
                    let put = client.put("job", "k1", pattern(SHARD, 41), PutOptions::default());
                    put.await.unwrap();
                    seeds[1] = Some(41);
                }
                3 => {
                    let put = client.put("job", "k3", pattern(SHARD, 43), PutOptions::default());
                    put.await.unwrap();
                    seeds[3] = Some(43);
                }
                _ => {}
            }
        }
        assert!(
            evictions().await - evicted_before >= 16.0,
            "{setup:?}: the members were evicted between runs"
        );
        drop(client);
        daemon.stop().await;
    }
}

/// Keeps `batch` on the daemon as request `id`; the kept batch's id.
async fn prepare(raw: &mut RawClient, id: u64, batch: &FetchBatchRequest) -> u32 {
    raw.request(Opcode::PrepareFetch, id, batch).await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(header.status, Status::Ok, "{}", message(&control));
    codec::decode::<PrepareFetchResponse>(&control).unwrap().batch
}

/// What the daemon refuses of kept batches, byte for byte on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_fetches_that_cannot_run_are_refused_saying_why() {
    let engine = shardd_tests::engines()[0];
    let mut daemon = TestDaemon::start(engine, "").await;
    let mut raw = RawClient::hello(&daemon, false, "prepared", false).await;
    let member = |key: &str| FetchRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new(key).unwrap(),
        range: None,
        max_len: None,
    };
    let place = |region| RegionPlace {
        region,
        offset: 0,
        len: 4096,
    };
    // A place in a region never registered: refused once, at preparation.
    let batch = FetchBatchRequest {
        members: vec![member("a"), member("b")],
        places: vec![place(7), place(7)],
    };
    raw.request(Opcode::PrepareFetch, 1, &batch).await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(header.status, Status::BadRequest);
    let why = message(&control);
    assert!(why.contains("member 0: region 7 is not registered"), "{why}");
    // Places that do not match the members.
    let batch = FetchBatchRequest {
        members: vec![member("a"), member("b")],
        places: vec![place(7)],
    };
    raw.request(Opcode::PrepareFetch, 2, &batch).await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(header.status, Status::BadRequest);
    assert!(message(&control).contains("names 1 places"), "{}", message(&control));
    // A batch never prepared, or released.
    let kept = FetchBatchRequest {
        members: vec![member("a")],
        places: Vec::new(),
    };
    let batch = prepare(&mut raw, 3, &kept).await;
    raw.request(Opcode::ReleasePrepared, 4, &ReleasePreparedRequest { batch })
        .await;
    assert_eq!(raw.recv().await.unwrap().0.status, Status::Ok);
    for (id, op) in [(5, Opcode::FetchPrepared), (6, Opcode::ReleasePrepared)] {
        raw.request(op, id, &FetchPreparedRequest { batch }).await;
        let (header, control) = raw.recv().await.unwrap();
        assert_eq!(header.status, Status::BadRequest, "{op}");
        let why = message(&control);
        assert!(
            why.contains(&format!("batch {batch} is not prepared on this connection")),
            "{op}: {why}"
        );
    }
    // The connection goes on; a kept batch without places is answered in
    // payloads, every frame under its own opcode.
    let client = daemon.connect(setups()[0]).await;
    let put = client.put("job", "a", pattern(5000, 3), PutOptions::default());
    put.await.unwrap();
    let batch = prepare(&mut raw, 7, &kept).await;
    raw.request(Opcode::FetchPrepared, 8, &FetchPreparedRequest { batch })
        .await;
    let mut payload = 0;
    loop {
        let (header, control) = raw.recv().await.unwrap();
        assert_eq!(
            (header.opcode, header.request_id, header.status),
            (Opcode::FetchPrepared, 8, Status::Ok)
        );
        payload += header.payload_len;
        let parts = codec::decode::<Vec<BatchPart>>(&control).unwrap();
        if matches!(parts.last(), Some(BatchPart::Done { .. })) {
            assert!(
                matches!(parts.last(), Some(BatchPart::Done { ok: 1, failed: 0 })),
                "{parts:?}"
            );
            break;
        }
    }
    assert_eq!(payload, 5000);
    daemon.stop().await;
}

fn wanted_one() -> Vec<(Wanted, Range<usize>)> {
    vec![(Wanted::new("job", "layers.1"), 0..4096)]
}

/// A memfd of `len` bytes with `seals`, optionally written through (so its
/// pages are in memory).
fn memfd(len: usize, seals: libc::c_int, populate: bool) -> std::fs::File {
    let name = std::ffi::CString::new("test-region").unwrap();
    // SAFETY: plain syscall with a valid name; checked below.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(raw >= 0);
    // SAFETY: a fresh descriptor, ours.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(len as u64).unwrap();
    if populate {
        file.write_all_at(&vec![0xee; len], 0).unwrap();
    }
    // SAFETY: fcntl on our descriptor.
    assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    file
}

async fn register(raw: &mut RawClient, id: u64, file: &std::fs::File, len: u64) -> (Status, Vec<u8>) {
    raw.request_with_fd(
        Opcode::RegisterRegion,
        id,
        &RegisterRegionRequest { len },
        file.as_raw_fd(),
    )
    .await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(header.request_id, id);
    (header.status, control)
}

fn message(control: &[u8]) -> String {
    codec::decode::<ErrorResponse>(control).unwrap().message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_maps_only_regions_that_cannot_make_it_fault() {
    let engine = shardd_tests::engines()[0];
    let mut daemon = TestDaemon::start(engine, "[server]\nmax_regions = 2").await;
    let client = daemon.client(false).await;
    let data = pattern(10_000, 3);
    client
        .put("job", "w", data.clone(), PutOptions::default())
        .await
        .unwrap();
    let mut raw = RawClient::hello(&daemon, false, "raw", false).await;

    // Without a descriptor, unsealed, shorter than said, not in memory,
    // sealed against writes: each refused, saying why.
    raw.request(Opcode::RegisterRegion, 2, &RegisterRegionRequest { len: 4096 })
        .await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(header.status, Status::BadRequest);
    assert!(
        message(&control).contains("no memory file came"),
        "{}",
        message(&control)
    );
    let cases = [
        (memfd(16384, 0, true), 16384, "F_SEAL_SHRINK"),
        (
            memfd(4096, libc::F_SEAL_SHRINK, true),
            16384,
            "fewer than the 16384 registered",
        ),
        (memfd(16384, libc::F_SEAL_SHRINK, false), 16384, "not in memory"),
        (
            memfd(16384, libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE, true),
            16384,
            "sealed against writes",
        ),
    ];
    for (i, (file, len, why)) in cases.iter().enumerate() {
        let (status, control) = register(&mut raw, 10 + i as u64, file, *len).await;
        assert_eq!(status, Status::BadRequest, "{why}");
        assert!(message(&control).contains(why), "{why}: {}", message(&control));
    }

    // A good one the client never maps itself (or unmapped): the daemon
    // writes into the memory all the same, and the client reads it back.
    let file = memfd(16384, libc::F_SEAL_SHRINK, true);
    let (status, control) = register(&mut raw, 20, &file, 16384).await;
    assert_eq!(status, Status::Ok);
    let registered: RegisterRegionResponse = codec::decode(&control).unwrap();
    assert!(registered.mapped);
    // The seal holds: the client cannot shrink it under the daemon.
    assert!(file.set_len(4096).is_err());
    let member = FetchRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new("w").unwrap(),
        range: None,
        max_len: None,
    };
    let place = |region, offset, len| RegionPlace { region, offset, len };
    let batch = FetchBatchRequest {
        members: vec![member.clone(), member.clone(), member.clone()],
        places: vec![
            place(registered.region, 4096, 12288),
            place(registered.region, 8192, 12288), // past the region's end
            place(999, 0, 4096),                   // not registered
        ],
    };
    raw.request(Opcode::FetchBatch, 21, &batch).await;
    let mut outcomes = Vec::new();
    let mut done = None;
    while done.is_none() {
        let (header, control) = raw.recv().await.unwrap();
        assert_eq!(header.status, Status::Ok);
        for part in codec::decode::<Vec<BatchPart>>(&control).unwrap() {
            match part {
                BatchPart::Done { ok, failed } => done = Some((ok, failed, header.has_more())),
                BatchPart::Placed { index, head } => outcomes.push((index, Status::Ok, head.len.to_string())),
                BatchPart::Failed {
                    index, status, message, ..
                } => outcomes.push((index, Status::from_code(status), message)),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(done, Some((1, 2, false)));
    outcomes.sort_by_key(|o| o.0);
    assert_eq!(outcomes[0], (0, Status::Ok, "10000".to_string()));
    assert_eq!(outcomes[1].1, Status::BadRequest);
    assert!(outcomes[1].2.contains("outside region"), "{}", outcomes[1].2);
    assert!(outcomes[2].2.contains("not registered"), "{}", outcomes[2].2);
    let mut placed = vec![0u8; 10_000];
    file.read_exact_at(&mut placed, 4096).unwrap();
    assert!(placed == data);

    // The limit on regions per connection holds (one more fits, then no).
    let extra = memfd(4096, libc::F_SEAL_SHRINK, true);
    assert_eq!(register(&mut raw, 30, &extra, 4096).await.0, Status::Ok);
    let (status, control) = register(&mut raw, 31, &extra, 4096).await;
    assert_eq!(status, Status::Busy);
    assert!(
        message(&control).contains("server.max_regions"),
        "{}",
        message(&control)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_is_released_with_its_connection() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        client
            .put("job", "w", pattern(4096, 1), PutOptions::default())
            .await
            .unwrap();
        let region = Region::new(MIB).unwrap();
        let registered = client.register_region(&region).await.unwrap();
        client
            .fetch_into_region(&registered, &wanted_one_of("w"))
            .await
            .unwrap()[0]
            .as_ref()
            .unwrap();
        drop(client);
        // The connection ends once its last handle is gone; the region's
        // fetches fail from then on, saying so.
        let again = daemon.connect(setup).await;
        let err = again
            .fetch_into_region(&registered, &wanted_one_of("w"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another connection"), "{setup:?}: {err}");
        drop(registered);
        daemon.stop().await;
    }
}

fn wanted_one_of(key: &str) -> Vec<(Wanted, Range<usize>)> {
    vec![(Wanted::new("job", key), 0..4096)]
}

/// Members replaced, evicted and written back while fetched into a region
/// come out all old or all new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_changing_during_a_fetch_into_a_region_is_all_old_or_all_new() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.connect(setup).await;
        let versions = [pattern(3 * MIB, 1), pattern(3 * MIB, 2)];
        let keys: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
        for key in &keys {
            client
                .put("job", key, versions[0].clone(), PutOptions::default())
                .await
                .unwrap();
        }
        let writer = {
            let client = daemon.connect(setup).await;
            let (keys, versions) = (keys.clone(), versions.clone());
            tokio::spawn(async move {
                for round in 0..12 {
                    for key in &keys {
                        let options = PutOptions {
                            durability: if round % 2 == 0 {
                                shardd_protocol::Durability::WriteBack
                            } else {
                                shardd_protocol::Durability::Durable
                            },
                            ..PutOptions::default()
                        };
                        let data = versions[(round + 1) % 2].clone();
                        client.put("job", key, data, options).await.unwrap();
                    }
                    if round % 3 == 0 {
                        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                        client.evict("job", &refs, EvictMode::Demote).await.unwrap();
                    }
                }
            })
        };
        let region = Region::new(16 * MIB).unwrap();
        let registered = client.register_region(&region).await.unwrap();
        let wanted: Vec<(Wanted, Range<usize>)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (Wanted::new("job", k), i * 4 * MIB..i * 4 * MIB + 3 * MIB))
            .collect();
        while !writer.is_finished() {
            let results = client.fetch_into_region(&registered, &wanted).await.unwrap();
            for (i, result) in results.into_iter().enumerate() {
                let info = result.unwrap_or_else(|e| panic!("{setup:?}: {e}"));
                let expected = &versions[((info.meta.version + 1) % 2) as usize];
                let place = wanted[i].1.clone();
                assert!(
                    region.as_slice()[place] == expected[..],
                    "{setup:?}: w{i} v{}",
                    info.meta.version
                );
            }
        }
        writer.await.unwrap();
        daemon.stop().await;
    }
}

/// Puts from a region: over the Unix socket the daemon reads the bytes
/// itself (none cross the socket), over TCP they are sent from the region;
/// each member stored or refused on its own, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_from_a_region_store_each_member_byte_for_byte() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let mut region = Region::new(16 * MIB).unwrap();
        let lens = [0usize, 1, 4096, 5000, MIB, 3 * MIB + 7];
        let mut places = Vec::new();
        let mut at = 0;
        for (i, &len) in lens.iter().enumerate() {
            region.as_mut_slice()[at..at + len].copy_from_slice(&pattern(len, 40 + i as u64));
            places.push(at..at + len);
            at = (at + len).next_multiple_of(4096);
        }
        let registered = client.register_region(&region).await.unwrap();
        // One member names a version older than the stored one: refused alone.
        client
            .put(
                "job",
                "old",
                vec![1u8; 10],
                PutOptions {
                    version: Some(5),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut items: Vec<(PutItem, Range<usize>)> = places
            .iter()
            .enumerate()
            .map(|(i, place)| (PutItem::new("job", format!("p{i}")), place.clone()))
            .collect();
        let stale = PutOptions {
            version: Some(3),
            ..Default::default()
        };
        items.push((PutItem::new("job", "old").options(stale), 0..10));
        let sent_before = unix_bytes_in(&daemon).await;
        let stored = client.put_from_region(&registered, &items).await.unwrap();
        if !setup.tcp {
            assert_eq!(
                unix_bytes_in(&daemon).await - sent_before,
                0.0,
                "{setup:?}: read from the region"
            );
        }
        for (i, &len) in lens.iter().enumerate() {
            let meta = stored[i].as_ref().unwrap_or_else(|e| panic!("{setup:?} p{i}: {e}"));
            assert_eq!(meta.len, len as u64);
            let back = client.fetch("job", &format!("p{i}")).await.unwrap();
            assert!(back.data == pattern(len, 40 + i as u64), "{setup:?} p{i}");
        }
        let err = stored[lens.len()].as_ref().unwrap_err();
        assert_eq!(err.status(), Some(Status::VersionConflict), "{setup:?}: {err}");

        // The same from plain buffers, in one request's payload.
        let items: Vec<(PutItem, bytes::Bytes)> = (0..4)
            .map(|i| {
                (
                    PutItem::new("job", format!("q{i}")),
                    bytes::Bytes::from(pattern(1000 * i + 1, i as u64)),
                )
            })
            .collect();
        let stored = client.put_many(&items).await.unwrap();
        for (i, meta) in stored.iter().enumerate() {
            assert_eq!(meta.as_ref().unwrap().len, 1000 * i as u64 + 1);
            assert!(client.fetch("job", &format!("q{i}")).await.unwrap().data == pattern(1000 * i + 1, i as u64));
        }
        // A source outside the region is refused before anything is sent.
        let outside = [(PutItem::new("job", "x"), 16 * MIB - 1..16 * MIB + 1)];
        let err = client.put_from_region(&registered, &outside).await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidBatch { .. }), "{err}");
        daemon.stop().await;
    }
}

/// Bytes the daemon read from its Unix socket.
async fn unix_bytes_in(daemon: &TestDaemon) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
    sample(
        &text,
        r#"shardd_transport_bytes_total{direction="in",transport="unix"}"#,
    )
    .unwrap_or(0.0)
}

/// A batch of puts whose payload does not add up is refused whole, and the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_batch_whose_payload_does_not_add_up_is_refused() {
    let mut daemon = TestDaemon::start(shardd_tests::engines()[0], "").await;
    let mut raw = RawClient::hello(&daemon, false, "raw", false).await;
    let member = PutMember {
        put: PutRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("k").unwrap(),
            version: None,
            dtype: Default::default(),
            shape: Vec::new(),
            crc32c: None,
            durability: Default::default(),
        },
        len: 100,
        source: None,
    };
    let request = PutBatchRequest {
        members: vec![member.clone()],
    };
    let control = codec::encode(&request).unwrap();
    raw.send(Opcode::PutBatch, 5, &control, &[7u8; 60]).await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!((header.request_id, header.status), (5, Status::BadRequest));
    assert!(
        message(&control).contains("the members sent in it hold 100"),
        "{}",
        message(&control)
    );
    raw.send(Opcode::PutBatch, 6, &codec::encode(&request).unwrap(), &[7u8; 100])
        .await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(
        (header.request_id, header.status, header.has_more()),
        (6, Status::Ok, false)
    );
    let parts: Vec<BatchPart> = codec::decode(&control).unwrap();
    assert!(
        matches!(
            parts[..],
            [BatchPart::Stored { index: 0, .. }, BatchPart::Done { ok: 1, failed: 0 }]
        ),
        "{parts:?}"
    );
    daemon.stop().await;
}

/// A registration refused before it is looked at drops the memfd it came
/// with: the next registration maps its own memory, not that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_does_not_leave_its_memfd_for_the_next() {
    let mut daemon = TestDaemon::start(shardd_tests::engines()[0], "").await;
    let client = daemon.client(false).await;
    let data = pattern(8192, 5);
    client
        .put("job", "w", data.clone(), PutOptions::default())
        .await
        .unwrap();
    let mut raw = RawClient::hello(&daemon, false, "raw", false).await;
    let stale = memfd(16384, libc::F_SEAL_SHRINK, true);
    raw.send_with_fd(Opcode::RegisterRegion, 2, b"not a registration", stale.as_raw_fd())
        .await;
    let (header, _) = raw.recv().await.unwrap();
    assert_eq!(header.status, Status::BadRequest);
    let file = memfd(16384, libc::F_SEAL_SHRINK, true);
    let (status, control) = register(&mut raw, 3, &file, 16384).await;
    assert_eq!(status, Status::Ok);
    let registered: RegisterRegionResponse = codec::decode(&control).unwrap();
    let batch = FetchBatchRequest {
        members: vec![FetchRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("w").unwrap(),
            range: None,
            max_len: None,
        }],
        places: vec![RegionPlace {
            region: registered.region,
            offset: 0,
            len: 8192,
        }],
    };
    raw.request(Opcode::FetchBatch, 4, &batch).await;
    let (header, control) = raw.recv().await.unwrap();
    assert!(!header.has_more());
    let parts: Vec<BatchPart> = codec::decode(&control).unwrap();
    assert!(matches!(parts[0], BatchPart::Placed { .. }), "{parts:?}");
    let mut placed = vec![0u8; 8192];
    file.read_exact_at(&mut placed, 0).unwrap();
    assert!(
        placed == data,
        "the bytes are in the memory registered, not the refused one"
    );
    daemon.stop().await;
}

/// Puts whose bytes together pass what one request may carry are refused
/// before anything is sent (over TCP, where they travel in the payload),
/// and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_puts_larger_than_a_request_may_carry_is_refused_before_sending() {
    let mut daemon = TestDaemon::start(shardd_tests::engines()[0], "[storage]\nmax_shard_size = \"1MiB\"").await;
    let client = daemon.client(true).await;
    let region = Region::new(2 * MIB).unwrap();
    let registered = client.register_region(&region).await.unwrap();
    let items = [
        (PutItem::new("job", "a"), 0..800 << 10),
        (PutItem::new("job", "b"), MIB..MIB + (800 << 10)),
    ];
    let err = client.put_from_region(&registered, &items).await.unwrap_err();
    assert!(err.to_string().contains("split the batch"), "{err}");
    let data: Vec<(PutItem, bytes::Bytes)> = ["c", "d"]
        .iter()
        .map(|k| (PutItem::new("job", *k), bytes::Bytes::from(vec![1u8; 700 << 10])))
        .collect();
    let err = client.put_many(&data).await.unwrap_err();
    assert!(err.to_string().contains("split the batch"), "{err}");
    let stored = client.put_from_region(&registered, &items[..1]).await.unwrap();
    assert_eq!(stored[0].as_ref().unwrap().len, 800 << 10);
    daemon.stop().await;
}
