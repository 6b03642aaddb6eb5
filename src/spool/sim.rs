//! A simulated disk for tests: an in-memory [`SegmentIo`] that keeps what is on stable storage
//! apart from what is only in the "page cache", and at a crash loses, keeps or tears the
//! unsynced part. It can also inject write, sync and create errors.
//!
//! Model (deliberately pessimistic, after Linux ext4 behaviour):
//! - Files are inodes; a shard directory maps names (`N.seg`, `N.seg.tmp`) to inodes. An open
//!   handle refers to the inode, so it keeps reading after its name is unlinked or renamed.
//! - A write lands in the page cache at once (reads see it) and becomes durable only at the
//!   next successful `sync_data` of that file.
//! - At a crash every unsynced write is independently dropped, kept, torn to a random prefix,
//!   or kept in random 512-byte pieces (writeback order is arbitrary, so a later write may
//!   survive an earlier one; holes read as zeros). An unsynced truncate may or may not persist.
//! - Directory operations (create, unlink, rename) are durable only after `sync_shard_dir`.
//!   At a crash each unsynced one independently persists or not, in order; one whose source is
//!   missing by then (a rename of a file whose creation was lost) does not happen. A rename is
//!   atomic: the inode has exactly one of the two names.
//! - After a failed `sync_data` ("fsyncgate") the file is poisoned: later syncs return Ok but
//!   make nothing durable, like a kernel that dropped the dirty pages and cleared the error.
//! - A failed write may leave a random prefix of its bytes in the page cache.
//!
//! Every operation takes one mutex: this is test code, not a hot path. A crash returns a new
//! disk with the surviving state and kills the old handle (every later call on it fails), so a
//! writer still running against it cannot touch the "rebooted" disk.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{SegmentFile, SegmentIo};

/// SplitMix64: tiny, seedable, good enough to pick scenarios.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Fault probabilities, each `(num, den)`; `(0, 1)` disables.
#[derive(Debug, Clone, Copy)]
pub struct SimFaults {
    pub write_error: (u64, u64),
    pub sync_error: (u64, u64),
    pub create_error: (u64, u64),
}

impl Default for SimFaults {
    fn default() -> Self {
        SimFaults {
            write_error: (0, 1),
            sync_error: (0, 1),
            create_error: (0, 1),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    durable: Vec<u8>,
    cache: Vec<u8>,
    pending: Vec<Op>,
    poisoned: bool,
}

/// A name in a shard directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    Segment(u64),
    Temp(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(Name, u64),
    Unlink(Name),
    Rename(Name, Name),
}

#[derive(Debug, Clone, Default)]
struct SimDir {
    /// What lookups see now.
    live: BTreeMap<Name, u64>,
    /// What survives a crash for sure.
    durable: BTreeMap<Name, u64>,
    /// Unsynced operations since `durable`, in order.
    pending: Vec<DirOp>,
}

#[derive(Debug, Clone)]
struct State {
    alive: bool,
    rng: SimRng,
    faults: SimFaults,
    /// Errors to fail the next N calls of a kind with, regardless of probabilities.
    fail_next_writes: u32,
    fail_next_syncs: u32,
    /// Power loss after this many more mutating operations (the crash point).
    ops_until_death: Option<u64>,
    dirs: BTreeMap<u8, SimDir>,
    inodes: BTreeMap<u64, SimFile>,
    next_inode: u64,
    stats: SimStats,
}

/// Counters, for tests that want to see the faults happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub syncs: u64,
    pub write_errors: u64,
    pub sync_errors: u64,
    pub create_errors: u64,
    pub renames: u64,
    pub removes: u64,
}

/// The simulated disk. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SimDisk {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

fn dead() -> io::Error {
    io::Error::other("simulated disk crashed")
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn injected(rng: &mut SimRng) -> io::Error {
    let errno = match rng.below(3) {
        0 => libc::ENOSPC,
        1 => libc::EIO,
        _ => libc::EFBIG,
    };
    io::Error::from_raw_os_error(errno)
}

impl State {
    /// Counts one mutating operation toward the crash point; true if the power goes now (the
    /// operation does not complete).
    fn dies_now(&mut self) -> bool {
        match self.ops_until_death.as_mut() {
            Some(0) | None => false,
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.alive = false;
                }
                *n == 0
            }
        }
    }

