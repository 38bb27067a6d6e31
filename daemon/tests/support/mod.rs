//! Starting the real `shardd` binary for tests.

#![allow(dead_code)]

/// Shared with the end-to-end tests (`shardd-tests`), whose library holds it.
#[path = "../../../tests/src/ext4.rs"]
pub mod ext4;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a `shardd` process.
pub struct Launch<'a> {
    /// Where its config file and socket go.
    pub dir: &'a Path,
    pub engine: &'a str,
    /// `--tcp`: `off`, or an address.
    pub tcp: &'a str,
    /// The config file's text.
    pub config: &'a str,
    pub data_dirs: &'a [PathBuf],
    /// A program (and its arguments) to run `shardd` under, e.g. `strace`.
    pub wrapper: &'a [&'a str],
}

/// A `shardd` process on a temp dir, killed when dropped.
pub struct Process {
    pub child: Child,
    pub socket: PathBuf,
    pub data: PathBuf,
}

impl Process {
    /// Starts `shardd` on `dir` (data in `dir/data`, socket `dir/shardd.sock`,
    /// no TCP) with `engine`, and waits until it accepts connections.
    pub fn start(dir: &Path, engine: &str) -> Process {
        Process::start_with(dir, engine, "off")
    }

    /// Like [`Process::start`], with TCP on `tcp` (`127.0.0.1:0` for any port).
    pub fn start_with(dir: &Path, engine: &str, tcp: &str) -> Process {
        let config = "[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\n";
        Process::launch(Launch {
            dir,
            engine,
            tcp,
            config,
            data_dirs: &[dir.join("data")],
            wrapper: &[],
        })
    }

    /// Starts `shardd` as `launch` says and waits until it accepts connections.
    pub fn launch(launch: Launch<'_>) -> Process {
        let config = launch.dir.join("shardd.toml");
        std::fs::write(&config, launch.config).unwrap();
        let socket = launch.dir.join("shardd.sock");
        let shardd = env!("CARGO_BIN_EXE_shardd");
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(shardd);
                command
            }
            None => Command::new(shardd),
        };
        command.arg("--config").arg(&config);
        for data in launch.data_dirs {
            command.arg("--data-dir").arg(data);
        }
        let child = command
            .arg("--socket")
            .arg(&socket)
            .args([
                "--tcp",
                launch.tcp,
                "--http",
                "off",
                "--io-engine",
                launch.engine,
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let data = launch.data_dirs[0].clone();
        let process = Process { child, socket, data };
        process.wait_ready();
        process
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The key the daemon made for TCP clients at its first start (when TCP
    /// is on and its configuration names no keys).
    pub fn key_file(&self) -> PathBuf {
        self.data.join("keys").join("default.key")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("shardd did not start listening on {}", self.socket.display());
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime for a test that drives a daemon while its own thread sleeps,
/// kills and restarts it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The engines to test with on this machine.
pub fn engines() -> Vec<&'static str> {
    match shardd::io::IoEngine::uring_available() {
        Ok(()) => vec!["uring", "psync"],
        Err(e) => {
            skipped(format!("the io_uring engine: io_uring is unavailable here ({e})"));
            vec!["psync"]
        }
    }
}

/// Says that part of a test was skipped, and why, where `cargo test` shows
/// it even when the test passes (its capture takes only `print!` and
/// `eprint!`, not writes to the standard error handle).
pub fn skipped(reason: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Waits (up to 30 s) until the log file holds `needle`; returns the whole log.
pub fn wait_for_log(log: &Path, needle: &str) -> String {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(30);
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
