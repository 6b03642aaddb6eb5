//! Spool tests on real files (tempdirs) and through the IO seam with injected errors.

use std::fs::{self, OpenOptions};
use std::io::{IoSlice, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::frame::{FrameHeader, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_PREAMBLE_LEN};
use super::sim::{SimDisk, SimFaults};
use super::*;
use crate::envelope::{MailParams, Recipient};

pub(crate) fn message(id: QueueId, n: usize, body_len: usize) -> NewMessage {
    NewMessage {
        id,
        arrival_unix_micros: id.micros(),
        origin: Origin {
            client_ip: format!("192.0.2.{}", n % 250),
            client_port: 40000 + (n % 1000) as u16,
            helo: format!("client{n}.example"),
            protocol: "ESMTP".into(),
        },
        envelope: Envelope {
            reverse_path: if n.is_multiple_of(7) {
                String::new()
            } else {
                format!("sender{n}@example.org")
            },
            params: MailParams::default(),
            recipients: (0..1 + n % 3)
                .map(|r| Recipient {
                    address: format!("rcpt{r}-{n}@example.net"),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        },
        received_header: format!("Received: from client{n}.example; id {id}\r\n").into_bytes(),
        body: (0..body_len).map(|i| (i * 31 + n) as u8).collect(),
        mailboxes: (0..n % 2).map(|u| format!("user{u}")).collect(),
        remote: Vec::new(),
        placements: Vec::new(),
    }
}

fn stored_body(m: &NewMessage) -> Vec<u8> {
    let mut v = m.received_header.clone();
    v.extend_from_slice(&m.body);
    v
}

fn config(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig::new(dir.join("spool"))
}

fn append_wait(h: &ShardHandle, m: NewMessage) -> Result<Committed, SpoolError> {
    h.append_message(m)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

fn write_some(
    spool: &Spool,
    shard: usize,
    count: usize,
    body_len: usize,
) -> Vec<(NewMessage, Committed)> {
    let h = spool.shard(shard);
    (0..count)
        .map(|n| {
            let m = message(h.next_id(SystemTime::now()), n, body_len + n);
            let c = append_wait(&h, m.clone()).unwrap();
            (m, c)
        })
        .collect()
}

#[test]
fn append_and_reopen_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    assert!(report.is_clean() && report.records_kept() == 0, "{report}");
    let a = write_some(&spool, 0, 20, 1000);
    let b = write_some(&spool, 1, 5, 10);
    for (m, c) in a.iter().chain(&b) {
        assert_eq!(c.id, m.id);
        let back = spool.read_message(&c.location).unwrap();
        assert_eq!(back.body, stored_body(m));
        assert_eq!(back.meta.envelope, m.envelope);
        assert_eq!(back.meta.received_len, m.received_header.len() as u64);
    }
    spool.close().unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.records_kept(), 25);
    assert_eq!(spool.core.index.len(), 25);
    for (m, c) in a.iter().chain(&b) {
        let loc = spool.locate(m.id).unwrap();
        assert_eq!(loc, c.location);
        let back = spool.read_message(&loc).unwrap();
        assert_eq!(back.body, stored_body(m));
        assert_eq!(back.meta.origin, m.origin);
        assert_eq!(back.meta.arrival_unix_micros, m.arrival_unix_micros);
    }
    // Ids keep increasing after a restart, even with a clock that went backwards.
    let last = a.last().unwrap().0.id;
    let next = spool.shard(0).next_id(SystemTime::UNIX_EPOCH);
    assert!(next > last && next.shard() == 0);
    // Each run writes a new segment, never appending to the old ones.
    let c = append_wait(&spool.shard(0), message(next, 0, 1)).unwrap();
    assert!(c.location.segment > a[0].1.location.segment);
    spool.close().unwrap();
}

#[test]
fn handles_cross_threads() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<ShardHandle>();
    fn assert_send<T: Send>() {}
    assert_send::<Spool>();
    assert_send::<SpoolError>();
}

#[test]
fn read_message_rejects_a_bogus_location() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let (_, c) = write_some(&spool, 0, 2, 100).remove(1);
    for bad in [
        Location {
            frame_len: 8,
            ..c.location
        },
        Location {
            offset: c.location.offset + 16,
            ..c.location
        },
        Location {
            offset: c.location.offset + 1,
            ..c.location
        },
        Location {
            frame_len: c.location.frame_len + 16,
            ..c.location
        },
    ] {
        assert!(spool.read_message(&bad).is_err(), "{bad:?}");
    }
    assert!(spool.read_message(&c.location).is_ok());
    spool.close().unwrap();
}

#[test]
fn next_id_is_strictly_increasing_and_carries_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 3).unwrap();
    let h = spool.shard(2);
    let t = SystemTime::now();
    let mut prev = h.next_id(t);
    for _ in 0..1000 {
        let id = h.next_id(t);
        assert!(id > prev);
        assert_eq!(id.shard(), 2);
        prev = id;
    }
    spool.close().unwrap();
}

fn only_segment(dir: &std::path::Path, shard: u8) -> std::path::PathBuf {
    let io = FsIo::new(dir.join("spool"));
    let segs = io.list_segments(shard).unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    io.segment_path(shard, segs[0])
}

#[test]
fn torn_tail_is_truncated_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let written = write_some(&spool, 0, 5, 3000);
    spool.close().unwrap();
    let path = only_segment(tmp.path(), 0);
    let last = written[4].1.location;
    // Cut the last frame in the middle of its body.
    let cut = last.offset + 100;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    assert_eq!(report.records_kept(), 4);
    let torn = &report.shards[0].torn_tails;
    assert_eq!(torn.len(), 1, "{report}");
    assert_eq!(torn[0].offset, last.offset);
    assert_eq!(torn[0].bytes_dropped, 100);
    assert!(
        torn[0].reason.contains("past the end"),
        "{}",
        torn[0].reason
    );
    assert!(report.to_string().contains("torn tail"), "{report}");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        last.offset,
        "truncated to the frame start"
    );
    assert!(spool.locate(written[4].0.id).is_none());
    spool.close().unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    assert!(
        report.is_clean(),
        "a repaired spool reopens clean: {report}"
    );
    assert_eq!(report.records_kept(), 4);
    spool.close().unwrap();
}

#[test]
fn zero_filled_tail_is_end_of_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    write_some(&spool, 0, 3, 100);
    spool.close().unwrap();
    let path = only_segment(tmp.path(), 0);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len + 8192)
        .unwrap();
    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    assert_eq!(report.records_kept(), 3);
    let torn = &report.shards[0].torn_tails[0];
    assert_eq!((torn.offset, torn.bytes_dropped), (len, 8192));
    assert_eq!(torn.reason, "zero fill");
    spool.close().unwrap();
}

#[test]
fn corrupt_byte_mid_segment_skips_only_that_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let written = write_some(&spool, 0, 6, 500);
    spool.close().unwrap();
    let path = only_segment(tmp.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    // Record 1: a body byte (data checksum). Record 3: a header byte (resync needed).
    bytes[(written[1].1.location.body_offset + 10) as usize] ^= 0x40;
    bytes[(written[3].1.location.offset + 9) as usize] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    let corrupt = &report.shards[0].corrupt_frames;
    assert_eq!(corrupt.len(), 2, "{report}");
    assert_eq!(corrupt[0].offset, written[1].1.location.offset);
    assert_eq!(corrupt[0].bytes_skipped, written[1].1.location.frame_len);
    assert_eq!(corrupt[0].reason, "data checksum mismatch");
    assert_eq!(corrupt[1].offset, written[3].1.location.offset);
    assert_eq!(corrupt[1].bytes_skipped, written[3].1.location.frame_len);
    assert_eq!(corrupt[1].reason, "header checksum mismatch");
    assert!(report.shards[0].torn_tails.is_empty(), "{report}");
    for (i, (m, c)) in written.iter().enumerate() {
        let found = spool.locate(m.id);
        if i == 1 || i == 3 {
            assert!(found.is_none());
        } else {
            assert_eq!(found, Some(c.location));
            assert_eq!(
                spool.read_message(&c.location).unwrap().body,
                stored_body(m)
            );
        }
    }
    assert!(
        report.to_string().contains("corrupt frame skipped"),
        "{report}"
    );
    spool.close().unwrap();
    // Nothing was truncated: the damaged bytes stay for inspection.
    assert_eq!(fs::read(&path).unwrap().len(), bytes.len());
}

