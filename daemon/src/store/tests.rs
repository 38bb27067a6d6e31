//! Store tests; each runs on both I/O engines.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardd_protocol::{DType, Key, Namespace, Status};

use super::*;
use crate::ctl::bench::pattern;
use crate::io::{EngineKind, IoConfig, IoEngine};

const CHUNK: u32 = 64 * 1024;

fn engines() -> Vec<EngineKind> {
    match IoEngine::uring_available() {
        Ok(()) => vec![EngineKind::Psync, EngineKind::Uring],
        Err(e) => {
            eprintln!("skipping the io_uring engine: io_uring is unavailable here ({e})");
            vec![EngineKind::Psync]
        }
    }
}

fn config(dirs: &[PathBuf]) -> StoreConfig {
    StoreConfig {
        data_dirs: dirs.to_vec(),
        chunk_size: CHUNK,
        chunks_in_flight: 4,
        min_free_bytes: 0,
        max_shard_bytes: 1 << 30,
        buffer_memory: 64 << 20,
        verify_on_start: VerifyMode::Metadata,
        direct_io: true,
    }
}

async fn open(kind: EngineKind, config: StoreConfig) -> Store {
    let engine = IoEngine::start(
        &IoConfig {
            engine: kind,
            ..IoConfig::default()
        },
        None,
    )
    .unwrap();
    Store::open(config, Arc::new(engine)).await.unwrap()
}

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

async fn put(store: &Store, k: &str, data: &[u8], version: Option<u64>) -> Result<ShardMeta, StoreError> {
    let mut writer = store
        .begin_put(PutSpec {
            namespace: ns("job"),
            key: key(k),
            version,
            dtype: DType::Raw,
            shape: vec![],
            len: data.len() as u64,
            crc32c: Some(crc32c::crc32c(data)),
            newer_than: None,
        })
        .await?;
    // Room for two chunks only, fewer than the writes a put keeps in flight.
    let scope = store.buffers().scope(2 * CHUNK as u64);
    let mut at = 0;
    while writer.next_chunk_len() > 0 {
        let n = writer.next_chunk_len();
        let mut buf = writer.next_buffer(&scope).await?;
        buf.fill_padded(&data[at..at + n]);
        writer.write_chunk(buf).await?;
        at += n;
    }
    writer.commit().await
}

