//! The thread-pool engine: workers run positional reads and writes
//! (`pread`/`pwrite`) and `fdatasync`, for systems without io_uring.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use super::{Op, OpKind};

#[derive(Debug)]
pub(super) struct PsyncEngine {
    tx: Option<mpsc::Sender<Op>>,
    threads: Vec<JoinHandle<()>>,
}

impl PsyncEngine {
    pub(super) fn start(threads: usize) -> anyhow::Result<PsyncEngine> {
        let (tx, rx) = mpsc::channel::<Op>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("shardd-psync-{n}"))
                .spawn(move || worker(&rx))?;
            handles.push(handle);
        }
        Ok(PsyncEngine {
            tx: Some(tx),
            threads: handles,
        })
    }

    pub(super) fn submit(&self, op: Op) {
        let Some(tx) = &self.tx else {
            op.complete(Err(io::Error::other("the I/O engine is stopping")));
            return;
        };
        if let Err(mpsc::SendError(op)) = tx.send(op) {
            op.complete(Err(io::Error::other("the psync workers stopped")));
        }
    }
}

impl Drop for PsyncEngine {
    fn drop(&mut self) {
        self.tx = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Op>>) {
    loop {
        let op = {
            let rx = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            }
        };
        run(op);
    }
}

fn run(mut op: Op) {
    let result = match op.kind {
        OpKind::Read => read_full(&op.file, op.offset, op.buf.read_target(op.want)),
        OpKind::Write => {
            let want = op.want;
            op.file
                .write_all_at(op.buf.write_source(want), op.offset)
                .map(|()| want)
        }
        OpKind::SyncData => op.file.sync_data().map(|()| 0),
    };
    op.complete(result);
}

/// Reads until `buf` is full or end of file; retries interrupted reads.
fn read_full(file: &std::fs::File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
