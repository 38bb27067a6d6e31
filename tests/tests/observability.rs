//! The HTTP endpoint: metrics that count what clients did, health and
//! readiness, the JSON status, and `promtool check metrics` on the output.

use shardd_client::PutOptions;
use shardd_tests::{TestDaemon, engines, http_get, sample};

fn promtool_installed() -> bool {
    std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

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

        if promtool_installed() {
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
            eprintln!("promtool is not installed (Debian package prometheus): skipping `promtool check metrics`");
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
