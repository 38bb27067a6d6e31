//! Batched requests: many shards in one request, each member answered on
//! its own, over every transport and I/O engine, hot and cold.

use std::ops::Range;

use shardd_client::{ByteRange, ClientError, EvictMode, PutOptions, Status, Wanted};
use shardd_protocol::{
    BatchPart, ErrorResponse, FetchBatchRequest, FetchRequest, Key, MAX_BATCH_MEMBERS, Namespace, Opcode, codec,
};
use shardd_tests::{RawClient, TestDaemon, flip_payload_byte, pattern, setups};

const MIB: usize = 1 << 20;

/// Shards of many sizes, one stored corrupt, and their bytes.
fn shards() -> Vec<(String, Vec<u8>)> {
    [0, 1, 4096, 4097, MIB, 3 * MIB + 7, 9 * MIB + 1]
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("layers.{i}"), pattern(len, i as u64)))
        .collect()
}

/// Places for `lens` one after another in a buffer, 4 KiB apart.
fn places(lens: &[usize]) -> (Vec<Range<usize>>, usize) {
    let mut at = 0;
    let places = lens
        .iter()
        .map(|&len| {
            let place = at..at + len;
            at = (at + len).next_multiple_of(4096);
            place
        })
        .collect();
    (places, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_of_a_batch_is_answered_on_its_own() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let shards = shards();
        for (key, data) in &shards {
            client
                .put("job", key, data.clone(), PutOptions::default())
                .await
                .unwrap();
        }
        client
            .put("job", "bad", pattern(2 * MIB, 9), PutOptions::default())
            .await
            .unwrap();
        drop(client);
        daemon.stop().await;
        flip_payload_byte(&daemon.data_dir(), "bad", MIB + 3);
        daemon.restart().await;
        let client = daemon.connect(setup).await;

        // Cold (nothing in the arena after the restart), then hot.
        for round in ["cold", "hot"] {
            let mut wanted: Vec<Wanted> = shards.iter().map(|(key, _)| Wanted::new("job", key)).collect();
            wanted.push(Wanted::new("job", "missing"));
            wanted.push(Wanted::new("job", "bad"));
            let range = ByteRange {
                offset: MIB as u64 - 3,
                len: 2 * MIB as u64 + 5,
            };
            wanted.push(Wanted::new("job", "layers.5").range(range));
            let fetched = client.fetch_many(&wanted).await.unwrap();
            assert_eq!(fetched.len(), wanted.len());
            for (i, (key, data)) in shards.iter().enumerate() {
                let shard = fetched[i]
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{setup:?} {round} {key}: {e}"));
                assert!(shard.data == *data, "{setup:?} {round} {key}");
                assert_eq!(shard.meta.key.as_str(), key);
            }
            let n = shards.len();
            assert!(fetched[n].as_ref().unwrap_err().is_not_found(), "{setup:?} {round}");
            let err = fetched[n + 1].as_ref().unwrap_err();
            assert_eq!(err.status(), Some(Status::ChecksumMismatch), "{setup:?} {round}: {err}");
            let ranged = fetched[n + 2].as_ref().unwrap();
            let expected = &shards[5].1[range.offset as usize..(range.offset + range.len) as usize];
            assert_eq!((ranged.offset, ranged.data.as_slice()), (range.offset, expected));

            // Into one buffer, each member at its place.
            client.evict("job", &["layers.6"], EvictMode::Demote).await.unwrap();
            let lens: Vec<usize> = shards.iter().map(|(_, d)| d.len()).collect();
            let (at, total) = places(&lens);
            let mut into: Vec<(Wanted, Range<usize>)> = wanted[..n].iter().cloned().zip(at.clone()).collect();
            into.push((Wanted::new("job", "missing"), 0..0));
            // One place too small for its shard.
            into.push((Wanted::new("job", "layers.4"), total..total + 100));
            let (buf, results) = client.fetch_many_into(&into, vec![0u8; total + 100]).await;
            let results = results.unwrap();
            for (i, (key, data)) in shards.iter().enumerate() {
                let info = results[i]
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{setup:?} {round} {key}: {e}"));
                assert_eq!(info.len, data.len() as u64);
                assert!(buf[at[i].clone()] == data[..], "{setup:?} {round} {key}");
            }
            assert!(results[n].as_ref().unwrap_err().is_not_found());
            match &results[n + 1] {
                Err(ClientError::BufferTooSmall { needed, capacity }) => {
                    assert_eq!((*needed, *capacity), (MIB as u64, 100), "{setup:?} {round}")
                }
                other => panic!("{setup:?} {round}: {other:?}"),
            }

            // Stats, with one missing.
            let stats = client
                .stat_many(&[("job", "layers.2"), ("job", "missing"), ("job", "layers.6")])
                .await
                .unwrap();
            assert_eq!(stats[0].as_ref().unwrap().meta.len, 4096);
            assert!(stats[1].as_ref().unwrap_err().is_not_found());
            assert_eq!(stats[2].as_ref().unwrap().meta.len, 9 * MIB as u64 + 1);
        }
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_many_shards_come_in_one_request() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let shards = shards();
        for (key, data) in &shards {
            client
                .put("job", key, data.clone(), PutOptions::default())
                .await
                .unwrap();
        }
        client
            .evict("job", &["layers.5", "layers.6"], EvictMode::Demote)
            .await
            .unwrap();
        let mut wanted: Vec<Wanted> = shards.iter().map(|(key, _)| Wanted::new("job", key)).collect();
        wanted.push(Wanted::new("job", "missing"));
        let views = client.view_many(&wanted).await;
        if !setup.zero_copy || setup.tcp {
            assert!(matches!(views, Err(ClientError::ZeroCopyUnavailable)), "{setup:?}");
            daemon.stop().await;
            continue;
        }
        let views = views.unwrap();
        for (i, (key, data)) in shards.iter().enumerate() {
            let view = views[i].as_ref().unwrap_or_else(|e| panic!("{setup:?} {key}: {e}"));
            assert!(view.to_vec().unwrap() == *data, "{setup:?} {key}");
        }
        assert!(views[shards.len()].as_ref().unwrap_err().is_not_found());
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_is_refused_whole_and_the_connection_goes_on() {
    let engine = shardd_tests::engines()[0];
    let mut daemon = TestDaemon::start(engine, "").await;
    let client = daemon.client(false).await;
    client
        .put("job", "w", pattern(4096, 1), PutOptions::default())
        .await
        .unwrap();

    // The client refuses what it can tell is wrong before sending it.
    let err = client.fetch_many(&[]).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidBatch { .. }), "{err}");
    let many: Vec<Wanted> = (0..=MAX_BATCH_MEMBERS).map(|_| Wanted::new("job", "w")).collect();
    let err = client.fetch_many(&many).await.unwrap_err();
    assert!(
        err.to_string().contains("at most") || err.to_string().contains("1 to"),
        "{err}"
    );
    let overlapping = [
        (Wanted::new("job", "w"), 0..4096),
        (Wanted::new("job", "w"), 4095..8191),
    ];
    let (_, result) = client.fetch_many_into(&overlapping, vec![0u8; 8192]).await;
    assert!(result.unwrap_err().to_string().contains("overlaps"));
    let outside = [(Wanted::new("job", "w"), 4096..8193)];
    let (_, result) = client.fetch_many_into(&outside, vec![0u8; 8192]).await;
    assert!(result.unwrap_err().to_string().contains("not within"));

    // The daemon refuses a batch too large whole, and one that is not a
    // batch at all, and answers the next request on the same connection.
    let mut raw = RawClient::hello(&daemon, false, "raw", false).await;
    let member = FetchRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new("w").unwrap(),
        range: None,
        max_len: None,
    };
    let too_many = FetchBatchRequest {
        members: vec![member.clone(); MAX_BATCH_MEMBERS + 1],
        places: Vec::new(),
    };
    raw.request(Opcode::FetchBatch, 7, &too_many).await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(
        (header.request_id, header.status, header.has_more()),
        (7, Status::TooLarge, false)
    );
    let message = codec::decode::<ErrorResponse>(&control).unwrap().message;
    assert!(message.contains("at most 1024 members"), "{message}");
    raw.send(Opcode::FetchBatch, 8, b"not a batch", b"").await;
    let (header, _) = raw.recv().await.unwrap();
    assert_eq!((header.request_id, header.status), (8, Status::BadRequest));

    // A good one: a Head with the bytes, then Done.
    let one = FetchBatchRequest {
        members: vec![member],
        places: Vec::new(),
    };
    raw.request(Opcode::FetchBatch, 9, &one).await;
    let (header, control) = raw.recv().await.unwrap();
    assert_eq!(
        (header.status, header.has_more(), header.payload_len),
        (Status::Ok, true, 4096)
    );
    let parts = codec::decode::<Vec<BatchPart>>(&control).unwrap();
    assert!(matches!(parts[..], [BatchPart::Head { index: 0, .. }]), "{parts:?}");
    let (header, control) = raw.recv().await.unwrap();
    assert!(!header.has_more());
    let parts = codec::decode::<Vec<BatchPart>>(&control).unwrap();
    assert_eq!(parts, [BatchPart::Done { ok: 1, failed: 0 }]);
    daemon.stop().await;
}

