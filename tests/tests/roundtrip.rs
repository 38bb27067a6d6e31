//! Byte-exact round trips through the real daemon, on both transports and
//! both I/O engines, from 0 bytes to 256 MiB, whole and in ranges.

use shardd_client::{ByteRange, ClientError, DType, PutOptions, Status};
use shardd_tests::{TestDaemon, pattern, setups};

const SIZES: [usize; 9] = [0, 1, 4095, 4096, 4097, (1 << 20) - 1, 1 << 20, (3 << 20) + 7, 64 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_exact_round_trips_of_many_sizes() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        for (i, size) in SIZES.into_iter().enumerate() {
            let data = pattern(size, i as u64);
            let key = format!("layers.{i}.w");
            let meta = client
                .put("job", &key, data.clone(), PutOptions::default())
                .await
                .unwrap();
            assert_eq!((meta.len, meta.version), (size as u64, 1), "{setup:?} size {size}");
            assert_eq!(meta.crc32c, crc32c::crc32c(&data));
            let shard = client.fetch("job", &key).await.unwrap();
            assert_eq!(shard.meta, meta);
            assert!(shard.data == data, "{setup:?}: {size} bytes came back different");
        }
        daemon.stop().await;
    }
}

/// Data dirs with buffered I/O (what file systems without O_DIRECT get).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_data_dirs_round_trip_and_recover() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "[storage]\ndirect_io = \"off\"").await;
        let client = daemon.connect(setup).await;
        let status = client.status().await.unwrap();
        assert!(!status.data_dirs[0].direct_io, "{setup:?}");
        let sizes = [0, 1, 4097, (1 << 20) + 3, 5 << 20];
        for (i, size) in sizes.into_iter().enumerate() {
            let data = pattern(size, 40 + i as u64);
            client
                .put("job", &format!("b{i}"), data.clone(), PutOptions::default())
                .await
                .unwrap();
            assert!(client.fetch("job", &format!("b{i}")).await.unwrap().data == data);
        }
        drop(client);
        daemon.restart().await;
        let client = daemon.connect(setup).await;
        for (i, size) in sizes.into_iter().enumerate() {
            let shard = client
                .fetch_range("job", &format!("b{i}"), 0, size as u64)
                .await
                .unwrap();
            assert!(shard.data == pattern(size, 40 + i as u64), "{setup:?} b{i}");
        }
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_shard_round_trips_into_a_caller_buffer() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let data = pattern(256 << 20, 9);
        client
            .put("job", "big", data.clone(), PutOptions::default())
            .await
            .unwrap();
        let (buf, info) = client.fetch_into("job", "big", None, vec![0u8; 256 << 20]).await;
        assert_eq!(info.unwrap().len, 256 << 20);
        assert!(buf == data, "{setup:?}: 256 MiB came back different");
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_read_exactly_the_bytes_asked_for() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "[storage]\nchunk_size = \"64KiB\"").await;
        let client = daemon.connect(setup).await;
        let data = pattern((5 << 16) + 123, 3);
        client
            .put("job", "r", data.clone(), PutOptions::default())
            .await
            .unwrap();
        let len = data.len() as u64;
        let cases = [
            (0, 1),
            (0, len),
            (65535, 2),
            (65536, 65536),
            (1000, 200_000),
            (len - 1, 1),
            (len, 0),
            (7, 0),
        ];
        for (offset, n) in cases {
            let shard = client.fetch_range("job", "r", offset, n).await.unwrap();
            assert_eq!(shard.offset, offset);
            assert_eq!(
                shard.data,
                &data[offset as usize..(offset + n) as usize],
                "{setup:?} {offset}+{n}"
            );
        }
        // Into a caller buffer larger than the range: only the range's bytes are written.
        let range = Some(ByteRange { offset: 10, len: 20 });
        let (buf, info) = client.fetch_into("job", "r", range, vec![0xAAu8; 64]).await;
        assert_eq!(info.unwrap().len, 20);
        assert_eq!(&buf[..20], &data[10..30]);
        assert!(buf[20..].iter().all(|&b| b == 0xAA));

        // A range past the end is a clear error, and the connection goes on.
        let err = client.fetch_range("job", "r", len - 1, 2).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::BadRequest));
        assert!(err.to_string().contains("outside"), "{err}");
        let err = client.fetch_range("job", "r", u64::MAX, 2).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::BadRequest));
        // A buffer too small for the answer is refused before any byte is
        // sent, saying how large it must be.
        let (_, info) = client.fetch_into("job", "r", None, vec![0u8; 100]).await;
        match info.unwrap_err() {
            ClientError::BufferTooSmall { needed, capacity } => assert_eq!((needed, capacity), (len, 100)),
            other => panic!("{setup:?}: expected BufferTooSmall, got {other}"),
        }
        assert_eq!(client.fetch_range("job", "r", 0, 3).await.unwrap().data, &data[..3]);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_versions_listing_and_delete() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let options = PutOptions {
            version: Some(100),
            dtype: DType::BF16,
            shape: vec![4, 8],
            ..PutOptions::default()
        };
        let meta = client.put("job", "emb#0/2", vec![1u8; 64], options).await.unwrap();
        assert_eq!(
            (meta.version, meta.dtype, meta.shape.clone()),
            (100, DType::BF16, vec![4, 8])
        );
        assert_eq!(client.stat("job", "emb#0/2").await.unwrap().meta, meta);

        // Older or equal versions are refused and say what is stored.
        let err = client
            .put(
                "job",
                "emb#0/2",
                vec![2u8; 64],
                PutOptions {
                    version: Some(100),
                    ..PutOptions::default()
                },
            )
            .await
            .unwrap_err();
        match &err {
            ClientError::Remote {
                status,
                current_version,
                ..
            } => {
                assert_eq!((*status, *current_version), (Status::VersionConflict, Some(100)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(client.fetch("job", "emb#0/2").await.unwrap().data, vec![1u8; 64]);

        // A shape that does not match the length is a bad request.
        let bad_shape = PutOptions {
            dtype: DType::F32,
            shape: vec![3],
            ..PutOptions::default()
        };
        let err = client.put("job", "x", vec![0u8; 10], bad_shape).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::BadRequest));

        for i in 0..25 {
            client
                .put("job", &format!("layers.{i:02}"), vec![i as u8], PutOptions::default())
                .await
                .unwrap();
        }
        client
            .put("other", "layers.00", vec![0], PutOptions::default())
            .await
            .unwrap();
        let all = client.list("job", "layers.").await.unwrap();
        assert_eq!(all.len(), 25);
        assert!(all.windows(2).all(|w| w[0].key < w[1].key), "key order");
        let page = client.list_page("job", "layers.", Some("layers.09"), 5).await.unwrap();
        let keys: Vec<_> = page.shards.iter().map(|m| m.key.to_string()).collect();
        assert_eq!(keys, ["layers.10", "layers.11", "layers.12", "layers.13", "layers.14"]);
        assert!(page.more);
        assert!(client.list("nobody", "").await.unwrap().is_empty());

        assert_eq!(client.delete("job", "emb#0/2", Some(100)).await.unwrap(), 100);
        let err = client.fetch("job", "emb#0/2").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("not found"), "{err}");
        assert!(client.delete("job", "emb#0/2", None).await.unwrap_err().is_not_found());

        // Invalid names never reach the daemon.
        assert!(matches!(
            client.stat("job", "has space").await,
            Err(ClientError::InvalidName(_))
        ));
        assert!(matches!(
            client.stat("../etc", "k").await,
            Err(ClientError::InvalidName(_))
        ));
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_client_works_outside_async_code() {
    let mut daemon = TestDaemon::start(shardd_tests::engines()[0], "").await;
    let endpoint = daemon.unix_endpoint();
    let data = pattern(3 << 20, 5);
    let expected = data.clone();
    tokio::task::spawn_blocking(move || {
        let client = shardd_client::blocking::Client::connect(&endpoint).unwrap();
        client.put("job", "b", data, PutOptions::default()).unwrap();
        assert_eq!(client.fetch("job", "b").unwrap().data, expected);
        let (buf, info) = client.fetch_into("job", "b", None, vec![0u8; 4 << 20]);
        assert_eq!(info.unwrap().len, 3 << 20);
        assert_eq!(&buf[..3 << 20], &expected[..]);
        assert_eq!(client.status().unwrap().shards, 1);
        assert!(client.stat("job", "missing").unwrap_err().is_not_found());
    })
    .await
    .unwrap();
    daemon.stop().await;
}
