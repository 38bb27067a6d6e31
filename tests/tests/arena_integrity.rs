//! The arena that zero-copy clients map cannot be changed by them, clients
//! map only what is safe to map, a view whose lease the daemon dropped
//! cannot be read, and a copy in the arena that no longer matches its
//! checksum is never served again.
//!
//! Hostile and broken peers are played with raw sockets: a client that
//! takes the arena's descriptor and attacks it, and a relay between a real
//! client and a real daemon that tampers with the descriptors of the hello
//! answer (or stalls mid-frame so that the daemon drops the connection).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shardd_client::{Client, ClientError, ClientOptions, Durability, EvictMode, PutOptions, VerifyOutcome};
use shardd_protocol::frame::{self, Start};
use shardd_protocol::{ArenaStatus, HEADER_LEN, HelloRequest, HelloResponse, Opcode, PROTOCOL_VERSION, codec};
use shardd_tests::{TestDaemon, engines, eventually, pattern, setups};

const MIB: usize = 1 << 20;

async fn arena(client: &Client) -> ArenaStatus {
    client.status().await.unwrap().arena.expect("the daemon has an arena")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One `recvmsg`; the descriptors that came with the bytes go to `fds`.
fn recv_with_fds(socket: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> usize {
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers go to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: a valid socket and msghdr.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel wrote well-formed cmsg headers; each descriptor is
    // read unaligned from within its header's length and owned from here.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data.offset_from(cmsg.cast::<u8>()) as usize;
                let count = ((*cmsg).cmsg_len as usize - header) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                        data.add(i * 4).cast::<RawFd>(),
                    )));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    n as usize
}

/// One `sendmsg` of all of `bytes` with `fds` attached.
fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) {
    let mut control = vec![0u64; 8 + fds.len()];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers go to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
        // SAFETY: the control buffer holds CMSG_SPACE(data_len) bytes, so the
        // first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len as usize);
        }
    }
    // SAFETY: a valid socket and msghdr.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(n, bytes.len() as isize, "sendmsg: {}", std::io::Error::last_os_error());
}

/// Reads one frame without payload (a hello or its answer), and the
/// descriptors that came with it.
fn read_frame(socket: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let limits = shardd_protocol::Limits::default();
    while let Start::Need(want) = frame::parse_start(&bytes, &limits).unwrap() {
        let mut chunk = vec![0u8; want - bytes.len()];
        let n = recv_with_fds(socket.as_raw_fd(), &mut chunk, &mut fds);
        assert!(n > 0, "the peer closed the connection inside the hello");
        bytes.extend_from_slice(&chunk[..n]);
    }
    (bytes, fds)
}

fn hello_answer(frame: &[u8]) -> HelloResponse {
    codec::decode(&frame[HEADER_LEN..]).unwrap()
}

/// Connects to `socket` as a raw client that asks for the arena; returns
/// what came with the answer and the size the daemon announced.
fn take_arena(socket: &Path) -> (UnixStream, Vec<OwnedFd>, u64) {
    let mut stream = UnixStream::connect(socket).unwrap();
    let hello = HelloRequest {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client: "hostile".into(),
        want_arena: true,
        auth: None,
    };
    stream
        .write_all(&frame::request(Opcode::Hello, 1, &hello, 0).unwrap())
        .unwrap();
    let (answer, fds) = read_frame(&stream);
    let size = hello_answer(&answer).arena.expect("the daemon grants its arena").size;
    (stream, fds, size)
}

/// What a hostile client tries with the arena's descriptor; each attempt
/// must fail. Returns the descriptions of those that did not.
fn attack(fd: RawFd, size: u64) -> Vec<String> {
    let mut succeeded = Vec::new();
    let mut expect_failure = |what: &str, failed: bool| {
        if !failed {
            succeeded.push(what.to_string());
        }
    };
    let len = size as usize;
    // SAFETY: each call below passes a valid descriptor and, where a buffer
    // is involved, a live local of the stated length; mappings that succeed
    // are unmapped before returning.
    unsafe {
        let map = |prot| libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
        let writable = map(libc::PROT_READ | libc::PROT_WRITE);
        expect_failure("a writable shared mapping", writable == libc::MAP_FAILED);
        if writable != libc::MAP_FAILED {
            libc::munmap(writable, len);
        }
        let readable = map(libc::PROT_READ);
        assert_ne!(readable, libc::MAP_FAILED, "a read-only mapping works: {}", errno());
        let rc = libc::mprotect(readable, len, libc::PROT_READ | libc::PROT_WRITE);
        expect_failure("making a read-only mapping writable", rc != 0);
        libc::munmap(readable, len);
        let byte = [0x42u8];
        expect_failure("pwrite", libc::pwrite(fd, byte.as_ptr().cast(), 1, 0) != 1);
        expect_failure("ftruncate to 0", libc::ftruncate(fd, 0) != 0);
        expect_failure("ftruncate beyond", libc::ftruncate(fd, size as i64 * 2) != 0);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        expect_failure("punching a hole", libc::fallocate(fd, punch, 0, 4096) != 0);
        expect_failure(
            "adding a write seal",
            libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) != 0,
        );
    }
    succeeded
}

