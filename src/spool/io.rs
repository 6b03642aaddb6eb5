//! The segment IO seam: everything the spool does to files goes through [`SegmentIo`] and
//! [`SegmentFile`], so the same writer and recovery code runs on real files ([`FsIo`]) and on
//! the simulated disk (`sim::SimDisk`, in tests and with feature `sim`) that loses or tears
//! unsynced writes.
//!
//! [`FsIo`] is plain std: buffered positioned writes plus `fdatasync` (measured:
//! neither io_uring nor O_DIRECT was faster, docs/ARCHITECTURE.md §5). A vectored write at
//! an offset is `lseek` + `writev` on the writer's own file handle (std has no stable `pwritev`;
//! `rustix::io::pwritev` would save the lseek, not worth a dependency: one extra syscall per
//! group commit of up to hundreds of records).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Highest shard number: a [`QueueId`](crate::envelope::QueueId) carries 8 bits of shard.
pub const MAX_SHARDS: usize = 256;

/// One open segment file. `Sync` because readers share open files through the spool's small
/// cache of segment handles (positioned reads need no `&mut`).
pub trait SegmentFile: Send + Sync {
    /// Writes every byte of `bufs`, in order, starting at `offset`.
    fn write_all_at(&mut self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()>;
    /// `fdatasync`: data and the size are on stable storage when this returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// A new handle of the same open file (`dup`), for reads through io_uring
    /// (`runtime::file_read`); `None` (the default) when this is not a real file.
    fn duplicate(&self) -> Option<io::Result<File>> {
        None
    }
    /// Reads what the page cache holds of the range without waiting for the disk
    /// (`preadv2(RWF_NOWAIT)`): `Some(Ok(n))` with `n` possibly short, `Some(Err(_))` when
    /// nothing could be read that way (`EAGAIN`: not cached); `None` (the default) when this
    /// is not a real file.
    fn read_at_cached(&self, _offset: u64, _buf: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }
}

/// The directory side: shards, segment files and their names.
pub trait SegmentIo: Send + Sync {
    /// The spool directory, for messages.
    fn root(&self) -> &Path;
    fn shard_path(&self, shard: u8) -> PathBuf {
        self.root().join(format!("shard-{shard:03}"))
    }
    fn segment_path(&self, shard: u8, segment: u64) -> PathBuf {
        self.shard_path(shard).join(format!("{segment:020}.seg"))
    }
    /// Shard directories present, ascending. Other names are ignored; `shard-NNN` with
    /// NNN ≥ 256 is an error (no queue id can point there).
    fn list_shards(&self) -> io::Result<Vec<u8>>;
    /// Creates the root and the shard directory (0700) if missing, durably.
    fn create_shard(&self, shard: u8) -> io::Result<()>;
    /// Segment numbers present in the shard, ascending. Other names are ignored.
    fn list_segments(&self, shard: u8) -> io::Result<Vec<u64>>;
    /// Creates a new, empty segment (0600); fails if it exists. Not yet durable: see
    /// [`SegmentIo::sync_shard_dir`].
    fn create_segment(&self, shard: u8, segment: u64) -> io::Result<Box<dyn SegmentFile>>;
    fn open_segment(
        &self,
        shard: u8,
        segment: u64,
        writable: bool,
    ) -> io::Result<Box<dyn SegmentFile>>;
    /// Unlinks a segment. Not durable until [`SegmentIo::sync_shard_dir`]; handles already
    /// open keep reading the old file (POSIX unlink semantics).
    fn remove_segment(&self, shard: u8, segment: u64) -> io::Result<()>;
    /// Makes the shard directory's entries (created, renamed or removed files) durable.
    fn sync_shard_dir(&self, shard: u8) -> io::Result<()>;
    /// The temporary name compaction writes segment `segment` under before publishing it.
    fn temp_segment_path(&self, shard: u8, segment: u64) -> PathBuf {
        self.shard_path(shard)
            .join(format!("{segment:020}.seg.tmp"))
    }
    /// Creates (exclusively, 0600) the temporary file of a segment being compacted.
    fn create_temp_segment(&self, shard: u8, segment: u64) -> io::Result<Box<dyn SegmentFile>>;
    /// Atomically renames the temporary file to the segment's real name (fails if the temporary
    /// file is missing). Not durable until [`SegmentIo::sync_shard_dir`].
    fn publish_temp_segment(&self, shard: u8, segment: u64) -> io::Result<()>;
    /// Segment numbers that have a temporary file (leftovers of an interrupted compaction).
    fn list_temp_segments(&self, shard: u8) -> io::Result<Vec<u64>>;
    fn remove_temp_segment(&self, shard: u8, segment: u64) -> io::Result<()>;
    /// A fresh random segment salt (see `frame`: it keeps body bytes from posing as frames).
    fn new_salt(&self) -> u32;
}

/// The real implementation on std::fs.
#[derive(Debug, Clone)]
pub struct FsIo {
    root: PathBuf,
}

impl FsIo {
    pub fn new(root: impl Into<PathBuf>) -> FsIo {
        FsIo { root: root.into() }
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Parses `shard-NNN` (exactly three digits).
pub(crate) fn parse_shard_name(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("shard-")?;
    if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses `NNNNNNNNNNNNNNNNNNNN.seg` (exactly twenty digits).
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    parse_twenty_digits(name.strip_suffix(".seg")?)
}

/// Parses `NNNNNNNNNNNNNNNNNNNN.seg.tmp`, compaction's temporary name.
pub(crate) fn parse_temp_segment_name(name: &str) -> Option<u64> {
    parse_twenty_digits(name.strip_suffix(".seg.tmp")?)
}

fn parse_twenty_digits(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn list_named(dir: &Path, parse: fn(&str) -> Option<u64>) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(parse) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn create_private(path: &Path) -> io::Result<Box<dyn SegmentFile>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    Ok(Box::new(FsFile { file }))
}

impl SegmentIo for FsIo {
    fn root(&self) -> &Path {
        &self.root
    }

    fn list_shards(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(n) = entry.file_name().to_str().and_then(parse_shard_name) else {
                continue;
            };
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let n = u8::try_from(n).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("shard directory shard-{n:03} is beyond the 256-shard id space"),
                )
            })?;
            out.push(n);
        }
        out.sort_unstable();
        Ok(out)
    }

    fn create_shard(&self, shard: u8) -> io::Result<()> {
        let path = self.shard_path(shard);
        if path.is_dir() {
            return Ok(());
        }
        let new_root = !self.root.is_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)?;
        sync_dir(&self.root)?;
        if new_root {
            if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn list_segments(&self, shard: u8) -> io::Result<Vec<u64>> {
        list_named(&self.shard_path(shard), parse_segment_name)
    }

    fn create_segment(&self, shard: u8, segment: u64) -> io::Result<Box<dyn SegmentFile>> {
        create_private(&self.segment_path(shard, segment))
    }

    fn open_segment(
        &self,
        shard: u8,
        segment: u64,
        writable: bool,
    ) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.segment_path(shard, segment))?;
        Ok(Box::new(FsFile { file }))
    }

    fn remove_segment(&self, shard: u8, segment: u64) -> io::Result<()> {
        fs::remove_file(self.segment_path(shard, segment))
    }

    fn sync_shard_dir(&self, shard: u8) -> io::Result<()> {
        sync_dir(&self.shard_path(shard))
    }

    fn create_temp_segment(&self, shard: u8, segment: u64) -> io::Result<Box<dyn SegmentFile>> {
        create_private(&self.temp_segment_path(shard, segment))
    }

    fn publish_temp_segment(&self, shard: u8, segment: u64) -> io::Result<()> {
        fs::rename(
            self.temp_segment_path(shard, segment),
            self.segment_path(shard, segment),
        )
    }

    fn list_temp_segments(&self, shard: u8) -> io::Result<Vec<u64>> {
        list_named(&self.shard_path(shard), parse_temp_segment_name)
    }

    fn remove_temp_segment(&self, shard: u8, segment: u64) -> io::Result<()> {
        fs::remove_file(self.temp_segment_path(shard, segment))
    }

    fn new_salt(&self) -> u32 {
        // std's RandomState is keyed from the OS random source: unpredictable to a peer, and
        // no extra dependency for four bytes.
        let h = RandomState::new().hash_one(std::process::id());
        (h ^ (h >> 32)) as u32
    }
}

