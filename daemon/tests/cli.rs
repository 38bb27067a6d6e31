//! The real binaries' command lines: configuration errors, exit codes,
//! messages, and a shardctl session against a running shardd.

mod support;

use assert_cmd::Command;
use support::{Process, engines};

fn shardd() -> Command {
    Command::cargo_bin("shardd").unwrap()
}

fn shardctl(endpoint: &str) -> Command {
    let mut cmd = Command::cargo_bin("shardctl").unwrap();
    cmd.env_remove("SHARDD_ENDPOINT")
        .env_remove("SHARDD_AUTH_KEY_FILE")
        .arg("--endpoint")
        .arg(endpoint);
    cmd
}

/// Runs `shardd` on `data` and `socket` (no TCP) until it exits.
fn shardd_on(data: &std::path::Path, socket: &std::path::Path) -> std::process::Output {
    shardd()
        .arg("--data-dir")
        .arg(data)
        .arg("--socket")
        .arg(socket)
        .args(["--tcp", "off", "--http", "off"])
        .output()
        .unwrap()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn shardctl_over_tcp_authenticates_with_the_key_the_daemon_made() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Process::start_with(dir.path(), engines()[0], "127.0.0.1:0");
    let out = shardctl(&daemon.endpoint())
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tcp = status["listen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .find(|e| e.starts_with("tcp://"))
        .unwrap()
        .to_string();

    let out = shardctl(&tcp).arg("ping").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("needs a key"), "{}", stderr_of(&out));

    let key = daemon.key_file();
    let out = shardctl(&tcp)
        .arg("--auth-key-file")
        .arg(&key)
        .args(["put", "job", "k", "-"])
        .write_stdin("over tcp")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = shardctl(&tcp)
        .env("SHARDD_AUTH_KEY_FILE", &key)
        .args(["get", "job", "k"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"over tcp", "{}", stderr_of(&out));

    let out = shardctl(&tcp).arg("key").arg("show").arg(&key).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("id default"));
    let out = shardctl(&tcp)
        .args(["key", "new", "--id", "x", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an existing key file is never replaced");
}

#[test]
fn tcp_on_a_routable_address_without_keys_refuses_to_start_saying_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = shardd()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(["--tcp", "0.0.0.0:0", "--http", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("server.tcp"), "{stderr}");
    assert!(stderr.contains("shardctl key new"), "{stderr}");
    assert!(stderr.contains("auth = \"none\""), "{stderr}");
    assert!(!dir.path().join("data").join("keys").exists(), "no key is made for it");
}

#[test]
fn bad_flags_and_config_files_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = shardd()
        .args(["--tcp", "localhost"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--tcp"), "{}", stderr_of(&out));

    let out = shardd()
        .args(["--io-engine", "aio"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("auto, uring or psync"), "{}", stderr_of(&out));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\nchunk_size = \"3KiB\"\n").unwrap();
    let out = shardd()
        .arg("--config")
        .arg(&bad)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("storage.chunk_size"), "{}", stderr_of(&out));

    std::fs::write(&bad, "[server]\nsokcet = \"/tmp/x.sock\"\n").unwrap();
    let out = shardd()
        .arg("--config")
        .arg(&bad)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("sokcet"), "{}", stderr_of(&out));

    let out = shardd()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("missing.toml"), "{}", stderr_of(&out));

    // Nothing was created by the refused starts.
    assert!(!dir.path().join("shardd-data").exists());
    assert!(!dir.path().join("shardd.sock").exists());
}

#[test]
fn check_config_prints_the_embedded_defaults() {
    let out = shardd().arg("--check-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("./shardd-data") && text.contains("127.0.0.1:7070"),
        "{text}"
    );
}

