//! Seeded simulation: thousands of scenarios of appends, group commits, injected IO errors,
//! crash points and torn writes on [`SimDisk`], each followed by recovery and a checker:
//!
//! - acknowledged ⊆ recovered ⊆ accepted, with no duplicate ids;
//! - every recovered record's meta and stored body are exactly what was appended;
//! - recovery never stops with an error on a crash image (only Fatal inputs may).
//!
//! The writer core is driven synchronously (no threads), so a seed replays exactly:
//! `SPOOL_SIM_SEED=<seed> cargo test --lib spool::sim_tests` runs one scenario;
//! `SPOOL_SIM_SCENARIOS=<n>` changes how many run (default 1500, a few seconds in debug).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::frame::{MessageMeta, SEGMENT_PREAMBLE_LEN};
use super::inspect;
use super::sim::{SimDisk, SimFaults, SimRng};
use super::writer::{Pending, ShardWriter, WriterConfig};
use super::{recover, Location, SegmentIo};
use crate::envelope::{Envelope, MailParams, Origin, QueueId, Recipient};

/// What the scenarios exercised, so the simulation cannot silently become vacuous.
#[derive(Debug, Default)]
struct Coverage {
    acked: u64,
    failed: u64,
    torn_tails: u64,
    corrupt_frames: u64,
    empty_segments: u64,
    write_errors: u64,
    sync_errors: u64,
    create_errors: u64,
    unacked_recovered: u64,
}

struct Model {
    accepted: HashMap<QueueId, Pending>,
    acked: HashSet<QueueId>,
    next_micros: u64,
}

fn pending(rng: &mut SimRng, id: QueueId, segment_size: u64) -> Pending {
    let body_len = if rng.chance(1, 40) {
        (segment_size + rng.below(segment_size)) as usize
    } else if rng.chance(1, 10) {
        0
    } else {
        rng.below(600) as usize
    };
    let fill = rng.next_u64() as u8;
    let received: Vec<u8> = if rng.chance(1, 8) {
        Vec::new()
    } else {
        format!("Received: by sim; id {id}\r\n").into_bytes()
    };
    Pending {
        meta: MessageMeta {
            id,
            arrival_unix_micros: id.micros(),
            origin: Origin {
                client_ip: "198.51.100.1".into(),
                client_port: rng.below(65536) as u16,
                helo: "sim".into(),
                protocol: "ESMTP".into(),
            },
            envelope: Envelope {
                reverse_path: format!("s{}@example.org", rng.below(100)),
                params: MailParams::default(),
                recipients: (0..1 + rng.below(3))
                    .map(|r| Recipient {
                        address: format!("r{r}@example.net"),
                        notify: None,
                        orcpt: None,
                    })
                    .collect(),
            },
            received_len: received.len() as u64,
            mailboxes: Vec::new(),
            remote: Vec::new(),
        },
        received,
        body: (0..body_len).map(|i| fill.wrapping_add(i as u8)).collect(),
    }
}

/// Recovers `disk` and checks the invariants; returns the recovered resume state.
fn recover_and_check(
    disk: &SimDisk,
    shards: usize,
    model: &Model,
    cov: &mut Coverage,
) -> Result<super::Recovered, String> {
    let rec = recover(disk, shards).map_err(|e| format!("recovery failed: {e}"))?;
    cov.torn_tails += rec.report.torn_tails() as u64;
    cov.corrupt_frames += rec.report.corrupt_frames() as u64;
    cov.empty_segments += rec
        .report
        .shards
        .iter()
        .map(|s| s.empty_segments.len() as u64)
        .sum::<u64>();
    cov.unacked_recovered += rec
        .index
        .iter()
        .filter(|(id, _)| !model.acked.contains(id))
        .count() as u64;
    for s in &rec.report.shards {
        if !s.duplicate_ids.is_empty() {
            return Err(format!("duplicate ids recovered: {:?}", s.duplicate_ids));
        }
    }
    for id in &model.acked {
        if rec.index.get(*id).is_none() {
            return Err(format!("acknowledged {id} lost; report:\n{}", rec.report));
        }
    }
    for (id, loc) in rec.index.iter() {
        let Some(p) = model.accepted.get(id) else {
            return Err(format!("recovered {id} was never appended"));
        };
        check_record(disk, loc, p).map_err(|e| format!("{id}: {e}"))?;
    }
    Ok(rec)
}