#[test]
fn damaged_first_segment_header_copy_uses_the_second() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    write_some(&spool, 0, 2, 100);
    spool.close().unwrap();
    let path = only_segment(tmp.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[3] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    assert_eq!(report.records_kept(), 2);
    assert_eq!(report.shards[0].header_copies_repaired.len(), 1);
    spool.close().unwrap();
    // Both copies bad: stop, do not guess.
    bytes[32 + 3] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let err = Spool::open(config(tmp.path()), 1).unwrap_err();
    assert!(matches!(err, SpoolError::Recovery { .. }), "{err}");
    assert!(err.to_string().contains("move the file aside"), "{err}");
}

/// Appends a hand-made frame of `kind`/`version` to a closed segment.
fn append_raw_frame(path: &std::path::Path, kind: u16, version: u16) {
    let bytes = fs::read(path).unwrap();
    let seg = SegmentHeader::decode(&bytes[..32]).unwrap();
    let meta = [1u8; 16];
    let h = FrameHeader {
        version,
        kind,
        meta_len: 16,
        body_len: 0,
        seq: 1 << 40,
        data_crc: crc32c::crc32c(&meta),
    };
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(&h.encode(seg.salt)).unwrap();
    f.write_all(&meta).unwrap();
}

#[test]
fn unknown_kind_or_version_is_fatal_and_changes_nothing() {
    for (kind, version) in [(99u16, 1u16), (1, 4), (2, 2), (3, 2), (4, 2), (5, 1)] {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
        write_some(&spool, 0, 2, 100);
        spool.close().unwrap();
        let path = only_segment(tmp.path(), 0);
        append_raw_frame(&path, kind, version);
        let before = fs::read(&path).unwrap();
        let err = Spool::open(config(tmp.path()), 1).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("record kind {kind} version {version} is unknown")),
            "{text}"
        );
        assert_eq!(fs::read(&path).unwrap(), before);
        assert!(matches!(
            inspect::list(&tmp.path().join("spool")),
            Err(SpoolError::Recovery { .. })
        ));
    }
}

#[test]
fn segments_roll_over_and_a_huge_record_gets_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 8192;
    let (spool, _) = Spool::open(cfg.clone(), 1).unwrap();
    let h = spool.shard(0);
    let mut written = Vec::new();
    for n in 0..40 {
        let len = if n == 17 { 50_000 } else { 700 };
        let m = message(h.next_id(SystemTime::now()), n, len);
        written.push((m.clone(), append_wait(&h, m).unwrap()));
    }
    let huge = written[17].1.location;
    assert_eq!(
        huge.offset, SEGMENT_PREAMBLE_LEN,
        "huge record starts a fresh segment"
    );
    assert_ne!(written[16].1.location.segment, huge.segment);
    assert_ne!(
        written[18].1.location.segment, huge.segment,
        "and has it alone"
    );
    for (_, c) in &written {
        if c.location != huge {
            assert!(c.location.offset + c.location.frame_len <= 8192);
        }
    }
    spool.close().unwrap();
    let segs = FsIo::new(cfg.dir.clone()).list_segments(0).unwrap();
    assert!(segs.len() >= 5, "{segs:?}");
    let (spool, report) = Spool::open(cfg, 1).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(spool.core.index.len(), 40);
    for (m, c) in &written {
        assert_eq!(
            spool.read_message(&c.location).unwrap().body,
            stored_body(m)
        );
    }
    spool.close().unwrap();
}

#[test]
fn inspect_works_on_a_live_spool_and_tolerates_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = Spool::open(config(tmp.path()), 2).unwrap();
    let mut written = write_some(&spool, 0, 3, 200);
    written.extend(write_some(&spool, 1, 2, 50));
    let list = inspect::list(&dir).unwrap();
    assert_eq!(list.len(), 5);
    let mut ids: Vec<QueueId> = written.iter().map(|(m, _)| m.id).collect();
    ids.sort();
    assert_eq!(list.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
    for (m, c) in &written {
        let s = list.iter().find(|s| s.id == m.id).unwrap();
        assert_eq!(s.sender, m.envelope.reverse_path);
        assert_eq!(s.recipients.len(), m.envelope.recipients.len());
        assert_eq!(s.size, c.location.body_len);
        assert_eq!(s.arrival_unix_micros, m.arrival_unix_micros);
        assert_eq!(inspect::cat(&dir, m.id).unwrap(), stored_body(m));
    }
    // A batch "being written": half a frame at the end of the live segment.
    let path = FsIo::new(&dir).segment_path(0, written[0].1.location.segment);
    let mut half = fs::read(&path).unwrap()[SEGMENT_PREAMBLE_LEN as usize..][..150].to_vec();
    half[0] ^= 0; // an exact copy of the first frame's start: valid header, data cut short
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&half)
        .unwrap();
    let size = fs::metadata(&path).unwrap().len();
    assert_eq!(inspect::list(&dir).unwrap().len(), 5);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        size,
        "read-only: nothing truncated"
    );
    let missing = QueueId::new(1, 0);
    assert!(matches!(inspect::cat(&dir, missing), Err(SpoolError::NotFound(id)) if id == missing));
    assert!(inspect::list(&tmp.path().join("nope")).is_err());
    spool.close().unwrap();
}

#[test]
fn shards_beyond_the_count_are_read_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 3).unwrap();
    let w2 = write_some(&spool, 2, 2, 100);
    spool.close().unwrap();
    let io = FsIo::new(tmp.path().join("spool"));
    let segs_before = io.list_segments(2).unwrap();
    // Damage shard 2's tail: a read-only shard reports it but does not truncate.
    let path = io.segment_path(2, segs_before[0]);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0xAB; 40])
        .unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    assert_eq!(spool.shard_count(), 2);
    let s2 = report.shards.iter().find(|s| s.shard == 2).unwrap();
    assert!(
        !s2.writable && s2.records_kept == 2 && s2.torn_tails.len() == 1,
        "{report}"
    );
    assert!(report.to_string().contains("(read-only)"));
    for (m, c) in &w2 {
        assert_eq!(spool.locate(m.id), Some(c.location));
    }
    write_some(&spool, 0, 1, 10);
    spool.close().unwrap();
    assert_eq!(io.list_segments(2).unwrap(), segs_before);
    assert_eq!(fs::metadata(&path).unwrap().len(), len + 40);
}

#[test]
fn close_commits_everything_queued_then_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.commit_window = Duration::from_millis(2);
    let (spool, _) = Spool::open(cfg, 1).unwrap();
    let h = spool.shard(0);
    let rxs: Vec<_> = (0..50)
        .map(|n| {
            h.append_message(message(h.next_id(SystemTime::now()), n, 64))
                .unwrap()
        })
        .collect();
    spool.close().unwrap();
    for rx in rxs {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    let err = h
        .append_message(message(h.next_id(SystemTime::now()), 0, 1))
        .unwrap_err();
    assert!(matches!(err, SpoolError::Closed));
    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    assert_eq!(report.records_kept(), 50);
    drop(spool); // Drop also stops the writers.
}

#[test]
fn config_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        Spool::open(config(tmp.path()), 0),
        Err(SpoolError::Config(_))
    ));
    assert!(matches!(
        Spool::open(config(tmp.path()), 257),
        Err(SpoolError::Config(_))
    ));
    let mut cfg = config(tmp.path());
    cfg.segment_size = 10;
    assert!(matches!(Spool::open(cfg, 1), Err(SpoolError::Config(_))));
}

/// A SegmentIo whose data syncs wait for a permit: lets a test hold the writer mid-commit.
struct GatedIo {
    inner: SimDisk,
    gate: Arc<Mutex<mpsc::Receiver<()>>>,
    entered: mpsc::Sender<()>,
}

struct GatedFile {
    inner: Box<dyn SegmentFile>,
    gate: Arc<Mutex<mpsc::Receiver<()>>>,
    entered: mpsc::Sender<()>,
}

