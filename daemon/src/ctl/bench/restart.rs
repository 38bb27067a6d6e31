//! `shardctl bench restart`: what a restart with a warm arena saves. It
//! starts its own `shardd` (the one beside `shardctl`, or `--shardd`) on a
//! data directory under `--dir`, and plays systemd's part for it
//! ([`FdStore`]: the notification socket and the file descriptor store).
//! It fills the arena with shards, then restarts the daemon cold (nothing
//! passed back, as without `arena.keep_on_restart`) and warm (the kept
//! arena passed back), alternately, `--runs` times each, and times:
//!
//! * the start: from starting `shardd` to its first answered ping (a warm
//!   start has checked every kept byte against its drive by then);
//! * the first pass after it: every shard fetched once into a buffer, four
//!   at a time (from the drives after a cold start, from the arena after a
//!   warm one), with the arena hits and drive loads it took.
//!
//! The cold start and its first pass are the baseline, measured in the
//! same run.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use shardd_client::{Client, PutOptions};
use shardd_protocol::fdpass::{Received, recv_with_fds};

use super::{median, pattern};
use crate::config::units::parse_size;
use crate::ctl::show;

/// Options of `shardctl bench restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The `shardd` binary to start (default: the one beside `shardctl`).
    #[arg(long)]
    pub shardd: Option<PathBuf>,
    /// Where the benchmark's data directory, socket and logs go (a new
    /// directory inside it, removed afterwards); on the drive to measure.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The daemon's arena.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub arena: u64,
    /// Bytes of shards put (default: three quarters of the arena).
    #[arg(long, value_parser = parse_size)]
    pub fill: Option<u64>,
    /// Size of each shard.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Cold and warm restarts each; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The daemon's I/O engine: auto, uring or psync.
    #[arg(long, default_value = "auto")]
    pub io_engine: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One kind of restart's figures (medians over the runs).
#[derive(Clone, Debug, Serialize)]
pub struct RestartRow {
    /// `cold` or `warm`.
    pub restart: String,
    /// Seconds from starting `shardd` to its first answered ping.
    pub first_answer_secs: f64,
    /// Seconds to fetch every shard once after that.
    pub first_pass_secs: f64,
    /// The first pass's throughput.
    pub first_pass_gbps: f64,
    /// Arena hits in the first pass.
    pub hits: u64,
    /// Shards read from the drives in the first pass.
    pub loads: u64,
    /// Shards taken back from the kept arena at the start.
    pub adopted_shards: u64,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct RestartReport {
    /// Daemon version.
    pub server: String,
    /// The I/O engine it ran.
    pub io_engine: String,
    /// Bytes of the arena.
    pub arena_bytes: u64,
    /// Shards, and their bytes.
    pub shards: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Cold, then warm.
    pub rows: Vec<RestartRow>,
}

const NAMESPACE: &str = "shardctl-bench-restart";
/// Fetches in flight in the first pass.
const CONCURRENCY: usize = 4;

/// Runs `shardctl bench restart`.
pub async fn run(args: &RestartArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.shard_size > 0, "--shard-size must be more than 0");
    let shardd = match &args.shardd {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("find shardctl's own path")?
            .with_file_name("shardd"),
    };
    anyhow::ensure!(
        shardd.is_file(),
        "no shardd at {}: build it (cargo build --release) or pass --shardd",
        shardd.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("shardctl-bench-restart-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("make a directory in {}", args.dir.display()))?;
    let fill = args.fill.unwrap_or(args.arena / 4 * 3);
    let count = (fill / args.shard_size).max(1);
    let mut bench = Bench {
        store: FdStore::bind(&dir.path().join("notify.sock")).context("bind the notification socket")?,
        shardd,
        dir: dir.path().to_path_buf(),
        args,
        starts: 0,
    };
    let keys: Vec<String> = (0..count).map(|i| format!("shard.{i}")).collect();
    let mut daemon = bench.start()?;
    let client = first_answer(&bench.endpoint(), &mut daemon).await?;
    let status = client.status().await?;
    let bytes = pattern(args.shard_size as usize, 1);
    for key in &keys {
        client
            .put(NAMESPACE, key, bytes.clone(), PutOptions::default())
            .await
            .with_context(|| format!("put {key}"))?;
    }
    drop(client);
    let mut rows: BTreeMap<&str, Vec<RestartRow>> = BTreeMap::new();
    for _ in 0..args.runs {
        for warm in [false, true] {
            daemon.stop()?;
            if !warm {
                bench.store.clear()?;
            }
            let row = bench.restart(&mut daemon, warm, &keys).await?;
            rows.entry(if warm { "warm" } else { "cold" }).or_default().push(row);
        }
    }
    daemon.stop()?;
    let report = RestartReport {
        server: status.server,
        io_engine: status.io_engine,
        arena_bytes: args.arena,
        shards: count,
        bytes: count * args.shard_size,
        rows: ["cold", "warm"].iter().map(|kind| medians(kind, &rows[kind])).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The benchmark's daemon and its fake systemd.
struct Bench<'a> {
    store: FdStore,
    shardd: PathBuf,
    dir: PathBuf,
    args: &'a RestartArgs,
    starts: usize,
}

/// A running `shardd`.
struct Daemon {
    child: Child,
    started: Instant,
}

impl Daemon {
    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "shardd exited with {status}");
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench<'_> {
    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("shardd.sock").display())
    }

