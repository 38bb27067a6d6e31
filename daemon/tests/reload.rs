//! SIGHUP: the daemon reads its configuration file again, applies what can
//! change while running (log level, connection limit), says what it applied
//! and what needs a restart, and keeps running on a bad file.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::wait_for_log;

fn hup(child: &std::process::Child) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0);
}

/// Starts `shardd` with the configuration `file`, data and socket
/// (`s.sock`) in `dir`, TCP on `tcp`, its log in `log`; returns once it
/// serves.
fn spawn(dir: &Path, file: &Path, tcp: &str, log: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_shardd"))
        .arg("--config")
        .arg(file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .args(["--tcp", tcp, "--http", "off"])
        .env_remove("SHARDD_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    wait_for_log(log, "serving");
    child
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
    let mut child = spawn(dir.path(), &file, "off", &log);

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

/// Whether a TCP client holding the key in `key_file` is served at `endpoint`.
async fn served_with(endpoint: &str, key_file: &Path) -> Result<(), shardd_client::ClientError> {
    let options = shardd_client::ClientOptions {
        auth_key: Some(shardd_client::auth::load_key(key_file).unwrap()),
        ..shardd_client::ClientOptions::default()
    };
    shardd_client::Client::connect_with(endpoint, options)
        .await?
        .ping()
        .await
        .map(drop)
}

/// Waits until a client of `key_file` is served (`true`) or refused.
async fn wait_served(endpoint: &str, key_file: &Path, served: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = served_with(endpoint, key_file).await;
        if result.is_ok() == served {
            if let Err(e) = result {
                assert_eq!(e.status(), Some(shardd_client::Status::Unauthorized), "{e}");
            }
            return;
        }
        assert!(Instant::now() < deadline, "{}: {result:?}", key_file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sighup_rotates_tcp_keys_old_and_new_together_then_only_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    let exposed = dir.path().join("exposed.key");
    for (id, path) in [("trainers", &old), ("trainers", &new), ("exposed", &exposed)] {
        let out = Command::new(env!("CARGO_BIN_EXE_shardctl"))
            .args(["key", "new", "--id", id, "--out"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("fingerprint"));
    }
    let file = dir.path().join("shardd.toml");
    let keys = |paths: &[&Path]| {
        let list: Vec<String> = paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        format!(
            "[storage]\nmin_free = 0\n[arena]\nsize = \"32MiB\"\n[auth]\nkeys = [{}]\n",
            list.join(", ")
        )
    };
    std::fs::write(&file, keys(&[&old])).unwrap();
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("stderr.log");
    let mut child = spawn(dir.path(), &file, "127.0.0.1:0", &log);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let local = shardd_client::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let status = local.status().await.unwrap();
        let tcp = status.listen.iter().find(|e| e.starts_with("tcp://")).unwrap().clone();
        wait_served(&tcp, &old, true).await;
        wait_served(&tcp, &new, false).await;

        // Both keys while clients move to the new one.
        std::fs::write(&file, keys(&[&old, &new])).unwrap();
        hup(&child);
        wait_served(&tcp, &new, true).await;
        wait_served(&tcp, &old, true).await;
        let open_with_old = {
            let options = shardd_client::ClientOptions {
                auth_key: Some(shardd_client::auth::load_key(&old).unwrap()),
                ..shardd_client::ClientOptions::default()
            };
            shardd_client::Client::connect_with(&tcp, options).await.unwrap()
        };

        // Then only the new one. A connection that authenticated before
        // stays open (it proved the key when it was valid).
        std::fs::write(&file, keys(&[&new])).unwrap();
        hup(&child);
        wait_served(&tcp, &old, false).await;
        wait_served(&tcp, &new, true).await;
        open_with_old.ping().await.unwrap();

        // A key file others may read is refused on reload: the keys in
        // force stay, and the log says why.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&file, keys(&[&new, &exposed])).unwrap();
        hup(&child);
        wait_for_log(&log, "reload could not apply auth");
        wait_served(&tcp, &new, true).await;
    });
    let text = wait_for_log(&log, "chmod 600");
    assert!(text.contains("TCP clients authenticate with this key"), "{text}");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn auth_none_warns_at_start_and_on_every_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shardd.toml");
    let log = dir.path().join("stderr.log");
    std::fs::write(
        &file,
        "auth = \"none\"\n[storage]\nmin_free = 0\n[arena]\nsize = \"32MiB\"\n",
    )
    .unwrap();
    let mut child = spawn(dir.path(), &file, "127.0.0.1:0", &log);
    let warning = "auth = \"none\": TCP peers are not authenticated";
    assert!(wait_for_log(&log, warning).contains("WARN"));
    hup(&child);
    wait_for_log(&log, "reloaded");
    assert_eq!(wait_for_log(&log, warning).matches(warning).count(), 2);
    assert!(!dir.path().join("data").join("keys").exists(), "no key is made");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