fn check_record(disk: &SimDisk, loc: &Location, p: &Pending) -> Result<(), String> {
    let back = inspect::read_at(disk, loc).map_err(|e| e.to_string())?;
    if back.meta != p.meta {
        return Err("meta differs".into());
    }
    let mut body = p.received.clone();
    body.extend_from_slice(&p.body);
    if back.body != body {
        return Err("body differs".into());
    }
    Ok(())
}

fn run_scenario(seed: u64, cov: &mut Coverage) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let shards = 1 + rng.below(2) as usize;
    let segment_size = [512u64, 2048, 16 << 10][rng.below(3) as usize];
    let mut disk = SimDisk::new(rng.next_u64(), SimFaults::default());
    let mut model = Model {
        accepted: HashMap::new(),
        acked: HashSet::new(),
        next_micros: 1_000_000,
    };
    let generations = 1 + rng.below(4);
    for _ in 0..generations {
        let rec = recover_and_check(&disk, shards, &model, cov)?;
        let faults = if rng.chance(1, 2) {
            SimFaults::default()
        } else {
            SimFaults {
                write_error: (rng.below(2), 12),
                sync_error: (rng.below(2), 12),
                create_error: (rng.below(2), 8),
            }
        };
        disk.set_faults(faults);
        if rng.chance(3, 4) {
            disk.die_after_ops(1 + rng.below(40));
        }
        let io: Arc<dyn SegmentIo> = Arc::new(disk.clone());
        let mut writers: Vec<ShardWriter> = rec
            .resume
            .iter()
            .enumerate()
            .map(|(shard, r)| {
                ShardWriter::new(
                    shard as u8,
                    Arc::clone(&io),
                    WriterConfig {
                        segment_size,
                        fsync: true,
                    },
                    r.next_segment,
                    r.next_seq,
                )
            })
            .collect();
        let batches = rng.below(12);
        for _ in 0..batches {
            if !disk.is_alive() {
                break;
            }
            let shard = rng.below(shards as u64) as usize;
            let n = 1 + rng.below(8);
            let batch: Vec<Pending> = (0..n)
                .map(|_| {
                    model.next_micros += 1 + rng.below(3);
                    let id = QueueId::new(model.next_micros, shard as u8);
                    pending(&mut rng, id, segment_size)
                })
                .collect();
            for p in &batch {
                model.accepted.insert(p.meta.id, p.clone());
            }
            let results = writers[shard].commit(&batch);
            if results.len() != batch.len() {
                return Err("one result per message".into());
            }
            for (p, r) in batch.iter().zip(results) {
                if let Ok(loc) = r {
                    if loc.shard != shard as u8 || loc.offset < SEGMENT_PREAMBLE_LEN {
                        return Err(format!("odd location {loc:?}"));
                    }
                    // Read-your-writes (while the power is on).
                    if disk.is_alive() {
                        check_record(&disk, &loc, p).map_err(|e| format!("just committed: {e}"))?;
                    }
                    model.acked.insert(p.meta.id);
                    cov.acked += 1;
                } else {
                    cov.failed += 1;
                }
            }
        }
        drop(writers);
        let st = disk.stats();
        cov.write_errors += st.write_errors;
        cov.sync_errors += st.sync_errors;
        cov.create_errors += st.create_errors;
        disk = disk.crash();
    }
    recover_and_check(&disk, shards, &model, cov)?;
    Ok(())
}

