//! The access table, against the real binary: a peer of another uid (the
//! test drops to `nobody` in a `shardctl` child process) is refused the
//! namespaces the table does not grant it, with the rule named, and allowed
//! those it does; root is trusted.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use shardd_client::{Client, PutOptions};
use support::{Launch, Process, files_under, skipped};

const NOBODY: u32 = 65534;

const CONFIG: &str = r#"
[server]
socket_mode = "0666"
[storage]
min_free = 0
[arena]
size = "64MiB"

[[access.rules]]
users = ["65534"]
namespaces = ["open-*"]
rights = ["read", "write"]

[[access.rules]]
name = "nobody reads shared"
users = ["65534"]
namespaces = ["shared"]
rights = ["read"]
"#;

/// `shardctl ARGS` as `nobody`, with `stdin` as its standard input.
fn as_nobody(endpoint: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardctl"))
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal, got {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A daemon on `config` whose socket another uid can reach (`prepare` gets
/// its data dir first), when the test runs as root, since it drops to
/// another uid; `None`, saying so, otherwise.
fn daemon_for_others(
    test: &str,
    config: &str,
    prepare: impl FnOnce(&std::path::Path),
) -> Option<(tempfile::TempDir, Process)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skipped(format!("{test}: acting as another uid needs root"));
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // The socket's directory must be reachable by the other user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    prepare(&data);
    let daemon = Process::launch(Launch {
        dir: dir.path(),
        engine: "psync",
        tcp: "off",
        config,
        data_dirs: &[data],
        wrapper: &[],
    });
    Some((dir, daemon))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_gets_exactly_what_the_table_grants_and_refusals_name_the_rule() {
    let Some((_dir, daemon)) = daemon_for_others("access test", CONFIG, |_| {}) else {
        return;
    };
    let endpoint = daemon.endpoint();
    let root = Client::connect(&endpoint).await.unwrap();
    root.put("secret", "k", b"root's secret".to_vec(), PutOptions::default())
        .await
        .unwrap();
    root.put("shared", "k", b"for everyone".to_vec(), PutOptions::default())
        .await
        .unwrap();

    // Granted: read and write in open-*, read in shared.
    let put = as_nobody(&endpoint, &["put", "open-1", "k", "-"], b"nobody's bytes");
    assert!(put.status.success(), "{put:?}");
    let got = as_nobody(&endpoint, &["get", "open-1", "k"], b"");
    assert_eq!(got.stdout, b"nobody's bytes", "{got:?}");
    let got = as_nobody(&endpoint, &["get", "shared", "k"], b"");
    assert_eq!(got.stdout, b"for everyone", "{got:?}");

    // Refused, each naming why.
    let err = refused(&as_nobody(&endpoint, &["get", "secret", "k"], b""));
    assert!(err.contains("unauthorized"), "{err}");
    assert!(
        err.contains("uid 65534 (nobody) may not read namespace \"secret\""),
        "{err}"
    );
    assert!(err.contains("access.rules"), "{err}");
    let err = refused(&as_nobody(&endpoint, &["ls", "secret"], b""));
    assert!(err.contains("may not read namespace \"secret\""), "{err}");
    let err = refused(&as_nobody(&endpoint, &["put", "shared", "k2", "-"], b"x"));
    assert!(
        err.contains("rule \"nobody reads shared\" (read on \"shared\") grants no write"),
        "{err}"
    );
    let err = refused(&as_nobody(&endpoint, &["rm", "open-1", "k"], b""));
    assert!(err.contains("may not administer namespace \"open-1\""), "{err}");
    assert!(err.contains("rule \"access.rules[0]\""), "{err}");
    let err = refused(&as_nobody(&endpoint, &["evict", "--drop", "open-1", "k"], b""));
    assert!(err.contains("unauthorized"), "{err}");

    // Listings show only what the peer may read; dropping a namespace
    // needs admin.
    let listed = as_nobody(&endpoint, &["ns", "ls"], b"");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("open-1") && listed.contains("shared"), "{listed}");
    assert!(!listed.contains("secret"), "{listed}");
    let err = refused(&as_nobody(&endpoint, &["ns", "rm", "open-1"], b""));
    assert!(err.contains("may not administer namespace \"open-1\""), "{err}");
    let err = refused(&as_nobody(
        &endpoint,
        &["ns", "quota", "open-1", "--drive", "1TiB"],
        b"",
    ));
    assert!(err.contains("may not administer namespace \"open-1\""), "{err}");

    // Nothing refused was touched; root may do everything.
    assert_eq!(&root.fetch("secret", "k").await.unwrap().data[..], b"root's secret");
    assert!(root.stat("shared", "k2").await.is_err());
    assert_eq!(&root.fetch("open-1", "k").await.unwrap().data[..], b"nobody's bytes");
    root.delete("open-1", "k", None).await.unwrap();
}

/// Runs `sh -c script` as `nobody` in group `gid`; returns whether it succeeded.
fn shell_as_nobody(gid: u32, script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .uid(NOBODY)
        .gid(gid)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_are_private_and_only_the_socket_belongs_to_the_clients_group() {
    use std::os::unix::fs::MetadataExt;
    let config = format!(
        "[server]\nsocket_mode = \"0660\"\nsocket_group = \"{NOBODY}\"\n[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\n"
    );
    // A data dir an operator made too open: the daemon closes it.
    let too_open = |data: &std::path::Path| {
        std::fs::create_dir(data).unwrap();
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o775)).unwrap();
    };
    let Some((dir, daemon)) = daemon_for_others("private data dir test", &config, too_open) else {
        return;
    };
    let data = dir.path().join("data");
    let client = Client::connect(&daemon.endpoint()).await.unwrap();
    client
        .put("job", "w", b"weights".to_vec(), PutOptions::default())
        .await
        .unwrap();

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&data), 0o700, "the data dir");
    let shard = files_under(&data.join("shards")).pop().expect("a shard file");
    assert_eq!(mode(&shard), 0o600, "a shard file");
    assert_eq!(mode(&data.join("lock")), 0o600, "the lock file");
    let socket = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o660, "the socket");
    assert_eq!(socket.gid(), NOBODY, "the socket's group is server.socket_group");

    // A member of the daemon's group (gid 0 here) gets nothing in the data dir.
    let (shard, data) = (shard.display(), data.display());
    assert!(!shell_as_nobody(0, &format!("cat {shard}")), "read a shard file");
    assert!(!shell_as_nobody(0, &format!("ls {data}")), "list the data dir");
    assert!(
        !shell_as_nobody(0, &format!("touch {data}/shards/job/planted")),
        "create a file"
    );
    assert!(!shell_as_nobody(0, &format!("echo x >> {shard}")), "rewrite a shard");
    assert!(
        !shell_as_nobody(0, &format!("flock -n {data}/lock true")),
        "take the lock"
    );
    // The clients' group reaches the socket; the shard is intact.
    let ping = Command::new(env!("CARGO_BIN_EXE_shardctl"))
        .arg("--endpoint")
        .arg(daemon.endpoint())
        .arg("ping")
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    assert_eq!(&client.fetch("job", "w").await.unwrap().data[..], b"weights");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_new_access_table_in_force_for_open_connections_too() {
    let Some((dir, daemon)) = daemon_for_others("access reload test", CONFIG, |_| {}) else {
        return;
    };
    let endpoint = daemon.endpoint();
    let root = Client::connect(&endpoint).await.unwrap();
    root.put("secret", "k", b"now shared".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert!(!as_nobody(&endpoint, &["get", "secret", "k"], b"").status.success());

    // The new table grants nobody only reads of "secret".
    let reloaded = CONFIG.replace("namespaces = [\"open-*\"]", "namespaces = [\"secret\"]");
    let reloaded = reloaded.replace("rights = [\"read\", \"write\"]", "rights = [\"read\"]");
    std::fs::write(dir.path().join("shardd.toml"), reloaded).unwrap();
    // SAFETY: sending a signal to a process this test started.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let mut granted = false;
    for _ in 0..100 {
        let got = as_nobody(&endpoint, &["get", "secret", "k"], b"");
        if got.status.success() {
            assert_eq!(got.stdout, b"now shared");
            granted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(granted, "the reloaded table grants the read");
    let err = refused(&as_nobody(&endpoint, &["put", "open-1", "k", "-"], b"x"));
    assert!(err.contains("no rule covers namespace \"open-1\""), "{err}");
}