#[test]
fn a_foreign_data_dir_is_refused_and_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("home");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "keep me").unwrap();
    let out = shardd_on(&data, &dir.path().join("s.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("not empty"), "{}", stderr_of(&out));
    assert!(!dir.path().join("s.sock").exists());
    assert_eq!(std::fs::read_to_string(data.join("notes.txt")).unwrap(), "keep me");
}

#[test]
fn shardctl_session_against_a_running_daemon() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Process::start(dir.path(), engine);
        let endpoint = daemon.endpoint();
        let file = dir.path().join("weights.bin");
        let data = shardd::ctl::bench::pattern(5 << 20, 1);
        std::fs::write(&file, &data).unwrap();

        let out = shardctl(&endpoint)
            .args(["put", "job", "layers.0.w#0/2", "--dtype", "f32", "--shape", "1310720"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("version 1"));

        let copy = dir.path().join("copy.bin");
        shardctl(&endpoint)
            .args(["get", "job", "layers.0.w#0/2"])
            .arg(&copy)
            .assert()
            .success();
        assert!(std::fs::read(&copy).unwrap() == data);

        // Standard input and output.
        shardctl(&endpoint)
            .args(["put", "job", "small", "-"])
            .write_stdin("hello shardd")
            .assert()
            .success();
        let out = shardctl(&endpoint).args(["get", "job", "small"]).output().unwrap();
        assert_eq!(out.stdout, b"hello shardd");
        let out = shardctl(&endpoint)
            .args(["get", "job", "small", "-", "--offset", "6", "--len", "6"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"shardd");

        let out = shardctl(&endpoint)
            .args(["stat", "job", "layers.0.w#0/2"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("f32") && text.contains("[1310720]") && text.contains("5242880"),
            "{text}"
        );
        let out = shardctl(&endpoint)
            .args(["stat", "job", "small", "--json"])
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["meta"]["len"], 12);

        // A .safetensors file in and out, byte for byte.
        let model = dir.path().join("model.safetensors");
        let header = br#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}"#;
        let mut padded = header.to_vec();
        padded.resize(header.len().next_multiple_of(8), b' ');
        let mut file = (padded.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&padded);
        file.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        std::fs::write(&model, &file).unwrap();
        let out = shardctl(&endpoint)
            .arg("import")
            .arg(&model)
            .args(["job", "--prefix", "model."])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("imported 2 tensors"));
        let exported = dir.path().join("exported.safetensors");
        let out = shardctl(&endpoint)
            .args(["export", "job"])
            .arg(&exported)
            .args(["--prefix", "model."])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert_eq!(std::fs::read(&exported).unwrap(), file);
        let out = shardctl(&endpoint)
            .args(["import", "nowhere.safetensors", "job"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr_of(&out).contains("nowhere.safetensors"), "{}", stderr_of(&out));

        // The arena's copy checks out; once demoted there is none to check.
        let out = shardctl(&endpoint)
            .args(["verify", "job", "layers.0.w#0/2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("job/layers.0.w#0/2 version 1: the arena's copy matches its checksum"),
            "{text}"
        );
        shardctl(&endpoint)
            .args(["evict", "job", "layers.0.w#0/2"])
            .assert()
            .success();
        let out = shardctl(&endpoint)
            .args(["verify", "job", "layers.0.w#0/2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("not in the arena"));

        let out = shardctl(&endpoint).args(["ls", "job"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("layers.0.w#0/2") && text.contains("small") && text.contains("5 shards"),
            "{text}"
        );

        let out = shardctl(&endpoint).args(["status", "--json"]).output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["shards"], 5);
        assert_eq!(json["io_engine"], engine);

        // A missing shard says so, on one line, with exit status 3.
        let out = shardctl(&endpoint).args(["get", "job", "nope"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("job/nope not found"), "{err}");

        shardctl(&endpoint).args(["rm", "job", "small"]).assert().success();
        let out = shardctl(&endpoint).args(["rm", "job", "small"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        let out = shardctl(&endpoint)
            .args(["put", "job", "bad key", "-"])
            .write_stdin("x")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr_of(&out).contains("key \"bad key\""), "{}", stderr_of(&out));

        // SIGTERM: a clean exit that removes the socket.
        let status = daemon.terminate();
        assert!(status.success(), "{status:?}");
        assert!(!daemon.socket.exists(), "the socket file is removed on shutdown");
    }
}

#[test]
fn shardctl_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix://{}", dir.path().join("nobody.sock").display());
    let out = shardctl(&missing).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is said once: {err}"
    );

    let out = shardctl("http://example").arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("invalid endpoint"));

    let out = Command::cargo_bin("shardctl")
        .unwrap()
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_second_daemon_on_the_same_socket_or_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Process::start(dir.path(), "psync");
    let out = shardd_on(&dir.path().join("other-data"), &dir.path().join("shardd.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("another daemon is serving"),
        "{}",
        stderr_of(&out)
    );

    let out = shardd_on(&dir.path().join("data"), &dir.path().join("second.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("in use by another shardd"),
        "{}",
        stderr_of(&out)
    );
}

/// Whether this process may lock memory beyond RLIMIT_MEMLOCK (root keeps
/// CAP_IPC_LOCK); then the test drops the capability with setpriv.
fn drop_ipc_lock() -> Option<Vec<String>> {
    // SAFETY: plain syscall with no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return Some(Vec::new());
    }
    let setpriv = std::process::Command::new("setpriv").arg("--version").output();
    if setpriv.is_ok_and(|o| o.status.success()) {
        Some(
            ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"]
                .map(String::from)
                .to_vec(),
        )
    } else {
        None
    }
}

#[test]
fn an_arena_beyond_the_memlock_limit_runs_and_says_how_to_lock_it() {
    let Some(prefix) = drop_ipc_lock() else {
        support::skipped("the memlock limit check: running as root without setpriv, so mlock is not limited here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("stderr.log");
    let command = format!(
        "ulimit -l 8192 && exec {} '{}' --data-dir '{}' --socket '{}' --tcp off --http off --pinned-memory 64MiB",
        prefix.join(" "),
        env!("CARGO_BIN_EXE_shardd"),
        dir.path().join("data").display(),
        socket.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &command])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let endpoint = format!("unix://{}", socket.display());
    let out = shardctl(&endpoint).args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let arena = &status["arena"];
    assert_eq!(arena["capacity_bytes"], 64 << 20);
    let locked = arena["locked_bytes"].as_u64().unwrap();
    assert!(locked <= 8 << 20, "locked {locked} bytes with an 8 MiB limit");
    // It still serves.
    shardctl(&endpoint)
        .args(["put", "job", "k", "-"])
        .write_stdin("still works")
        .assert()
        .success();
    let out = shardctl(&endpoint).args(["get", "job", "k"]).output().unwrap();
    assert_eq!(out.stdout, b"still works");
    let text = shardctl(&endpoint).arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("locked in RAM"));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("LimitMEMLOCK=infinity")).collect();
    assert_eq!(warnings.len(), 1, "one warning, saying how to fix it: {stderr}");
    assert!(
        warnings[0].contains(&format!("only {locked} of {} bytes are locked", 64 << 20)),
        "{}",
        warnings[0]
    );
}

#[test]
fn hugetlb_pages_that_are_not_there_are_a_clear_error() {
    let reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap_or_default();
    if reserved.trim() != "0" {
        support::skipped(format!(
            "the missing huge pages check: this machine reserves huge pages ({})",
            reserved.trim()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[arena]\nsize = \"64MiB\"\nhuge_pages = \"hugetlb\"\n").unwrap();
    let out = shardd()
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(["--tcp", "off", "--http", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("vm.nr_hugepages") && err.contains("huge_pages"), "{err}");
}

#[test]
fn an_http_address_in_use_stops_the_start_with_its_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = shardd()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(["--tcp", "off", "--http", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("server.http") && err.contains(&addr), "{err}");
    assert!(!dir.path().join("s.sock").exists(), "nothing is left serving");
}
