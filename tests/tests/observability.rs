//! The HTTP endpoint: metrics that count what clients did, health and
//! readiness, the JSON status, and `promtool check metrics` on the output.

use shardd::ctl::bench::baselines::installed;
use shardd_client::PutOptions;
use shardd_tests::{TestDaemon, engines, http_get, sample, try_http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_bytes_and_drive_io_on_both_transports() {
    for engine in engines() {
        let daemon = TestDaemon::start(engine, "").await;
        let url = daemon.http_url();
        for tcp in [false, true] {
            let client = daemon.client(tcp).await;
            for i in 0..3 {
                client
                    .put("job", &format!("k{i}"), vec![7u8; 300_000], PutOptions::default())
                    .await
                    .unwrap();
                client.fetch("job", &format!("k{i}")).await.unwrap();
            }
            assert!(client.fetch("job", "missing").await.unwrap_err().is_not_found());
        }
        let (status, text) = http_get(&format!("{url}/metrics")).await;
        assert_eq!(status, 200);
        let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert_eq!(value(r#"shardd_requests_total{op="put",status="ok"}"#), 6.0);
        // Over the Unix socket a fetch of a resident shard is a view of the arena.
        assert_eq!(value(r#"shardd_requests_total{op="fetch",status="ok"}"#), 3.0);
        assert_eq!(value(r#"shardd_requests_total{op="fetch_view",status="ok"}"#), 3.0);
        assert_eq!(value(r#"shardd_requests_total{op="fetch",status="not_found"}"#), 2.0);
        assert_eq!(value(r#"shardd_cache_misses_total{tier="nvme"}"#), 2.0);
        for transport in ["unix", "tcp"] {
            assert_eq!(
                value(&format!(
                    r#"shardd_transport_bytes_total{{direction="in",transport="{transport}"}}"#
                )),
                900_000.0
            );
            // Over the Unix socket the fetches were views: no bytes sent.
            let out = value(&format!(
                r#"shardd_transport_bytes_total{{direction="out",transport="{transport}"}}"#
            ));
            assert_eq!(out, if transport == "tcp" { 900_000.0 } else { 0.0 }, "{transport}");
            let count = value(&format!(
                r#"shardd_request_duration_seconds_count{{op="put",transport="{transport}"}}"#
            ));
            assert_eq!(count, 3.0, "{transport}");
        }
        let dir = daemon.data_dir().canonicalize().unwrap().display().to_string();
        assert!(value(&format!(r#"shardd_nvme_written_bytes_total{{dir="{dir}"}}"#)) >= 1_800_000.0);
        assert!(value(&format!(r#"shardd_nvme_sync_duration_seconds_count{{dir="{dir}"}}"#)) >= 6.0);
        assert!(value(&format!(r#"shardd_data_dir_free_bytes{{dir="{dir}"}}"#)) > 0.0);
        assert_eq!(value("shardd_shards"), 3.0);
        assert_eq!(value("shardd_arena_capacity_bytes"), (128u64 << 20) as f64);
        assert!(value("shardd_arena_used_bytes") > 0.0);
        assert_eq!(value("shardd_inflight_bytes"), 0.0);
        let engine_name = if engine == shardd::io::EngineKind::Psync {
            "psync"
        } else {
            "uring"
        };
        assert!(
            text.lines().any(
                |l| l.starts_with(&format!(r#"shardd_io_engine_info{{engine="{engine_name}""#)) && l.ends_with(" 1")
            ),
            "{text}"
        );
        assert!(text.contains("process_start_time_seconds"));

        if installed("promtool") {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("metrics.txt");
            std::fs::write(&file, &text).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("promtool check metrics < '{}'", file.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            shardd_tests::skipped("`promtool check metrics`: promtool is not installed (Debian package prometheus)");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_status() {
    let daemon = TestDaemon::start(engines()[0], "").await;
    let url = daemon.http_url();
    assert_eq!(http_get(&format!("{url}/healthz")).await, (200, "ok\n".to_string()));
    assert_eq!(http_get(&format!("{url}/readyz")).await, (200, "ready\n".to_string()));
    let (status, body) = http_get(&format!("{url}/v1/status")).await;
    assert_eq!(status, 200);
    for field in [
        r#""version":""#,
        r#""ready":true"#,
        r#""io_engine":""#,
        r#""data_dirs":[{"#,
        r#""arena":{"capacity_bytes":"#,
    ] {
        assert!(body.contains(field), "{field} in {body}");
    }
    assert_eq!(http_get(&format!("{url}/nope")).await.0, 404);

    // A data dir that goes away makes the daemon not ready, saying which.
    let data = daemon.data_dir();
    let moved = daemon.dir().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let (status, body) = http_get(&format!("{url}/readyz")).await;
    let (_, json) = http_get(&format!("{url}/v1/status")).await;
    std::fs::rename(&moved, &data).unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("data dir") && body.contains("not writable"), "{body}");
    assert!(json.contains(r#""ready":false"#), "{json}");
    assert_eq!(http_get(&format!("{url}/readyz")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_reports_stall_and_gather_latency_in_its_own_registry() {
    use shardd_client::cluster::ClusterOptions;
    use shardd_client::trainer::metrics::TrainerMetrics;
    use shardd_client::{Cluster, DType, Trainer, TrainerOptions};

    let nodes = [
        TestDaemon::start(engines()[0], "").await,
        TestDaemon::start(engines()[0], "").await,
    ];
    let endpoints: Vec<String> = nodes.iter().map(|n| n.tcp_endpoint()).collect();
    let options = ClusterOptions {
        client: shardd_tests::client_options(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::new(&endpoints, options).unwrap();
    let registry = prometheus::Registry::new();
    let mut trainer = Trainer::new(cluster.clone(), "job", TrainerOptions::default());
    trainer.set_metrics(TrainerMetrics::register(&registry).unwrap());
    for l in 0..2 {
        let tensor = format!("w{l}");
        cluster
            .put_partitioned("job", &tensor, vec![l as u8; 100_000], DType::U8, vec![])
            .await
            .unwrap();
        trainer.add_layer(&format!("L{l}"), &[tensor.as_str()]).await.unwrap();
    }
    let mut buf = vec![0u8; trainer.layer("L0").unwrap().len() as usize];
    for _ in 0..2 {
        for name in ["L0", "L1", "L1", "L0"] {
            let (back, result) = trainer.gather(name, buf).await;
            buf = back;
            result.unwrap();
        }
        trainer.end_step().await;
    }
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(sample(&text, "shardd_client_steps_total"), Some(2.0));
    assert_eq!(sample(&text, "shardd_client_gather_duration_seconds_count"), Some(8.0));
    let stall = sample(&text, "shardd_client_stall_seconds_total").unwrap();
    let gathers = sample(&text, "shardd_client_gather_duration_seconds_sum").unwrap();
    assert!(stall > 0.0 && (stall - gathers).abs() < 1e-9, "{text}");
    let ratio = sample(&text, "shardd_client_step_stall_ratio").unwrap();
    assert!((0.0..=1.0).contains(&ratio));
    assert_eq!(sample(&text, "shardd_client_trace_invalidations_total"), Some(0.0));
}

/// Metric names (with a histogram's `_bucket`, `_sum` and `_count`) in
/// Prometheus text.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// `shardd_*` names mentioned in `text`.
fn shardd_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shardd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Skip the naming pattern itself (`shardd_<subsystem>_...`).
        if end > "shardd_".len() {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_alerts_and_docs_name_only_metrics_that_exist() {
    use shardd_client::trainer::metrics::TrainerMetrics;
    let daemon = TestDaemon::start(engines()[0], "").await;
    // A connection of each transport, so that their series exist.
    for tcp in [false, true] {
        daemon.client(tcp).await.ping().await.unwrap();
    }
    let (_, daemon_text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
    let registry = prometheus::Registry::new();
    TrainerMetrics::register(&registry).unwrap();
    let mut client_text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut client_text).unwrap();
    let mut exported = names_in(&daemon_text);
    exported.extend(names_in(&String::from_utf8(client_text).unwrap()));
    let exported_shardd: std::collections::BTreeSet<String> =
        exported.iter().filter(|n| n.starts_with("shardd_")).cloned().collect();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/shardd.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = shardd_names(&text);
        assert!(!used.is_empty(), "{file} uses shardd metrics");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(unknown.is_empty(), "{file} names metrics nothing exports: {unknown:?}");
    }
    // Every metric is documented, and the docs name no other.
    let documented = shardd_names(&std::fs::read_to_string(root.join("docs/METRICS.md")).unwrap());
    let families: std::collections::BTreeSet<String> = exported_shardd
        .iter()
        .filter(|n| {
            !(n.ends_with("_bucket") || n.ends_with("_sum") || n.ends_with("_count")) || documented.contains(*n)
        })
        .cloned()
        .collect();
    let undocumented: Vec<&String> = families.iter().filter(|n| !documented.contains(*n)).collect();
    assert!(undocumented.is_empty(), "not in docs/METRICS.md: {undocumented:?}");
    let stale: Vec<&String> = documented.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        stale.is_empty(),
        "docs/METRICS.md names metrics nothing exports: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_daemon() {
    if !installed("prometheus") {
        shardd_tests::skipped("the end-to-end scrape: prometheus is not installed (Debian package prometheus)");
        return;
    }
    let daemon = TestDaemon::start(engines()[0], "").await;
    let target = daemon.http_url().trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shardd\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    /// Kills the Prometheus server when the test ends, however it ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    let client = daemon.client(true).await;
    for i in 0..5 {
        client
            .put("job", &format!("k{i}"), vec![1u8; 10_000], PutOptions::default())
            .await
            .unwrap();
    }
    // Prometheus reads the series back through its HTTP API.
    let query = |q: &str| {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = String::new();
    loop {
        // Until Prometheus listens, connecting fails.
        let url = query(r#"shardd_requests_total{job="shardd",op="put",status="ok"}"#);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), try_http_get(&url)).await;
        if let Ok(Ok((200, body))) = answer {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            let value = json["data"]["result"][0]["value"][1].as_str().map(str::to_string);
            if value.as_deref() == Some("5") {
                break;
            }
            last = body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus did not report the 5 puts within a minute; last answer: {last}; log: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (_, up) = http_get(&query(r#"up{job="shardd"}"#)).await;
    let json: serde_json::Value = serde_json::from_str(&up).unwrap();
    assert_eq!(json["data"]["result"][0]["value"][1], "1", "{up}");
}
