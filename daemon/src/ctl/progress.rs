//! Progress of `shardctl put`, `get`, `import` and `export`: a bar on a
//! terminal, a plain line every few seconds otherwise (logs of scripts),
//! nothing for transfers too small to wait for. Always on standard error.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardd_client::Progress;

use super::show::bytes;

/// Transfers smaller than this show no progress.
const SHOWN_FROM: u64 = 64 << 20;
/// Without a terminal, at most one line per this long.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// What `shardctl` shows while moving `what`.
#[derive(Debug)]
pub struct Shown {
    what: String,
    /// On a terminal, once the total is known to be worth showing.
    bar: OnceLock<ProgressBar>,
    lines: Mutex<Lines>,
}

#[derive(Debug)]
struct Lines {
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Shown {
    /// Progress of `what` (e.g. `put job/w`).
    pub fn new(what: impl Into<String>) -> Shown {
        let now = Instant::now();
        Shown {
            what: what.into(),
            bar: OnceLock::new(),
            lines: Mutex::new(Lines {
                total: 0,
                done: 0,
                started: now,
                last: now,
            }),
        }
    }

    /// Ends the bar (it stays, complete, on the terminal).
    pub fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish();
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Progress for Shown {
    fn start(&self, total: u64) {
        let mut lines = self.lines();
        lines.total = total;
        lines.done = 0;
        if total < SHOWN_FROM || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(self.what.clone());
            bar
        });
        // Started again (a shard replaced while read): from the start.
        bar.set_length(total);
        bar.set_position(0);
    }

    fn advance(&self, n: u64) {
        let mut lines = self.lines();
        lines.done += n;
        if lines.total < SHOWN_FROM {
            return;
        }
        if let Some(bar) = self.bar.get() {
            bar.inc(n);
            return;
        }
        let now = Instant::now();
        if now.duration_since(lines.last) >= LINE_EVERY || lines.done == lines.total {
            lines.last = now;
            let rate = lines.done as f64 / now.duration_since(lines.started).as_secs_f64().max(1e-9);
            eprintln!(
                "{}: {} of {} ({:.0}%), {}/s",
                self.what,
                bytes(lines.done),
                bytes(lines.total),
                100.0 * lines.done as f64 / lines.total.max(1) as f64,
                bytes(rate as u64)
            );
        }
    }
}
