//! Fuzz entry point for the segment decoder (a plain function, so `cargo test` runs it over the
//! seed corpus in `fuzz/corpus/spool_frame` even where cargo-fuzz is not installed).
//!
//! The input is one segment file, scanned read-only by the recovery scanner twice: as given
//! (preamble checks, damaged headers, resync, torn tails), and with every checksum made to
//! match (both preamble copies and each frame header the input describes), because random
//! bytes almost never carry a valid CRC-32C and the lengths, kinds, versions and the rkyv
//! validation of arbitrary payloads would stay out of reach. Checked: no panic, every kept
//! frame lies within the input, and what is kept and decoded stays proportional to it.

use std::io::{self, IoSlice};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{
    FrameHeader, Record, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_PREAMBLE_LEN,
};
use super::io::{SegmentFile, SegmentIo};
use super::recovery::{scan_shard, Mode};

pub fn decode_segment(data: &[u8]) {
    scan(data);
    scan(&with_valid_checksums(data));
}

/// Scans `data` as the only segment of its shard; the records kept, or `None` when the scan
/// stopped with an error (a Fatal frame or preamble).
fn scan(data: &[u8]) -> Option<u64> {
    let (shard, segment, _) = identity(data);
    let io = OneSegment {
        root: PathBuf::from("fuzz"),
        shard,
        segment,
        bytes: Arc::from(data),
    };
    let len = data.len() as u64;
    let mut kept = 0u64;
    let result = scan_shard(&io, shard, Mode::ReadOnly, &mut |v| {
        kept += 1;
        let at = v.location;
        assert!(at.offset >= SEGMENT_PREAMBLE_LEN && at.offset + at.frame_len <= len);
        assert!(at.body_offset + at.body_len <= at.offset + at.frame_len);
        assert_eq!(v.body.len() as u64, at.body_len);
        // A decoded record holds no more than a small multiple of its archived bytes: rkyv
        // validation must not let one archive expand (shared or overlapping subtrees).
        let held = held_bytes(&v.record);
        assert!(
            held <= 4 * v.meta.len() + 64,
            "{held} bytes decoded from a {}-byte payload",
            v.meta.len()
        );
        ControlFlow::Continue(())
    });
    let (report, _) = result.ok()?;
    assert_eq!(report.records_kept, kept);
    assert!(kept * FRAME_HEADER_LEN as u64 <= len);
    assert!(report.bytes_kept <= len);
    Some(kept)
}

/// Shard, segment and salt as the input's first header copy states them (unchecked), so that
/// a well-formed file is scanned as the segment it says it is.
fn identity(data: &[u8]) -> (u8, u64, u32) {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    let n = data.len().min(SEGMENT_HEADER_LEN);
    h[..n].copy_from_slice(&data[..n]);
    let shard = h[10];
    let salt = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let mut segment = [0u8; 8];
    segment.copy_from_slice(&h[16..24]);
    (shard, u64::from_le_bytes(segment), salt)
}

/// `data` with a valid preamble and with the header and data checksums of every frame it
/// describes (each header's lengths taken as they are) recomputed under the segment's salt.
fn with_valid_checksums(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    let preamble = SEGMENT_PREAMBLE_LEN as usize;
    if b.len() < preamble {
        return b;
    }
    let (shard, segment, salt) = identity(data);
    let header = SegmentHeader {
        shard: u16::from(shard),
        segment,
        salt,
    }
    .encode();
    b[..SEGMENT_HEADER_LEN].copy_from_slice(&header);
    b[SEGMENT_HEADER_LEN..preamble].copy_from_slice(&header);
    let mut off = preamble;
    while off + FRAME_HEADER_LEN <= b.len() {
        let mut h = FrameHeader::check(&b[off..], salt).header;
        let end = off as u64 + h.frame_len();
        let fits = end <= b.len() as u64;
        if fits {
            let meta_at = off + FRAME_HEADER_LEN;
            let meta = &b[meta_at..meta_at + h.meta_len as usize];
            let body_at = off + h.body_offset() as usize;
            let body = &b[body_at..body_at + h.body_len as usize];
            h.data_crc = crc32c::crc32c_append(crc32c::crc32c(meta), body);
        }
        b[off..off + FRAME_HEADER_LEN].copy_from_slice(&h.encode(salt));
        if !fits {
            break;
        }
        off = end as usize;
    }
    b
}

