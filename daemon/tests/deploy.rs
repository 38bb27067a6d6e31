//! The deployment files: the systemd unit verifies, the alert rules and the
//! scrape configuration load. Each check skips, saying so, where its tool
//! is missing (`.ci/run` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use shardd::ctl::bench::baselines::installed;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_systemd_unit_verifies() {
    if !installed("systemd-analyze") {
        support::skipped("the unit check: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    // The unit as installed, but starting the binary just built.
    let unit = std::fs::read_to_string(deploy().join("systemd/shardd.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/shardd "),
        "the unit starts /usr/bin/shardd"
    );
    for line in [
        "Type=notify",
        "LimitMEMLOCK=infinity",
        "RuntimeDirectory=shardd",
        "StateDirectory=shardd",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(line), "the unit has {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardd.service");
    std::fs::write(&path, unit.replace("/usr/bin/shardd", env!("CARGO_BIN_EXE_shardd"))).unwrap();
    let (ok, text) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify: {text}");
}

#[test]
fn the_alert_rules_and_scrape_config_load() {
    if !installed("promtool") {
        support::skipped("the rules check: promtool is not installed (Debian package prometheus)");
        return;
    }
    let (ok, text) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(deploy().join("prometheus/alerts.yml")));
    assert!(ok, "promtool check rules: {text}");
    let (ok, text) = run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(deploy().join("prometheus/prometheus.yml")));
    assert!(ok, "promtool check config: {text}");
}

#[test]
fn the_example_config_is_valid() {
    // `shardd --check-config` accepts the example file (its HTTP address among it).
    let out = Command::new(env!("CARGO_BIN_EXE_shardd"))
        .arg("--config")
        .arg(deploy().join("shardd.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("9464"));
}

#[test]
fn readiness_stopping_and_the_watchdog_reach_the_notify_socket() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let socket = dir.path().join("s.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardd"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args([
            "--tcp",
            "off",
            "--http",
            "off",
            "--pinned-memory",
            "16MiB",
            "--log-level",
            "warn",
        ])
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1"), "{ready}");
    // Ready means serving: the socket accepts.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1", "the watchdog keeps coming");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = loop {
        let message = next();
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    assert!(child.wait().unwrap().success());
}