impl SegmentFile for GatedFile {
    fn write_all_at(&mut self, offset: u64, bufs: &[IoSlice<'_>]) -> std::io::Result<()> {
        self.inner.write_all_at(offset, bufs)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        let _ = self.entered.send(());
        let _ = self.gate.lock().unwrap().recv();
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.truncate(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read_at(offset, buf)
    }
}

impl SegmentIo for GatedIo {
    fn root(&self) -> &std::path::Path {
        self.inner.root()
    }
    fn list_shards(&self) -> std::io::Result<Vec<u8>> {
        self.inner.list_shards()
    }
    fn create_shard(&self, shard: u8) -> std::io::Result<()> {
        self.inner.create_shard(shard)
    }
    fn list_segments(&self, shard: u8) -> std::io::Result<Vec<u64>> {
        self.inner.list_segments(shard)
    }
    fn create_segment(&self, shard: u8, segment: u64) -> std::io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(GatedFile {
            inner: self.inner.create_segment(shard, segment)?,
            gate: Arc::clone(&self.gate),
            entered: self.entered.clone(),
        }))
    }
    fn open_segment(
        &self,
        shard: u8,
        segment: u64,
        w: bool,
    ) -> std::io::Result<Box<dyn SegmentFile>> {
        self.inner.open_segment(shard, segment, w)
    }
    fn remove_segment(&self, shard: u8, segment: u64) -> std::io::Result<()> {
        self.inner.remove_segment(shard, segment)
    }
    fn sync_shard_dir(&self, shard: u8) -> std::io::Result<()> {
        self.inner.sync_shard_dir(shard)
    }
    fn create_temp_segment(&self, shard: u8, seg: u64) -> std::io::Result<Box<dyn SegmentFile>> {
        self.inner.create_temp_segment(shard, seg)
    }
    fn publish_temp_segment(&self, shard: u8, seg: u64) -> std::io::Result<()> {
        self.inner.publish_temp_segment(shard, seg)
    }
    fn list_temp_segments(&self, shard: u8) -> std::io::Result<Vec<u64>> {
        self.inner.list_temp_segments(shard)
    }
    fn remove_temp_segment(&self, shard: u8, seg: u64) -> std::io::Result<()> {
        self.inner.remove_temp_segment(shard, seg)
    }
    fn new_salt(&self) -> u32 {
        self.inner.new_salt()
    }
}

#[test]
fn full_queue_is_backpressure_at_once_and_batches_group() {
    let disk = SimDisk::new(7, SimFaults::default());
    let (permit, gate) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    let io = Arc::new(GatedIo {
        inner: disk.clone(),
        gate: Arc::new(Mutex::new(gate)),
        entered: entered_tx,
    });
    let mut cfg = SpoolConfig::new("/unused");
    cfg.appends_pending_max = 4;
    let (spool, _) = Spool::open_with_io(cfg, 1, io).unwrap();
    let h = spool.shard(0);
    let id = |h: &ShardHandle| h.next_id(SystemTime::now());
    let wait = Duration::from_secs(10);
    let first = h.append_message(message(id(&h), 0, 10)).unwrap();
    // The writer creates a segment (header sync), then syncs the lone first message.
    entered.recv_timeout(wait).unwrap();
    permit.send(()).unwrap();
    entered.recv_timeout(wait).unwrap();
    // The writer is now held inside the first message's fdatasync: fill the queue.
    let queued: Vec<_> = (1..=4)
        .map(|n| h.append_message(message(id(&h), n, 10)).unwrap())
        .collect();
    let t = std::time::Instant::now();
    let err = h.append_message(message(id(&h), 9, 10)).unwrap_err();
    assert!(matches!(err, SpoolError::Backpressure));
    assert!(t.elapsed() < Duration::from_millis(500), "never blocks");
    permit.send(()).unwrap();
    let a = first.blocking_recv().unwrap().unwrap();
    // The four queued ones form ONE group commit.
    entered.recv_timeout(wait).unwrap();
    permit.send(()).unwrap();
    let rest: Vec<Committed> = queued
        .into_iter()
        .map(|r| r.blocking_recv().unwrap().unwrap())
        .collect();
    assert!(rest
        .iter()
        .all(|c| c.location.segment == a.location.segment));
    assert_eq!(disk.stats().syncs, 3, "header, lone message, group of four");
    drop(permit);
    spool.close().unwrap();
}

#[test]
fn injected_write_and_sync_errors_fail_the_batch_and_move_to_a_new_segment() {
    for fail_sync in [false, true] {
        let disk = SimDisk::new(11, SimFaults::default());
        let io: Arc<dyn SegmentIo> = Arc::new(disk.clone());
        let (spool, _) =
            Spool::open_with_io(SpoolConfig::new("/unused"), 1, Arc::clone(&io)).unwrap();
        let h = spool.shard(0);
        let a = message(h.next_id(SystemTime::now()), 1, 100);
        let ca = append_wait(&h, a.clone()).unwrap();
        if fail_sync {
            disk.fail_next_syncs(1);
        } else {
            disk.fail_next_writes(1);
        }
        let b = message(h.next_id(SystemTime::now()), 2, 100);
        let err = append_wait(&h, b.clone()).unwrap_err();
        assert!(matches!(err, SpoolError::Io { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(if fail_sync { "fdatasync" } else { "write" }),
            "{text}"
        );
        // The writer keeps running, in a new segment; the old one is cut back to A's end.
        let c = message(h.next_id(SystemTime::now()), 3, 100);
        let cc = append_wait(&h, c.clone()).unwrap();
        assert!(cc.location.segment > ca.location.segment);
        let old = disk.contents(0, ca.location.segment).unwrap();
        assert_eq!(old.len() as u64, ca.location.offset + ca.location.frame_len);
        spool.close().unwrap();

        // Power loss now: A and C were acknowledged and must survive; B may not appear.
        let after = disk.crash();
        let (spool, report) =
            Spool::open_with_io(SpoolConfig::new("/unused"), 1, Arc::new(after.clone())).unwrap();
        assert!(spool.locate(a.id).is_some(), "{report}");
        assert!(spool.locate(c.id).is_some(), "{report}");
        let back = spool.read_message(&spool.locate(c.id).unwrap()).unwrap();
        assert_eq!(back.body, stored_body(&c));
        spool.close().unwrap();
    }
}

#[test]
fn failed_segment_creation_fails_the_batch_then_recovers() {
    let disk = SimDisk::new(3, SimFaults::default());
    let (spool, _) =
        Spool::open_with_io(SpoolConfig::new("/unused"), 1, Arc::new(disk.clone())).unwrap();
    let h = spool.shard(0);
    disk.set_faults(SimFaults {
        create_error: (1, 1),
        ..SimFaults::default()
    });
    let err = append_wait(&h, message(h.next_id(SystemTime::now()), 1, 10)).unwrap_err();
    assert!(err.to_string().contains("create segment"), "{err}");
    disk.set_faults(SimFaults::default());
    append_wait(&h, message(h.next_id(SystemTime::now()), 2, 10)).unwrap();
    spool.close().unwrap();
}

#[test]
fn report_display_names_everything() {
    let report = RecoveryReport {
        shards: vec![ShardRecovery {
            shard: 1,
            writable: true,
            segments_scanned: 2,
            records_kept: 10,
            bytes_kept: 1000,
            torn_tails: vec![TornTail {
                segment: 2,
                offset: 640,
                bytes_dropped: 33,
                reason: "zero fill".into(),
            }],
            corrupt_frames: vec![CorruptFrame {
                segment: 1,
                offset: 64,
                bytes_skipped: 128,
                reason: "data checksum mismatch".into(),
            }],
            ..ShardRecovery::default()
        }],
    };
    let text = report.to_string();
    assert!(text.starts_with("spool recovery: 1 shard(s), 2 segment(s), 10 record(s) kept, 1 torn tail(s) truncated, 1 corrupt frame(s) skipped"), "{text}");
    assert!(
        text.contains("torn tail: segment 2 offset 640: 33 byte(s) dropped (zero fill)"),
        "{text}"
    );
    assert!(
        text.contains(
            "corrupt frame skipped: segment 1 offset 64: 128 byte(s) (data checksum mismatch)"
        ),
        "{text}"
    );
    let _ = FRAME_HEADER_LEN;
}

fn delete_wait(h: &ShardHandle, mailbox: &str, ids: Vec<QueueId>) -> Result<(), SpoolError> {
    h.append_deletion(mailbox.to_string(), ids)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

/// A message for `mailboxes` (and a remote route when `remote`).
fn local_message(h: &ShardHandle, n: usize, mailboxes: &[&str], remote: bool) -> NewMessage {
    let mut m = message(h.next_id(SystemTime::now()), n, 2000 + n);
    m.mailboxes = mailboxes.iter().map(|s| s.to_string()).collect();
    m.remote = if remote {
        vec!["far@example.com".into()]
    } else {
        Vec::new()
    };
    m
}

#[test]
fn deletions_are_durable_and_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 2).unwrap();
    let h = spool.shard(0);
    let both = local_message(&h, 1, &["alice", "bob"], false);
    let alice_only = local_message(&h, 2, &["alice"], false);
    let relayed = local_message(&h, 3, &["alice"], true);
    let nobody = local_message(&h, 4, &[], false);
    for m in [&both, &alice_only, &relayed, &nobody] {
        append_wait(&h, m.clone()).unwrap();
    }
    // alice's QUIT goes through the other shard's writer: deletions are not tied to a shard.
    let ids = vec![both.id, alice_only.id, relayed.id, nobody.id];
    delete_wait(&spool.shard(1), "alice", ids).unwrap();
    assert!(
        delete_wait(&h, "alice", Vec::new()).is_ok(),
        "nothing to store"
    );
    spool.close().unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    assert!(report.is_clean(), "{report}");
    let deletions: u64 = report.shards.iter().map(|s| s.deletion_pairs).sum();
    assert_eq!(deletions, 4);
    let replay = spool.replay().unwrap();
    let listed: Vec<QueueId> = replay.messages.iter().map(|m| m.id).collect();
    // alice_only is garbage (its one mailbox deleted it); the others stay.
    assert_eq!(listed, vec![both.id, relayed.id, nobody.id]);
    assert_eq!(
        replay.deletions,
        vec![
            ("alice".to_string(), both.id),
            ("alice".to_string(), relayed.id)
        ]
    );
    let r = &replay.messages[0];
    assert_eq!(r.mailboxes, vec!["alice", "bob"]);
    assert_eq!(r.body_len, stored_body(&both).len() as u64);
    assert_eq!(r.sender, both.envelope.reverse_path);
    assert_eq!(r.recipients, both.envelope.recipients.len());
    assert_eq!(r.arrival_unix_micros, both.arrival_unix_micros);
    assert_eq!(replay.messages[1].remote, vec!["far@example.com"]);
    // A second call reads the files again and agrees.
    assert_eq!(spool.replay().unwrap(), replay);
    spool.close().unwrap();
}

#[test]
fn a_body_prefix_is_at_most_what_was_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let m = local_message(&h, 1, &["alice"], false);
    append_wait(&h, m.clone()).unwrap();
    let body = stored_body(&m);
    assert!(body.len() > 10);
    assert_eq!(spool.read_body_prefix(m.id, 10).unwrap(), body[..10]);
    assert_eq!(spool.read_body_prefix(m.id, 0).unwrap(), b"");
    assert_eq!(spool.read_body_prefix(m.id, usize::MAX).unwrap(), body);
    let reader = spool.reader();
    assert_eq!(
        reader.read_body_prefix(m.id, body.len() - 1).unwrap(),
        body[..body.len() - 1]
    );
    let missing = QueueId::new(1, 0);
    assert!(matches!(
        spool.read_body_prefix(missing, 10),
        Err(SpoolError::NotFound(id)) if id == missing
    ));
    spool.close().unwrap();
}