/// Heap bytes a decoded record owns (strings and vectors).
fn held_bytes(record: &Record) -> usize {
    use std::mem::size_of_val;
    let strings = |v: &[String]| size_of_val(v) + v.iter().map(String::len).sum::<usize>();
    match record {
        Record::Message(m) => {
            let e = &m.envelope;
            let o = &m.origin;
            o.client_ip.len()
                + o.helo.len()
                + o.protocol.len()
                + e.reverse_path.len()
                + e.params.envid.as_ref().map_or(0, String::len)
                + size_of_val(e.recipients.as_slice())
                + e.recipients
                    .iter()
                    .map(|r| r.address.len() + r.orcpt.as_ref().map_or(0, String::len))
                    .sum::<usize>()
                + strings(&m.mailboxes)
                + strings(&m.remote)
                + size_of_val(m.placements.as_slice())
                + m.placements
                    .iter()
                    .flatten()
                    .map(|p| strings(&p.flags.keywords))
                    .sum::<usize>()
        }
        Record::State(s) => {
            use crate::spool::state::StateOp;
            s.user.len()
                + size_of_val(s.released.as_slice())
                + size_of_val(s.ops.as_slice())
                + s.ops
                    .iter()
                    .map(|op| match op {
                        StateOp::CreateFolder { name, .. }
                        | StateOp::RenameFolder { name, .. }
                        | StateOp::Subscribe { name, .. } => name.len(),
                        StateOp::Place { placement, .. } => strings(&placement.flags.keywords),
                        StateOp::SetFlags { flags, .. } => strings(&flags.keywords),
                        StateOp::Expunge { uids, .. } => size_of_val(uids.as_slice()),
                        StateOp::DeleteFolder { .. }
                        | StateOp::FolderCounters { .. }
                        | StateOp::Reset => 0,
                    })
                    .sum::<usize>()
        }
        Record::Deletion(d) => d.mailbox.len() + size_of_val(d.ids.as_slice()),
        Record::Delivery(d) => {
            size_of_val(d.results.as_slice())
                + d.results
                    .iter()
                    .map(|r| r.recipient.len() + r.reply.len())
                    .sum::<usize>()
                + size_of_val(d.dsn_sent.as_slice())
                + d.dsn_sent.iter().map(|s| s.recipient.len()).sum::<usize>()
        }
    }
}

/// A spool directory of one shard holding one segment file: the input. Read-only.
struct OneSegment {
    root: PathBuf,
    shard: u8,
    segment: u64,
    bytes: Arc<[u8]>,
}

struct MemFile(Arc<[u8]>);

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "fuzz input is read-only")
}

impl SegmentFile for MemFile {
    fn write_all_at(&mut self, _offset: u64, _bufs: &[IoSlice<'_>]) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Err(read_only())
    }
    fn truncate(&mut self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - from);
        buf[..n].copy_from_slice(&self.0[from..from + n]);
        Ok(n)
    }
}

impl SegmentIo for OneSegment {
    fn root(&self) -> &Path {
        &self.root
    }
    fn list_shards(&self) -> io::Result<Vec<u8>> {
        Ok(vec![self.shard])
    }
    fn create_shard(&self, _shard: u8) -> io::Result<()> {
        Err(read_only())
    }
    fn list_segments(&self, shard: u8) -> io::Result<Vec<u64>> {
        Ok(if shard == self.shard {
            vec![self.segment]
        } else {
            Vec::new()
        })
    }
    fn create_segment(&self, _shard: u8, _segment: u64) -> io::Result<Box<dyn SegmentFile>> {
        Err(read_only())
    }
    fn open_segment(
        &self,
        shard: u8,
        segment: u64,
        writable: bool,
    ) -> io::Result<Box<dyn SegmentFile>> {
        if writable {
            return Err(read_only());
        }
        if (shard, segment) != (self.shard, self.segment) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Box::new(MemFile(Arc::clone(&self.bytes))))
    }
    fn remove_segment(&self, _shard: u8, _segment: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_shard_dir(&self, _shard: u8) -> io::Result<()> {
        Err(read_only())
    }
    fn create_temp_segment(&self, _shard: u8, _segment: u64) -> io::Result<Box<dyn SegmentFile>> {
        Err(read_only())
    }
    fn publish_temp_segment(&self, _shard: u8, _segment: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn list_temp_segments(&self, _shard: u8) -> io::Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn remove_temp_segment(&self, _shard: u8, _segment: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn new_salt(&self) -> u32 {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/spool_frame");
        let mut seen = 0;
        let mut kept = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed");
            super::decode_segment(&data);
            kept += super::scan(&data).unwrap_or(0);
            seen += 1;
        }
        assert!(seen >= 3, "seed corpus is missing");
        // The intact and torn seeds hold records: the harness reaches the payload decoder.
        assert!(kept >= 12, "only {kept} records decoded from the seeds");
    }

    #[test]
    fn checksums_are_repaired_so_payloads_are_reached() {
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/spool-v1/shard-000/00000000000000000001.seg"
        ))
        .expect("fixture");
        let intact = super::scan(&seed).expect("fixture scans");
        assert!(intact > 0);
        // Damage every frame header's checksum: nothing is kept as given (a torn tail from the
        // first frame on), everything once repaired.
        let mut damaged = seed.clone();
        let mut off = super::SEGMENT_PREAMBLE_LEN as usize;
        let mut frames = 0;
        while off + 32 <= damaged.len() {
            let h = super::FrameHeader::check(&seed[off..], 0).header;
            damaged[off + 28] ^= 0xff;
            off += h.frame_len() as usize;
            frames += 1;
        }
        assert_eq!(frames, intact);
        assert_eq!(super::scan(&damaged), Some(0));
        assert_eq!(
            super::scan(&super::with_valid_checksums(&damaged)),
            Some(intact)
        );
        // And both preamble copies: the segment is refused as given.
        for at in [28, 60] {
            damaged[at] ^= 0xff;
        }
        assert_eq!(super::scan(&damaged), None);
        assert_eq!(
            super::scan(&super::with_valid_checksums(&damaged)),
            Some(intact)
        );
    }
}
