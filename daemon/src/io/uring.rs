//! The io_uring engine: each ring is owned by one dedicated thread that
//! takes operations from a channel, keeps up to `queue_depth` of them in
//! flight and answers each on completion.
//!
//! Submitters wake a sleeping ring thread through an eventfd the ring polls,
//! so new work never waits for an unrelated completion.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use io_uring::{IoUring, opcode, squeue, types};

use std::sync::Arc;

use super::{FixedMemory, Op, OpKind};

/// user_data of the eventfd poll; operation slots use small integers.
const WAKE_TOKEN: u64 = u64::MAX;

/// Checks that this kernel and sandbox allow io_uring: build a ring and
/// complete one no-op on it.
pub(super) fn probe() -> io::Result<()> {
    let mut ring = IoUring::new(2)?;
    let nop = opcode::Nop::new().build().user_data(1);
    // SAFETY: a no-op references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion for a no-op"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

/// Handles to the ring threads.
#[derive(Debug)]
pub(super) struct UringEngine {
    rings: Vec<RingHandle>,
    next: AtomicUsize,
    /// Rings with the fixed memory registered.
    registered: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct RingHandle {
    tx: Option<mpsc::Sender<Op>>,
    /// Memory to register as fixed buffers later (see
    /// [`UringEngine::register_fixed`]).
    register: mpsc::Sender<Arc<FixedMemory>>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl UringEngine {
    pub(super) fn start(queue_depth: u32, threads: usize, fixed: Option<FixedMemory>) -> anyhow::Result<UringEngine> {
        let fixed = fixed.map(Arc::new);
        let registered_rings = Arc::new(AtomicUsize::new(0));
        let mut rings = Vec::with_capacity(threads.max(1));
        for n in 0..threads.max(1) {
            let ring = IoUring::builder()
                .build(queue_depth.max(2))
                .map_err(|e| anyhow::anyhow!("create io_uring with {queue_depth} entries: {e}"))?;
            let registered = match &fixed {
                Some(memory) => register(&ring, memory, n == 0),
                None => None,
            };
            if registered.is_some() {
                registered_rings.fetch_add(1, Ordering::Release);
            }
            // SAFETY: plain syscall; the result is checked.
            let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(anyhow::anyhow!("create eventfd: {}", io::Error::last_os_error()));
            }
            // SAFETY: `efd` is a fresh descriptor we own.
            let wake = unsafe { OwnedFd::from_raw_fd(efd) };
            let thread_wake = wake.try_clone()?;
            let (tx, rx) = mpsc::channel();
            let (register, registrations) = mpsc::channel();
            let depth = queue_depth.max(2) as usize - 1; // one entry for the wake poll
            let later = Registrations {
                rx: registrations,
                log: n == 0,
                registered: registered_rings.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shardd-uring-{n}"))
                .spawn(move || RingThread::new(ring, rx, thread_wake, depth, registered, later).run())?;
            rings.push(RingHandle {
                tx: Some(tx),
                register,
                wake,
                thread: Some(thread),
            });
        }
        Ok(UringEngine {
            rings,
            next: AtomicUsize::new(0),
            registered: registered_rings,
        })
    }

    pub(super) fn fixed_buffers(&self) -> bool {
        self.registered.load(Ordering::Acquire) == self.rings.len()
    }

    /// Registers `fixed` with every ring that has no fixed memory yet (the
    /// arena, once it is resident: registering pins every page, which
    /// would fault in all of it at once). Each ring thread registers it
    /// between two submissions; until then it uses the plain opcodes.
    pub(super) fn register_fixed(&self, fixed: FixedMemory) {
        let fixed = Arc::new(fixed);
        for ring in &self.rings {
            if ring.register.send(fixed.clone()).is_ok() {
                wake(&ring.wake);
            }
        }
    }

    pub(super) fn submit(&self, op: Op) {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.rings.len();
        let ring = &self.rings[n];
        let Some(tx) = &ring.tx else {
            op.complete(Err(io::Error::other("the I/O engine is stopping")));
            return;
        };
        if let Err(mpsc::SendError(op)) = tx.send(op) {
            op.complete(Err(io::Error::other("the io_uring thread stopped")));
            return;
        }
        wake(&ring.wake);
    }
}

/// Registers `memory` as the ring's fixed buffers. Returns what keeps it
/// mapped while the ring uses it, or `None` (logged once, on the first
/// ring) if the kernel refuses, typically because the memlock limit counts
/// registered memory.
fn register(ring: &IoUring, memory: &Arc<FixedMemory>, log: bool) -> Option<Arc<FixedMemory>> {
    let iovecs: Vec<libc::iovec> = memory
        .regions
        .iter()
        .map(|(ptr, len)| libc::iovec {
            iov_base: ptr.as_ptr().cast(),
            iov_len: *len,
        })
        .collect();
    // SAFETY: the regions stay mapped for as long as the ring may use them:
    // the returned `Arc` (holding the memory's keep-alive) lives in the ring
    // thread, which drops it only after the ring itself.
    match unsafe { ring.submitter().register_buffers(&iovecs) } {
        Ok(()) => Some(memory.clone()),
        Err(e) => {
            if log {
                tracing::warn!(
                    error = %e,
                    "cannot register the arena with io_uring as fixed buffers (the memlock \
                     limit counts them); reads and writes of the arena still go to it \
                     directly, with the kernel pinning pages per operation"
                );
            }
            None
        }
    }
}

fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full
    // counter (EAGAIN) still leaves the fd readable, which is all we need.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        for ring in &mut self.rings {
            // Closing the channel tells the thread to finish what is in flight and exit.
            ring.tx = None;
            wake(&ring.wake);
        }
        for ring in &mut self.rings {
            if let Some(thread) = ring.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// An operation in flight: the op and how far it got.
struct InFlight {
    op: Op,
    done: usize,
}

/// Fixed memory sent to a ring thread after it started.
struct Registrations {
    rx: mpsc::Receiver<Arc<FixedMemory>>,
    /// Whether this ring logs a refused registration (the first does).
    log: bool,
    /// Counts the rings that registered.
    registered: Arc<AtomicUsize>,
}

struct RingThread {
    /// Declared first: dropped before the fixed memory it may reference.
    ring: IoUring,
    /// The memory registered as fixed buffers, kept mapped while the ring lives.
    fixed: Option<Arc<FixedMemory>>,
    later: Registrations,
    rx: mpsc::Receiver<Op>,
    wake: OwnedFd,
    depth: usize,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
    open: bool,
}

impl RingThread {
    fn new(
        ring: IoUring,
        rx: mpsc::Receiver<Op>,
        wake: OwnedFd,
        depth: usize,
        fixed: Option<Arc<FixedMemory>>,
        later: Registrations,
    ) -> RingThread {
        RingThread {
            ring,
            fixed,
            later,
            rx,
            wake,
            depth,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            open: true,
        }
    }

    fn run(mut self) {
        if let Err(e) = self.arm_wake() {
            tracing::error!(error = %e, "io_uring thread cannot poll its eventfd");
            self.fail_all(&e);
            return;
        }
        loop {
            self.take_registration();
            self.take_new_ops();
            if !self.open && self.in_flight == 0 {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the completion queue is full; reaping below makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring submit failed; failing queued operations");
                    self.fail_all(&e);
                    return;
                }
            }
            self.reap();
        }
    }

    /// Registers fixed memory sent since the ring started, if it has none.
    /// Operations already in flight keep the opcodes they were pushed with.
    fn take_registration(&mut self) {
        while let Ok(memory) = self.later.rx.try_recv() {
            if self.fixed.is_none() {
                self.fixed = register(&self.ring, &memory, self.later.log);
                if self.fixed.is_some() {
                    self.later.registered.fetch_add(1, Ordering::Release);
                }
            }
        }
    }

    /// Moves operations from the channel into the ring while there is room.
    fn take_new_ops(&mut self) {
        while self.open && self.in_flight < self.depth {
            match self.rx.try_recv() {
                Ok(op) => {
                    let slot = self.insert(InFlight { op, done: 0 });
                    self.push(slot);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => self.open = false,
            }
        }
    }

    fn insert(&mut self, entry: InFlight) -> usize {
        self.in_flight += 1;
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        }
    }

    fn take_slot(&mut self, slot: usize) -> Option<InFlight> {
        let entry = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.in_flight -= 1;
        Some(entry)
    }

    /// Pushes the (remaining part of the) operation in `slot`.
    fn push(&mut self, slot: usize) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        let fd = types::Fd(entry.op.file.as_raw_fd());
        let done = entry.done;
        let remaining = (entry.op.want - done) as u32;
        let offset = entry.op.offset + done as u64;
        // A buffer in registered memory uses the fixed-buffer opcodes.
        let fixed = if self.fixed.is_some() {
            entry.op.buf.fixed_index()
        } else {
            None
        };
        let sqe: squeue::Entry = match entry.op.kind {
            OpKind::Read => {
                // SAFETY: `done < want <= capacity`, so the pointer stays in the buffer.
                let ptr = unsafe { entry.op.buf.read_ptr().add(done) };
                match fixed {
                    Some(index) => opcode::ReadFixed::new(fd, ptr, remaining, index).offset(offset).build(),
                    None => opcode::Read::new(fd, ptr, remaining).offset(offset).build(),
                }
            }
            OpKind::Write => {
                // SAFETY: as above.
                let ptr = unsafe { entry.op.buf.write_ptr().add(done) };
                match fixed {
                    Some(index) => opcode::WriteFixed::new(fd, ptr, remaining, index)
                        .offset(offset)
                        .build(),
                    None => opcode::Write::new(fd, ptr, remaining).offset(offset).build(),
                }
            }
            OpKind::SyncData => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        };
        let sqe = sqe.user_data(slot as u64);
        // SAFETY: the buffer and the file referenced by the entry are owned by
        // the `InFlight` in `slots[slot]`, which stays in place until its
        // completion is reaped. The ring has room: at most `depth` operations
        // plus the wake poll are in flight and the ring has `depth + 1` entries.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        if pushed.is_err() {
            // Cannot happen with the accounting above; fail the op rather than lose it.
            if let Some(entry) = self.take_slot(slot) {
                entry
                    .op
                    .complete(Err(io::Error::other("io_uring submission queue full")));
            }
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE_TOKEN);
        // SAFETY: a poll references no memory; the eventfd outlives the ring's use of it
        // (both are dropped together when the thread exits).
        unsafe { self.ring.submission().push(&poll) }.map_err(|_| io::Error::other("submission queue full"))
    }

    fn reap(&mut self) {
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (token, result) in completions {
            if token == WAKE_TOKEN {
                self.drain_wake();
                if let Err(e) = self.arm_wake() {
                    tracing::error!(error = %e, "io_uring thread cannot re-arm its eventfd poll");
                }
                continue;
            }
            self.complete(token as usize, result);
        }
    }

    fn drain_wake(&self) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
    }

    fn complete(&mut self, slot: usize, result: i32) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            tracing::error!(slot, "io_uring completion for an unknown slot");
            return;
        };
        if result < 0 {
            let errno = -result;
            if errno == libc::EINTR || errno == libc::EAGAIN {
                self.push(slot);
                return;
            }
            if let Some(entry) = self.take_slot(slot) {
                entry.op.complete(Err(io::Error::from_raw_os_error(errno)));
            }
            return;
        }
        let n = result as usize;
        match entry.op.kind {
            OpKind::SyncData => {
                if let Some(entry) = self.take_slot(slot) {
                    entry.op.complete(Ok(0));
                }
            }
            OpKind::Read => {
                entry.done += n;
                // n == 0 is end of file: complete with what was read.
                if n > 0 && entry.done < entry.op.want {
                    self.push(slot);
                } else if let Some(entry) = self.take_slot(slot) {
                    let done = entry.done;
                    entry.op.complete(Ok(done));
                }
            }
            OpKind::Write => {
                if n == 0 {
                    if let Some(entry) = self.take_slot(slot) {
                        entry
                            .op
                            .complete(Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes")));
                    }
                    return;
                }
                entry.done += n;
                if entry.done < entry.op.want {
                    self.push(slot);
                } else if let Some(entry) = self.take_slot(slot) {
                    let done = entry.done;
                    entry.op.complete(Ok(done));
                }
            }
        }
    }

    /// Fails everything queued or in flight after the ring broke. Operations
    /// in flight are waited for first, so no buffer is freed under the kernel.
    fn fail_all(&mut self, cause: &io::Error) {
        // Give the kernel a bounded chance to finish what it holds.
        for _ in 0..1000 {
            if self.in_flight == 0 {
                break;
            }
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
        if self.in_flight > 0 {
            // The kernel may still write into these buffers: leak them rather
            // than free memory it uses.
            for entry in self.slots.drain(..).flatten() {
                std::mem::forget(entry);
            }
        }
        while let Ok(op) = self.rx.try_recv() {
            op.complete(Err(io::Error::new(cause.kind(), cause.to_string())));
        }
    }
}