#[test]
fn read_body_locates_at_once_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let reader = spool.reader();
    let m = local_message(&h, 1, &["alice"], false);
    let c = append_wait(&h, m.clone()).unwrap();
    // Acknowledged a moment ago: locatable and readable from any thread.
    let back = std::thread::spawn(move || (reader.locate(m.id), reader.read_body(m.id)))
        .join()
        .unwrap();
    assert_eq!(back.0, Some(c.location));
    assert_eq!(back.1.unwrap(), stored_body(&m));
    let missing = QueueId::new(1, 0);
    assert!(matches!(spool.read_body(missing), Err(SpoolError::NotFound(id)) if id == missing));
    assert_eq!(spool.core.files.cached(), 1);
    // Damage on disk after open is refused, not served.
    let path = FsIo::new(tmp.path().join("spool")).segment_path(0, c.location.segment);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(c.location.body_offset + 7) as usize] ^= 0x20;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let err = spool.read_body(m.id).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Appending reads leave the buffer as it was on any error.
    let mut buf = b"kept".to_vec();
    assert!(matches!(
        spool.read_body_append(m.id, &mut buf),
        Err(SpoolError::Corrupt { .. })
    ));
    assert!(matches!(
        spool.read_body_append(missing, &mut buf),
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(buf, b"kept");
    spool.close().unwrap();
}

/// Flips one byte of `location`'s body on disk (through the file, as a damaged disk would).
fn damage_body(tmp: &std::path::Path, location: &Location) {
    let path = FsIo::new(tmp.join("spool")).segment_path(0, location.segment);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(location.body_offset + 7) as usize] ^= 0x20;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}

/// The shards' reads check a body's data checksum until it matched once, then not again
/// ("Verified once" in the module doc): counted by `body_checksums`. A body damaged before
/// its first read is refused at every read (a mismatch marks nothing); the synchronous reads
/// check every time; a move by compaction makes the next read check again.
#[test]
fn async_reads_verify_each_body_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let good = local_message(&h, 1, &["alice"], false);
    let good_at = append_wait(&h, good.clone()).unwrap().location;
    let bad = local_message(&h, 2, &["alice"], false);
    let bad_at = append_wait(&h, bad.clone()).unwrap().location;
    damage_body(tmp.path(), &bad_at);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let read = |id: QueueId| {
        runtime.block_on(spool.read_body_async(&FileReads::Inline, id, b"head".to_vec(), 4))
    };
    assert_eq!(spool.body_checksums(), 0);
    for n in 1..=3 {
        let (result, buf) = read(good.id);
        result.unwrap();
        assert_eq!(buf[..4], *b"head");
        assert_eq!(buf[4..], stored_body(&good)[..]);
        assert_eq!(spool.body_checksums(), 1, "read {n} of a verified body");
    }
    for n in 1..=2u64 {
        let (result, buf) = read(bad.id);
        let err = result.unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(buf, b"head");
        assert_eq!(spool.body_checksums(), 1 + n, "damaged body, read {n}");
    }
    // Damage after the first verified read: the synchronous read still refuses it.
    damage_body(tmp.path(), &good_at);
    let err = spool.read_body(good.id).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    // A new location is not verified: compaction's move clears the mark.
    assert!(spool.core.index.find(good.id).unwrap().verified);
    let mut elsewhere = good_at;
    elsewhere.offset += 1;
    spool.core.index.moved(good.id, &good_at, elsewhere);
    assert!(!spool.core.index.find(good.id).unwrap().verified);
    // ...and a mark for a location the message has left is not taken.
    spool.core.index.body_verified(good.id, &good_at);
    assert!(!spool.core.index.find(good.id).unwrap().verified);
    spool.close().unwrap();
}

#[test]
fn read_body_append_puts_the_body_after_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let m = local_message(&h, 1, &["alice"], false);
    append_wait(&h, m.clone()).unwrap();
    let mut buf = b"+OK 12 octets\r\n".to_vec();
    spool.read_body_append(m.id, &mut buf).unwrap();
    let mut expected = b"+OK 12 octets\r\n".to_vec();
    expected.extend_from_slice(&stored_body(&m));
    assert_eq!(buf, expected);
    assert_eq!(spool.reader().read_body(m.id).unwrap(), stored_body(&m));
    spool.close().unwrap();
}

/// One buffer reused over bodies of different sizes (longer, shorter, longer again) holds
/// exactly each stored body, as `read_body` returns it; a damaged body leaves it empty.
#[test]
fn read_body_into_reuses_one_buffer() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let mut messages = Vec::new();
    for (n, size) in [(1usize, 9000usize), (2, 300), (3, 20_000), (4, 5)] {
        let mut m = local_message(&h, n, &["alice"], false);
        m.body = std::iter::repeat_n(b'a' + n as u8, size).collect();
        let c = append_wait(&h, m.clone()).unwrap();
        messages.push((m, c));
    }
    let mut buffer = b"left over from before".to_vec();
    for (m, _) in messages.iter().chain(messages.iter().rev()) {
        spool.reader().read_body_into(m.id, &mut buffer).unwrap();
        assert_eq!(buffer, stored_body(m));
        assert_eq!(buffer, spool.read_body(m.id).unwrap());
    }
    let missing = QueueId::new(1, 0);
    assert!(matches!(
        spool.read_body_into(missing, &mut buffer),
        Err(SpoolError::NotFound(id)) if id == missing
    ));
    let (m, c) = &messages[2];
    let path = FsIo::new(tmp.path().join("spool")).segment_path(0, c.location.segment);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(c.location.body_offset + 7) as usize] ^= 0x20;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let err = spool.read_body_into(m.id, &mut buffer).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert!(buffer.is_empty());
    spool.close().unwrap();
}

