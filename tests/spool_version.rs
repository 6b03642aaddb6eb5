//! A spool written in a format this build does not know is refused at start, with the version
//! found and the versions this build reads, and left exactly as it was: never read as
//! corruption and skipped (a skipped record may be a deletion, so mail would come back).
//!
//! The fixtures are the pinned format-1 segments (tests/fixtures/spool-v1), copied and given a
//! newer version number with valid checksums, as a newer relay would write them.

use std::path::{Path, PathBuf};

use relay::spool::{Spool, SpoolConfig};

const SHARDS: usize = 2;
const PREAMBLE: usize = 64;

fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("spool");
    for shard in std::fs::read_dir(from).expect("fixture dir") {
        let shard = shard.expect("entry").path();
        let to = root.join(shard.file_name().expect("name"));
        std::fs::create_dir_all(&to).expect("mkdir");
        for seg in std::fs::read_dir(&shard).expect("shard dir") {
            let seg = seg.expect("entry").path();
            std::fs::copy(&seg, to.join(seg.file_name().expect("name"))).expect("copy");
        }
    }
    (tmp, root)
}

fn segment(root: &Path, shard: usize) -> PathBuf {
    root.join(format!("shard-{shard:03}"))
        .join("00000000000000000001.seg")
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Offsets of every frame in a segment, walking the header lengths (see src/spool/frame.rs).
fn frame_offsets(seg: &[u8]) -> Vec<usize> {
    let pad16 = |n: usize| (n + 15) & !15;
    let mut offsets = Vec::new();
    let mut off = PREAMBLE;
    while off + 32 <= seg.len() && &seg[off..off + 4] == b"RLYF" {
        offsets.push(off);
        off += 32 + pad16(u32_at(seg, off + 8) as usize) + pad16(u32_at(seg, off + 12) as usize);
    }
    offsets
}

/// Sets a frame header's version to `version` and re-seals its salted checksum.
fn bump_frame(seg: &mut [u8], off: usize, version: u16) {
    let salt = u32_at(seg, 12);
    seg[off + 4..off + 6].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c_append(salt, &seg[off..off + 28]);
    seg[off + 28..off + 32].copy_from_slice(&crc.to_le_bytes());
}

fn open_error(root: &Path) -> String {
    match Spool::open(SpoolConfig::new(root), SHARDS) {
        Ok(_) => panic!("a spool with a format this build does not know was opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn newer_segment_format_is_refused_naming_found_and_supported() {
    let (_tmp, root) = copy_fixture();
    let path = segment(&root, 0);
    let mut seg = std::fs::read(&path).expect("read segment");
    // Both copies of the segment header say format 2 (checksums valid).
    for at in [0, 32] {
        seg[at + 8..at + 10].copy_from_slice(&2u16.to_le_bytes());
        let crc = crc32c::crc32c(&seg[at..at + 28]);
        seg[at + 28..at + 32].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(&path, &seg).expect("write segment");

    let error = open_error(&root);
    assert!(error.contains("segment format 2"), "{error}");
    assert!(
        error.contains("reads format 1"),
        "names the supported format: {error}"
    );
    assert_eq!(
        std::fs::read(&path).expect("reread"),
        seg,
        "the segment was modified"
    );
}

#[test]
fn newer_record_version_is_refused_not_skipped() {
    // The first frame (later frames follow it) and the last one (where a torn tail would be
    // cut off): neither may be dropped.
    for last in [false, true] {
        let (_tmp, root) = copy_fixture();
        let path = segment(&root, 1);
        let mut seg = std::fs::read(&path).expect("read segment");
        let offsets = frame_offsets(&seg);
        assert!(
            offsets.len() >= 2,
            "fixture has too few frames: {offsets:?}"
        );
        let off = if last {
            offsets[offsets.len() - 1]
        } else {
            offsets[0]
        };
        let kind = u16::from_le_bytes([seg[off + 6], seg[off + 7]]);
        // A layout no kind has (messages are read at 1 and 2 since placements came).
        bump_frame(&mut seg, off, 9);
        std::fs::write(&path, &seg).expect("write segment");

        let error = open_error(&root);
        assert!(
            error.contains(&format!("record kind {kind}")) && error.contains("version 9"),
            "names the version found: {error}"
        );
        assert!(
            error.contains("reads version 1"),
            "names the supported version: {error}"
        );
        assert!(
            error.contains(&format!("offset {off}")),
            "names where: {error}"
        );
        assert_eq!(
            std::fs::read(&path).expect("reread"),
            seg,
            "the segment was modified"
        );
    }
}

/// `relay serve` on such a spool exits at start with one line naming both versions (once: the
/// CLI prints the error chain, and the spool error must not appear twice in it).
#[test]
fn serve_refuses_a_newer_spool_at_start() {
    let (tmp, root) = copy_fixture();
    let path = segment(&root, 1);
    let mut seg = std::fs::read(&path).expect("read segment");
    let first = frame_offsets(&seg)[0];
    bump_frame(&mut seg, first, 7);
    std::fs::write(&path, &seg).expect("write segment");
    let config = tmp.path().join("relay.toml");
    // Port 0: the spool is opened before anything listens, and nothing may be bound anyway.
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[pop3]\nlisten = [\"127.0.0.1:0\"]\n\
             [imap]\nlisten = [\"127.0.0.1:0\"]\n\
             [admin]\nenabled = false\n[spool]\ndir = {:?}\n",
            root.display().to_string()
        ),
    )
    .expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start relay");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("relay serve started on a spool of record version 7");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "exit status {status}: {stderr}");
    let reason = "version 7 is unknown to this build, which reads version 1";
    assert_eq!(stderr.matches(reason).count(), 1, "{stderr}");
    assert_eq!(
        std::fs::read(&path).expect("reread"),
        seg,
        "the segment was modified"
    );
}
