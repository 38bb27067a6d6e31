//! `shardctl`: the operator's command line, built on the client crate.
//!
//! Exit status: 0 on success, 1 on failure (one line on stderr), 2 on bad
//! usage, 3 when the shard asked for does not exist.
//!
//! # Layout
//!
//! * [`bench`](mod@bench): `shardctl bench`, measured against `fio` in the same run.
//! * [`show`]: human-readable rendering of metadata and status.
//! * [`progress`]: the progress bar of transfers.

pub mod bench;
pub mod certs;
pub mod progress;
pub mod show;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use progress::Shown;
use shardd_client::files;
use shardd_client::protocol::Key;
use shardd_client::{
    ByteRange, Client, ClientError, ClientOptions, DType, Durability, EvictMode, PrefetchItem, Progress, PutOptions,
    VerifyOutcome,
};

/// Some prefetched keys do not exist (reported one per line).
#[derive(Debug, thiserror::Error)]
#[error("some shards were not found")]
struct NotAllFound;

/// The endpoint when neither `--endpoint` nor `SHARDD_ENDPOINT` says otherwise:
/// the daemon's default Unix socket.
pub const DEFAULT_ENDPOINT: &str = "unix://./shardd.sock";

/// shardctl: store, read and inspect shards in a shardd daemon.
#[derive(Debug, Parser)]
#[command(name = "shardctl", version)]
pub struct Args {
    /// Daemon address: unix://PATH or tcp://HOST:PORT.
    #[arg(long, global = true, env = "SHARDD_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Key file to authenticate with over TCP (the daemon logs where its
    /// own is; see docs/SECURITY.md).
    #[arg(long, global = true, env = "SHARDD_AUTH_KEY_FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// For tls:// endpoints: the CA certificate(s) that sign the daemon's
    /// certificate (PEM).
    #[arg(long, global = true, env = "SHARDD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// For tls:// endpoints: this client's certificate (PEM), where the
    /// daemon requires one.
    #[arg(long, global = true, env = "SHARDD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "SHARDD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a file (or standard input, "-") as a shard.
    Put {
        /// Namespace.
        namespace: String,
        /// Key, e.g. layers.0.mlp.fc1.weight#0/8.
        key: String,
        /// File to store, or "-" for standard input.
        file: String,
        /// Version to store (default: the next one, above the stored version).
        #[arg(long)]
        version: Option<u64>,
        /// Element type (raw, f32, bf16, ...).
        #[arg(long, default_value = "raw")]
        dtype: DType,
        /// Shape, comma separated, e.g. 4096,1024.
        #[arg(long, value_delimiter = ',')]
        shape: Vec<u64>,
        /// Acknowledge once in the daemon's memory; it writes the shard to
        /// the drive in the background (lost if the daemon dies first).
        #[arg(long)]
        write_back: bool,
        /// Like --write-back, and the daemon never syncs its write to the
        /// drive: survives the daemon's crash, not a power loss.
        #[arg(long, conflicts_with = "write_back")]
        scratch: bool,
    },
    /// Store every tensor of a .safetensors file as a shard (PREFIX + its name).
    Import {
        /// The .safetensors file.
        file: PathBuf,
        /// Namespace.
        namespace: String,
        /// Put before each tensor's name to make its key.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Write shards (those whose keys start with PREFIX, or --keys) to a .safetensors file.
    Export {
        /// Namespace.
        namespace: String,
        /// The .safetensors file to write.
        file: PathBuf,
        /// The keys start with this, which the tensors' names leave out.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only these keys (comma separated), named without the prefix.
        #[arg(long, value_delimiter = ',')]
        keys: Vec<String>,
    },
    /// Read a shard into a file, or to standard output ("-" or no file).
    Get {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Output file, or "-" for standard output.
        file: Option<String>,
        /// First byte to read.
        #[arg(long, requires = "len")]
        offset: Option<u64>,
        /// Number of bytes to read.
        #[arg(long)]
        len: Option<u64>,
    },
    /// Show a shard's metadata.
    Stat {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the shards of a namespace.
    Ls {
        /// Namespace.
        namespace: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load shards into the daemon's pinned arena ahead of use, in the order given.
    Prefetch {
        /// Namespace.
        namespace: String,
        /// Keys, most urgent first.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Free the arena copies of shards (the drive keeps them), or with --drop delete them.
    Evict {
        /// Namespace.
        namespace: String,
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Delete the shards instead of only freeing their memory.
        #[arg(long)]
        drop: bool,
    },
    /// Check the daemon's copy of a shard in memory against its checksum
    /// again; a copy that fails is dropped and read again from the drive.
    Verify {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Only this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Remove a shard.
    Rm {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Remove only if this is the stored version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Namespaces: what each holds, and removing one whole.
    Ns {
        #[command(subcommand)]
        command: NsCommand,
    },
    /// Show the daemon's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure the round trip to the daemon.
    Ping,
    /// Benchmarks, each beside a baseline measured in the same run.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Keys that TCP clients authenticate with (no daemon needed).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Certificates for TLS in test and development set-ups (no daemon
    /// needed).
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
}

/// `shardctl tls ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a new CA, a daemon certificate it signs, and client
    /// certificates, into a directory (keys readable only by you).
    New {
        /// Directory to write ca.crt, ca.key, server.crt, server.key and
        /// NAME.crt, NAME.key for each client (no file is replaced).
        #[arg(long)]
        out: PathBuf,
        /// Names and IP addresses the daemon is reached by (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
        /// Client certificates to make, by common name (comma separated):
        /// the identity a daemon that requires client certificates gives them.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
}

/// `shardctl key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key with a random 256-bit secret, in a new file readable only
    /// by you.
    New {
        /// The key's id: what the daemon's access table calls its holders.
        #[arg(long)]
        id: String,
        /// The file to write (never replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a key file's id and fingerprint (the daemon logs the
    /// fingerprints of the keys it accepts).
    Show {
        /// The key file.
        file: PathBuf,
    },
}

/// `shardctl ns ...`.
#[derive(Debug, Subcommand)]
pub enum NsCommand {
    /// List namespaces (those you may read) with their shards and bytes on
    /// the drives and in the arena.
    Ls {
        /// Only namespaces whose names start with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every shard of a namespace, on the drives and in the arena,
    /// durably (write-back shards not yet written are discarded).
    Rm {
        /// Namespace.
        namespace: String,
    },
    /// Set a namespace's quotas (kept by the daemon across restarts,
    /// preferred to its configured ones); "none" clears one.
    Quota {
        /// Namespace.
        namespace: String,
        /// Bytes it may hold on the drives, e.g. 2TiB, or none.
        #[arg(long, value_parser = quota_size)]
        drive: Option<Quota>,
        /// Bytes of the arena its shards may take, e.g. 16GiB, or none.
        #[arg(long, value_parser = quota_size)]
        arena: Option<Quota>,
    },
}

/// A quota on the command line: a size, or none.
#[derive(Clone, Copy, Debug)]
pub struct Quota(Option<u64>);

fn quota_size(text: &str) -> Result<Quota, String> {
    match text {
        "none" => Ok(Quota(None)),
        size => crate::config::units::parse_size(size).map(|n| Quota(Some(n))),
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message already holds (errors that quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// `shardctl key`: key files, without a daemon.
fn key(command: &KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::New { id, out } => {
            let key = shardd_client::AuthKey::generate(id)?;
            key.create(out)?;
            println!(
                "wrote key \"{}\" (fingerprint {}) to {}: list it in [auth] keys of the daemons that accept it, \
                 and give a copy (mode 0600) to their TCP clients",
                key.id(),
                key.fingerprint_hex(),
                out.display()
            );
        }
        KeyCommand::Show { file } => {
            let key = shardd_client::auth::load_key(file)?;
            println!("id {}\nfingerprint {}", key.id(), key.fingerprint_hex());
        }
    }
    Ok(())
}

/// `shardctl tls`: certificates, without a daemon.
fn tls(command: &TlsCommand) -> anyhow::Result<()> {
    let TlsCommand::New { out, hosts, clients } = command;
    let written = certs::generate(out, hosts, clients)?;
    println!(
        "wrote a CA ({}), a daemon certificate for {} ({} and {}: tls.cert and tls.key)",
        written.ca.display(),
        hosts.join(", "),
        written.server.0.display(),
        written.server.1.display()
    );
    for (cert, key) in &written.clients {
        println!(
            "and a client certificate {} with its key {}",
            cert.display(),
            key.display()
        );
    }
    println!(
        "clients trust the CA with --tls-ca (SHARDD_TLS_CA); a daemon with tls.client_ca = {:?} requires client certificates",
        written.ca.display().to_string()
    );
    Ok(())
}

/// `shardctl`'s main.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shardctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardctl: {}", one_line(&e));
            let not_found = e.downcast_ref::<ClientError>().is_some_and(ClientError::is_not_found)
                || e.downcast_ref::<files::FilesError>()
                    .and_then(files::FilesError::client)
                    .is_some_and(ClientError::is_not_found)
                || e.downcast_ref::<NotAllFound>().is_some();
            if not_found {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Key { command } = &args.command {
        return key(command);
    }
    if let Command::Tls { command } = &args.command {
        return tls(command);
    }
    let base = ClientOptions {
        auth_key: match &args.auth_key_file {
            Some(path) => Some(shardd_client::auth::load_key(path)?),
            None => None,
        },
        tls: shardd_client::tls::TlsOptions {
            ca_file: args.tls_ca.clone(),
            cert_file: args.tls_cert.clone(),
            key_file: args.tls_key.clone(),
            server_name: None,
        },
        ..ClientOptions::default()
    };
    if let Command::Bench { command } = &args.command {
        return bench::run(&args.endpoint, &base, command).await;
    }
    // An operator's reads are checked end to end, also those read in place.
    let options = ClientOptions {
        verify_views: true,
        ..base
    };
    let client = Client::connect_with(&args.endpoint, options).await?;
    match args.command {
        Command::Put {
            namespace,
            key,
            file,
            version,
            dtype,
            shape,
            write_back,
            scratch,
        } => {
            let options = PutOptions {
                version,
                dtype,
                shape,
                durability: match (write_back, scratch) {
                    (_, true) => Durability::Scratch,
                    (true, false) => Durability::WriteBack,
                    (false, false) => Durability::Durable,
                },
            };
            let meta = if file == "-" {
                // Standard input has no size to announce: it is read whole.
                client.put(&namespace, &key, read_stdin()?, options).await?
            } else {
                let shown = Arc::new(Shown::new(format!("put {namespace}/{key}")));
                let progress: Arc<dyn Progress> = shown.clone();
                let stored =
                    files::put_file(&client, &namespace, &key, Path::new(&file), options, Some(progress)).await;
                shown.finish();
                stored?
            };
            println!(
                "stored {}/{} version {} ({} bytes, crc32c {:#010x})",
                meta.namespace, meta.key, meta.version, meta.len, meta.crc32c
            );
        }
        Command::Import {
            file,
            namespace,
            prefix,
        } => {
            let shown = Arc::new(Shown::new(format!("import {}", file.display())));
            let progress: Arc<dyn Progress> = shown.clone();
            let imported = files::import_safetensors(&client, &file, &namespace, &prefix, Some(progress)).await;
            shown.finish();
            let imported = imported?;
            println!(
                "imported {} tensors ({}) from {} into {namespace}/{prefix}*",
                imported.tensors,
                show::bytes(imported.bytes),
                file.display()
            );
        }
        Command::Export {
            namespace,
            file,
            prefix,
            keys,
        } => {
            let shown = Arc::new(Shown::new(format!("export {}", file.display())));
            let progress: Arc<dyn Progress> = shown.clone();
            let keys = (!keys.is_empty()).then_some(keys);
            let exported =
                files::export_safetensors(&client, &namespace, &prefix, keys.as_deref(), &file, Some(progress)).await;
            shown.finish();
            let exported = exported?;
            println!(
                "exported {} tensors ({}) to {}{}",
                exported.tensors,
                show::bytes(exported.bytes),
                file.display(),
                if exported.original_header {
                    ", with the header they were imported with"
                } else {
                    ""
                }
            );
        }
        Command::Get {
            namespace,
            key,
            file,
            offset,
            len,
        } => match (offset, len) {
            (None, None) => {
                let output = match file.as_deref() {
                    None | Some("-") => files::Output::Stdout,
                    Some(path) => files::Output::File(PathBuf::from(path)),
                };
                let shown = Arc::new(Shown::new(format!("get {namespace}/{key}")));
                let progress: Arc<dyn Progress> = shown.clone();
                let fetched = files::get_file(&client, &namespace, &key, output, Some(progress)).await;
                shown.finish();
                fetched?;
            }
            (offset, Some(len)) => {
                let range = ByteRange {
                    offset: offset.unwrap_or(0),
                    len,
                };
                let shard = client.fetch_range(&namespace, &key, range.offset, range.len).await?;
                write_output(file.as_deref(), &shard.data)?;
            }
            (Some(_), None) => anyhow::bail!("--offset needs --len"),
        },
        Command::Stat { namespace, key, json } => {
            let stat = client.stat(&namespace, &key).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stat)?);
            } else {
                print!("{}", show::stat(&stat));
            }
        }
        Command::Prefetch { namespace, keys } => {
            let items = keys
                .iter()
                .enumerate()
                .map(|(order, key)| {
                    Ok(PrefetchItem {
                        key: Key::new(key.as_str())?,
                        order: order as u32,
                        deadline_unix_ms: None,
                    })
                })
                .collect::<Result<Vec<_>, ClientError>>()?;
            let answer = client.prefetch(&namespace, items).await?;
            println!(
                "queued {}, already in the arena {}, not found {}",
                answer.queued,
                answer.resident,
                answer.not_found.len()
            );
            for key in &answer.not_found {
                eprintln!("shardctl: shard {namespace}/{key} not found");
            }
            if !answer.not_found.is_empty() {
                return Err(NotAllFound.into());
            }
        }
        Command::Evict { namespace, keys, drop } => {
            let mode = if drop { EvictMode::Drop } else { EvictMode::Demote };
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let answer = client.evict(&namespace, &keys, mode).await?;
            print!("{}", show::evicted(&answer, drop));
            if !answer.failed.is_empty() || !answer.busy.is_empty() {
                anyhow::bail!(
                    "{} shards could not be evicted",
                    answer.failed.len() + answer.busy.len()
                );
            }
        }
        Command::Ls {
            namespace,
            prefix,
            json,
        } => {
            let shards = client.list(&namespace, &prefix).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shards)?);
            } else {
                print!("{}", show::listing(&shards));
            }
        }
        Command::Verify {
            namespace,
            key,
            version,
        } => {
            let checked = client.verify(&namespace, &key, version).await?;
            let shard = match checked.version {
                Some(version) => format!("{namespace}/{key} version {version}"),
                None => format!("{namespace}/{key}"),
            };
            match checked.outcome {
                VerifyOutcome::NotResident => println!(
                    "{shard}: not in the arena (nothing to check; the drive's copy is checked whenever it is read)"
                ),
                VerifyOutcome::Intact => println!("{shard}: the arena's copy matches its checksum"),
                VerifyOutcome::Dropped => anyhow::bail!(
                    "{shard}: the arena's copy did not match its checksum and was dropped; the next fetch reads \
                     the drive (check the node's memory)"
                ),
                VerifyOutcome::Lost => anyhow::bail!(
                    "{shard}: the arena's copy did not match its checksum before it reached the drive; that \
                     version is lost, put the shard again (check the node's memory)"
                ),
            }
        }
        Command::Rm {
            namespace,
            key,
            version,
        } => {
            let removed = client.delete(&namespace, &key, version).await?;
            println!("removed {namespace}/{key} version {removed}");
        }
        Command::Ns {
            command: NsCommand::Ls { prefix, json },
        } => {
            let namespaces = client.namespaces(&prefix).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&namespaces)?);
            } else {
                print!("{}", show::namespaces(&namespaces));
            }
        }
        Command::Ns {
            command: NsCommand::Rm { namespace },
        } => {
            let dropped = client.drop_namespace(&namespace).await?;
            println!(
                "removed namespace {namespace}: {} shards ({}) from the drives, {} not yet written from the arena, {} quarantined files",
                dropped.shards,
                show::bytes(dropped.bytes),
                dropped.unflushed,
                dropped.quarantined
            );
        }
        Command::Ns {
            command:
                NsCommand::Quota {
                    namespace,
                    drive,
                    arena,
                },
        } => {
            // An option left out keeps the quota in force now.
            let now = client.namespaces(&namespace).await?;
            let current = now.iter().find(|u| u.namespace.as_str() == namespace);
            let drive = drive.map_or(current.and_then(|u| u.max_drive_bytes), |q| q.0);
            let arena = arena.map_or(current.and_then(|u| u.max_arena_bytes), |q| q.0);
            let set = client.set_quota(&namespace, drive, arena).await?;
            let show = |q: Option<u64>| q.map_or("none".to_string(), show::bytes);
            println!(
                "namespace {namespace}: drive quota {}, arena quota {}",
                show(set.max_drive_bytes),
                show(set.max_arena_bytes)
            );
        }
        Command::Status { json } => {
            let status = client.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", show::status(&status));
            }
        }
        Command::Ping => {
            let rtt = client.ping().await?;
            println!(
                "{} answered in {:.1} µs",
                client.server().server,
                rtt.as_secs_f64() * 1e6
            );
        }
        Command::Bench { .. } | Command::Key { .. } | Command::Tls { .. } => unreachable!("handled above"),
    }
    // Views the command read are given back now, not a moment after it
    // exits, so that a command right after can evict their shards. The
    // command's work is done: a connection lost by now changes nothing.
    let _ = client.return_leases().await;
    Ok(())
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::io::stdin().read_to_end(&mut data).context("read standard input")?;
    Ok(data)
}

fn write_output(file: Option<&str>, data: &[u8]) -> anyhow::Result<()> {
    match file {
        None | Some("-") => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).context("write standard output")?;
            out.flush().context("write standard output")
        }
        Some(path) => std::fs::write(path, data).with_context(|| format!("write {path}")),
    }
}