#[test]
fn compaction_reclaims_garbage_and_keeps_what_is_still_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 16 << 10;
    let (spool, _) = Spool::open(cfg.clone(), 1).unwrap();
    let h = spool.shard(0);
    let mut kept = Vec::new();
    let mut doomed = Vec::new();
    for n in 0..40 {
        let m = match n % 4 {
            0 => local_message(&h, n, &["alice", "bob"], false), // alice deletes: bob keeps it
            1 => local_message(&h, n, &["carol"], false),        // never deleted
            _ => local_message(&h, n, &["alice"], false),        // deleted: garbage
        };
        append_wait(&h, m.clone()).unwrap();
        if n % 4 >= 2 {
            doomed.push(m);
        } else {
            kept.push(m);
        }
    }
    let alice: Vec<QueueId> = kept
        .iter()
        .chain(&doomed)
        .filter(|m| m.mailboxes.contains(&"alice".to_string()))
        .map(|m| m.id)
        .collect();
    delete_wait(&h, "alice", alice).unwrap();
    // The writer's active segment is never compacted, whatever its garbage.
    let active = spool.locate(doomed[doomed.len() - 1].id).unwrap().segment;
    let report = spool.compact().unwrap();
    assert!(
        report.segments_removed.iter().all(|&(_, s)| s < active),
        "{report}"
    );
    assert!(!report.segments_removed.is_empty(), "{report}");
    assert!(
        report.messages_dropped > 0 && report.messages_copied > 0,
        "{report}"
    );
    assert!(report.bytes_reclaimed() > 0, "{report}");
    assert!(
        report.to_string().starts_with("spool compaction:"),
        "{report}"
    );
    // Readers follow the moves at once.
    for m in &kept {
        assert_eq!(spool.read_body(m.id).unwrap(), stored_body(m));
    }
    spool.close().unwrap();

    // After a restart every segment is sealed: compact everything with any dead byte.
    let (spool, report) = Spool::open(cfg.clone(), 1).unwrap();
    assert!(report.is_clean(), "{report}");
    let full = CompactionConfig {
        live_percent_below: 100,
        ..CompactionConfig::new(cfg.segment_size)
    };
    spool.compact_with(&full).unwrap();
    let second = spool.compact_with(&full).unwrap();
    assert_eq!(second.messages_dropped, 0, "{second}");
    for m in &doomed {
        assert!(spool.locate(m.id).is_none());
    }
    spool.close().unwrap();
    let (spool, report) = Spool::open(cfg, 1).unwrap();
    assert!(report.is_clean(), "{report}");
    let replay = spool.replay().unwrap();
    let mut ids: Vec<QueueId> = kept.iter().map(|m| m.id).collect();
    ids.sort();
    assert_eq!(
        replay.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids
    );
    // bob's copy of the alice+bob messages survives; alice's deletion of it too.
    let shared: Vec<(String, QueueId)> = kept
        .iter()
        .filter(|m| m.mailboxes.len() == 2)
        .map(|m| ("alice".to_string(), m.id))
        .collect();
    assert_eq!(replay.deletions, shared);
    for m in &kept {
        assert_eq!(spool.read_body(m.id).unwrap(), stored_body(m));
    }
    spool.close().unwrap();
}

#[test]
fn leftovers_of_an_interrupted_compaction_are_resolved_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let live: Vec<NewMessage> = (0..4)
        .map(|n| local_message(&h, n, &["bob"], false))
        .collect();
    let gone: Vec<NewMessage> = (0..8)
        .map(|n| local_message(&h, 10 + n, &["alice"], false))
        .collect();
    for m in live.iter().chain(&gone) {
        append_wait(&h, m.clone()).unwrap();
    }
    delete_wait(&h, "alice", gone.iter().map(|m| m.id).collect()).unwrap();
    spool.close().unwrap();
    let io = FsIo::new(&dir);
    let old = io.list_segments(0).unwrap();
    assert_eq!(old.len(), 1);
    let old_path = io.segment_path(0, old[0]);
    let old_bytes = fs::read(&old_path).unwrap();

    // A complete compaction, then the old segment put back: as if killed before the unlink.
    let report = compact_offline(&dir).unwrap();
    assert_eq!(report.segments_removed, vec![(0, old[0])], "{report}");
    assert_eq!(report.messages_dropped, 8);
    fs::write(&old_path, &old_bytes).unwrap();
    // And a half-written temporary of a later attempt.
    let temp = io.temp_segment_path(0, 999);
    fs::write(&temp, b"RLYSPOOL partial").unwrap();

    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    let s = &report.shards[0];
    assert_eq!(s.temp_segments, vec![999], "{report}");
    assert!(!temp.exists(), "temporary removed");
    let mut dups = s.duplicate_ids.clone();
    dups.sort();
    assert_eq!(
        dups,
        live.iter().map(|m| m.id).collect::<Vec<_>>(),
        "{report}"
    );
    assert!(s.conflicting_duplicates.is_empty(), "{report}");
    assert!(
        report.to_string().contains("interrupted compaction"),
        "{report}"
    );
    // Nothing visible is duplicated or resurrected.
    let replay = spool.replay().unwrap();
    assert_eq!(
        replay.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        live.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert!(replay.deletions.is_empty());
    for m in &live {
        assert_eq!(spool.read_body(m.id).unwrap(), stored_body(m));
    }
    // The next compaction drops the dead copies (and the garbage that came back with them).
    let report = spool.compact().unwrap();
    assert!(
        report.copies_dropped + report.messages_dropped >= 8,
        "{report}"
    );
    spool.close().unwrap();
    let (spool, report) = Spool::open(config(tmp.path()), 1).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(spool.replay().unwrap(), replay);
    spool.close().unwrap();
    // The next number is past the temporary's: never reused.
    assert!(io.list_segments(0).unwrap().iter().all(|&n| n != 999));
}

#[test]
fn compaction_runs_while_ingest_and_reads_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 32 << 10;
    let (spool, _) = Spool::open(cfg, 2).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stored: Arc<Mutex<Vec<NewMessage>>> = Arc::default();
    let mut threads = Vec::new();
    for shard in 0..2 {
        let h = spool.shard(shard);
        let (stop, stored) = (Arc::clone(&stop), Arc::clone(&stored));
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = local_message(&h, n, &["alice"], false);
                let b = local_message(&h, n + 1, &["bob"], false);
                append_wait(&h, a.clone()).unwrap();
                append_wait(&h, b.clone()).unwrap();
                delete_wait(&h, "alice", vec![a.id]).unwrap();
                stored.lock().unwrap().push(b);
                n += 2;
            }
        }));
    }
    let reader = spool.reader();
    let (stop_r, stored_r) = (Arc::clone(&stop), Arc::clone(&stored));
    let reads = std::thread::spawn(move || {
        let mut reads = 0u64;
        while !stop_r.load(std::sync::atomic::Ordering::Relaxed) {
            let sample: Vec<NewMessage> = stored_r
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(20)
                .cloned()
                .collect();
            for m in sample {
                assert_eq!(reader.read_body(m.id).unwrap(), stored_body(&m));
                reads += 1;
            }
        }
        reads
    });
    let mut removed = 0;
    let compactor = spool.reader();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(20));
        removed += compactor.compact().unwrap().segments_removed.len();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(reads.join().unwrap() > 0);
    assert!(removed > 0, "compaction found sealed segments to reclaim");
    let all = stored.lock().unwrap().clone();
    for m in &all {
        assert_eq!(spool.read_body(m.id).unwrap(), stored_body(m));
    }
    spool.close().unwrap();
    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    assert!(report.is_clean(), "{report}");
    let replay = spool.replay().unwrap();
    assert_eq!(
        replay.messages.len(),
        all.len(),
        "only bob's copies are live"
    );
    spool.close().unwrap();
}