struct FsFile {
    file: File,
}

impl SegmentFile for FsFile {
    fn write_all_at(&mut self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        let mut owned: Vec<IoSlice<'_>> = bufs.to_vec();
        let mut slices: &mut [IoSlice<'_>] = &mut owned;
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            // std caps one call at IOV_MAX slices; the loop continues with the rest.
            match self.file.write_vectored(slices) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "segment write returned 0 bytes",
                    ))
                }
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn duplicate(&self) -> Option<io::Result<File>> {
        Some(self.file.try_clone())
    }

    fn read_at_cached(&self, offset: u64, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let read = rustix::io::preadv2(
            &self.file,
            &mut [std::io::IoSliceMut::new(buf)],
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        Some(read.map_err(io::Error::from))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_shard_name("shard-007"), Some(7));
        assert_eq!(parse_shard_name("shard-7"), None);
        assert_eq!(parse_shard_name("shard-0007"), None);
        assert_eq!(parse_shard_name("lost+found"), None);
        assert_eq!(parse_segment_name("00000000000000000012.seg"), Some(12));
        assert_eq!(parse_segment_name("12.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000012.seg.tmp"), None);
        assert_eq!(
            parse_temp_segment_name("00000000000000000012.seg.tmp"),
            Some(12)
        );
        assert_eq!(parse_temp_segment_name("00000000000000000012.seg"), None);
        assert_eq!(parse_temp_segment_name("12.seg.tmp"), None);
    }

    /// Bytes just written are in the page cache: the `RWF_NOWAIT` read returns them (a
    /// filesystem without the flag would say `EOPNOTSUPP`, which the reader treats as "not
    /// cached"; tmpfs and ext4 have it).
    #[test]
    fn a_cached_read_returns_freshly_written_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let io = FsIo::new(tmp.path().join("spool"));
        io.create_shard(0).unwrap();
        let mut f = io.create_segment(0, 1).unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        f.write_all_at(0, &[IoSlice::new(&data)]).unwrap();
        let mut back = vec![0u8; 5000];
        let n = f
            .read_at_cached(100, &mut back)
            .expect("a real file answers")
            .expect("freshly written bytes are cached");
        assert_eq!(n, 5000);
        assert_eq!(back, &data[100..5100]);
    }

    #[test]
    fn fs_io_creates_private_files_and_writes_vectored() {
        let tmp = tempfile::tempdir().unwrap();
        let io = FsIo::new(tmp.path().join("spool"));
        io.create_shard(3).unwrap();
        let mode = fs::metadata(io.shard_path(3)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(io.list_shards().unwrap(), vec![3]);
        let mut f = io.create_segment(3, 1).unwrap();
        let mode = fs::metadata(io.segment_path(3, 1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(io.create_segment(3, 1).is_err(), "create is exclusive");
        let big = vec![7u8; 5000];
        let slices: Vec<IoSlice<'_>> = (0..2000)
            .map(|i| IoSlice::new(if i % 2 == 0 { b"ab" } else { &big[..1] }))
            .chain([IoSlice::new(&[]), IoSlice::new(&big)])
            .collect();
        f.write_all_at(10, &slices).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.size().unwrap(), 10 + 3000 + 5000);
        let mut back = vec![0u8; 8];
        assert_eq!(f.read_at(10, &mut back).unwrap(), 8);
        assert_eq!(&back, b"ab\x07ab\x07ab");
        let mut tail = vec![0u8; 100];
        assert_eq!(f.read_at(8000, &mut tail).unwrap(), 10);
        f.truncate(12).unwrap();
        assert_eq!(f.size().unwrap(), 12);
        assert_eq!(io.list_segments(3).unwrap(), vec![1]);
        io.remove_segment(3, 1).unwrap();
        assert!(io.list_segments(3).unwrap().is_empty());
        assert_ne!(io.new_salt(), io.new_salt());
        // Compaction's temporary files: separate names, published by an atomic rename.
        let mut t = io.create_temp_segment(3, 9).unwrap();
        t.write_all_at(0, &[IoSlice::new(b"compacted")]).unwrap();
        t.sync_data().unwrap();
        assert!(io.create_temp_segment(3, 9).is_err(), "create is exclusive");
        assert_eq!(io.list_temp_segments(3).unwrap(), vec![9]);
        assert!(io.list_segments(3).unwrap().is_empty());
        io.publish_temp_segment(3, 9).unwrap();
        assert!(io.list_temp_segments(3).unwrap().is_empty());
        assert_eq!(io.list_segments(3).unwrap(), vec![9]);
        assert!(
            io.publish_temp_segment(3, 9).is_err(),
            "nothing left to publish"
        );
        let mode = fs::metadata(io.segment_path(3, 9))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let r = io.open_segment(3, 9, false).unwrap();
        io.remove_segment(3, 9).unwrap();
        let mut back = [0u8; 9];
        assert_eq!(
            r.read_at(0, &mut back).unwrap(),
            9,
            "an open handle outlives unlink"
        );
        assert_eq!(&back, b"compacted");
        io.create_temp_segment(3, 10).unwrap();
        io.remove_temp_segment(3, 10).unwrap();
        assert!(io.list_temp_segments(3).unwrap().is_empty());
    }
}
