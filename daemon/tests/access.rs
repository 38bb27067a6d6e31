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
use support::{Launch, Process, skipped};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_gets_exactly_what_the_table_grants_and_refusals_name_the_rule() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skipped("access test: dropping to another uid needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    // The socket's directory must be reachable by the other user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Process::launch(Launch {
        dir: dir.path(),
        engine: "psync",
        tcp: "off",
        config: CONFIG,
        data_dirs: &[dir.path().join("data")],
        wrapper: &[],
    });
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

    // Nothing refused was touched; root may do everything.
    assert_eq!(&root.fetch("secret", "k").await.unwrap().data[..], b"root's secret");
    assert!(root.stat("shared", "k2").await.is_err());
    assert_eq!(&root.fetch("open-1", "k").await.unwrap().data[..], b"nobody's bytes");
    root.delete("open-1", "k", None).await.unwrap();
}