#[test]
fn a_reader_holding_an_unlinked_segment_finishes_and_a_stale_location_is_retried() {
    let disk = SimDisk::new(5, SimFaults::default());
    let mut cfg = SpoolConfig::new("/unused");
    cfg.segment_size = 8192;
    let (spool, _) = Spool::open_with_io(cfg.clone(), 1, Arc::new(disk.clone())).unwrap();
    let h = spool.shard(0);
    let keep = local_message(&h, 1, &["bob"], false);
    append_wait(&h, keep.clone()).unwrap();
    for n in 0..6 {
        let m = local_message(&h, 10 + n, &["alice"], false);
        append_wait(&h, m.clone()).unwrap();
        delete_wait(&h, "alice", vec![m.id]).unwrap();
    }
    spool.close().unwrap();
    let (spool, _) = Spool::open_with_io(cfg, 1, Arc::new(disk.crash())).unwrap();
    let before = spool.core.index.find(keep.id).unwrap();
    let held = spool
        .core
        .files
        .get(spool.core.io.as_ref(), 0, before.location.segment)
        .unwrap();
    let full = CompactionConfig {
        live_percent_below: 100,
        ..CompactionConfig::new(8192)
    };
    let report = spool.compact_with(&full).unwrap();
    assert!(
        report
            .segments_removed
            .contains(&(0, before.location.segment)),
        "{report}"
    );
    let after = spool.locate(keep.id).unwrap();
    assert_ne!(after.segment, before.location.segment);
    // The handle taken before the unlink still reads the old bytes.
    let mut body = vec![0u8; before.location.body_len as usize];
    held.read_at(before.location.body_offset, &mut body)
        .unwrap();
    assert_eq!(body, stored_body(&keep));
    // A read that looked up the old location: the file is gone, the lookup is retried.
    assert!(spool
        .core
        .read_located(&before, &mut Vec::new(), 0)
        .is_err());
    assert_eq!(spool.read_body(keep.id).unwrap(), stored_body(&keep));
    spool.close().unwrap();
}

fn deliver_wait(h: &ShardHandle, record: DeliveryRecord) -> Result<(), SpoolError> {
    h.append_delivery(record)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

fn outcome(m: &NewMessage, rcpt: &str, outcome: Outcome, attempt: u32, at: u64) -> DeliveryResult {
    DeliveryResult {
        id: m.id,
        recipient: rcpt.into(),
        outcome,
        reply: format!("{outcome:?} on attempt {attempt}"),
        attempt,
        at_unix_micros: at,
        next_attempt_unix_micros: (outcome == Outcome::Deferred).then_some(at + 60_000_000),
    }
}

#[test]
fn delivery_results_are_durable_replayed_and_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 16 << 10;
    let (spool, _) = Spool::open(cfg.clone(), 2).unwrap();
    let h = spool.shard(0);
    let mut relayed = local_message(&h, 1, &[], false);
    relayed.remote = vec!["a@far.example".into(), "b@far.example".into()];
    let mut mixed = local_message(&h, 2, &["alice"], false);
    mixed.remote = vec!["c@far.example".into()];
    for m in [&relayed, &mixed] {
        append_wait(&h, m.clone()).unwrap();
    }
    // Results come from whichever core owns the destination: the other shard's writer.
    let other = spool.shard(1);
    assert!(other
        .append_results(Vec::new())
        .unwrap()
        .blocking_recv()
        .unwrap()
        .is_ok());
    let delay = DsnSent {
        id: relayed.id,
        recipient: "a@far.example".into(),
        kind: DsnKind::Delay,
        at_unix_micros: 300,
        notice_id: Some(QueueId::new(77, 1)),
    };
    let results = vec![
        outcome(&relayed, "a@far.example", Outcome::Deferred, 2, 200),
        outcome(&relayed, "a@far.example", Outcome::Deferred, 1, 100),
        outcome(&relayed, "b@far.example", Outcome::Delivered, 1, 100),
        outcome(&mixed, "c@far.example", Outcome::Deferred, 1, 100),
    ];
    other
        .append_results(results.clone())
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    other
        .append_dsn_sent(vec![delay.clone()])
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    // A reply longer than the bound is cut.
    let mut long = outcome(&mixed, "c@far.example", Outcome::Deferred, 2, 400);
    long.reply = "4".repeat(3 * REPLY_MAX_LEN);
    deliver_wait(
        &h,
        DeliveryRecord {
            results: vec![long],
            dsn_sent: Vec::new(),
        },
    )
    .unwrap();
    spool.close().unwrap();

    let (spool, report) = Spool::open(cfg.clone(), 2).unwrap();
    assert!(report.is_clean(), "{report}");
    let sum = |f: fn(&ShardRecovery) -> u64| report.shards.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.delivery_records), 3);
    assert_eq!(
        (sum(|s| s.delivery_results), sum(|s| s.dsn_markers)),
        (5, 1)
    );
    let replay = spool.replay().unwrap();
    assert_eq!(replay.messages.len(), 2);
    let r = &replay.messages[0];
    assert_eq!(r.id, relayed.id);
    assert_eq!(
        r.pending,
        vec![PendingRecipient {
            recipient: "a@far.example".into(),
            attempts: 2,
            last_reply: Some("Deferred on attempt 2".into()),
            last_attempt_unix_micros: Some(200),
            next_attempt_unix_micros: Some(60_000_200),
        }]
    );
    assert_eq!(r.finished, vec![results[2].clone()]);
    assert_eq!(r.dsn_sent, vec![delay.clone()]);
    let m = &replay.messages[1];
    assert_eq!((m.pending.len(), m.pending[0].attempts), (1, 2));
    assert_eq!(
        m.pending[0].last_reply.as_ref().map(String::len),
        Some(REPLY_MAX_LEN)
    );
    assert_eq!(spool.replay().unwrap(), replay, "a second call agrees");
    // The start-up view agrees with the replay on what the queue and the maildrops need.
    let mut views = Vec::new();
    spool.startup_view(|m| {
        let pending: Vec<(String, u32, Option<u64>, bool)> = m
            .remote
            .iter()
            .filter(|r| !r.done)
            .map(|r| {
                (
                    r.address.to_string(),
                    r.attempts,
                    r.next_attempt_unix_micros,
                    r.delay_noticed,
                )
            })
            .collect();
        views.push((m.id, m.body_len, pending));
    });
    views.sort_by_key(|v| v.0);
    let expected: Vec<_> = replay
        .messages
        .iter()
        .map(|m| {
            let pending = m
                .pending
                .iter()
                .map(|p| {
                    let noticed = m
                        .dsn_sent
                        .iter()
                        .any(|d| d.kind == DsnKind::Delay && d.recipient == p.recipient);
                    (
                        p.recipient.clone(),
                        p.attempts,
                        p.next_attempt_unix_micros,
                        noticed,
                    )
                })
                .collect::<Vec<_>>();
            (m.id, m.body_len, pending)
        })
        .collect();
    assert_eq!(views, expected);
    assert!(
        views.iter().any(|v| v.2.iter().any(|p| p.3)),
        "the delay marker shows"
    );
    // The live view (the delivery reconciliation's) lists the same pending recipients at any
    // time, without the start-up history: never tried as far as it knows, due at once.
    let mut live = Vec::new();
    spool.live_view(|m| {
        let pending: Vec<(String, u32, Option<u64>)> = m
            .remote
            .iter()
            .filter(|r| !r.done)
            .map(|r| {
                (
                    r.address.to_string(),
                    r.attempts,
                    r.next_attempt_unix_micros,
                )
            })
            .collect();
        live.push((m.id, m.body_len, pending));
    });
    live.sort_by_key(|v| v.0);
    let expected_live: Vec<_> = views
        .iter()
        .map(|(id, len, pending)| {
            let pending = pending.iter().map(|p| (p.0.clone(), 0, None)).collect();
            (*id, *len, pending)
        })
        .collect();
    assert_eq!(live, expected_live);
    let listed = inspect::list(&cfg.dir).unwrap();
    let counts: Vec<(usize, usize, usize)> = listed
        .iter()
        .map(|s| (s.remote_pending, s.remote_delivered, s.remote_bounced))
        .collect();
    assert_eq!(counts, vec![(1, 1, 0), (1, 0, 0)]);

    // a@ bounces (with its failure notice marker, in one record); alice deletes her copy.
    let h = spool.shard(0);
    let failure = DsnSent {
        kind: DsnKind::Failure,
        at_unix_micros: 500,
        ..delay.clone()
    };
    deliver_wait(
        &h,
        DeliveryRecord {
            results: vec![outcome(&relayed, "a@far.example", Outcome::Bounced, 3, 500)],
            dsn_sent: vec![failure],
        },
    )
    .unwrap();
    delete_wait(&h, "alice", vec![mixed.id]).unwrap();
    let listed = inspect::list(&cfg.dir).unwrap();
    assert_eq!((listed[0].remote_pending, listed[0].remote_bounced), (0, 1));
    spool.close().unwrap();

    // Everything sealed after a restart: the relayed message is garbage now and goes; the
    // mixed one stays for c@, with only its latest Deferred.
    let (spool, _) = Spool::open(cfg.clone(), 2).unwrap();
    let replay = spool.replay().unwrap();
    assert_eq!(replay.messages.len(), 1);
    assert_eq!(replay.messages[0].id, mixed.id);
    assert_eq!(replay.deletions, vec![("alice".to_string(), mixed.id)]);
    let full = CompactionConfig {
        live_percent_below: 100,
        ..CompactionConfig::new(cfg.segment_size)
    };
    let first = spool.compact_with(&full).unwrap();
    assert_eq!(first.messages_dropped, 1, "{first}");
    let second = spool.compact_with(&full).unwrap();
    // The relayed message's 4 results and 2 markers once it is gone (in the first round for
    // those compacted after its frame, else in the second), and c@'s superseded Deferred.
    assert_eq!(
        (
            first.results_dropped + second.results_dropped,
            first.markers_dropped + second.markers_dropped
        ),
        (5, 2),
        "{first}
{second}"
    );
    assert!(spool.locate(relayed.id).is_none());
    assert!(spool.locate(mixed.id).is_some());
    spool.close().unwrap();
    let (spool, report) = Spool::open(cfg.clone(), 2).unwrap();
    assert!(report.is_clean(), "{report}");
    let sum = |f: fn(&ShardRecovery) -> u64| report.shards.iter().map(f).sum::<u64>();
    assert_eq!(
        (sum(|s| s.delivery_results), sum(|s| s.dsn_markers)),
        (1, 0)
    );
    let after = spool.replay().unwrap();
    assert_eq!(after, replay, "compaction changes nothing a reader sees");
    spool.close().unwrap();
}