#[test]
fn simulation_acknowledged_subset_recovered_subset_accepted() {
    let mut cov = Coverage::default();
    if let Ok(seed) = std::env::var("SPOOL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SPOOL_SIM_SEED is a u64");
        if let Err(e) = run_scenario(seed, &mut cov) {
            panic!("SEED={seed}: {e}");
        }
        eprintln!("{cov:?}");
        return;
    }
    let scenarios: u64 = std::env::var("SPOOL_SIM_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let base = 0x5EED_0000u64;
    for i in 0..scenarios {
        let seed = base + i;
        if let Err(e) = run_scenario(seed, &mut cov) {
            panic!(
                "SEED={seed}: {e}\nreplay: SPOOL_SIM_SEED={seed} cargo test --lib spool::sim_tests"
            );
        }
    }
    eprintln!("{cov:?}");
    if scenarios >= 1000 {
        let c = &cov;
        let seen = [
            c.acked,
            c.failed,
            c.torn_tails,
            c.corrupt_frames,
            c.empty_segments,
            c.write_errors,
            c.sync_errors,
            c.create_errors,
            c.unacked_recovered,
        ];
        assert!(
            seen.iter().all(|&n| n > 0),
            "the simulation no longer reaches every path: {cov:?}"
        );
    }
}

/// One flipped byte anywhere in a clean spool loses at most the one record that holds it, and
/// never stops recovery.
fn run_bitflip(seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let segment_size = [1024u64, 8192][rng.below(2) as usize];
    let disk = SimDisk::new(rng.next_u64(), SimFaults::default());
    let mut model = Model {
        accepted: HashMap::new(),
        acked: HashSet::new(),
        next_micros: 5_000_000,
    };
    let mut cov = Coverage::default();
    let rec = recover_and_check(&disk, 1, &model, &mut cov)?;
    let io: Arc<dyn SegmentIo> = Arc::new(disk.clone());
    let mut w = ShardWriter::new(
        0,
        io,
        WriterConfig {
            segment_size,
            fsync: true,
        },
        rec.resume[0].next_segment,
        rec.resume[0].next_seq,
    );
    let mut locations = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let batch: Vec<Pending> = (0..1 + rng.below(5))
            .map(|_| {
                model.next_micros += 1;
                pending(&mut rng, QueueId::new(model.next_micros, 0), segment_size)
            })
            .collect();
        for (p, r) in batch.iter().zip(w.commit(&batch)) {
            let loc = r.map_err(|e| format!("clean commit failed: {e}"))?;
            model.accepted.insert(p.meta.id, p.clone());
            model.acked.insert(p.meta.id);
            locations.push((p.meta.id, loc));
        }
    }
    drop(w);
    let segs = disk.list_segments(0).map_err(|e| e.to_string())?;
    let seg = segs[rng.below(segs.len() as u64) as usize];
    let content = disk.contents(0, seg).unwrap_or_default();
    let at = rng.below(content.len() as u64);
    let bit = 1u8 << rng.below(8);
    disk.corrupt(0, seg, at, &[content[at as usize] ^ bit]);
    let victim = locations
        .iter()
        .find(|(_, l)| l.segment == seg && l.offset <= at && at < l.offset + l.frame_len)
        .map(|(id, _)| *id);
    if let Some(v) = victim {
        model.acked.remove(&v);
    }
    let rec = recover_and_check(&disk, 1, &model, &mut cov)
        .map_err(|e| format!("flip at {seg}:{at}: {e}"))?;
    let lost = locations.len() - rec.index.len();
    if lost > 1 {
        return Err(format!(
            "one flipped byte at {seg}:{at} lost {lost} records"
        ));
    }
    Ok(())
}

#[test]
fn simulation_single_bit_flip_loses_at_most_its_record() {
    for i in 0..400 {
        let seed = 0xF11B_0000u64 + i;
        if let Err(e) = run_bitflip(seed) {
            panic!("SEED={seed}: {e}");
        }
    }
}
