//! `loadgen disk`: what this disk allows a durable server, measured the way a group-committing
//! spool writes. Each writer thread appends batches of `--batch` records (`--size` bytes plus
//! `RECORD_OVERHEAD` of framing and metadata each) to its own file, one `write` and one
//! `fdatasync` per batch, until `--duration`; files grow as a spool segment does and are
//! removed at the end.
//!
//! `--prezeroed` writes into files filled with zeros (and synced) before the clock starts,
//! wrapping around at `PREZEROED_BYTES`: the file never grows, so an fdatasync has only the
//! data to write, not also the inode's new size (on ext4 without a journal a growing file
//! costs a second synchronous write per fdatasync; with a journal, a journal commit).
//! Preallocating with `fallocate` does not do the same: the first write to an unwritten
//! extent changes the extent tree.
//!
//! With `--batch 1 --writers 1` the figure is the fdatasync latency an unpipelined
//! transaction cannot beat; with `--batch C/W --writers W` it is the best a server with `W`
//! spool writers can do when `C` transactions are in flight (all of them committed by one
//! sync per writer); with a large batch it is the raw group-commit ceiling.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::DiskArgs;
use crate::runner::{self, Control};
use crate::stats::{per_second, Latency, LatencySummary};

/// Bytes a spool adds to each record besides the message: its frame header, the rkyv
/// envelope and metadata, padding (the relay's record for a 10 KiB message with one recipient
/// is about this much larger than the message).
pub const RECORD_OVERHEAD: u64 = 160;

/// A file is started afresh after this many bytes, so a long run cannot fill the disk.
const FILE_BYTES_MAX: u64 = 1 << 30;
/// The size of a `--prezeroed` file; writes wrap around to its start.
const PREZEROED_BYTES: u64 = 64 << 20;

/// The JSON summary.
#[derive(Debug, Serialize)]
pub struct DiskSummary {
    pub writers: usize,
    pub prezeroed: bool,
    pub batch: usize,
    pub record_bytes: u64,
    pub elapsed_s: f64,
    pub records: u64,
    pub records_per_s: f64,
    pub mib_per_s: f64,
    /// One `write` + `fdatasync` of a batch.
    pub batch_latency: LatencySummary,
}

/// Runs the measurement and prints the summary.
pub fn run(args: DiskArgs) -> Result<ExitCode, String> {
    if args.batch == 0 || args.writers == 0 {
        return Err("--batch and --writers must be at least 1".into());
    }
    runner::check_bounds(Some(args.duration), args.common.max_time)?;
    let record_bytes = args
        .size
        .checked_add(RECORD_OVERHEAD)
        .ok_or("--size is too large")?;
    let batch_bytes = record_bytes
        .checked_mul(args.batch as u64)
        .filter(|b| *b <= PREZEROED_BYTES)
        .ok_or("a batch may be at most 64 MiB")?;
    let dir = args
        .dir
        .join(format!("loadgen-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = measure(&dir, &args, batch_bytes);
    let _ = std::fs::remove_dir_all(&dir);
    let (records, latency, elapsed) = result?;
    let summary = DiskSummary {
        writers: args.writers,
        prezeroed: args.prezeroed,
        batch: args.batch,
        record_bytes,
        elapsed_s: elapsed.as_secs_f64(),
        records,
        records_per_s: per_second(records, elapsed),
        mib_per_s: per_second(records * record_bytes, elapsed) / (1024.0 * 1024.0),
        batch_latency: latency.summary(),
    };
    eprintln!(
        "loadgen disk: {} writer(s), {} record(s) of {} bytes per fdatasync into {} files: \
         {:.0} records/s, {:.1} MiB/s",
        summary.writers,
        summary.batch,
        record_bytes,
        if args.prezeroed {
            "pre-zeroed"
        } else {
            "growing"
        },
        summary.records_per_s,
        summary.mib_per_s
    );
    eprintln!("{}", LatencySummary::header());
    eprintln!("{}", summary.batch_latency.row("write + fdatasync"));
    if args.common.json {
        let text = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the writers; the records written, the batch latencies and the elapsed time.
fn measure(
    dir: &Path,
    args: &DiskArgs,
    batch_bytes: u64,
) -> Result<(u64, Latency, Duration), String> {
    // Files are made (and, pre-zeroed, filled and synced) before the clock starts.
    let mut files = Vec::with_capacity(args.writers);
    for writer in 0..args.writers {
        let path = dir.join(format!("writer-{writer}"));
        let file = create(&path)?;
        if args.prezeroed {
            fill_with_zeros(&file, PREZEROED_BYTES)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        files.push((path, file));
    }
    let control = Control::new(Some(args.duration), args.common.max_time);
    let signal = runner::signals()?;
    // Not all one byte: nothing on the way to the disk gets to compress it.
    let batch: Arc<Vec<u8>> = Arc::new((0..batch_bytes).map(|i| (i * 131 % 251) as u8).collect());
    let mut threads = Vec::with_capacity(args.writers);
    for (writer, (path, file)) in files.into_iter().enumerate() {
        let (batch, control, records) = (Arc::clone(&batch), Arc::clone(&control), args.batch);
        let prezeroed = args.prezeroed;
        let thread = std::thread::Builder::new()
            .name(format!("disk-{writer}"))
            .spawn(move || write_batches(&path, file, prezeroed, &batch, records as u64, &control))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        threads.push(thread);
    }
    while !control.stopped() {
        std::thread::sleep(Duration::from_millis(20));
        if signal.load(std::sync::atomic::Ordering::Relaxed) {
            control.interrupt();
        }
    }
    let mut records = 0;
    let mut latency = Latency::new();
    let mut first_error = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok((n, l))) => {
                records += n;
                latency.add(&l);
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => first_error = first_error.or(Some("a writer thread panicked".into())),
        }
    }
    let elapsed = control.start.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok((records, latency, elapsed)),
    }
}

fn create(path: &PathBuf) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `len` zero octets from the start of `file` and syncs them.
fn fill_with_zeros(file: &File, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = zeros.len().min((len - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// One writer: batches until the run stops. A growing file is appended to (and started
/// afresh past `FILE_BYTES_MAX`); a pre-zeroed one is overwritten, wrapping at its end.
fn write_batches(
    path: &PathBuf,
    mut file: File,
    prezeroed: bool,
    batch: &[u8],
    records: u64,
    control: &Control,
) -> Result<(u64, Latency), String> {
    let len = batch.len() as u64;
    let (mut at, mut done, mut latency) = (0u64, 0u64, Latency::new());
    while !control.stopped() {
        if prezeroed && at + len > PREZEROED_BYTES {
            at = 0;
        } else if !prezeroed && at >= FILE_BYTES_MAX {
            drop(file);
            file = create(path)?;
            at = 0;
        }
        let started = Instant::now();
        file.write_all_at(batch, at)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        latency.record(started.elapsed());
        at += len;
        done += records;
    }
    Ok((done, latency))
}
