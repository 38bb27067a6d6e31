//! Several daemons on this machine acting as the nodes of a job: tensors
//! partitioned across them, layers gathered from all of them at once, node
//! failures named, and the trainer's prefetching seen in the daemons'
//! counters.

use std::time::{Duration, Instant};

use shardd::io::EngineKind;
use shardd_client::cluster::ClusterOptions;
use shardd_client::trainer::TrainerOptions;
use shardd_client::{Client, Cluster, ClusterError, DType, Trainer};
use shardd_tests::{TestDaemon, engines, pattern};

const NS: &str = "job";

async fn start_nodes(engine: EngineKind, n: usize) -> Vec<TestDaemon> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestDaemon::start(engine, "").await);
    }
    nodes
}

/// A cluster of `nodes` over TCP, node 0 through its Unix socket (the local
/// node: zero-copy reads from its arena), with the nodes' key.
fn cluster(nodes: &[TestDaemon], options: ClusterOptions) -> Cluster {
    let endpoints: Vec<String> = nodes.iter().map(|n| n.tcp_endpoint()).collect();
    let options = ClusterOptions {
        local: Some((0, nodes[0].unix_endpoint())),
        client: shardd_tests::client_options(),
        ..options
    };
    Cluster::new(&endpoints, options).expect("valid cluster")
}

