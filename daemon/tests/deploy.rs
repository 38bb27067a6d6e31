//! The deployment files: the systemd unit verifies, the alert rules and the
//! scrape configuration load. Each check skips, saying so, where its tool
//! is missing (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
        eprintln!("systemd-analyze is not installed (Debian package systemd): skipping the unit check");
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
        eprintln!("promtool is not installed (Debian package prometheus): skipping the rules check");
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