/// Members replaced while a batch reads them come back all old or all new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_replaced_during_a_batch_is_all_old_or_all_new() {
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
                        let data = versions[(round + 1) % 2].clone();
                        client.put("job", key, data, PutOptions::default()).await.unwrap();
                    }
                    if round % 3 == 0 {
                        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                        client.evict("job", &refs, EvictMode::Demote).await.unwrap();
                    }
                }
            })
        };
        let (at, total) = places(&[3 * MIB; 4]);
        let into: Vec<(Wanted, Range<usize>)> = keys.iter().map(|k| Wanted::new("job", k)).zip(at.clone()).collect();
        let mut buf = vec![0u8; total];
        while !writer.is_finished() {
            let (back, results) = client.fetch_many_into(&into, buf).await;
            buf = back;
            for (i, result) in results.unwrap().into_iter().enumerate() {
                let info = result.unwrap_or_else(|e| panic!("{setup:?}: {e}"));
                let expected = &versions[((info.meta.version + 1) % 2) as usize];
                assert!(
                    buf[at[i].clone()] == expected[..],
                    "{setup:?}: w{i} version {}",
                    info.meta.version
                );
            }
        }
        writer.await.unwrap();
        daemon.stop().await;
    }
}

/// A member whose copy in the daemon's memory went bad is reported to the
/// daemon, which drops the copy, and fetched again from the drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_fails_its_checksum_is_reported_and_fetched_again() {
    for setup in setups().into_iter().filter(|s| !s.zero_copy) {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let data = pattern(3 * MIB, 7);
        client
            .put("job", "w", data.clone(), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "v", pattern(4096, 8), PutOptions::default())
            .await
            .unwrap();
        assert!(
            daemon.corrupt_arena_copy("job", "w", MIB as u64 + 5),
            "{setup:?}: w is in the arena"
        );
        let wanted = [
            (Wanted::new("job", "w"), 0..3 * MIB),
            (Wanted::new("job", "v"), 3 * MIB..3 * MIB + 4096),
        ];
        let (buf, results) = client.fetch_many_into(&wanted, vec![0u8; 4 * MIB]).await;
        for result in results.unwrap() {
            result.unwrap_or_else(|e| panic!("{setup:?}: {e}"));
        }
        assert!(buf[..3 * MIB] == data[..], "{setup:?}");
        assert!(buf[3 * MIB..3 * MIB + 4096] == pattern(4096, 8)[..], "{setup:?}");
        daemon.stop().await;
    }
}