    fn dir(&mut self, shard: u8) -> io::Result<&mut SimDir> {
        self.dirs.get_mut(&shard).ok_or_else(not_found)
    }

    fn lookup(&self, shard: u8, name: Name) -> Option<u64> {
        self.dirs.get(&shard)?.live.get(&name).copied()
    }

    /// A new empty file under `name` (exclusive), with the create fault applied.
    fn create(&mut self, shard: u8, name: Name) -> io::Result<u64> {
        if self.dies_now() {
            return Err(dead());
        }
        let (num, den) = self.faults.create_error;
        if self.rng.chance(num, den) {
            self.stats.create_errors += 1;
            return Err(injected(&mut self.rng));
        }
        let ino = self.next_inode;
        let dir = self.dir(shard)?;
        if dir.live.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        dir.live.insert(name, ino);
        dir.pending.push(DirOp::Link(name, ino));
        self.next_inode += 1;
        self.inodes.insert(ino, SimFile::default());
        Ok(ino)
    }

    fn unlink(&mut self, shard: u8, name: Name) -> io::Result<()> {
        if self.dies_now() {
            return Err(dead());
        }
        let dir = self.dir(shard)?;
        dir.live.remove(&name).ok_or_else(not_found)?;
        dir.pending.push(DirOp::Unlink(name));
        self.stats.removes += 1;
        Ok(())
    }

    fn list(&self, shard: u8, temp: bool) -> io::Result<Vec<u64>> {
        let dir = self.dirs.get(&shard).ok_or_else(not_found)?;
        Ok(dir
            .live
            .keys()
            .filter_map(|name| match (name, temp) {
                (Name::Segment(n), false) | (Name::Temp(n), true) => Some(*n),
                _ => None,
            })
            .collect())
    }
}

fn apply_write(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let at = offset as usize;
    if content.len() < at + data.len() {
        content.resize(at + data.len(), 0);
    }
    content[at..at + data.len()].copy_from_slice(data);
}

/// What a crash leaves of a directory: the durable entries plus each unsynced operation with
/// probability 1/2, in order, skipping those whose source is gone.
fn crash_dir(dir: &SimDir, rng: &mut SimRng) -> BTreeMap<Name, u64> {
    let mut entries = dir.durable.clone();
    for op in &dir.pending {
        if !rng.chance(1, 2) {
            continue;
        }
        match *op {
            DirOp::Link(name, ino) => {
                entries.entry(name).or_insert(ino);
            }
            DirOp::Unlink(name) => {
                entries.remove(&name);
            }
            DirOp::Rename(from, to) => {
                if let Some(ino) = entries.remove(&from) {
                    entries.insert(to, ino);
                }
            }
        }
    }
    entries
}

/// What a crash leaves of a file's bytes.
fn crash_file(f: &SimFile, rng: &mut SimRng) -> Vec<u8> {
    let mut content = f.durable.clone();
    for op in &f.pending {
        match op {
            Op::Truncate(len) => {
                if rng.chance(1, 2) {
                    content.resize(*len as usize, 0);
                }
            }
            Op::Write { offset, data } => match rng.below(4) {
                0 => {}
                1 => apply_write(&mut content, *offset, data),
                2 => {
                    let keep = rng.below(data.len() as u64 + 1) as usize;
                    apply_write(&mut content, *offset, &data[..keep]);
                }
                _ => {
                    for (i, piece) in data.chunks(512).enumerate() {
                        if rng.chance(1, 2) {
                            apply_write(&mut content, offset + (i * 512) as u64, piece);
                        }
                    }
                }
            },
        }
    }
    content
}

