//! The same tests run against both engines.

use std::sync::Arc;

use super::*;
use crate::ctl::bench::pattern;

fn engines() -> Vec<IoEngine> {
    let mut out = vec![
        IoEngine::start(
            &IoConfig {
                engine: EngineKind::Psync,
                psync_threads: 4,
                ..IoConfig::default()
            },
            None,
        )
        .unwrap(),
    ];
    match IoEngine::uring_available() {
        Ok(()) => out.push(
            IoEngine::start(
                &IoConfig {
                    engine: EngineKind::Uring,
                    queue_depth: 8,
                    ..IoConfig::default()
                },
                None,
            )
            .unwrap(),
        ),
        Err(e) => eprintln!("skipping the io_uring engine: io_uring is unavailable here ({e})"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_write_then_read_back_and_short_read_at_eof() {
    let dir = tempfile::tempdir().unwrap();
    let direct = fs::supports_direct_io(dir.path()).unwrap();
    for engine in engines() {
        let path = dir.path().join(format!("f-{}", engine.name()));
        let file = Arc::new(fs::create_new(&path, direct).unwrap());
        let data = pattern(3 * ALIGN, 7);
        let mut buf = AlignedBuf::new(data.len());
        buf.fill_padded(&data);
        let out = engine.write(&file, 0, buf, data.len()).await;
        assert_eq!(out.result.unwrap(), data.len(), "{}", engine.name());
        assert_eq!(out.buf.capacity(), 3 * ALIGN, "the buffer comes back");
        engine.sync_data(&file).await.result.unwrap();
        drop(file);

        let file = Arc::new(fs::open_read(&path, direct).unwrap());
        let out = engine.read(&file, ALIGN as u64, AlignedBuf::new(ALIGN), ALIGN).await;
        assert_eq!(out.result.unwrap(), ALIGN);
        assert_eq!(out.buf.as_slice(), &data[ALIGN..2 * ALIGN]);

        // Asking for more than the file holds stops at end of file.
        let out = engine
            .read(&file, 2 * ALIGN as u64, AlignedBuf::new(4 * ALIGN), 4 * ALIGN)
            .await;
        assert_eq!(out.result.unwrap(), ALIGN, "{}", engine.name());
        assert_eq!(out.buf.as_slice(), &data[2 * ALIGN..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_with_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    for engine in engines() {
        let path = dir.path().join(format!("w-{}", engine.name()));
        // Reading from a write-only file fails with EBADF.
        let file = Arc::new(fs::create_new(&path, false).unwrap());
        let out = engine.read(&file, 0, AlignedBuf::new(ALIGN), ALIGN).await;
        let err = out.result.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{}: {err}", engine.name());
        assert_eq!(out.buf.capacity(), ALIGN);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_operations_than_queue_depth() {
    let dir = tempfile::tempdir().unwrap();
    for engine in engines() {
        let path = dir.path().join(format!("m-{}", engine.name()));
        let file = Arc::new(fs::create_new(&path, false).unwrap());
        let blocks = 200;
        let writes: Vec<Completion> = (0..blocks)
            .map(|i| {
                let mut buf = AlignedBuf::new(ALIGN);
                buf.fill_padded(&pattern(ALIGN, i as u64));
                engine.write(&file, (i * ALIGN) as u64, buf, ALIGN)
            })
            .collect();
        for w in writes {
            w.await.result.unwrap();
        }
        let file = Arc::new(fs::open_read(&path, false).unwrap());
        let reads: Vec<Completion> = (0..blocks)
            .map(|i| engine.read(&file, (i * ALIGN) as u64, AlignedBuf::new(ALIGN), ALIGN))
            .collect();
        for (i, r) in reads.into_iter().enumerate() {
            let out = r.await;
            assert_eq!(out.result.unwrap(), ALIGN);
            assert_eq!(
                out.buf.as_slice(),
                pattern(ALIGN, i as u64),
                "block {i} on {}",
                engine.name()
            );
        }
    }
}

#[test]
fn engine_names_and_parsing() {
    assert_eq!("auto".parse::<EngineKind>(), Ok(EngineKind::Auto));
    assert_eq!("uring".parse::<EngineKind>(), Ok(EngineKind::Uring));
    assert_eq!("psync".parse::<EngineKind>(), Ok(EngineKind::Psync));
    assert!(
        "aio"
            .parse::<EngineKind>()
            .unwrap_err()
            .contains("auto, uring or psync")
    );
}

/// Reads into and writes from arena blocks, registered as io_uring fixed
/// buffers (and plain memory for psync), and writes from shared slices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arena_blocks_as_fixed_buffers_and_shared_writes() {
    use crate::arena::{Arena, ArenaConfig, HugePages};
    let arena = Arena::create(ArenaConfig {
        size: 16 << 20,
        max_block: 1 << 20,
        huge_pages: HugePages::Off,
        kept: false,
    })
    .unwrap();
    let mut kinds = vec![EngineKind::Psync];
    if IoEngine::uring_available().is_ok() {
        kinds.push(EngineKind::Uring);
    }
    let dir = tempfile::tempdir().unwrap();
    let direct = fs::supports_direct_io(dir.path()).unwrap();
    for kind in kinds {
        let engine = IoEngine::start(
            &IoConfig {
                engine: kind,
                ..IoConfig::default()
            },
            Some(arena.fixed_memory()),
        )
        .unwrap();
        let path = dir.path().join(format!("a-{}", engine.name()));
        let file = Arc::new(fs::create_new(&path, direct).unwrap());
        let data = pattern(1 << 20, 3);
        let mut block = arena.alloc(1 << 20).unwrap();
        assert!(block.fixed_index().is_some());
        block.fill_padded(&data);
        let out = engine.write(&file, 0, block, 1 << 20).await;
        assert_eq!(out.result.unwrap(), 1 << 20, "{}", engine.name());
        // The same bytes again, straight from a shared view of the block.
        let block = Arc::new(out.buf);
        let slice = arena.shared_slice(&block, 1 << 20, block.clone());
        let out = engine.write_shared(&file, 1 << 20, slice, 1 << 20).await;
        assert_eq!(out.result.unwrap(), 1 << 20);
        drop(block);
        engine.sync_data(&file).await.result.unwrap();

        let file = Arc::new(fs::open_read(&path, direct).unwrap());
        for offset in [0u64, 1 << 20] {
            let into = arena.alloc(1 << 20).unwrap();
            let out = engine.read(&file, offset, into, 1 << 20).await;
            assert_eq!(out.result.unwrap(), 1 << 20);
            assert!(out.buf.as_slice() == data, "{} at {offset}", engine.name());
        }
    }
    assert_eq!(arena.used(), 0, "every block came back");
}
