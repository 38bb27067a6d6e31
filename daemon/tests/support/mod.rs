//! Starting the real `shardd` binary for tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let config = dir.join("shardd.toml");
        std::fs::write(&config, "[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\n").unwrap();
        let socket = dir.join("shardd.sock");
        let data = dir.join("data");
        let child = Command::new(env!("CARGO_BIN_EXE_shardd"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&socket)
            .args([
                "--tcp",
                tcp,
                "--http",
                "off",
                "--io-engine",
                engine,
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let process = Process { child, socket, data };
        process.wait_ready();
        process
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
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
