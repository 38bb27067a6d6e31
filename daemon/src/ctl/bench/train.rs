//! `shardctl bench train`: a simulated training loop over one or more
//! daemons (one per node), through the client crate's `Trainer`.
//!
//! It stores `--layers` layers of `--layer-bytes` each, partitioned across
//! the endpoints; measures the cold gather of one layer (every partition
//! read from the drives, all nodes at once); then runs `--steps` steps, each
//! a forward pass over the layers and a backward pass in reverse, sleeping
//! `--compute-ms` after every gather as the GPU's work. Every layer is
//! demoted from the arenas after use (unless it is needed again within the
//! hint window), as a model much larger than the arenas would be, so
//! without prefetch every gather reads the drives. With prefetch, hints keep
//! the next layers loading into the daemons' arenas and the next layer is
//! gathered into a second buffer while the current one computes. The first step records
//! the layer order; the figures are medians over the steps after it.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use shardd_client::cluster::ClusterOptions;
use shardd_client::trainer::TrainerOptions;
use shardd_client::{Cluster, DType, Layer, StepStats, Trainer};

use super::{median, pattern};
use crate::config::units::parse_size;
use crate::ctl::show;

/// Options of `shardctl bench train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Daemons, one per node, in rank order (default: the --endpoint).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Layers of the model.
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    /// Bytes of each layer (one tensor, partitioned across the nodes).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub layer_bytes: u64,
    /// Simulated compute after each gather, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub compute_ms: u64,
    /// Steps (the first records the layer order and is reported apart).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Prefetch nothing: no hints to the daemons, no gather ahead.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Send hints to the daemons, but do not gather the next layer into a
    /// second buffer while the current one computes.
    #[arg(long)]
    pub no_gather_ahead: bool,
    /// Layers ahead of the one in use that hints cover.
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// Bytes of hinted layers not yet gathered, at most.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub budget: u64,
    /// Namespace for the benchmark's tensors (removed afterwards).
    #[arg(long, default_value = "shardctl-bench-train")]
    pub namespace: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The report; `--json` prints it.
#[derive(Debug, Serialize)]
pub struct TrainReport {
    /// The daemons.
    pub endpoints: Vec<String>,
    /// Layers.
    pub layers: usize,
    /// Bytes per layer.
    pub layer_bytes: u64,
    /// Compute per gather.
    pub compute_ms: u64,
    /// Whether hints were sent.
    pub prefetch: bool,
    /// Whether the next layer was gathered while the current one computed.
    pub gather_ahead: bool,
    /// Hint depth, in layers.
    pub depth: usize,
    /// Steps run.
    pub steps: usize,
    /// Median cold gather of one layer (all partitions from the drives).
    pub load_ms: f64,
    /// Its throughput.
    pub gather_bytes_per_sec: f64,
    /// Median step time (steps after the first).
    pub step_ms: f64,
    /// Median stall per step.
    pub stall_ms: f64,
    /// Median stall as a share of step time, in percent.
    pub stall_pct: f64,
    /// Compute per step (2 x layers x compute_ms).
    pub compute_ms_per_step: f64,
    /// The first step (order being recorded, no hints yet).
    pub first_step_ms: f64,
    /// Its stall.
    pub first_stall_ms: f64,
}

