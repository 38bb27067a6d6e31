//! SIGHUP: the daemon reads its configuration file again, applies what can
//! change while running (log level, connection limit), says what it applied
//! and what needs a restart, and keeps running on a bad file.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hup(child: &std::process::Child) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0);
}

/// Waits until the log file holds `needle`; returns the whole log.
fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(log) {
            let _ = file.read_to_string(&mut text);
        }
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(max_connections: usize, level: &str, chunk_size: &str) -> String {
    format!(
        "[server]\nmax_connections = {max_connections}\n[storage]\nmin_free = 0\nchunk_size = \"{chunk_size}\"\n\
         [arena]\nsize = \"32MiB\"\n[log]\nlevel = \"{level}\"\n"
    )
}

#[test]
fn sighup_applies_the_log_level_and_connection_limit_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shardd.toml");
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("stderr.log");
    std::fs::write(&file, config(100, "info", "1MiB")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardd"))
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args(["--tcp", "off", "--http", "off"])
        .env_remove("SHARDD_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_log(&log, "serving");

    std::fs::write(&file, config(1, "debug", "2MiB")).unwrap();
    hup(&child);
    let text = wait_for_log(&log, "take effect only after a restart");
    assert!(text.contains("server.max_connections: 100 -> 1"), "{text}");
    assert!(text.contains("log.level") && text.contains("debug"), "{text}");
    assert!(text.contains("storage"), "{text}");

    // The new limit holds: a second connection is refused as busy.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoint = format!("unix://{}", socket.display());
        let first = shardd_client::Client::connect(&endpoint).await.unwrap();
        let second = shardd_client::Client::connect(&endpoint).await;
        let error = second.expect_err("the connection limit is 1 now");
        assert_eq!(error.status(), Some(shardd_client::Status::Busy), "{error}");
        assert!(error.to_string().contains("at most 1 connections"), "{error}");
        first.ping().await.unwrap();
    });
    // Debug lines appear now.
    wait_for_log(&log, "DEBUG");

    // A broken file is refused; the daemon keeps running as it was.
    std::fs::write(&file, "[server]\nmax_connections = \"many\"\n").unwrap();
    hup(&child);
    wait_for_log(&log, "reload failed, keeping the running configuration");
    assert!(child.try_wait().unwrap().is_none(), "the daemon is still running");

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