impl SimDisk {
    pub fn new(seed: u64, faults: SimFaults) -> SimDisk {
        SimDisk {
            root: PathBuf::from("/sim/spool"),
            state: Arc::new(Mutex::new(State {
                alive: true,
                rng: SimRng::new(seed),
                faults,
                fail_next_writes: 0,
                fail_next_syncs: 0,
                ops_until_death: None,
                dirs: BTreeMap::new(),
                inodes: BTreeMap::new(),
                next_inode: 1,
                stats: SimStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the checker.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.lock();
        if s.alive {
            Ok(s)
        } else {
            Err(dead())
        }
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// Fails the next `n` segment writes.
    pub fn fail_next_writes(&self, n: u32) {
        self.lock().fail_next_writes = n;
    }

    /// Fails the next `n` data syncs.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().fail_next_syncs = n;
    }

    /// Sets the crash point: the power goes during the `n`-th mutating operation from now
    /// (1 = the next one). Every call after it fails; call [`SimDisk::crash`] to reboot.
    pub fn die_after_ops(&self, n: u64) {
        self.lock().ops_until_death = Some(n.max(1));
    }

    pub fn is_alive(&self) -> bool {
        self.lock().alive
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// The bytes a reader of segment `segment` would see now (page cache), for tests.
    pub fn contents(&self, shard: u8, segment: u64) -> Option<Vec<u8>> {
        let s = self.lock();
        let ino = s.lookup(shard, Name::Segment(segment))?;
        s.inodes.get(&ino).map(|f| f.cache.clone())
    }

    /// Overwrites bytes of a segment, durably (media corruption, for tests).
    pub fn corrupt(&self, shard: u8, segment: u64, offset: u64, bytes: &[u8]) {
        let mut s = self.lock();
        let Some(ino) = s.lookup(shard, Name::Segment(segment)) else {
            return;
        };
        if let Some(f) = s.inodes.get_mut(&ino) {
            apply_write(&mut f.durable, offset, bytes);
            apply_write(&mut f.cache, offset, bytes);
        }
    }

    /// An independent copy of the whole disk as it is now (page cache and pending operations
    /// included), so a test can replay every crash point from the same state.
    pub fn snapshot(&self) -> SimDisk {
        SimDisk {
            root: self.root.clone(),
            state: Arc::new(Mutex::new(self.lock().clone())),
        }
    }

    /// Power loss: this handle dies, and the returned disk holds what survived.
    pub fn crash(&self) -> SimDisk {
        let mut s = self.lock();
        s.alive = false;
        let mut rng = SimRng::new(s.rng.next_u64());
        let mut dirs = BTreeMap::new();
        let mut inodes = BTreeMap::new();
        for (&shard, dir) in &s.dirs {
            let entries = crash_dir(dir, &mut rng);
            for &ino in entries.values() {
                if let Some(f) = s.inodes.get(&ino) {
                    let content = crash_file(f, &mut rng);
                    inodes.insert(
                        ino,
                        SimFile {
                            durable: content.clone(),
                            cache: content,
                            pending: Vec::new(),
                            poisoned: false,
                        },
                    );
                }
            }
            dirs.insert(
                shard,
                SimDir {
                    live: entries.clone(),
                    durable: entries,
                    pending: Vec::new(),
                },
            );
        }
        SimDisk {
            root: self.root.clone(),
            state: Arc::new(Mutex::new(State {
                alive: true,
                rng,
                faults: s.faults,
                fail_next_writes: 0,
                fail_next_syncs: 0,
                ops_until_death: None,
                dirs,
                inodes,
                next_inode: s.next_inode,
                stats: SimStats::default(),
            })),
        }
    }

    fn handle(&self, ino: u64, writable: bool) -> Box<dyn SegmentFile> {
        Box::new(SimSegment {
            disk: self.clone(),
            ino,
            writable,
        })
    }
}

impl SegmentIo for SimDisk {
    fn root(&self) -> &Path {
        &self.root
    }

    fn list_shards(&self) -> io::Result<Vec<u8>> {
        Ok(self.live()?.dirs.keys().copied().collect())
    }

    fn create_shard(&self, shard: u8) -> io::Result<()> {
        // Simplification: shard directories are durable at once.
        let mut s = self.live()?;
        if s.dies_now() {
            return Err(dead());
        }
        s.dirs.entry(shard).or_default();
        Ok(())
    }

    fn list_segments(&self, shard: u8) -> io::Result<Vec<u64>> {
        self.live()?.list(shard, false)
    }

    fn create_segment(&self, shard: u8, segment: u64) -> io::Result<Box<dyn SegmentFile>> {
        let ino = self.live()?.create(shard, Name::Segment(segment))?;
        Ok(self.handle(ino, true))
    }

    fn open_segment(
        &self,
        shard: u8,
        segment: u64,
        writable: bool,
    ) -> io::Result<Box<dyn SegmentFile>> {
        let ino = self
            .live()?
            .lookup(shard, Name::Segment(segment))
            .ok_or_else(not_found)?;
        Ok(self.handle(ino, writable))
    }

    fn remove_segment(&self, shard: u8, segment: u64) -> io::Result<()> {
        self.live()?.unlink(shard, Name::Segment(segment))
    }

    fn sync_shard_dir(&self, shard: u8) -> io::Result<()> {
        let mut s = self.live()?;
        if s.dies_now() {
            return Err(dead());
        }
        let dir = s.dir(shard)?;
        dir.durable = dir.live.clone();
        dir.pending.clear();
        Ok(())
    }

    fn create_temp_segment(&self, shard: u8, segment: u64) -> io::Result<Box<dyn SegmentFile>> {
        let ino = self.live()?.create(shard, Name::Temp(segment))?;
        Ok(self.handle(ino, true))
    }

    fn publish_temp_segment(&self, shard: u8, segment: u64) -> io::Result<()> {
        let mut s = self.live()?;
        if s.dies_now() {
            return Err(dead());
        }
        let dir = s.dir(shard)?;
        let (from, to) = (Name::Temp(segment), Name::Segment(segment));
        let ino = dir.live.remove(&from).ok_or_else(not_found)?;
        dir.live.insert(to, ino);
        dir.pending.push(DirOp::Rename(from, to));
        s.stats.renames += 1;
        Ok(())
    }

    fn list_temp_segments(&self, shard: u8) -> io::Result<Vec<u64>> {
        self.live()?.list(shard, true)
    }

    fn remove_temp_segment(&self, shard: u8, segment: u64) -> io::Result<()> {
        self.live()?.unlink(shard, Name::Temp(segment))
    }

    fn new_salt(&self) -> u32 {
        self.lock().rng.next_u64() as u32
    }
}

struct SimSegment {
    disk: SimDisk,
    ino: u64,
    writable: bool,
}

impl SimSegment {
    fn with_file<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.disk.live()?;
        if !s.inodes.contains_key(&self.ino) {
            return Err(not_found());
        }
        f(&mut s, self.ino)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }
}

fn file(s: &mut State, ino: u64) -> &mut SimFile {
    // `with_file` checked presence under the same lock.
    s.inodes.entry(ino).or_default()
}

impl SegmentFile for SimSegment {
    fn write_all_at(&mut self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        self.check_writable()?;
        let data: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.with_file(|s, ino| {
            s.stats.writes += 1;
            let dies = s.dies_now();
            let (num, den) = s.faults.write_error;
            let fail = dies || s.fail_next_writes > 0 || s.rng.chance(num, den);
            if fail {
                s.fail_next_writes = s.fail_next_writes.saturating_sub(1);
                s.stats.write_errors += 1;
                let keep = s.rng.below(data.len() as u64 + 1) as usize;
                let err = if dies { dead() } else { injected(&mut s.rng) };
                let f = file(s, ino);
                apply_write(&mut f.cache, offset, &data[..keep]);
                f.pending.push(Op::Write {
                    offset,
                    data: data[..keep].to_vec(),
                });
                return Err(err);
            }
            let f = file(s, ino);
            apply_write(&mut f.cache, offset, &data);
            f.pending.push(Op::Write { offset, data });
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with_file(|s, ino| {
            if s.dies_now() {
                return Err(dead());
            }
            s.stats.syncs += 1;
            let (num, den) = s.faults.sync_error;
            let fail = s.fail_next_syncs > 0 || s.rng.chance(num, den);
            if fail {
                s.fail_next_syncs = s.fail_next_syncs.saturating_sub(1);
                s.stats.sync_errors += 1;
                let err = injected(&mut s.rng);
                file(s, ino).poisoned = true;
                return Err(err);
            }
            let f = file(s, ino);
            if !f.poisoned {
                f.durable = f.cache.clone();
                f.pending.clear();
            }
            Ok(())
        })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with_file(|s, ino| {
            if s.dies_now() {
                return Err(dead());
            }
            let f = file(s, ino);
            f.cache.resize(len as usize, 0);
            f.pending.push(Op::Truncate(len));
            Ok(())
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with_file(|s, ino| Ok(file(s, ino).cache.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_file(|s, ino| {
            let f = file(s, ino);
            let start = (offset as usize).min(f.cache.len());
            let n = buf.len().min(f.cache.len() - start);
            buf[..n].copy_from_slice(&f.cache[start..start + n]);
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_bytes_survive_and_unsynced_may_not() {
        let disk = SimDisk::new(1, SimFaults::default());
        disk.create_shard(0).unwrap();
        let mut f = disk.create_segment(0, 1).unwrap();
        disk.sync_shard_dir(0).unwrap();
        f.write_all_at(0, &[IoSlice::new(b"durable")]).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(7, &[IoSlice::new(&[9u8; 4000])]).unwrap();
        let mut lost_some = false;
        let mut d = disk;
        for _ in 0..20 {
            let after = d.crash();
            let c = after.contents(0, 1).unwrap();
            assert_eq!(&c[..7], b"durable");
            lost_some |= c.len() < 4007 || c[7..].contains(&0);
            // Re-dirty and crash again.
            let mut f = after.open_segment(0, 1, true).unwrap();
            f.truncate(7).unwrap();
            f.sync_data().unwrap();
            f.write_all_at(7, &[IoSlice::new(&[9u8; 4000])]).unwrap();
            d = after;
        }
        assert!(lost_some);
        assert!(f.size().is_err(), "the crashed handle is dead");
    }

    #[test]
    fn directory_operations_are_durable_only_after_a_dir_sync() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new(seed, SimFaults::default());
            disk.create_shard(0).unwrap();
            let mut old = disk.create_segment(0, 1).unwrap();
            old.write_all_at(0, &[IoSlice::new(b"old")]).unwrap();
            old.sync_data().unwrap();
            disk.sync_shard_dir(0).unwrap();
            let mut t = disk.create_temp_segment(0, 2).unwrap();
            t.write_all_at(0, &[IoSlice::new(b"new")]).unwrap();
            t.sync_data().unwrap();
            disk.publish_temp_segment(0, 2).unwrap();
            disk.remove_segment(0, 1).unwrap();
            // The unlinked file stays readable through a handle opened before.
            let mut back = [0u8; 3];
            assert_eq!(old.read_at(0, &mut back).unwrap(), 3);
            assert_eq!(&back, b"old");
            assert!(disk.open_segment(0, 1, false).is_err());
            let after = disk.crash();
            let segs = after.list_segments(0).unwrap();
            let temps = after.list_temp_segments(0).unwrap();
            // A rename is atomic: the new file has exactly one name, or none if its creation
            // was lost; the synced old file can only be gone by its unlink.
            assert!(!(segs.contains(&2) && temps.contains(&2)));
            if segs.contains(&2) {
                assert_eq!(after.contents(0, 2).unwrap(), b"new");
            }
            if segs.contains(&1) {
                assert_eq!(after.contents(0, 1).unwrap(), b"old");
            }
            outcomes.insert((segs, temps));
        }
        assert!(outcomes.len() >= 4, "{outcomes:?}");
    }

    #[test]
    fn failed_sync_poisons_the_file() {
        let disk = SimDisk::new(2, SimFaults::default());
        disk.create_shard(0).unwrap();
        let mut f = disk.create_segment(0, 1).unwrap();
        disk.sync_shard_dir(0).unwrap();
        f.write_all_at(0, &[IoSlice::new(b"x")]).unwrap();
        disk.fail_next_syncs(1);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        // The later "successful" sync made nothing durable: the pending write is still at the
        // mercy of the crash.
        let s = disk.lock();
        let ino = s.lookup(0, Name::Segment(1)).unwrap();
        let file = s.inodes.get(&ino).unwrap();
        assert!(file.durable.is_empty() && !file.pending.is_empty());
    }
}