/// Runs the benchmark and prints the report.
pub async fn run(endpoint: &str, base: &shardd_client::ClientOptions, args: &TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.layers > 0, "--layers must be at least 1");
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(args.layer_bytes > 0, "--layer-bytes must be at least 1 byte");
    let endpoints = if args.endpoints.is_empty() {
        vec![endpoint.to_string()]
    } else {
        args.endpoints.clone()
    };
    let options = ClusterOptions {
        client: base.clone(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::connect(&endpoints, options).await?;
    let ns = args.namespace.as_str();
    let names: Vec<String> = (0..args.layers).map(|l| format!("layers.{l}.weight")).collect();

    let started = Instant::now();
    for (l, name) in names.iter().enumerate() {
        let data = pattern(args.layer_bytes as usize, l as u64);
        cluster
            .put_partitioned(ns, name, data, DType::U8, vec![args.layer_bytes])
            .await
            .with_context(|| format!("store layer {l}"))?;
    }
    if !args.json {
        eprintln!(
            "stored {} layers of {} across {} nodes in {:.1} s",
            args.layers,
            show::bytes(args.layer_bytes),
            cluster.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let result = measure(&cluster, args, &names).await;
    cleanup(&cluster, ns, &names).await;
    let report = TrainReport { endpoints, ..result? };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

async fn measure(cluster: &Cluster, args: &TrainArgs, names: &[String]) -> anyhow::Result<TrainReport> {
    let ns = args.namespace.as_str();
    let options = TrainerOptions {
        prefetch: !args.no_prefetch,
        depth: args.depth,
        budget_bytes: args.budget,
        demote_after_use: true,
        register_schedule: true,
        gather_ahead: !args.no_prefetch && !args.no_gather_ahead,
    };
    let mut trainer = Trainer::new(cluster.clone(), ns, options);
    let layer_names: Vec<String> = (0..names.len()).map(|l| format!("L{l}")).collect();
    for (layer, tensor) in layer_names.iter().zip(names) {
        trainer.add_layer(layer, &[tensor.as_str()]).await?;
    }
    let layers: Vec<Layer> = layer_names.iter().filter_map(|l| trainer.layer(l).cloned()).collect();
    let mut buf = vec![0u8; layers[0].len() as usize];

    // Cold gathers, one layer at a time.
    demote_all(cluster, ns, &layers).await?;
    let mut loads = Vec::new();
    for layer in &layers {
        let started = Instant::now();
        let (back, result) = cluster.gather(layer, buf).await;
        buf = back;
        result?;
        loads.push(started.elapsed().as_secs_f64());
    }
    demote_all(cluster, ns, &layers).await?;
    let load = median(loads);

    // The second buffer, for the gather ahead.
    trainer.lend(vec![0u8; buf.len()]);
    let order: Vec<&String> = layer_names.iter().chain(layer_names.iter().rev()).collect();
    let compute = Duration::from_millis(args.compute_ms);
    let mut steps: Vec<StepStats> = Vec::new();
    for _ in 0..args.steps {
        for layer in &order {
            let (back, result) = trainer.gather(layer, buf).await;
            buf = back;
            result?;
            tokio::time::sleep(compute).await;
        }
        let step = trainer.end_step().await;
        if !args.json {
            eprintln!(
                "step {}: {:.0} ms, stall {:.1} ms ({:.1}%){}",
                step.step,
                ms(step.elapsed),
                ms(step.stall),
                step.stall_pct(),
                if step.replayed {
                    ""
                } else {
                    ", recording the layer order"
                }
            );
        }
        steps.push(step);
    }
    let first = &steps[0];
    let measured = if steps.len() > 1 { &steps[1..] } else { &steps[..] };
    Ok(TrainReport {
        endpoints: Vec::new(),
        layers: args.layers,
        layer_bytes: args.layer_bytes,
        compute_ms: args.compute_ms,
        prefetch: !args.no_prefetch,
        gather_ahead: !args.no_prefetch && !args.no_gather_ahead,
        depth: args.depth,
        steps: args.steps,
        load_ms: load * 1e3,
        gather_bytes_per_sec: args.layer_bytes as f64 / load,
        step_ms: median(measured.iter().map(|s| ms(s.elapsed)).collect()),
        stall_ms: median(measured.iter().map(|s| ms(s.stall)).collect()),
        stall_pct: median(measured.iter().map(StepStats::stall_pct).collect()),
        compute_ms_per_step: (2 * args.layers as u64 * args.compute_ms) as f64,
        first_step_ms: ms(first.elapsed),
        first_stall_ms: ms(first.stall),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Demotes every partition of `layers` from every node's arena.
async fn demote_all(cluster: &Cluster, ns: &str, layers: &[Layer]) -> anyhow::Result<()> {
    for node in 0..cluster.len() {
        let keys: Vec<String> = layers.iter().flat_map(|l| l.keys_on(node)).collect();
        let answer = cluster.demote_on(node, ns, &keys).await?;
        anyhow::ensure!(
            answer.failed.is_empty() && answer.busy.is_empty(),
            "could not demote the benchmark's layers on node {node}: busy {:?}, failed {:?}",
            answer.busy,
            answer.failed
        );
    }
    Ok(())
}

/// Deletes the benchmark's tensors: partitions and manifests (best effort:
/// reported, not fatal).
async fn cleanup(cluster: &Cluster, ns: &str, names: &[String]) {
    for name in names {
        let manifest = match cluster.manifest(ns, name).await {
            Ok(Some(manifest)) => manifest,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("could not read the manifest of {ns}/{name} to remove it: {e}");
                continue;
            }
        };
        let mut keys: Vec<(usize, String)> = manifest
            .partitioning
            .parts()
            .map(|(i, _)| (i as usize, manifest.part_key(i)))
            .collect();
        keys.push((0, name.clone()));
        for (node, key) in keys {
            let result = match cluster.client(node).await {
                Ok(client) => client
                    .delete(ns, &key, None)
                    .await
                    .map(|_| ())
                    .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e.to_string()) }),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                eprintln!("could not remove {ns}/{key} from node {node}: {e}");
            }
        }
    }
}

fn render(r: &TrainReport) -> String {
    let prefetch = if r.prefetch {
        let ahead = if r.gather_ahead { ", gathering ahead" } else { "" };
        format!("on (hints {} layers ahead{ahead})", r.depth)
    } else {
        "off".to_string()
    };
    format!(
        "{} node(s): {}\n\
         {} layers of {}, {} ms of compute per gather, {} steps, prefetch {}\n\
         cold gather of one layer (every partition from the drives): median {:.1} ms, {:.2} GB/s\n\
         step (forward and backward, {} gathers): median {:.0} ms, of which compute {:.0} ms\n\
         stall: median {:.1} ms per step, {:.1}% of the step\n\
         first step (recording the layer order, no hints): {:.0} ms, stall {:.0} ms\n",
        r.endpoints.len(),
        r.endpoints.join(", "),
        r.layers,
        show::bytes(r.layer_bytes),
        r.compute_ms,
        r.steps,
        prefetch,
        r.load_ms,
        r.gather_bytes_per_sec / 1e9,
        2 * r.layers,
        r.step_ms,
        r.compute_ms_per_step,
        r.stall_ms,
        r.stall_pct,
        r.first_step_ms,
        r.first_stall_ms
    )
}