/// A memfd of `len` bytes with `seals`.
fn memfd(len: u64, seals: libc::c_int) -> OwnedFd {
    let name = std::ffi::CString::new("not-the-arena").unwrap();
    // SAFETY: plain syscall with a valid name; checked below.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(raw >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor, ours.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(len).unwrap();
    if seals != 0 {
        // SAFETY: fcntl on our descriptor.
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    }
    file.into()
}

/// What the relay does to the descriptors of the hello answer.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Passes the daemon's descriptor on.
    Pass,
    /// Sends none.
    Drop,
    /// A sealed memfd of half the announced size.
    Smaller,
    /// A memfd of the announced size that nothing stops from shrinking.
    Unsealed,
    /// A memfd already truncated to nothing.
    Truncated,
    /// The daemon's descriptor and a second one.
    Two,
    /// Sixteen copies of it: more than a client makes room for.
    Many,
}

/// A relay between clients and a daemon's Unix socket.
struct Relay {
    endpoint: String,
    /// Set: the next bytes from the client reach the daemon only in part
    /// (a frame cut short), and nothing after them.
    stall: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start(daemon: PathBuf, tamper: Tamper) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stall = Arc::new(AtomicBool::new(false));
        let stalled = stall.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (daemon, stall) = (daemon.clone(), stalled.clone());
                std::thread::spawn(move || relay(client, &daemon, tamper, &stall));
            }
        });
        Relay {
            endpoint: format!("unix://{}", path.display()),
            stall,
            _dir: dir,
        }
    }
}