async fn fetch(store: &Store, k: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let reader = store.open_reader(&ns("job"), &key(k)).await?;
    let scope = store.buffers().scope(16 << 20);
    let mut chunks = reader.chunks(offset, len, scope);
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next().await {
        out.extend_from_slice(chunk?.bytes());
    }
    Ok(out)
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("shards")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The files under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_of_awkward_sizes_and_ranges() {
    for kind in engines() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(kind, config(&[tmp.path().to_path_buf()])).await;
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            CHUNK as usize,
            CHUNK as usize + 1,
            5 * CHUNK as usize - 3,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let data = pattern(size, i as u64);
            let meta = put(&store, &format!("k{i}"), &data, None).await.unwrap();
            assert_eq!(meta.len, size as u64);
            assert_eq!(meta.version, 1);
            assert_eq!(meta.crc32c, crc32c::crc32c(&data));
            let back = fetch(&store, &format!("k{i}"), 0, size as u64).await.unwrap();
            assert!(back == data, "{kind:?}: size {size} differs");
        }
        let data = pattern(5 * CHUNK as usize - 3, 7);
        for (offset, len) in [
            (0, 1),
            (CHUNK as u64 - 1, 2),
            (3, 3 * CHUNK as u64),
            (data.len() as u64 - 1, 1),
            (10, 0),
        ] {
            let back = fetch(&store, "k7", offset, len).await.unwrap();
            assert_eq!(
                back,
                &data[offset as usize..(offset + len) as usize],
                "{kind:?}: range {offset}+{len}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_replace_atomically_and_old_files_do_not_pile_up() {
    for kind in engines() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(kind, config(&[tmp.path().to_path_buf()])).await;
        put(&store, "w", b"one", Some(5)).await.unwrap();
        let err = put(&store, "w", b"two", Some(5)).await.unwrap_err();
        assert_eq!(err.status(), Status::VersionConflict);
        assert_eq!(err.current_version(), Some(5));
        let meta = put(&store, "w", b"three", None).await.unwrap();
        assert_eq!(meta.version, 6);
        assert_eq!(fetch(&store, "w", 0, 5).await.unwrap(), b"three");
        assert_eq!(shard_files(tmp.path()).len(), 1, "old versions are replaced, not kept");
        assert_eq!(count_files(&tmp.path().join("tmp")), 0);

        // A reader that opened the old version keeps reading it.
        let reader = store.open_reader(&ns("job"), &key("w")).await.unwrap();
        put(&store, "w", b"four!", Some(10)).await.unwrap();
        let mut chunks = reader.chunks(0, 5, store.buffers().scope(1 << 20));
        assert_eq!(chunks.next().await.unwrap().unwrap().bytes(), b"three");
        assert_eq!(fetch(&store, "w", 0, 5).await.unwrap(), b"four!");

        // A sender checksum that does not match stores nothing.
        let mut writer = store
            .begin_put(PutSpec {
                namespace: ns("job"),
                key: key("w"),
                version: None,
                dtype: DType::Raw,
                shape: vec![],
                len: 3,
                crc32c: Some(1),
                newer_than: None,
            })
            .await
            .unwrap();
        let mut buf = store.buffers().take(&store.buffers().scope(1 << 20), 3).await;
        buf.fill_padded(b"bad");
        writer.write_chunk(buf).await.unwrap();
        assert_eq!(writer.commit().await.unwrap_err().status(), Status::ChecksumMismatch);
        assert_eq!(store.stat(&ns("job"), &key("w")).unwrap().version, 10);
        assert_eq!(
            count_files(&tmp.path().join("tmp")),
            0,
            "the failed put's temp file is gone"
        );
    }
}

/// Starts a put of `data` with an automatic version; returns the writer
/// with every chunk written, ready to commit.
async fn begin_automatic(store: &Store, k: &str, data: &[u8]) -> writer::ShardWriter {
    let mut writer = store
        .begin_put(PutSpec {
            namespace: ns("job"),
            key: key(k),
            version: None,
            dtype: DType::Raw,
            shape: vec![],
            len: data.len() as u64,
            crc32c: None,
            newer_than: None,
        })
        .await
        .unwrap();
    let scope = store.buffers().scope(1 << 20);
    let mut buf = store.buffers().take(&scope, data.len()).await;
    buf.fill_padded(data);
    writer.write_chunk(buf).await.unwrap();
    writer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_puts_with_automatic_versions_never_share_a_version() {
    for kind in engines() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(kind, config(&[tmp.path().to_path_buf()])).await;
        put(&store, "o", b"zero", None).await.unwrap();

        // Both begin before either is stored.
        let first = begin_automatic(&store, "o", b"first").await;
        let second = begin_automatic(&store, "o", b"second").await;
        assert_eq!((first.version(), second.version()), (2, 3));
        assert_eq!(second.commit().await.unwrap().version, 3);
        // The older one ends after the newer: refused, and said why.
        let err = first.commit().await.unwrap_err();
        assert_eq!(err.status(), Status::VersionConflict);
        assert_eq!(err.current_version(), Some(3));
        assert_eq!(fetch(&store, "o", 0, 6).await.unwrap(), b"second");

        // In order, both are stored, each under its own version.
        let third = begin_automatic(&store, "o", b"third").await;
        let fourth = begin_automatic(&store, "o", b"fourth").await;
        assert_eq!(third.commit().await.unwrap().version, 4);
        assert_eq!(fourth.commit().await.unwrap().version, 5);

        // An abandoned put gives its version back once nothing overlaps it.
        drop(begin_automatic(&store, "o", b"dropped").await);
        assert_eq!(put(&store, "o", b"sixth", None).await.unwrap().version, 6);
        assert_eq!(count_files(&tmp.path().join("tmp")), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_and_size_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&[tmp.path().to_path_buf()]);
    cfg.max_shard_bytes = 1000;
    let store = open(EngineKind::Psync, cfg).await;
    let spec = |len, dtype, shape: Vec<u64>| PutSpec {
        namespace: ns("job"),
        key: key("t"),
        version: None,
        dtype,
        shape,
        len,
        crc32c: None,
        newer_than: None,
    };
    let err = store.begin_put(spec(1001, DType::Raw, vec![])).await.unwrap_err();
    assert_eq!(err.status(), Status::TooLarge);
    let err = store.begin_put(spec(10, DType::F32, vec![3])).await.unwrap_err();
    assert_eq!(err.status(), Status::BadRequest);
    assert!(err.to_string().contains("needs 12 bytes"), "{err}");
    assert!(store.begin_put(spec(12, DType::F32, vec![3])).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
    for k in ["a.1", "a.2", "a.3", "b.1"] {
        put(&store, k, k.as_bytes(), None).await.unwrap();
    }
    let keys = |v: Vec<ShardMeta>| v.into_iter().map(|m| m.key.to_string()).collect::<Vec<_>>();
    let (page, more) = store.list(&ns("job"), "a.", None, 2);
    assert_eq!((keys(page), more), (vec!["a.1".to_string(), "a.2".to_string()], true));
    let (page, more) = store.list(&ns("job"), "a.", Some("a.2"), 2);
    assert_eq!((keys(page), more), (vec!["a.3".to_string()], false));
    let (page, _) = store.list(&ns("job"), "", None, 10);
    assert_eq!(page.len(), 4);
    assert_eq!(store.list(&ns("other"), "", None, 10).0.len(), 0);

    let err = store.delete(&ns("job"), &key("a.1"), Some(7)).await.unwrap_err();
    assert_eq!(err.status(), Status::VersionConflict);
    assert_eq!(store.delete(&ns("job"), &key("a.1"), Some(1)).await.unwrap(), 1);
    assert_eq!(
        store.stat(&ns("job"), &key("a.1")).unwrap_err().status(),
        Status::NotFound
    );
    assert_eq!(
        store.delete(&ns("job"), &key("a.1"), None).await.unwrap_err().status(),
        Status::NotFound
    );
    assert_eq!(shard_files(tmp.path()).len(), 3);
    let status = store.status().await;
    assert_eq!((status.shards, status.bytes), (3, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_recovers_index_and_removes_temp_files() {
    for kind in engines() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = [tmp.path().join("d0"), tmp.path().join("d1")];
        let data: Vec<Vec<u8>> = (0..20).map(|i| pattern(1000 * i + 1, i as u64)).collect();
        {
            let store = open(kind, config(&dirs)).await;
            for (i, d) in data.iter().enumerate() {
                put(&store, &format!("s{i}"), d, Some(3)).await.unwrap();
            }
        }
        // What a put interrupted by a crash leaves: a partial temp file.
        std::fs::write(dirs[1].join("tmp").join("0123.partial"), b"half a shard").unwrap();
        let leftovers: usize = dirs.iter().map(|d| count_files(&d.join("tmp"))).sum();
        assert_eq!(leftovers, 1);
        let store = open(kind, config(&dirs)).await;
        for (i, d) in data.iter().enumerate() {
            let meta = store.stat(&ns("job"), &key(&format!("s{i}"))).unwrap();
            assert_eq!(meta.version, 3);
            assert_eq!(&fetch(&store, &format!("s{i}"), 0, d.len() as u64).await.unwrap(), d);
        }
        assert!(store.stat(&ns("job"), &key("never")).is_err());
        let leftovers: usize = dirs.iter().map(|d| count_files(&d.join("tmp"))).sum();
        assert_eq!(leftovers, 0, "{kind:?}: temp files are removed at start");
        let status = store.status().await;
        assert_eq!(status.shards, 20);
        assert!(
            status.data_dirs.iter().all(|d| d.shards > 0),
            "shards spread over both dirs: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_payload_byte_is_never_served_and_is_quarantined() {
    for kind in engines() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pattern(3 * CHUNK as usize, 1);
        {
            let store = open(kind, config(&[tmp.path().to_path_buf()])).await;
            put(&store, "bad", &data, None).await.unwrap();
            put(&store, "good", &data, None).await.unwrap();
        }
        let files = shard_files(tmp.path());
        let bad_file = files
            .iter()
            .find(|p| {
                let (meta, _, _) = recovery::read_header(p, false).unwrap();
                meta.key.as_str() == "bad"
            })
            .unwrap();
        let (_, layout, _) = recovery::read_header(bad_file, false).unwrap();
        let mut bytes = std::fs::read(bad_file).unwrap();
        let at = layout.payload_offset as usize + 2 * CHUNK as usize + 100;
        bytes[at] ^= 0x01;
        std::fs::write(bad_file, &bytes).unwrap();

        let store = open(kind, config(&[tmp.path().to_path_buf()])).await;
        // The first chunks are intact; the range covering the flipped byte is refused.
        assert_eq!(fetch(&store, "bad", 0, 100).await.unwrap(), &data[..100]);
        let err = fetch(&store, "bad", 0, data.len() as u64).await.unwrap_err();
        assert_eq!(err.status(), Status::ChecksumMismatch);
        assert!(err.to_string().contains("chunk 2"), "{err}");
        // From now on the shard is quarantined, also after a restart.
        let err = store.stat(&ns("job"), &key("bad")).unwrap_err();
        assert_eq!(err.status(), Status::ChecksumMismatch);
        assert_eq!(store.status().await.quarantined, 1);
        assert_eq!(count_files(&tmp.path().join("quarantine")), 1);
        assert_eq!(fetch(&store, "good", 0, data.len() as u64).await.unwrap(), data);
        drop(store);
        let store = open(kind, config(&[tmp.path().to_path_buf()])).await;
        assert_eq!(
            store.stat(&ns("job"), &key("bad")).unwrap_err().status(),
            Status::ChecksumMismatch
        );
        // A new put replaces it; deleting forgets it.
        put(&store, "bad", b"fresh", None).await.unwrap();
        assert_eq!(fetch(&store, "bad", 0, 5).await.unwrap(), b"fresh");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_verification_at_start_quarantines_before_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(CHUNK as usize + 10, 2);
    {
        let store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
        put(&store, "x", &data, None).await.unwrap();
    }
    let file = &shard_files(tmp.path())[0];
    let mut bytes = std::fs::read(file).unwrap();
    let len = bytes.len();
    bytes[len - 4096 + 5] ^= 0x80; // inside the last chunk's payload
    std::fs::write(file, &bytes).unwrap();

    let mut cfg = config(&[tmp.path().to_path_buf()]);
    cfg.verify_on_start = VerifyMode::Full;
    let store = open(EngineKind::Psync, cfg).await;
    assert_eq!(store.status().await.quarantined, 1);
    assert_eq!(
        store.stat(&ns("job"), &key("x")).unwrap_err().status(),
        Status::ChecksumMismatch
    );
    assert_eq!(store.delete(&ns("job"), &key("x"), None).await.unwrap(), 1);
    assert_eq!(
        store.status().await.quarantined,
        0,
        "deleting a quarantined key discards its file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_header_and_truncated_file_are_quarantined_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
        put(&store, "h", &pattern(100, 1), None).await.unwrap();
        put(&store, "t", &pattern(3 * CHUNK as usize, 2), None).await.unwrap();
        put(&store, "ok", b"fine", None).await.unwrap();
    }
    for file in shard_files(tmp.path()) {
        let (meta, layout, len) = recovery::read_header(&file, false).unwrap();
        match meta.key.as_str() {
            "h" => {
                let mut bytes = std::fs::read(&file).unwrap();
                bytes[40] ^= 0xff;
                std::fs::write(&file, bytes).unwrap();
            }
            "t" => {
                let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                f.set_len(len - 4096).unwrap();
                assert!(len - 4096 > layout.payload_offset);
            }
            _ => {}
        }
    }
    let store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
    assert_eq!(store.status().await.quarantined, 2);
    assert_eq!(store.status().await.shards, 1);
    assert_eq!(
        store.stat(&ns("job"), &key("t")).unwrap_err().status(),
        Status::ChecksumMismatch
    );
    // The broken header cannot name its key: that shard is simply gone.
    assert_eq!(
        store.stat(&ns("job"), &key("h")).unwrap_err().status(),
        Status::NotFound
    );
    assert_eq!(fetch(&store, "ok", 0, 4).await.unwrap(), b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_cannot_use_the_same_dir_and_foreign_dirs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
    let engine = Arc::new(
        IoEngine::start(
            &IoConfig {
                engine: EngineKind::Psync,
                ..IoConfig::default()
            },
            None,
        )
        .unwrap(),
    );
    let err = Store::open(config(&[tmp.path().to_path_buf()]), engine.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in use by another shardd"), "{err}");

    // A fresh file system's root (only lost+found) is fine.
    let mount_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(mount_root.path().join("lost+found")).unwrap();
    Store::open(config(&[mount_root.path().to_path_buf()]), engine.clone())
        .await
        .unwrap();

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("thesis.tex"), "precious").unwrap();
    let err = Store::open(config(&[foreign.path().to_path_buf()]), engine)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(foreign.path().join("thesis.tex").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_versions_in_two_dirs_keep_the_later_created_then_the_first_listed() {
    for kind in engines() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = [tmp.path().join("d0"), tmp.path().join("d1")];
        let (first, later) = (pattern(5000, 1), pattern(5000, 2));
        // Version 5 of one key in each dir, the one in d1 created later.
        put(&open(kind, config(&dirs[..1])).await, "k", &first, Some(5))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        put(&open(kind, config(&dirs[1..])).await, "k", &later, Some(5))
            .await
            .unwrap();
        let d1_file = files_under(&dirs[1].join("shards")).pop().unwrap();
        {
            let store = open(kind, config(&dirs)).await;
            assert_eq!(
                fetch(&store, "k", 0, 5000).await.unwrap(),
                later,
                "{kind:?}: created later wins"
            );
            assert!(
                files_under(&dirs[0].join("shards")).is_empty(),
                "{kind:?}: the other copy is removed"
            );
        }
        // The same file in both dirs: the first listed wins, whichever order.
        let d0_file = dirs[0].join(d1_file.strip_prefix(&dirs[1]).unwrap());
        std::fs::create_dir_all(d0_file.parent().unwrap()).unwrap();
        std::fs::copy(&d1_file, &d0_file).unwrap();
        {
            let reversed = [dirs[1].clone(), dirs[0].clone()];
            let store = open(kind, config(&reversed)).await;
            assert_eq!(fetch(&store, "k", 0, 5000).await.unwrap(), later);
        }
        assert!(
            d1_file.exists() && !d0_file.exists(),
            "{kind:?}: the copy in the first listed dir is kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_version_is_capped_so_automatic_versions_always_proceed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
    let err = put(&store, "k", b"x", Some(u64::MAX)).await.unwrap_err();
    assert_eq!(err.status(), Status::BadRequest);
    assert!(err.to_string().contains("largest a put may name"), "{err}");
    let meta = put(&store, "k", b"x", Some(shardd_protocol::MAX_CHOSEN_VERSION))
        .await
        .unwrap();
    assert_eq!(meta.version, shardd_protocol::MAX_CHOSEN_VERSION);
    let meta = put(&store, "k", b"y", None).await.unwrap();
    assert_eq!(meta.version, shardd_protocol::MAX_CHOSEN_VERSION + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_drop_that_fails_part_way_keeps_serving_what_is_still_on_the_drives() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("d0"), tmp.path().join("d1")];
    let store = open(EngineKind::Psync, config(&dirs)).await;
    let data: Vec<Vec<u8>> = (0..12).map(|i| pattern(3000 + i, i as u64)).collect();
    for (i, d) in data.iter().enumerate() {
        put(&store, &format!("s{i}"), d, None).await.unwrap();
    }
    // d1's tmp/ refuses new entries (immutable), so its move fails.
    let locked = dirs[1].join("tmp");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&locked)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: a failing namespace drop: chattr +i is not available here");
        return;
    }
    let failed = store.drop_namespace(&ns("job")).await;
    assert!(chattr("-i"));
    assert!(failed.is_err(), "{failed:?}");
    // Every shard still on a drive is served; those moved away are not.
    let mut served = 0;
    for (i, d) in data.iter().enumerate() {
        let k = format!("s{i}");
        match store.stat(&ns("job"), &key(&k)) {
            Ok(_) => {
                assert_eq!(&fetch(&store, &k, 0, d.len() as u64).await.unwrap(), d);
                served += 1;
            }
            Err(e) => assert_eq!(e.status(), Status::NotFound),
        }
    }
    let on_d1 = files_under(&dirs[1].join("shards")).len();
    assert_eq!(served, on_d1, "the shards of the dir that was not moved are served");
    assert!(on_d1 > 0 && on_d1 < data.len(), "shards spread over both dirs");
    // A second attempt finishes the drop.
    let dropped = store.drop_namespace(&ns("job")).await.unwrap();
    assert_eq!(dropped.shards as usize, on_d1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_usage_follows_puts_replaces_deletes_and_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(EngineKind::Psync, config(&[tmp.path().to_path_buf()])).await;
    let usage = |store: &Store| -> Vec<(String, u64, u64)> {
        store
            .namespaces()
            .into_iter()
            .map(|u| (u.namespace.as_str().to_string(), u.shards, u.bytes))
            .collect()
    };
    put(&store, "a", &pattern(1000, 1), None).await.unwrap();
    put(&store, "b", &pattern(3000, 2), None).await.unwrap();
    assert_eq!(usage(&store), [("job".to_string(), 2, 4000)]);
    put(&store, "a", &pattern(5000, 3), None).await.unwrap();
    assert_eq!(usage(&store), [("job".to_string(), 2, 8000)]);
    assert_eq!(store.namespace_bytes(&ns("job")), 8000);
    store.delete(&ns("job"), &key("b"), None).await.unwrap();
    assert_eq!(usage(&store), [("job".to_string(), 1, 5000)]);
    store.drop_namespace(&ns("job")).await.unwrap();
    assert!(usage(&store).is_empty());
    assert_eq!(store.namespace_bytes(&ns("job")), 0);
}
