//! A node whose daemon stops answering (frozen with SIGSTOP: its sockets
//! still accept, nothing replies) fails a gather after the cluster's request
//! timeout, with an error naming the node and the shard; once it runs again
//! it is used again.

mod support;

use std::time::{Duration, Instant};

use shardd::ctl::bench::pattern;
use shardd_client::cluster::ClusterOptions;
use shardd_client::{ClientError, Cluster, ClusterError, DType};
use support::Process;

fn signal(process: &Process, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(process.child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill({signal})");
}

/// Waits until every thread of `process` is stopped: a SIGSTOP is
/// delivered to each thread on its way, and a thread that is running may
/// answer one more request before it is (on a loaded host, for a while).
fn wait_stopped(process: &Process) {
    let tasks = format!("/proc/{}/task", process.child.id());
    let stopped = |stat: &str| {
        // The state follows the command name's closing parenthesis.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, Some('T' | 't'))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = std::fs::read_dir(&tasks)
            .unwrap()
            .flatten()
            .all(|task| std::fs::read_to_string(task.path().join("stat")).is_ok_and(|s| stopped(&s)));
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon's threads did not all stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_times_out_with_its_name_and_is_used_again_when_it_thaws() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes: Vec<Process> = dirs.iter().map(|d| Process::start(d.path(), "auto")).collect();
    let endpoints: Vec<String> = nodes.iter().map(Process::endpoint).collect();
    let options = ClusterOptions {
        request_timeout: Duration::from_millis(700),
        connect_timeout: Duration::from_millis(700),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::connect(&endpoints, options).await.unwrap();
    let data = pattern(2 << 20, 11);
    cluster
        .put_partitioned("job", "w", data.clone(), DType::U8, vec![])
        .await
        .unwrap();
    let layer = cluster.layer("job", "l", &["w"]).await.unwrap();
    let (buf, result) = cluster.gather(&layer, vec![0u8; layer.len() as usize]).await;
    result.unwrap();

    signal(&nodes[1], libc::SIGSTOP);
    wait_stopped(&nodes[1]);
    let started = Instant::now();
    let (buf, result) = cluster.gather(&layer, buf).await;
    let waited = started.elapsed();
    signal(&nodes[1], libc::SIGCONT);
    let error = result.expect_err("a frozen node fails the gather");
    assert!(waited < Duration::from_secs(5), "no hang: {waited:?}");
    let message = error.to_string();
    assert!(
        message.contains(&endpoints[1]) && message.contains("job/w#1/2") && message.contains("timed out"),
        "{message}"
    );
    assert!(
        matches!(&error, ClusterError::Node { node: 1, source, .. } if matches!(**source, ClientError::Timeout { .. })),
        "{error:?}"
    );

    let (buf, result) = cluster.gather(&layer, buf).await;
    result.expect("the node answers again");
    assert!(buf[..data.len()] == data[..]);
}