fn relay(mut client: UnixStream, daemon: &Path, tamper: Tamper, stall: &AtomicBool) {
    let mut daemon = UnixStream::connect(daemon).unwrap();
    let (hello, _) = read_frame(&client);
    daemon.write_all(&hello).unwrap();
    let (answer, fds) = read_frame(&daemon);
    let size = hello_answer(&answer).arena.map_or(0, |grant| grant.size);
    let real = fds.first().map(|fd| fd.as_raw_fd());
    let made: Vec<OwnedFd> = match tamper {
        Tamper::Smaller => vec![memfd(
            size / 2,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE,
        )],
        Tamper::Unsealed => vec![memfd(size, 0)],
        Tamper::Truncated => vec![memfd(0, 0)],
        _ => Vec::new(),
    };
    let sent: Vec<RawFd> = match tamper {
        Tamper::Pass => real.into_iter().collect(),
        Tamper::Drop => Vec::new(),
        Tamper::Two => real.into_iter().chain(real).collect(),
        Tamper::Many => (0..16).filter_map(|_| real).collect(),
        Tamper::Smaller | Tamper::Unsealed | Tamper::Truncated => made.iter().map(|fd| fd.as_raw_fd()).collect(),
    };
    send_with_fds(client.as_raw_fd(), &answer, &sent);
    drop((fds, made));

    let (mut from_daemon, mut to_client) = (daemon.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_daemon, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stall.load(Ordering::SeqCst) {
            // Part of a frame, then silence until the client goes.
            let _ = daemon.write_all(&buf[..n.min(HEADER_LEN / 3)]);
            while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
            break;
        }
        if daemon.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = daemon.shutdown(std::net::Shutdown::Write);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_the_arena_can_neither_write_nor_resize_it() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"32MiB\"").await;
        let writer = daemon.client(true).await;
        let durable = pattern(3 * MIB + 5, 1);
        let written_back = pattern(MIB, 2);
        writer
            .put("job", "durable", durable.clone(), PutOptions::default())
            .await
            .unwrap();
        let write_back = PutOptions {
            durability: Durability::WriteBack,
            ..PutOptions::default()
        };
        writer
            .put("job", "written-back", written_back.clone(), write_back)
            .await
            .unwrap();

        let socket = daemon.socket_path();
        let failures = tokio::task::spawn_blocking(move || {
            let (_stream, fds, size) = take_arena(&socket);
            assert_eq!(fds.len(), 1, "one descriptor comes with the hello answer");
            let fd = fds[0].as_raw_fd();
            // SAFETY: fcntl and fstat on a descriptor we own.
            let (mode, seals, st_size) = unsafe {
                let mut stat: libc::stat = std::mem::zeroed();
                assert_eq!(libc::fstat(fd, &mut stat), 0);
                (
                    libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE,
                    libc::fcntl(fd, libc::F_GET_SEALS),
                    stat.st_size as u64,
                )
            };
            assert_eq!(mode, libc::O_RDONLY, "the descriptor is read-only");
            let all = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
            assert_eq!(
                seals & all,
                all,
                "sealed against resizing, writes and new seals: {seals:#x}"
            );
            assert_eq!(st_size, size, "the memfd is the size announced");
            let mut failures = attack(fd, size);
            // The same memfd reopened read-write through /proc (as any
            // process may with a memfd it holds) fares no better.
            let path = format!("/proc/self/fd/{fd}");
            if let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&path) {
                failures.extend(
                    attack(file.as_raw_fd(), size)
                        .into_iter()
                        .map(|f| format!("{f} (reopened)")),
                );
            }
            // SAFETY: fstat on our descriptor.
            let after = unsafe {
                let mut stat: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &mut stat);
                stat.st_size as u64
            };
            assert_eq!(after, size, "the arena kept its size");
            failures
        })
        .await
        .unwrap();
        assert!(failures.is_empty(), "{engine:?}: these succeeded: {failures:?}");

        // The daemon is up and serves every byte as written, whichever way.
        let verifying = Client::connect_with(
            &daemon.unix_endpoint(),
            ClientOptions {
                verify_views: true,
                ..ClientOptions::default()
            },
        )
        .await
        .unwrap();
        assert!(verifying.zero_copy());
        for client in [&verifying, &daemon.client(true).await] {
            assert!(client.fetch("job", "durable").await.unwrap().data == durable);
            assert!(client.fetch("job", "written-back").await.unwrap().data == written_back);
            let range = client.fetch_range("job", "durable", MIB as u64 - 3, 10).await.unwrap();
            assert_eq!(range.data, &durable[MIB - 3..MIB + 7]);
        }
        let view = verifying.fetch_view("job", "durable", None).await.unwrap();
        assert!(view.to_vec().unwrap() == durable);
        writer
            .put("job", "after", vec![9u8; 4096], PutOptions::default())
            .await
            .unwrap();
        assert_eq!(arena(&writer).await.checksum_failures, 0);
        drop(view);
        daemon.stop().await;
    }
}

