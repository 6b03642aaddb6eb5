//! Threads, bounds, signals and the progress line.
//!
//! Each worker thread runs a tokio current_thread runtime with a `LocalSet`; its state lives
//! in an `Rc<RefCell<S>>` that its tasks share, so a thread's counters need no atomics and
//! survive the tasks being cancelled. The main thread watches the clock and the signals and
//! draws the progress line; it never touches a connection.

use std::cell::RefCell;
use std::future::Future;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Live;

/// How long in-flight work may finish after a stop (signal, `--duration`, `--max-time`)
/// before it is abandoned (and reported as unfinished).
pub const GRACE: Duration = Duration::from_secs(2);

/// The bounds of a run, shared by every thread.
#[derive(Debug)]
pub struct Control {
    pub start: Instant,
    /// `--duration`: no new work after it.
    pub deadline: Option<Instant>,
    /// `--max-time`: the hard limit.
    pub hard_deadline: Instant,
    stop: AtomicBool,
    interrupted: AtomicBool,
}

impl Control {
    pub fn new(duration: Option<Duration>, max_time: Duration) -> Arc<Control> {
        let start = Instant::now();
        // A bound too far away to represent is as good as a year.
        let after = |d: Duration| {
            start
                .checked_add(d)
                .unwrap_or_else(|| start + Duration::from_secs(365 * 86_400))
        };
        Arc::new(Control {
            start,
            deadline: duration.map(after),
            hard_deadline: after(max_time),
            stop: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
        })
    }

    /// True once no new work may start.
    pub fn stopped(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= self.hard_deadline || self.deadline.is_some_and(|d| now >= d) {
            self.stop.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A signal stopped the run.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
        self.stop();
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Resolves once the run is stopped (checked every 20 ms; no event crosses threads).
    pub async fn wait_stopped(&self) {
        while !self.stopped() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `--duration` must fit in `--max-time`, so that the hard limit is never a surprise.
pub fn check_bounds(duration: Option<Duration>, max_time: Duration) -> Result<(), String> {
    match duration {
        Some(d) if d > max_time => Err(format!(
            "--duration ({}) is longer than --max-time ({}); raise --max-time",
            humantime_short(d),
            humantime_short(max_time)
        )),
        _ => Ok(()),
    }
}

fn humantime_short(d: Duration) -> String {
    relay::config::Interval(d).to_string()
}

/// Installs SIGINT/SIGTERM handling: the first sets the returned flag (the run stops and
/// prints its partial summary), a second exits at once with status 130.
pub fn signals() -> Result<Arc<AtomicBool>, String> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)))
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    Ok(flag)
}

/// Runs `work(thread, state)` on `threads` threads and returns each thread's state once all
/// are done. Meanwhile the calling thread enforces `--max-time`, turns a signal into a stop
/// and, on a terminal, draws a progress line from `live`.
pub fn run_threads<S, F, Fut>(
    threads: usize,
    control: &Arc<Control>,
    live: &Arc<Live>,
    signal: &Arc<AtomicBool>,
    unit: &'static str,
    work: F,
) -> Result<Vec<S>, String>
where
    S: Default + Send + 'static,
    F: Fn(usize, Rc<RefCell<S>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let work = Arc::new(work);
    let mut handles: Vec<JoinHandle<S>> = Vec::new();
    for thread in 0..threads {
        let work = Arc::clone(&work);
        let control = Arc::clone(control);
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || {
                let state = Rc::new(RefCell::new(S::default()));
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("loadgen: thread {thread}: cannot start a runtime: {e}");
                        control.stop();
                        return S::default();
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let run = work(thread, Rc::clone(&state));
                    tokio::select! {
                        () = run => {}
                        () = async {
                            control.wait_stopped().await;
                            tokio::time::sleep(GRACE).await;
                        } => {}
                    }
                });
                // Dropping the set cancels what did not finish within the grace period.
                drop(local);
                drop(runtime);
                state.take()
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }
    let progress = Progress::new(unit);
    while !handles.iter().all(JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(50));
        if signal.load(Ordering::Relaxed) && !control.interrupted() {
            control.interrupt();
        }
        // The hard limit is also checked here, in case every worker is blocked.
        control.stopped();
        progress.tick(live);
    }
    progress.finish();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| "a worker thread panicked".to_string()))
        .collect()
}

/// The live progress line on stderr (only when stderr is a terminal).
struct Progress {
    bar: Option<ProgressBar>,
    unit: &'static str,
    last: RefCell<(Instant, u64, u64)>,
    start: Instant,
}

impl Progress {
    fn new(unit: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
                bar.set_style(style);
            }
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            unit,
            last: RefCell::new((now, 0, 0)),
            start: now,
        }
    }

    fn tick(&self, live: &Live) {
        let Some(bar) = &self.bar else {
            return;
        };
        let now = Instant::now();
        let mut last = self.last.borrow_mut();
        let window = now.duration_since(last.0);
        if window < Duration::from_millis(500) {
            return;
        }
        let (done, bytes, errors) = live.snapshot();
        let rate = (done - last.1) as f64 / window.as_secs_f64();
        let mbps = (bytes - last.2) as f64 / window.as_secs_f64() / 1e6;
        let average = done as f64 / now.duration_since(self.start).as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{done} {unit}  now {rate:.0} {unit}/s  {mbps:.1} MB/s  avg {average:.0} {unit}/s  errors {errors}",
            unit = self.unit
        ));
        bar.tick();
        *last = (now, done, bytes);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
