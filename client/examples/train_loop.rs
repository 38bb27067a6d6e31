//! What a trainer does with `shardd-client`: store its layers partitioned
//! across the nodes' daemons, then run steps that gather each layer just
//! before it is used, with prefetching ahead, and report the stall.
//!
//! ```sh
//! shardd &                                   # one daemon per node
//! cargo run -p shardd-client --example train_loop -- unix://./shardd.sock
//! # several nodes: the same list, in rank order, on every rank
//! cargo run -p shardd-client --example train_loop -- tcp://node0:7070 tcp://node1:7070
//! ```

use std::time::Duration;

use shardd_client::cluster::ClusterOptions;
use shardd_client::{Cluster, DType, Trainer, TrainerOptions};

const NAMESPACE: &str = "example-train-loop";
const LAYERS: usize = 4;
const HIDDEN: u64 = 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoints: Vec<String> = std::env::args().skip(1).collect();
    if endpoints.is_empty() {
        endpoints.push("unix://./shardd.sock".into());
    }
    // Membership comes from the launcher: every rank passes the same list.
    let cluster = Cluster::connect(&endpoints, ClusterOptions::default()).await?;

    // Each layer's weight, a HIDDEN x HIDDEN bf16 matrix, split across all
    // nodes so that a gather reads every node's drives at once.
    for layer in 0..LAYERS {
        let weight = vec![layer as u8; (HIDDEN * HIDDEN * 2) as usize];
        let name = format!("layers.{layer}.weight");
        cluster
            .put_partitioned(NAMESPACE, &name, weight, DType::BF16, vec![HIDDEN, HIDDEN])
            .await?;
    }

    let mut trainer = Trainer::new(cluster, NAMESPACE, TrainerOptions::default());
    for layer in 0..LAYERS {
        let tensor = format!("layers.{layer}.weight");
        trainer.add_layer(&format!("layer{layer}"), &[tensor.as_str()]).await?;
    }
    let len = trainer.layer("layer0").map_or(0, |l| l.len()) as usize;
    // Two buffers (pinned host memory in a real trainer): one in use, one
    // being filled with the next layer.
    trainer.lend(vec![0u8; len]);
    let mut buf = vec![0u8; len];

    // Forward, then backward. The first step records this order; later
    // steps replay it, prefetching ahead.
    let order: Vec<String> = (0..LAYERS)
        .chain((0..LAYERS).rev())
        .map(|l| format!("layer{l}"))
        .collect();
    for _ in 0..3 {
        for name in &order {
            let (back, gathered) = trainer.gather(name, buf).await;
            buf = back;
            for tensor in gathered? {
                // The tensor's bytes are buf[offset..offset + len]: copy them
                // to the GPU and compute.
                assert_eq!(tensor.shape, [HIDDEN, HIDDEN]);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let step = trainer.end_step().await;
        println!(
            "step {}: {:.1} ms, stall {:.1} ms ({:.1}%){}",
            step.step,
            step.elapsed.as_secs_f64() * 1e3,
            step.stall.as_secs_f64() * 1e3,
            step.stall_pct(),
            if step.replayed {
                ""
            } else {
                " (recording the layer order)"
            }
        );
    }
    Ok(())
}