/// Whether a process running as `nobody` that holds `fd` can reopen it
/// read-write through `/proc/self/fd`; `None` where this test cannot
/// change user (not root).
fn reopened_writable_as_another_user(fd: RawFd) -> Option<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
    let mut link = [0u8; 64];
    // SAFETY: between fork and _exit the child makes only async-signal-safe
    // calls on memory prepared before the fork; the parent only waits.
    unsafe {
        let child = libc::fork();
        assert!(child >= 0, "fork: {}", errno());
        if child == 0 {
            let code = if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                3
            } else {
                // Changing user made the process undumpable, which hides its
                // own /proc/self/fd: undo that, so only the file's mode decides.
                libc::prctl(libc::PR_SET_DUMPABLE, 1);
                if libc::readlink(path.as_ptr(), link.as_mut_ptr().cast(), link.len()) <= 0 {
                    4
                } else if libc::open(path.as_ptr(), libc::O_RDWR) >= 0 {
                    1
                } else {
                    0
                }
            };
            libc::_exit(code);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(child, &mut status, 0), child);
        match libc::WEXITSTATUS(status) {
            0 => Some(false),
            1 => Some(true),
            code => panic!("the child could not try (exit {code})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_arena_cannot_be_written_by_clients_of_other_users() {
    // An arena kept across restarts cannot carry the write seal (the next
    // daemon maps it writable): the descriptor is read-only and the memfd is
    // the daemon user's alone instead.
    let mut daemon = TestDaemon::start(engines()[0], "[arena]\nsize = \"32MiB\"\nkeep_on_restart = true").await;
    let data = pattern(2 * MIB + 3, 5);
    let writer = daemon.client(true).await;
    writer
        .put("job", "kept", data.clone(), PutOptions::default())
        .await
        .unwrap();
    let socket = daemon.socket_path();
    let (failures, reopened) = tokio::task::spawn_blocking(move || {
        let (_stream, fds, size) = take_arena(&socket);
        let fd = fds[0].as_raw_fd();
        // SAFETY: fcntl and fstat on a descriptor we own.
        let (mode, seals, perms) = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut stat), 0);
            (
                libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE,
                libc::fcntl(fd, libc::F_GET_SEALS),
                stat.st_mode & 0o777,
            )
        };
        assert_eq!(mode, libc::O_RDONLY, "the descriptor is read-only");
        let resize = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        assert_eq!(
            seals & resize,
            resize,
            "sealed against resizing and new seals: {seals:#x}"
        );
        assert_eq!(seals & libc::F_SEAL_FUTURE_WRITE, 0, "{seals:#x}");
        assert_eq!(perms, 0o600, "the memfd is the daemon user's alone");
        (attack(fd, size), reopened_writable_as_another_user(fd))
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "these succeeded: {failures:?}");
    match reopened {
        Some(reopened) => assert!(!reopened, "another user reopened the kept arena writable"),
        None => shardd_tests::skipped("reopening the kept arena as another user: needs root to change user"),
    }
    let client = daemon.client(false).await;
    assert!(client.zero_copy(), "{:?}", client.zero_copy_refused());
    assert!(client.fetch("job", "kept").await.unwrap().data == data);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_descriptor_that_is_not_the_sealed_arena_and_copies_instead() {
    let mut daemon = TestDaemon::start(engines()[0], "[arena]\nsize = \"16MiB\"").await;
    let data = pattern(2 * MIB + 3, 4);
    daemon
        .client(false)
        .await
        .put("job", "w", data.clone(), PutOptions::default())
        .await
        .unwrap();
    let announced = 16 * MIB;
    let cases = [
        (Tamper::Drop, "sent no descriptor".to_string()),
        (
            Tamper::Smaller,
            format!("holds {} bytes, the daemon announced {announced}", announced / 2),
        ),
        (
            Tamper::Truncated,
            format!("holds 0 bytes, the daemon announced {announced}"),
        ),
        (Tamper::Unsealed, "not sealed against resizing and writes".to_string()),
        (Tamper::Two, "sent 2 descriptors".to_string()),
        (Tamper::Many, "cut off (MSG_CTRUNC)".to_string()),
    ];
    for (tamper, expected) in cases {
        let relay = Relay::start(daemon.socket_path(), tamper);
        let client = Client::connect(&relay.endpoint).await.unwrap();
        assert!(!client.zero_copy(), "{tamper:?}");
        let reason = client.zero_copy_refused().unwrap_or_default();
        assert!(reason.contains(&expected), "{tamper:?}: {reason}");
        // Fetches copy over the socket instead, and are right.
        assert!(client.fetch("job", "w").await.unwrap().data == data, "{tamper:?}");
        let err = client.fetch_view("job", "w", None).await.unwrap_err();
        assert!(matches!(err, ClientError::ZeroCopyUnavailable), "{tamper:?}: {err}");
    }
    // The same relay passing the daemon's own descriptor maps it.
    let relay = Relay::start(daemon.socket_path(), Tamper::Pass);
    let client = Client::connect(&relay.endpoint).await.unwrap();
    assert!(client.zero_copy() && client.zero_copy_refused().is_none());
    assert!(client.fetch_view("job", "w", None).await.unwrap().to_vec().unwrap() == data);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_connection_the_daemon_dropped_cannot_be_read() {
    let mut daemon = TestDaemon::start(
        engines()[0],
        "[arena]\nsize = \"8MiB\"\n[server]\nio_timeout = \"300ms\"",
    )
    .await;
    let writer = daemon.client(true).await;
    let data = pattern(MIB, 5);
    writer
        .put("job", "w", data.clone(), PutOptions::default())
        .await
        .unwrap();
    let relay = Relay::start(daemon.socket_path(), Tamper::Pass);
    let client = Client::connect(&relay.endpoint).await.unwrap();
    assert!(client.zero_copy());
    let view = client.fetch_view("job", "w", None).await.unwrap();
    assert!(view.to_vec().unwrap() == data);

    // A request cut short mid-frame: the daemon closes the connection after
    // its io_timeout, and with it drops the connection's leases.
    relay.stall.store(true, Ordering::SeqCst);
    let cut = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    let closed = eventually(Duration::from_secs(10), || !client.is_connected()).await;
    assert!(closed, "the daemon closed the stalled connection");
    assert!(matches!(cut.await.unwrap(), Err(ClientError::Disconnected { .. })));

    let lost = |e: ClientError| match e {
        ClientError::LeaseLost { shard, .. } => shard,
        other => panic!("expected a lost lease, got {other}"),
    };
    assert_eq!(lost(view.to_vec().unwrap_err()), "job/w");
    let mut copy = vec![0u8; MIB];
    assert_eq!(lost(view.copy_to(&mut copy, true).unwrap_err()), "job/w");
    assert!(view.pieces().is_err());
    let err = view.check().unwrap_err().to_string();
    assert!(err.contains("dropped its lease") && err.contains("job/w"), "{err}");

    // The lease is released (after its grace): the shard can be demoted.
    let mut demoted = false;
    for _ in 0..200 {
        let answer = writer.evict("job", &["w"], EvictMode::Demote).await.unwrap();
        if answer.evicted.len() == 1 {
            demoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(demoted, "the dropped connection's lease ended");
    drop(view);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_cannot_be_read_once_the_daemon_has_stopped() {
    let mut daemon = TestDaemon::start(engines()[0], "[arena]\nsize = \"8MiB\"").await;
    let client = daemon.client(false).await;
    client
        .put("job", "w", pattern(MIB, 6), PutOptions::default())
        .await
        .unwrap();
    let view = client.fetch_view("job", "w", None).await.unwrap();
    assert!(view.check().is_ok());
    daemon.stop().await;
    assert!(eventually(Duration::from_secs(10), || !client.is_connected()).await);
    assert!(matches!(view.to_vec(), Err(ClientError::LeaseLost { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_in_the_arena_is_reported_dropped_and_read_again_from_the_drive() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "[arena]\nsize = \"32MiB\"").await;
        let options = ClientOptions {
            zero_copy: setup.zero_copy,
            verify_views: true,
            ..daemon.options()
        };
        let client = Client::connect_with(&daemon.endpoint(setup.tcp), options)
            .await
            .unwrap();
        let data = pattern(3 * MIB + 77, 9);
        client
            .put("job", "w", data.clone(), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(arena(&client).await.loads, 0, "the put left the shard in the arena");

        // Memory fails under the cached copy: the whole-shard fetch sees the
        // mismatch, reports it, and the daemon reads the drive again.
        assert!(daemon.corrupt_arena_copy("job", "w", 2 * MIB as u64 + 1));
        let shard = client.fetch("job", "w").await.unwrap();
        assert!(shard.data == data, "{setup:?}: the fetch returned the drive's bytes");
        let status = arena(&client).await;
        assert_eq!(
            (status.checksum_failures, status.loads),
            (1, 1),
            "{setup:?}: {status:?}"
        );
        let range = client.fetch_range("job", "w", 2 * MIB as u64, 16).await.unwrap();
        assert_eq!(
            range.data,
            &data[2 * MIB..2 * MIB + 16],
            "{setup:?}: the arena holds good bytes again"
        );

        // The same through a caller's buffer.
        assert!(daemon.corrupt_arena_copy("job", "w", 5));
        let (buf, info) = client.fetch_into("job", "w", None, vec![0u8; data.len()]).await;
        assert_eq!(info.unwrap().len, data.len() as u64);
        assert!(buf == data, "{setup:?}");
        let status = arena(&client).await;
        assert_eq!(
            (status.checksum_failures, status.loads),
            (2, 2),
            "{setup:?}: {status:?}"
        );

        // Checked on request, as `shardctl verify` does.
        let intact = client.verify("job", "w", None).await.unwrap();
        assert_eq!((intact.version, intact.outcome), (Some(1), VerifyOutcome::Intact));
        assert!(daemon.corrupt_arena_copy("job", "w", 0));
        let dropped = client.verify("job", "w", Some(1)).await.unwrap();
        assert_eq!(dropped.outcome, VerifyOutcome::Dropped, "{setup:?}");
        assert!(!client.stat("job", "w").await.unwrap().cache.resident, "{setup:?}");
        let missing = client.verify("job", "w", None).await.unwrap();
        assert_eq!(missing.outcome, VerifyOutcome::NotResident);
        assert!(client.fetch("job", "w").await.unwrap().data == data);
        daemon.stop().await;
    }
}