#[test]
fn one_process_at_a_time_holds_a_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    match Spool::open(config(tmp.path()), 1) {
        Err(SpoolError::Locked { path }) => assert!(path.ends_with("lock")),
        other => panic!("second open must be refused, got {other:?}"),
    }
    spool.close().unwrap();
    let (again, _) = Spool::open(config(tmp.path()), 1).expect("the lock is released on close");
    again.close().unwrap();
}

/// The queue view (`relay queue list|show`) agrees with the replay, and after the first call
/// (which reads the log once) no call reads a segment, whatever is committed meanwhile.
#[test]
fn the_queue_view_agrees_with_the_replay_and_reads_no_segment_per_call() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 16 << 10;
    let (spool, _) = Spool::open(cfg.clone(), 2).unwrap();
    let mut all = Vec::new();
    for n in 0..40 {
        let h = spool.shard(n % 2);
        let mailboxes: &[&str] = if n % 5 == 0 { &["alice"] } else { &[] };
        let mut m = local_message(&h, n, mailboxes, false);
        if n % 4 != 3 {
            m.remote = vec![format!("a{n}@far.example"), format!("b{n}@far.example")];
        }
        append_wait(&h, m.clone()).unwrap();
        all.push(m);
    }
    // Some were tried before the restart.
    for m in all.iter().filter(|m| !m.remote.is_empty()).step_by(3) {
        let record = DeliveryRecord {
            results: vec![outcome(m, &m.remote[0], Outcome::Deferred, 1, 100)],
            dsn_sent: Vec::new(),
        };
        deliver_wait(&spool.shard(1), record).unwrap();
    }
    spool.close().unwrap();

    let (spool, _) = Spool::open(cfg, 2).unwrap();
    let queued_in_replay = |spool: &Spool| -> Vec<ReplayMessage> {
        let replay = spool.replay().unwrap();
        replay
            .messages
            .into_iter()
            .filter(|m| !m.pending.is_empty())
            .collect()
    };
    assert_eq!(spool.segments_scanned(), 0);
    let first = spool.queued(usize::MAX).unwrap();
    let built = spool.segments_scanned();
    assert!(built >= 2, "the first call reads the log: {built}");
    assert_eq!(first, queued_in_replay(&spool));
    assert_eq!(first.len(), 30);

    // Traffic after the build: new messages, results, a final result, a deletion.
    let h = spool.shard(0);
    let mut fresh = local_message(&h, 100, &[], false);
    fresh.remote = vec!["new@far.example".into()];
    append_wait(&h, fresh.clone()).unwrap();
    let tried = &all[1];
    let done = &all[2];
    deliver_wait(
        &spool.shard(1),
        DeliveryRecord {
            results: vec![
                outcome(tried, &tried.remote[1], Outcome::Deferred, 3, 900),
                outcome(done, &done.remote[0], Outcome::Delivered, 1, 950),
                outcome(done, &done.remote[1], Outcome::Bounced, 1, 960),
                outcome(&fresh, &fresh.remote[0], Outcome::Deferred, 1, 990),
            ],
            dsn_sent: Vec::new(),
        },
    )
    .unwrap();
    let before = spool.segments_scanned();
    for _ in 0..20 {
        spool.queued(10).unwrap();
    }
    let now = spool.queued(usize::MAX).unwrap();
    for m in all.iter().filter(|m| m.id != done.id) {
        spool.queued_message(m.id).unwrap().unwrap();
    }
    assert_eq!(spool.queued_message(done.id).unwrap(), None, "garbage");
    assert_eq!(
        spool.segments_scanned(),
        before,
        "no call after the build reads a segment"
    );
    assert_eq!(now, queued_in_replay(&spool));
    assert_eq!(now.len(), 30, "one new, one finished");
    assert!(now.iter().any(|m| m.id == fresh.id));
    assert!(now.iter().all(|m| m.id != done.id));
    assert_eq!(
        spool.core.view.len().0,
        30,
        "a finished message leaves the view"
    );
    // A message without remote recipients is shown from its own frame.
    let local = all.iter().find(|m| m.remote.is_empty()).unwrap();
    let shown = spool.queued_message(local.id).unwrap().unwrap();
    assert_eq!((shown.id, shown.remote.len()), (local.id, 0));
    assert_eq!(spool.queued_message(QueueId::new(7, 0)).unwrap(), None);
    // Compaction moves frames; the view does not care.
    spool.compact().unwrap();
    assert_eq!(spool.queued(usize::MAX).unwrap(), queued_in_replay(&spool));
    assert_eq!(spool.queued(3).unwrap().len(), 3);
    spool.close().unwrap();
}

/// Messages and results committed while the view is being built are neither lost nor
/// counted twice.
#[test]
fn the_queue_view_built_under_traffic_misses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 16 << 10;
    let (spool, _) = Spool::open(cfg, 2).unwrap();
    let spool = Arc::new(spool);
    let write = |spool: &Spool, from: usize, to: usize| {
        for n in from..to {
            let h = spool.shard(n % 2);
            let mut m = local_message(&h, n, &[], false);
            m.remote = vec![format!("r{n}@far.example")];
            append_wait(&h, m.clone()).unwrap();
            if n % 3 == 0 {
                let outcome_of = if n % 2 == 0 {
                    Outcome::Deferred
                } else {
                    Outcome::Delivered
                };
                let record = DeliveryRecord {
                    results: vec![outcome(&m, &m.remote[0], outcome_of, 1, n as u64)],
                    dsn_sent: Vec::new(),
                };
                deliver_wait(&spool.shard((n + 1) % 2), record).unwrap();
            }
        }
    };
    write(&spool, 0, 100);
    let writer = {
        let spool = Arc::clone(&spool);
        std::thread::spawn(move || write(&spool, 100, 400))
    };
    for _ in 0..5 {
        spool.queued(usize::MAX).unwrap();
    }
    writer.join().unwrap();
    let replay: Vec<ReplayMessage> = spool
        .replay()
        .unwrap()
        .messages
        .into_iter()
        .filter(|m| !m.pending.is_empty())
        .collect();
    assert_eq!(spool.queued(usize::MAX).unwrap(), replay);
    assert_eq!(replay.len(), 400 - 400 / 6 - 1);
}