    /// Starts `shardd` with what the store holds, returning at once.
    fn start(&mut self) -> anyhow::Result<Daemon> {
        let config = self.dir.join("shardd.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nmin_free = 0\n[arena]\nsize = {}\nkeep_on_restart = true\n",
                self.args.arena
            ),
        )?;
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("shardd-{}.log", self.starts)))?;
        let mut command = self.store.command(&self.shardd)?;
        command
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--socket")
            .arg(self.dir.join("shardd.sock"))
            .args(["--tcp", "off", "--http", "off", "--io-engine", &self.args.io_engine])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let started = Instant::now();
        let child = command.spawn().context("start shardd")?;
        Ok(Daemon { child, started })
    }

    /// Starts the daemon again (`warm`: with the kept arena the store
    /// holds), waits for its first answer, and fetches every shard once.
    async fn restart(&mut self, daemon: &mut Daemon, warm: bool, keys: &[String]) -> anyhow::Result<RestartRow> {
        if warm {
            let names = self.store.names()?;
            anyhow::ensure!(
                names.len() == 2,
                "the daemon handed over {names:?} at its stop, not its arena and index"
            );
        }
        *daemon = self.start()?;
        let client = first_answer(&self.endpoint(), daemon).await?;
        let first_answer_secs = daemon.started.elapsed().as_secs_f64();
        let before = client.status().await?.arena.context("the daemon has no arena")?;
        let clients: Vec<Client> = {
            let mut clients = vec![client];
            for _ in 1..CONCURRENCY {
                clients.push(Client::connect(&self.endpoint()).await?);
            }
            clients
        };
        let len = self.args.shard_size as usize;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, client) in clients.iter().enumerate() {
            let (client, mine): (Client, Vec<String>) = (
                client.clone(),
                keys.iter().skip(i).step_by(CONCURRENCY).cloned().collect(),
            );
            tasks.spawn(async move {
                let mut buf = vec![0u8; len];
                for key in mine {
                    let (back, fetched) = client.fetch_into(NAMESPACE, &key, None, buf).await;
                    buf = back;
                    fetched.with_context(|| format!("fetch {key}"))?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let first_pass_secs = started.elapsed().as_secs_f64();
        let after = clients[0].status().await?.arena.context("the daemon has no arena")?;
        let bytes = keys.len() as f64 * len as f64;
        Ok(RestartRow {
            restart: if warm { "warm" } else { "cold" }.to_string(),
            first_answer_secs,
            first_pass_secs,
            first_pass_gbps: bytes / first_pass_secs / 1e9,
            hits: after.hits - before.hits,
            loads: after.loads - before.loads,
            adopted_shards: after.adopted_shards,
        })
    }
}

/// Connects and pings until the daemon answers (within a minute).
async fn first_answer(endpoint: &str, daemon: &mut Daemon) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = Client::connect(endpoint).await
            && client.ping().await.is_ok()
        {
            return Ok(client);
        }
        if let Some(status) = daemon.child.try_wait()? {
            anyhow::bail!("shardd exited with {status} before answering");
        }
        anyhow::ensure!(Instant::now() < deadline, "shardd did not answer within a minute");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn medians(kind: &str, rows: &[RestartRow]) -> RestartRow {
    let of = |f: fn(&RestartRow) -> f64| median(rows.iter().map(f).collect());
    RestartRow {
        restart: kind.to_string(),
        first_answer_secs: of(|r| r.first_answer_secs),
        first_pass_secs: of(|r| r.first_pass_secs),
        first_pass_gbps: of(|r| r.first_pass_gbps),
        hits: of(|r| r.hits as f64) as u64,
        loads: of(|r| r.loads as f64) as u64,
        adopted_shards: of(|r| r.adopted_shards as f64) as u64,
    }
}

fn table(report: &RestartReport) -> String {
    let mut out = format!(
        "{} ({} engine), arena {}, {} shards ({}); medians\n\n",
        report.server,
        report.io_engine,
        show::bytes(report.arena_bytes),
        report.shards,
        show::bytes(report.bytes)
    );
    out.push_str("| restart | first answer | first pass | GB/s | arena hits | drive loads | shards kept |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for row in &report.rows {
        out.push_str(&format!(
            "| {} | {:.2} s | {:.2} s | {:.2} | {} | {} | {} |\n",
            row.restart,
            row.first_answer_secs,
            row.first_pass_secs,
            row.first_pass_gbps,
            row.hits,
            row.loads,
            row.adopted_shards
        ));
    }
    if let [cold, warm] = &report.rows[..] {
        out.push_str(&format!(
            "\nwarm / cold: first answer {:.2}x the time, first pass {:.1}x the throughput\n",
            warm.first_answer_secs / cold.first_answer_secs,
            warm.first_pass_gbps / cold.first_pass_gbps
        ));
    }
    out
}

/// systemd's side of a restart with a warm arena, for the benchmark and
/// the tests: a notification socket that keeps the descriptors a daemon
/// stores (`FDSTORE=1`, by `FDNAME=`), drops those it removes
/// (`FDSTOREREMOVE=1`), and passes them to the next start as systemd does
/// (from descriptor 3, with `$LISTEN_FDS`, `$LISTEN_FDNAMES` and
/// `$LISTEN_PID`).
#[derive(Debug)]
pub struct FdStore {
    socket: UnixDatagram,
    path: PathBuf,
    fds: BTreeMap<String, OwnedFd>,
}

impl FdStore {
    /// Binds the notification socket at `path`.
    pub fn bind(path: &Path) -> std::io::Result<FdStore> {
        let socket = UnixDatagram::bind(path)?;
        socket.set_nonblocking(true)?;
        Ok(FdStore {
            socket,
            path: path.to_path_buf(),
            fds: BTreeMap::new(),
        })
    }

    /// Takes every message waiting.
    pub fn receive(&mut self) -> std::io::Result<()> {
        loop {
            let mut buf = [0u8; 4096];
            let mut received = Received::default();
            let n = match recv_with_fds(self.socket.as_raw_fd(), &mut buf, &mut received) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.lines().any(|l| l == "FDSTORE=1") {
                if let Some(fd) = received.fds.pop() {
                    self.fds.insert(name, fd);
                }
            } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.fds.remove(&name);
            }
        }
    }

    /// The names of the descriptors held now.
    pub fn names(&mut self) -> std::io::Result<Vec<String>> {
        self.receive()?;
        Ok(self.fds.keys().cloned().collect())
    }

    /// The descriptor held under `name`.
    pub fn get(&self, name: &str) -> Option<&OwnedFd> {
        self.fds.get(name)
    }

    /// Drops the descriptor held under `name`, as if it had never come.
    pub fn remove(&mut self, name: &str) -> std::io::Result<()> {
        self.receive()?;
        self.fds.remove(name);
        Ok(())
    }

    /// Drops every descriptor held (as `systemctl clean --what=fdstore`).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.receive()?;
        self.fds.clear();
        Ok(())
    }

    /// A command that runs `program` as systemd would: with this socket as
    /// `$NOTIFY_SOCKET` and the descriptors held passed from 3 on.
    pub fn command(&mut self, program: &Path) -> std::io::Result<Command> {
        self.receive()?;
        let names: Vec<&str> = self.fds.keys().map(String::as_str).collect();
        // Copies above the descriptors they are moved to, closed at exec.
        let high = self
            .fds
            .values()
            .map(|fd| {
                // SAFETY: fcntl on a descriptor we own; returns a new one.
                let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `raw` is a new descriptor, ours.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            })
            .collect::<std::io::Result<Vec<OwnedFd>>>()?;
        let mut command = Command::new("sh");
        command
            // `$$` is the shell's pid, which `exec` gives to the program.
            .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
            .arg(program)
            .env("NOTIFY_SOCKET", &self.path)
            .env("LISTEN_FDS", high.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("SHARDD_LOG");
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe),
        // on descriptors the closure owns until the command is dropped.
        unsafe {
            command.pre_exec(move || {
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(fd.as_raw_fd(), 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(command)
    }
}