/// Small pieces, so that partitions over 64 KiB are fetched as ranges.
fn small_pieces() -> ClusterOptions {
    ClusterOptions {
        piece_size: 64 << 10,
        request_timeout: Duration::from_secs(10),
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_tensors_gather_byte_exact_on_one_to_five_nodes() {
    let sizes: [usize; 9] = [0, 1, 4095, 4096, 4097, 3 * 4096 + 1, 100_003, 1 << 20, (1 << 20) + 3];
    for engine in engines() {
        let daemons = start_nodes(engine, 5).await;
        for n in 1..=5 {
            let cluster = cluster(&daemons[..n], small_pieces());
            let names: Vec<String> = sizes.iter().map(|s| format!("n{n}.t{s}")).collect();
            for (name, &size) in names.iter().zip(&sizes) {
                let manifest = cluster
                    .put_partitioned(
                        NS,
                        name,
                        pattern(size, (n * 1000 + size) as u64),
                        DType::U8,
                        vec![size as u64],
                    )
                    .await
                    .expect("partitioned put");
                assert_eq!(manifest.partitioning.len, size as u64);
                // Each partition is on its own node, and only there.
                for (index, range) in manifest.partitioning.parts() {
                    let key = manifest.part_key(index);
                    let on = daemons[index as usize].client(true).await;
                    assert_eq!(on.stat(NS, &key).await.unwrap().meta.len, range.end - range.start);
                    if n > 1 {
                        let other = daemons[(index as usize + 1) % n].client(true).await;
                        assert!(other.stat(NS, &key).await.unwrap_err().is_not_found(), "{key}");
                    }
                }
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let layer = cluster.layer(NS, "all", &refs).await.expect("layer resolves");
            let (buf, result) = cluster.gather(&layer, vec![0xEEu8; layer.len() as usize]).await;
            let tensors = result.unwrap_or_else(|e| panic!("{engine:?}, {n} nodes: {e}"));
            assert_eq!(tensors.len(), sizes.len());
            for (tensor, &size) in tensors.iter().zip(&sizes) {
                assert_eq!(tensor.len, size as u64);
                assert_eq!(tensor.offset % 256, 0);
                assert_eq!(tensor.shape, [size as u64]);
                assert_eq!(tensor.version, 1);
                let bytes = &buf[tensor.offset as usize..][..size];
                assert!(
                    bytes == pattern(size, (n * 1000 + size) as u64).as_slice(),
                    "{engine:?}, {n} nodes, tensor of {size} bytes differs"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tensor_stored_again_gets_a_new_version_and_leaves_no_stale_partitions() {
    let daemons = start_nodes(EngineKind::Auto, 3).await;
    // Shape and dtype travel with the tensor.
    let three = cluster(&daemons, ClusterOptions::default());
    let data = pattern(3 * 1001 * 4, 7);
    three
        .put_partitioned(NS, "w", data.clone(), DType::F32, vec![3, 1001])
        .await
        .unwrap();
    let wrong_shape = three
        .put_partitioned(NS, "v", data.clone(), DType::F32, vec![3, 1000])
        .await;
    assert!(wrong_shape.unwrap_err().to_string().contains("do not hold shape"));
    let newer = pattern(3 * 1001 * 4, 8);
    let manifest = three
        .put_partitioned(NS, "w", newer.clone(), DType::F32, vec![3, 1001])
        .await
        .unwrap();
    assert_eq!(manifest.version, 2);
    let layer = three.layer(NS, "l", &["w"]).await.unwrap();
    let (buf, result) = three.gather(&layer, vec![0u8; layer.len() as usize]).await;
    let tensors = result.unwrap();
    assert_eq!(
        (tensors[0].dtype, tensors[0].shape.clone(), tensors[0].version),
        (DType::F32, vec![3, 1001], 2)
    );
    assert!(buf[..newer.len()] == newer[..]);

    // Stored again over two nodes: the three-node partitions go from the
    // nodes still in the cluster (node 2 is out of its reach).
    let two = cluster(&daemons[..2], ClusterOptions::default());
    let manifest = two
        .put_partitioned(NS, "w", data.clone(), DType::F32, vec![3, 1001])
        .await
        .unwrap();
    assert_eq!(manifest.version, 3);
    for (node, daemon) in daemons.iter().enumerate() {
        let keys: Vec<String> = daemon
            .client(true)
            .await
            .list(NS, "w#")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key.to_string())
            .collect();
        let expected: Vec<String> = match node {
            2 => vec!["w#2/3".to_string()],
            _ => vec![manifest.part_key(node as u32)],
        };
        assert_eq!(keys, expected, "node {node}");
    }
    // A cluster of another size is told so.
    let error = three.layer(NS, "l", &["w"]).await.unwrap_err().to_string();
    assert!(error.contains("stored across 2 nodes; this cluster has 3"), "{error}");
    let missing = two.layer(NS, "l", &["nope"]).await.unwrap_err().to_string();
    assert!(
        missing.contains("job/nope") && missing.contains("not found"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buffer_too_small_is_refused_and_comes_back() {
    let daemons = start_nodes(EngineKind::Auto, 2).await;
    let cluster = cluster(&daemons, ClusterOptions::default());
    cluster
        .put_partitioned(NS, "a", pattern(10_000, 1), DType::U8, vec![])
        .await
        .unwrap();
    cluster
        .put_partitioned(NS, "b", pattern(300, 2), DType::U8, vec![])
        .await
        .unwrap();
    let layer = cluster.layer(NS, "ab", &["a", "b"]).await.unwrap();
    assert_eq!(layer.len(), 10_240 + 300);
    let (buf, result) = cluster.gather(&layer, vec![7u8; 10_000]).await;
    assert_eq!(buf, vec![7u8; 10_000]);
    assert!(matches!(
        result,
        Err(ClusterError::BufferTooSmall { needed: 10_540, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_node_is_named_and_used_again_once_it_is_back() {
    for engine in engines() {
        let mut daemons = start_nodes(engine, 3).await;
        let options = ClusterOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            ..ClusterOptions::default()
        };
        let cluster = cluster(&daemons, options);
        let data = pattern(3 << 20, 3);
        cluster
            .put_partitioned(NS, "w", data.clone(), DType::U8, vec![])
            .await
            .unwrap();
        let layer = cluster.layer(NS, "l", &["w"]).await.unwrap();
        let (buf, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
        result.unwrap();

        let endpoint = daemons[1].tcp_endpoint();
        daemons[1].stop().await;
        let started = Instant::now();
        let (buf, result) = cluster.gather(&layer, buf).await;
        let error = result.expect_err("a gather with a node down fails");
        assert!(started.elapsed() < Duration::from_secs(10), "the failure is not a hang");
        assert_eq!(error.node(), Some(1), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&endpoint) && message.contains("job/w#1/3"),
            "the error names the node and the shard: {message}"
        );

        daemons[1].restart_in_place().await;
        let (buf, result) = cluster.gather(&layer, buf).await;
        result.expect("the node is used again once it is back");
        assert!(buf[..data.len()] == data[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_never_answers_times_out_with_its_name() {
    let daemons = start_nodes(EngineKind::Auto, 2).await;
    let good = cluster(&daemons, ClusterOptions::default());
    good.put_partitioned(NS, "w", pattern(1 << 20, 4), DType::U8, vec![])
        .await
        .unwrap();

    // Node 1's address now leads to something that accepts and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = format!("tcp://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            conns.push(conn);
        }
    });
    let options = ClusterOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        local: Some((0, daemons[0].unix_endpoint())),
        client: shardd_tests::client_options(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::new(&[daemons[0].tcp_endpoint(), silent_addr.clone()], options).unwrap();
    let layer = cluster.layer(NS, "l", &["w"]).await.unwrap();
    let started = Instant::now();
    let (_, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
    let error = result.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(error.node(), Some(1));
    let message = error.to_string();
    assert!(message.contains(&silent_addr) && message.contains("w#1/2"), "{message}");
    held.abort();
}

/// Each node's arena counters: (hits, misses, joins of a prefetch still loading).
async fn counters(cluster: &Cluster) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for node in 0..cluster.len() {
        let arena = cluster.status_of(node).await.unwrap().arena.expect("arena");
        out.push((arena.hits, arena.misses, arena.prefetch_late));
    }
    out
}

async fn trainer_with_layers(cluster: &Cluster, layers: usize, bytes: usize, options: TrainerOptions) -> Trainer {
    let mut trainer = Trainer::new(cluster.clone(), NS, options);
    for l in 0..layers {
        let tensor = format!("layers.{l}.w");
        cluster
            .put_partitioned(NS, &tensor, pattern(bytes, l as u64), DType::U8, vec![])
            .await
            .unwrap();
        trainer.add_layer(&format!("L{l}"), &[tensor.as_str()]).await.unwrap();
    }
    trainer
}

/// Forward then backward.
fn step_order(layers: usize) -> Vec<String> {
    (0..layers).chain((0..layers).rev()).map(|l| format!("L{l}")).collect()
}

async fn run_step(trainer: &mut Trainer, order: &[String], compute: Duration) -> shardd_client::StepStats {
    let mut buf = vec![0u8; 1];
    for name in order {
        let len = trainer.layer(name).unwrap().len() as usize;
        buf.resize(len, 0);
        let (back, result) = trainer.gather(name, buf).await;
        buf = back;
        result.unwrap_or_else(|e| panic!("gather {name}: {e}"));
        tokio::time::sleep(compute).await;
    }
    trainer.end_step().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trace_is_recorded_replayed_and_invalidated() {
    let daemons = start_nodes(EngineKind::Auto, 3).await;
    let cluster = cluster(&daemons, ClusterOptions::default());
    let mut trainer = trainer_with_layers(&cluster, 4, 64 << 10, TrainerOptions::default()).await;
    let order = step_order(4);
    assert_eq!(trainer.trace(), None);

    let first = run_step(&mut trainer, &order, Duration::ZERO).await;
    assert!(!first.replayed, "the first step is recorded");
    assert_eq!(trainer.trace().unwrap(), order.as_slice());

    let second = run_step(&mut trainer, &order, Duration::from_millis(5)).await;
    assert!(second.replayed);
    assert_eq!(second.layers.len(), order.len());
    assert!(second.stall <= second.elapsed);
    assert_eq!(trainer.invalidations(), 0);

    // The model changes: layer 2 is skipped from now on.
    let changed: Vec<String> = order.iter().filter(|l| *l != "L2").cloned().collect();
    let third = run_step(&mut trainer, &changed, Duration::ZERO).await;
    assert!(!third.replayed);
    assert_eq!(trainer.invalidations(), 1);
    assert_eq!(trainer.trace().unwrap(), changed.as_slice(), "re-recorded");
    let fourth = run_step(&mut trainer, &changed, Duration::ZERO).await;
    assert!(fourth.replayed);
    assert_eq!(trainer.steps().len(), 4);
    // Unknown layers are refused, not guessed.
    assert!(trainer.declare_order(&["L0", "L9"]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetched_layers_are_resident_before_the_gather_asks() {
    let daemons = start_nodes(EngineKind::Auto, 3).await;
    let cluster = cluster(&daemons, ClusterOptions::default());
    let layers = 5;
    let order = step_order(layers);
    let order_refs: Vec<&str> = order.iter().map(String::as_str).collect();
    // Every layer is demoted after use, so without prefetch each gather reads the drives.
    for prefetch in [true, false] {
        // Without gathering ahead, each gather comes after a layer's compute:
        // it shows whether the daemons' hints had the data there by then (a
        // gather ahead starts at once and may join a hinted load still running).
        let options = TrainerOptions {
            prefetch,
            demote_after_use: true,
            gather_ahead: false,
            ..TrainerOptions::default()
        };
        let mut trainer = trainer_with_layers(&cluster, layers, 512 << 10, options).await;
        trainer.declare_order(&order_refs).await.unwrap();
        run_step(&mut trainer, &order, Duration::from_millis(50)).await;
        let before = counters(&cluster).await;
        let step = run_step(&mut trainer, &order, Duration::from_millis(50)).await;
        let after = counters(&cluster).await;
        assert!(step.replayed);
        // Each gather fetches one partition from each node; layers used twice
        // in a row (the turn from forward to backward) stay resident.
        for node in 0..cluster.len() {
            let hits = after[node].0 - before[node].0;
            let misses = after[node].1 - before[node].1;
            // A gather that finds its hinted load still on its way joins it.
            let late = after[node].2 - before[node].2;
            eprintln!("prefetch {prefetch}, node {node}: {hits} hits, {misses} misses, {late} late");
            assert_eq!(hits + misses + late, order.len() as u64, "node {node}");
            if prefetch {
                // Hints load in the background while the layer before computes
                // (50 ms here); on a loaded machine one of them can still be on
                // its way. Whether loads keep up with compute is measured by
                // `shardctl bench train`; here the hints must turn the drive
                // reads of the run without them into at most one.
                assert!(
                    misses + late <= 1,
                    "node {node}: {misses} misses, {late} late; the hints should have loaded every partition \
                     before its gather"
                );
            } else {
                assert_eq!(
                    misses,
                    order.len() as u64 - 2,
                    "node {node}: without hints the gathers read the drive"
                );
            }
        }
    }
}

/// Whether `key` is in node `client`'s arena.
async fn resident(client: &Client, key: &str) -> bool {
    client.stat(NS, key).await.unwrap().cache.resident
}

/// Polls `resident` until it says `want` or `within` passes; what it last said.
async fn settles(client: &Client, key: &str, want: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let now = resident(client, key).await;
        if now == want || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The trainer demotes a layer after use and, one gather later, hints it
/// for the next step. When the demote has to wait (another reader holds the
/// partition, so it is tried again), the hint must still land after it:
/// the layer ends up in the arena, not evicted by a demote that came late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hint_made_after_a_demote_lands_after_it() {
    let daemons = start_nodes(EngineKind::Auto, 2).await;
    let cluster = cluster(&daemons, ClusterOptions::default());
    let options = TrainerOptions {
        prefetch: true,
        depth: 2,
        demote_after_use: true,
        gather_ahead: false,
        ..TrainerOptions::default()
    };
    let mut trainer = trainer_with_layers(&cluster, 3, 64 << 10, options).await;
    // L0 is demoted after its gather and hinted again at the next one (two ahead of L1).
    trainer.declare_order(&["L0", "L1", "L2"]).await.unwrap();
    let l0 = trainer.layer("L0").unwrap().keys_on(0).remove(0);
    let l1 = trainer.layer("L1").unwrap().keys_on(0).remove(0);
    let node0 = Client::connect(&daemons[0].unix_endpoint()).await.unwrap();
    assert!(resident(&node0, &l0).await, "puts leave partitions in the arena");

    let reader = Client::connect(&daemons[0].unix_endpoint()).await.unwrap();
    let view = reader.fetch_view(NS, &l0, None).await.unwrap();
    let mut buf = vec![0u8; trainer.layer("L0").unwrap().len() as usize];
    for name in ["L0", "L1"] {
        let (back, result) = trainer.gather(name, buf).await;
        buf = back;
        result.unwrap();
    }
    // The reader lets go while the demote of L0 is still trying.
    tokio::time::sleep(Duration::from_millis(8)).await;
    drop(view);
    drop(reader);

    // L1's demote was made after L0's hint: once it has landed, so has the
    // hint (and the demote before it). Then give a demote that came late
    // time to show.
    assert!(
        !settles(&node0, &l1, false, Duration::from_secs(10)).await,
        "L1 is demoted"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        settles(&node0, &l0, true, Duration::from_secs(10)).await,
        "L0 was hinted after its demote: it is loaded again, not left evicted"
    );
    let node1 = daemons[1].client(true).await;
    let l0_on_1 = trainer.layer("L0").unwrap().keys_on(1).remove(0);
    assert!(settles(&node1, &l0_on_1, true, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gathering_ahead_hands_back_each_layer_in_a_lent_buffer() {
    let daemons = start_nodes(EngineKind::Auto, 3).await;
    let cluster = cluster(&daemons, small_pieces());
    let layers = 4;
    let bytes = 200 << 10;
    let mut trainer = trainer_with_layers(&cluster, layers, bytes, TrainerOptions::default()).await;
    let order = step_order(layers);
    let order_refs: Vec<&str> = order.iter().map(String::as_str).collect();
    trainer.declare_order(&order_refs).await.unwrap();
    let len = trainer.layer("L0").unwrap().len() as usize;
    trainer.lend(vec![0u8; len]);
    let mut buf = vec![0u8; len];
    let mut swapped = 0;
    for _ in 0..2 {
        for name in &order {
            let given = buf.as_ptr();
            let (back, result) = trainer.gather(name, buf).await;
            buf = back;
            result.unwrap();
            swapped += usize::from(buf.as_ptr() != given);
            let l: u64 = name[1..].parse().unwrap();
            assert!(buf[..bytes] == pattern(bytes, l)[..], "{name} holds its own bytes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        trainer.end_step().await;
    }
    // Every gather but the first of each step found its layer gathered ahead.
    assert_eq!(swapped, 2 * (order.len() - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_or_resized_tensor_is_refused_not_returned() {
    let daemons = start_nodes(EngineKind::Auto, 2).await;
    let cluster = cluster(&daemons, ClusterOptions::default());
    let manifest = cluster
        .put_partitioned(NS, "w", pattern(3 * 4096, 1), DType::U8, vec![])
        .await
        .unwrap();
    let layer = cluster.layer(NS, "l", &["w"]).await.unwrap();
    let node1 = daemons[1].client(true).await;
    let part = manifest.part_key(1);
    let part_len = manifest.partitioning.range(1).end - manifest.partitioning.range(1).start;

    // Partition 1 stored again on its own, as by a put still in progress.
    let newer = shardd_client::PutOptions {
        version: Some(manifest.version + 1),
        ..Default::default()
    };
    node1
        .put(NS, &part, pattern(part_len as usize, 9), newer)
        .await
        .unwrap();
    let (_, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
    let error = result
        .expect_err("partitions of two versions are not a tensor")
        .to_string();
    assert!(
        error.contains("different versions") && error.contains("job/w"),
        "{error}"
    );

    // Partition 1 stored with another length: the layer no longer fits it.
    let resized = shardd_client::PutOptions {
        version: Some(manifest.version + 2),
        ..Default::default()
    };
    node1.put(NS, &part, pattern(100, 9), resized).await.unwrap();
    let (_, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
    let error = result.expect_err("a resized partition is refused").to_string();
    assert!(
        error.contains("node 1") && error.contains("resolve the layer again"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_corrupt_in_a_nodes_arena_is_reported_and_gathered_again() {
    let daemons = start_nodes(engines()[0], 2).await;
    let cluster = cluster(&daemons, small_pieces());
    let data = pattern(3 << 20, 77);
    let manifest = cluster
        .put_partitioned(NS, "w", data.clone(), DType::U8, vec![data.len() as u64])
        .await
        .unwrap();
    // Node 1's partition, read in 64 KiB ranges, goes bad in its arena.
    let key = manifest.part_key(1);
    assert!(daemons[1].corrupt_arena_copy(NS, &key, 200_000));
    let layer = cluster.layer(NS, "l", &["w"]).await.unwrap();
    let (buf, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
    result.expect("gathered again after the report");
    assert!(buf[..data.len()] == data[..], "the gathered bytes are the tensor's");
    let node = daemons[1].client(true).await;
    let arena = node.status().await.unwrap().arena.unwrap();
    assert_eq!((arena.checksum_failures, arena.loads), (1, 1), "{arena:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_rank_reads_its_own_partition_and_together_they_make_the_tensor() {
    let daemons = start_nodes(engines()[0], 3).await;
    let data = pattern(1_000_003, 9);
    let writer = cluster(&daemons, ClusterOptions::default());
    writer
        .put_partitioned(NS, "w", data.clone(), DType::U8, vec![data.len() as u64])
        .await
        .unwrap();
    let mut assembled = vec![0u8; data.len()];
    for rank in 0..3 {
        // Each rank's cluster has its own node as the local one.
        let endpoints: Vec<String> = daemons.iter().map(|n| n.tcp_endpoint()).collect();
        let options = ClusterOptions {
            local: Some((rank, daemons[rank].unix_endpoint())),
            client: shardd_tests::client_options(),
            ..ClusterOptions::default()
        };
        let mine = Cluster::new(&endpoints, options).unwrap();
        let (buf, read) = mine.read_partition(NS, "w", rank, vec![0u8; data.len()]).await;
        let read = read.unwrap();
        assert_eq!(read.node, rank);
        let len = (read.range.end - read.range.start) as usize;
        assembled[read.range.start as usize..read.range.end as usize].copy_from_slice(&buf[..len]);
    }
    assert!(assembled == data, "the three partitions make the tensor");
    let err = writer
        .read_partition(NS, "missing", 0, vec![0u8; 8])
        .await
        .1
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

/// Requests of `op` a daemon has answered.
async fn answered(daemon: &TestDaemon, op: &str) -> f64 {
    let (_, text) = shardd_tests::http_get(&format!("{}/metrics", daemon.http_url())).await;
    text.lines()
        .filter(|l| l.starts_with("shardd_requests_total{") && l.contains(&format!("op=\"{op}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Batched and single fetches a daemon has answered (the local node is
/// read in place, with views; the others over TCP).
async fn counts(daemon: &TestDaemon) -> (f64, f64) {
    let batched = answered(daemon, "fetch_batch").await + answered(daemon, "view_batch").await;
    let single = answered(daemon, "fetch").await + answered(daemon, "fetch_view").await;
    (batched, single)
}

/// A layer of many tensors costs each node one request, not one per
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gather_sends_each_node_one_batched_request() {
    let daemons = start_nodes(engines()[0], 3).await;
    let cluster = cluster(&daemons, ClusterOptions::default());
    let names: Vec<String> = (0..12).map(|t| format!("layers.0.t{t}")).collect();
    for (t, name) in names.iter().enumerate() {
        let data = pattern(30_000 + t, t as u64);
        cluster
            .put_partitioned(NS, name, data, DType::U8, vec![])
            .await
            .unwrap();
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let layer = cluster.layer(NS, "layers.0", &refs).await.unwrap();
    let mut before = Vec::new();
    for daemon in &daemons {
        before.push(counts(daemon).await);
    }
    let (buf, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
    let tensors = result.unwrap();
    for (t, tensor) in tensors.iter().enumerate() {
        let at = tensor.offset as usize;
        assert!(
            buf[at..at + tensor.len as usize] == pattern(30_000 + t, t as u64)[..],
            "{}",
            tensor.name
        );
    }
    for (n, daemon) in daemons.iter().enumerate() {
        let after = counts(daemon).await;
        assert_eq!((after.0 - before[n].0, after.1 - before[n].1), (1.0, 0.0), "node {n}");
    }
}
