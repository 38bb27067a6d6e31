//! Deletes and replaces are durable before they are acknowledged: every
//! unlink an answer depends on is followed by an fsync of the directory it
//! was in, before the answer. Checked on the real binary under `strace`
//! (the order of its unlink, rename and fsync calls), with two data
//! directories, the first a small tmpfs so that a larger new version of a
//! shard lands in the second (a replace across data directories).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardd::ctl::bench::pattern;
use shardd_client::{Client, ClientError, PutOptions};
use shardd_protocol::Status;
use support::{Launch, Process, engines, files_under, skipped};

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One traced call: what it was and the path it named.
#[derive(Debug, PartialEq)]
enum Call {
    Unlink(String),
    Rename(String),
    Fsync(String),
}

/// The unlink, rename and fsync calls of an `strace -f -y` log, in order.
fn calls(trace: &str) -> Vec<Call> {
    let quoted = |line: &str, nth: usize| line.split('"').nth(nth).map(str::to_string);
    let mut calls = Vec::new();
    for line in trace.lines().filter(|l| l.contains(") = 0")) {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        if call.starts_with("unlink(") || call.starts_with("unlinkat(") {
            calls.extend(quoted(line, 1).map(Call::Unlink));
        } else if call.starts_with("rename") {
            // renameat2(AT_FDCWD, "from", AT_FDCWD, "to", flags): the target.
            calls.extend(quoted(line, 3).map(Call::Rename));
        } else if call.starts_with("fsync(") || call.starts_with("fdatasync(") {
            // fsync(7</path>) with -y.
            let path = line.split('<').nth(1).and_then(|p| p.split('>').next());
            calls.extend(path.map(|p| Call::Fsync(p.to_string())));
        }
    }
    calls
}

/// The position of the first call after `from` that `matches`.
fn find(calls: &[Call], from: usize, matches: impl Fn(&Call) -> bool) -> Option<usize> {
    calls.iter().skip(from).position(matches).map(|i| i + from)
}

fn parent(path: &str) -> String {
    Path::new(path).parent().unwrap().display().to_string()
}

/// Stops the daemon running under `strace`: the traced process is the
/// wrapper's only child.
fn terminate_traced(process: &mut Process) {
    let wrapper = process.child.id();
    let children = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).unwrap();
    let daemon: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: sending a signal to a process this test started.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    let status = process.child.wait().unwrap();
    assert!(status.success(), "strace (and the daemon under it) ended with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_into_another_data_dir_and_a_delete_fsync_the_directories_they_unlinked_from() {
    if Command::new("strace").arg("-V").output().is_err() {
        return skipped("durable delete test: strace is not installed");
    }
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let small = match Tmpfs::mount(&dir.path().join("small"), "320M") {
            Ok(mount) => mount,
            Err(e) => return skipped(format!("durable delete test: cannot mount a tmpfs ({e})")),
        };
        let big = dir.path().join("big");
        let trace = dir.path().join("trace.txt");
        let trace_arg = trace.display().to_string();
        // 320 MiB minus 256 MiB kept free: a 4 KiB shard fits in the small
        // dir, a 96 MiB one does not.
        let mut daemon = Process::launch(Launch {
            dir: dir.path(),
            engine,
            tcp: "off",
            config: "[storage]\nmin_free = \"256MiB\"\n[arena]\nsize = \"0\"\n",
            data_dirs: &[small.0.clone(), big.clone()],
            wrapper: &[
                "strace",
                "-f",
                "-y",
                "-qq",
                "-o",
                &trace_arg,
                "-e",
                "trace=unlink,unlinkat,rename,renameat,renameat2,fsync,fdatasync",
            ],
        });
        let client = Client::connect(&daemon.endpoint()).await.unwrap();

        // A key whose first version lands in the small dir.
        let small_shards = |dir: &Path| files_under(&dir.join("shards")).len();
        let mut key = None;
        for i in 0..32 {
            let k = format!("k{i}");
            let before = small_shards(&small.0);
            client
                .put("job", &k, pattern(4096, i), PutOptions::default())
                .await
                .unwrap();
            if small_shards(&small.0) > before {
                key = Some(k);
                break;
            }
        }
        let key = key.expect("some key of 32 hashes to the first data dir");
        let old_file = files_under(&small.0.join("shards"))
            .first()
            .map(|p| p.display().to_string())
            .unwrap();
        let meta = client
            .put("job", &key, pattern(96 << 20, 7), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(meta.version, 2);
        assert!(
            !Path::new(&old_file).exists(),
            "{engine}: the replaced file in the other dir is gone"
        );
        let deleted = client.delete("job", &key, None).await.unwrap();
        assert_eq!(deleted, 2);
        drop(client);
        terminate_traced(&mut daemon);

        let calls = calls(&std::fs::read_to_string(&trace).unwrap());
        let big_prefix = big.join("shards").display().to_string();
        // The replace: the new version renamed into the big dir and its dir
        // fsynced, then the old file unlinked and its dir fsynced.
        let renamed = find(
            &calls,
            0,
            |c| matches!(c, Call::Rename(p) if p.starts_with(&big_prefix)),
        )
        .unwrap_or_else(|| panic!("{engine}: no rename into {big_prefix} in {calls:?}"));
        let Call::Rename(new_file) = &calls[renamed] else {
            unreachable!()
        };
        let new_file = new_file.clone();
        let unlinked_old = find(&calls, renamed, |c| *c == Call::Unlink(old_file.clone()))
            .unwrap_or_else(|| panic!("{engine}: {old_file} is not unlinked after the replace: {calls:?}"));
        let old_synced = find(&calls, unlinked_old, |c| *c == Call::Fsync(parent(&old_file)));
        // The delete: the new file unlinked and its dir fsynced.
        let unlinked_new = find(&calls, unlinked_old, |c| *c == Call::Unlink(new_file.clone()))
            .unwrap_or_else(|| panic!("{engine}: the delete did not unlink {new_file}: {calls:?}"));
        let old_synced = old_synced.filter(|&at| at < unlinked_new).unwrap_or_else(|| {
            panic!("{engine}: the dir of {old_file} is not fsynced before the next request: {calls:?}")
        });
        assert!(old_synced > unlinked_old);
        assert!(
            find(&calls, unlinked_new, |c| *c == Call::Fsync(parent(&new_file))).is_some(),
            "{engine}: the delete does not fsync {}: {calls:?}",
            parent(&new_file)
        );

        // And after a restart, the key is gone.
        let daemon = Process::launch(Launch {
            dir: dir.path(),
            engine,
            tcp: "off",
            config: "[storage]\nmin_free = \"256MiB\"\n[arena]\nsize = \"0\"\n",
            data_dirs: &[small.0.clone(), big.clone()],
            wrapper: &[],
        });
        let client = Client::connect(&daemon.endpoint()).await.unwrap();
        let fetched = tokio::time::timeout(Duration::from_secs(10), client.fetch("job", &key))
            .await
            .unwrap();
        assert!(
            fetched.as_ref().err().and_then(ClientError::status) == Some(Status::NotFound),
            "{engine}: a deleted key after a restart: {fetched:?}"
        );
    }
}