fn state_wait(h: &ShardHandle, s: MailboxState) -> Result<(), SpoolError> {
    h.append_state(s)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

fn state(user: &str, seq: u64, ops: Vec<StateOp>, released: Vec<QueueId>) -> MailboxState {
    MailboxState {
        user: user.into(),
        seq,
        ops,
        released,
    }
}

/// Through the real writer threads and files: a state record is answered once durable and
/// applied (its release deletes the user's copy, a checkpoint voids the user's earlier
/// records), survives a restart, and compaction keeps a void record exactly while a message
/// it releases is still on disk.
#[test]
fn state_records_release_checkpoint_and_compact() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 2).unwrap();
    let (h0, h1) = (spool.shard(0), spool.shard(1));
    let place = |uid| Placement {
        folder: INBOX,
        uidvalidity: 7,
        uid,
        flags: Flags::default(),
        internal_date: 1,
        zone_minutes: 0,
        modseq: 1,
    };
    let mut both = local_message(&h0, 1, &["alice", "bob"], false);
    both.placements = vec![Some(place(1)), None];
    let mut alice_only = local_message(&h0, 2, &["alice"], false);
    alice_only.placements = vec![Some(place(2))];
    append_wait(&h0, both.clone()).unwrap();
    append_wait(&h0, alice_only.clone()).unwrap();

    // Nothing to store: answered at once, before any writer could have run.
    let mut rx = h1
        .append_state(state("alice", 9, Vec::new(), Vec::new()))
        .unwrap();
    assert!(matches!(rx.try_recv(), Ok(Ok(()))));

    let subscribe = StateOp::Subscribe {
        name: "Lists".into(),
        subscribed: true,
    };
    let s1 = state("alice", 1, vec![subscribe.clone()], Vec::new());
    let s2 = state(
        "alice",
        2,
        vec![StateOp::Expunge {
            folder: INBOX,
            uids: vec![2],
            modseq: 3,
        }],
        vec![alice_only.id],
    );
    state_wait(&h1, s1.clone()).unwrap();
    state_wait(&h1, s2.clone()).unwrap();
    // Applied before the answer: alice let go of her only copy.
    assert!(spool.core.index.get(alice_only.id).unwrap().is_garbage());
    let replay = spool.replay().unwrap();
    assert_eq!(replay.states, vec![s1.clone(), s2.clone()]);
    let ids: Vec<QueueId> = replay.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![both.id]);
    assert_eq!(replay.messages[0].placements, both.placements);

    let cp = state(
        "alice",
        4,
        vec![
            StateOp::Reset,
            subscribe,
            StateOp::Place {
                id: both.id,
                placement: place(1),
            },
        ],
        Vec::new(),
    );
    state_wait(&h0, cp.clone()).unwrap();
    let bob = state("bob", 1, Vec::new(), vec![both.id]);
    state_wait(&h1, bob.clone()).unwrap();
    let replay = spool.replay().unwrap();
    assert_eq!(replay.states, vec![cp.clone(), bob.clone()]);
    assert_eq!(replay.deletions, vec![("bob".to_string(), both.id)]);
    spool.close().unwrap();

    // After a restart: the same, from the log.
    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    let count = |r: &RecoveryReport| -> (u64, u64) {
        r.shards
            .iter()
            .map(|s| (s.state_records, s.checkpoints))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    assert_eq!(count(&report), (4, 1));
    assert_eq!(spool.replay().unwrap(), replay);
    assert_eq!(spool.core.index.checkpoint("alice"), Some(4));
    let full = CompactionConfig {
        live_percent_below: 100,
        ..CompactionConfig::new(64 << 20)
    };
    // The void s1 goes; the void s2 goes only once no frame of the message it releases is
    // left (in round 1 if shard 0 was done first, else in round 2); cp and bob's stay.
    let r1 = spool.compact_with(&full).unwrap();
    assert_eq!(r1.messages_dropped, 1, "{r1}");
    assert!(spool.locate(alice_only.id).is_none());
    let r2 = spool.compact_with(&full).unwrap();
    assert_eq!(r1.states_dropped + r2.states_dropped, 2, "{r1}\n{r2}");
    assert_eq!(spool.replay().unwrap(), replay);
    spool.close().unwrap();
    let (spool, report) = Spool::open(config(tmp.path()), 2).unwrap();
    assert_eq!(count(&report), (2, 1), "{report}");
    assert_eq!(spool.replay().unwrap(), replay);
    spool.close().unwrap();
}

fn append_summary_wait(
    h: &ShardHandle,
    m: NewMessage,
    summary: Option<Vec<u8>>,
) -> Result<Committed, SpoolError> {
    h.append_message_with_summary(m, summary)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

/// A summary of `n` bytes no two messages share.
fn summary_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + n) as u8).collect()
}

#[test]
fn summaries_are_read_alone_and_survive_restart_and_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 16 << 10;
    let (spool, _) = Spool::open(cfg.clone(), 1).unwrap();
    let h = spool.shard(0);
    let mut kept = Vec::new();
    let mut doomed = Vec::new();
    for n in 0..30 {
        // Every third message has no summary (a relayed-only message, or an old writer).
        let summary = (n % 3 != 0).then(|| summary_of(100 + 37 * n));
        let m = if n % 2 == 0 {
            local_message(&h, n, &["alice"], false)
        } else {
            local_message(&h, n, &["bob"], false)
        };
        append_summary_wait(&h, m.clone(), summary.clone()).unwrap();
        if n % 2 == 0 {
            doomed.push(m);
        } else {
            kept.push((m, summary));
        }
    }
    let reader = spool.reader();
    for (m, summary) in &kept {
        assert_eq!(&reader.read_summary(m.id).unwrap(), summary);
        // The rest of the frame is unchanged by a summary.
        let back = spool.read_message(&spool.locate(m.id).unwrap()).unwrap();
        assert_eq!(back.body, stored_body(m));
        assert_eq!(back.meta.mailboxes, m.mailboxes);
        assert_eq!(back.meta.envelope, m.envelope);
    }
    let missing = QueueId::new(1, 0);
    assert!(matches!(spool.read_summary(missing), Err(SpoolError::NotFound(id)) if id == missing));
    delete_wait(&h, "alice", doomed.iter().map(|m| m.id).collect()).unwrap();
    spool.close().unwrap();

    // Recovery, then compaction moving every kept frame: the summaries move with them.
    let (spool, report) = Spool::open(cfg.clone(), 1).unwrap();
    assert!(report.is_clean(), "{report}");
    let before: Vec<Location> = kept
        .iter()
        .map(|(m, _)| spool.locate(m.id).unwrap())
        .collect();
    let full = CompactionConfig {
        live_percent_below: 100,
        ..CompactionConfig::new(cfg.segment_size)
    };
    let report = spool.compact_with(&full).unwrap();
    assert!(report.messages_copied > 0, "{report}");
    let mut moved = 0;
    for ((m, summary), was) in kept.iter().zip(&before) {
        if spool.locate(m.id).unwrap() != *was {
            moved += 1;
        }
        assert_eq!(&spool.read_summary(m.id).unwrap(), summary, "{}", m.id);
        assert_eq!(spool.read_body(m.id).unwrap(), stored_body(m));
    }
    assert!(moved > 0, "compaction moved nothing");
    spool.close().unwrap();
}

#[test]
fn a_damaged_meta_is_refused_not_returned_as_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(tmp.path()), 1).unwrap();
    let h = spool.shard(0);
    let m = local_message(&h, 1, &["alice"], false);
    let c = append_summary_wait(&h, m.clone(), Some(summary_of(64))).unwrap();
    assert_eq!(spool.read_summary(m.id).unwrap(), Some(summary_of(64)));
    // Flip a bit inside the meta (the summary is its tail): the index's meta checksum
    // catches it, and the body alone still reads.
    let path = FsIo::new(tmp.path().join("spool")).segment_path(0, c.location.segment);
    let mut bytes = fs::read(&path).unwrap();
    let meta_at = c.location.offset as usize + FRAME_HEADER_LEN;
    let at = bytes[meta_at..c.location.body_offset as usize]
        .windows(4)
        .position(|w| w == &summary_of(64)[..4])
        .unwrap();
    bytes[meta_at + at] ^= 0x01;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let err = spool.read_summary(m.id).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("meta checksum"), "{err}");
    spool.close().unwrap();
}

/// Frames written before summaries (the pinned format-2 fixture) read as "no summary".
#[test]
fn v2_frames_have_no_summary() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-v2");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("spool");
    for shard in fs::read_dir(fixture).unwrap() {
        let shard = shard.unwrap().path();
        let to = root.join(shard.file_name().unwrap());
        fs::create_dir_all(&to).unwrap();
        for seg in fs::read_dir(&shard).unwrap() {
            let seg = seg.unwrap().path();
            fs::copy(&seg, to.join(seg.file_name().unwrap())).unwrap();
        }
    }
    let (spool, report) = Spool::open(SpoolConfig::new(&root), 2).unwrap();
    assert!(report.is_clean(), "{report}");
    let replay = spool.replay().unwrap();
    assert!(!replay.messages.is_empty());
    for m in &replay.messages {
        assert_eq!(spool.read_summary(m.id).unwrap(), None, "{}", m.id);
        assert!(!spool.read_body(m.id).unwrap().is_empty());
    }
    spool.close().unwrap();
}
