//! The user-move conversation on the cluster listener (TLS ALPN [`ALPN`]): what the source
//! node asks, what the target answers. Sans-IO: the types and their framing.
//!
//! Every request and answer is one frame: a 4-octet big-endian length, then that many octets
//! of JSON (at most [`HEADER_MAX`]). An [`Request::Apply`] frame is followed by its bodies,
//! raw, in the order of its imports: each import's `size` octets of stored message, then its
//! `summary_len` octets of IMAP summary. The source sends one batch at a time and waits for
//! its answer, which the target gives only once the whole batch is durable.
//!
//! Versions: a field added to a frame is optional (an older peer's frame lacks it, and an
//! older peer ignores it), so no version number is exchanged; [`WireImport::uidl`] (the
//! POP3 UIDL a body keeps across the move) is one.
//!
//! 1. `Hello {from, user}` → `State {store}` (the target's store of the user) or `Refused`;
//! 2. `Apply {batch}` → `Applied` or `Refused`; repeated;
//! 3. `Bye`.

use serde::{Deserialize, Serialize};

use super::move_plan::Plan;
use crate::envelope::{QueueId, Uidl};
use crate::mailstore::{special_use_from, ExportedStore};

use crate::spool::state::{Flags, Placement, StateOp};

/// The ALPN protocol name of the conversation.
pub const ALPN: &[u8] = b"relay-move";
/// Longest JSON frame (a store's state: about 150 octets a message).
pub const HEADER_MAX: usize = 256 << 20;
/// A batch's body octets the source sends at most (a larger single message goes alone).
pub const BATCH_BYTES: u64 = 8 << 20;
/// Imports per batch at most.
pub const BATCH_MESSAGES: usize = 256;

/// One placement, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePlacement {
    pub folder: u32,
    pub uidvalidity: u32,
    pub uid: u32,
    pub system_flags: u8,
    pub keywords: Vec<String>,
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

impl From<&Placement> for WirePlacement {
    fn from(p: &Placement) -> Self {
        WirePlacement {
            folder: p.folder,
            uidvalidity: p.uidvalidity,
            uid: p.uid,
            system_flags: p.flags.system,
            keywords: p.flags.keywords.clone(),
            internal_date: p.internal_date,
            zone_minutes: p.zone_minutes,
            modseq: p.modseq,
        }
    }
}

impl From<&WirePlacement> for Placement {
    fn from(p: &WirePlacement) -> Self {
        Placement {
            folder: p.folder,
            uidvalidity: p.uidvalidity,
            uid: p.uid,
            flags: Flags {
                system: p.system_flags,
                keywords: p.keywords.clone(),
            },
            internal_date: p.internal_date,
            zone_minutes: p.zone_minutes,
            modseq: p.modseq,
        }
    }
}

/// The ops a move writes, as sent (a subset of [`StateOp`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOp {
    CreateFolder {
        folder: u32,
        name: String,
        uidvalidity: u32,
        special_use: Option<u8>,
    },
    DeleteFolder {
        folder: u32,
    },
    Subscribe {
        name: String,
        subscribed: bool,
    },
    SetFlags {
        folder: u32,
        uid: u32,
        system_flags: u8,
        keywords: Vec<String>,
        modseq: u64,
    },
    Expunge {
        folder: u32,
        uids: Vec<u32>,
        modseq: u64,
    },
    FolderCounters {
        folder: u32,
        uidnext: u32,
        highest_modseq: u64,
    },
}

impl WireOp {
    /// None for ops a move never sends.
    pub fn from_op(op: &StateOp) -> Option<WireOp> {
        Some(match op {
            StateOp::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use,
            } => WireOp::CreateFolder {
                folder: *folder,
                name: name.clone(),
                uidvalidity: *uidvalidity,
                special_use: special_use.map(|r| r as u8),
            },
            StateOp::DeleteFolder { folder } => WireOp::DeleteFolder { folder: *folder },
            StateOp::Subscribe { name, subscribed } => WireOp::Subscribe {
                name: name.clone(),
                subscribed: *subscribed,
            },
            StateOp::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            } => WireOp::SetFlags {
                folder: *folder,
                uid: *uid,
                system_flags: flags.system,
                keywords: flags.keywords.clone(),
                modseq: *modseq,
            },
            StateOp::Expunge {
                folder,
                uids,
                modseq,
            } => WireOp::Expunge {
                folder: *folder,
                uids: uids.clone(),
                modseq: *modseq,
            },
            StateOp::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            } => WireOp::FolderCounters {
                folder: *folder,
                uidnext: *uidnext,
                highest_modseq: *highest_modseq,
            },
            StateOp::RenameFolder { .. } | StateOp::Place { .. } | StateOp::Reset => return None,
        })
    }

    pub fn to_op(&self) -> StateOp {
        match self {
            WireOp::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use,
            } => StateOp::CreateFolder {
                folder: *folder,
                name: name.clone(),
                uidvalidity: *uidvalidity,
                special_use: special_use.and_then(special_use_from),
            },
            WireOp::DeleteFolder { folder } => StateOp::DeleteFolder { folder: *folder },
            WireOp::Subscribe { name, subscribed } => StateOp::Subscribe {
                name: name.clone(),
                subscribed: *subscribed,
            },
            WireOp::SetFlags {
                folder,
                uid,
                system_flags,
                keywords,
                modseq,
            } => StateOp::SetFlags {
                folder: *folder,
                uid: *uid,
                flags: Flags {
                    system: *system_flags,
                    keywords: keywords.clone(),
                },
                modseq: *modseq,
            },
            WireOp::Expunge {
                folder,
                uids,
                modseq,
            } => StateOp::Expunge {
                folder: *folder,
                uids: uids.clone(),
                modseq: *modseq,
            },
            WireOp::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            } => StateOp::FolderCounters {
                folder: *folder,
                uidnext: *uidnext,
                highest_modseq: *highest_modseq,
            },
        }
    }
}

/// One body sent after the batch's frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireImport {
    /// Its queue id on the source (kept in the imported frame's origin).
    pub source: u64,
    pub size: u64,
    pub summary_len: u32,
    pub placements: Vec<WirePlacement>,
    /// The POP3 UIDL the source shows for it (its queue id in hex, or one it kept itself
    /// from an earlier move), kept by the target. Absent from older senders, whose POP3
    /// showed the queue id: [`WireImport::uidl`] answers that then. A frame with a value
    /// that is not a UIDL does not decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uidl: Option<Uidl>,
}

impl WireImport {
    /// The UIDL the target keeps for this body: the one sent, else the source's queue id
    /// (what a sender from before UIDLs were sent showed).
    pub fn uidl(&self) -> Uidl {
        self.uidl
            .clone()
            .unwrap_or_else(|| Uidl::of_id(QueueId(self.source)))
    }
}

/// Part of a plan: applied by the target in this order, durable before its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub folders: Vec<WireOp>,
    /// The target's queue id of a body it holds, and where the copy lands.
    pub copies: Vec<(u64, WirePlacement)>,
    pub imports: Vec<WireImport>,
    pub fixes: Vec<WireOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello { from: String, user: String },
    Apply { batch: Batch },
    Bye,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    State { store: ExportedStore },
    Applied { messages: u64 },
    Refused { reason: String },
}

/// A plan cut in batches: the folder ops and copies in the first, the fixes in the last,
/// imports spread by [`BATCH_MESSAGES`] and [`BATCH_BYTES`]. Each batch's imports carry the
/// source id; the caller reads each body when it sends it.
pub fn batches(plan: &Plan) -> Vec<(Batch, Vec<QueueId>)> {
    let mut out: Vec<(Batch, Vec<QueueId>)> = Vec::new();
    let mut current = Batch {
        folders: plan.folders.iter().filter_map(WireOp::from_op).collect(),
        copies: Vec::new(),
        imports: Vec::new(),
        fixes: Vec::new(),
    };
    let mut ids = Vec::new();
    let mut bytes = 0u64;
    for import in &plan.imports {
        if !current.imports.is_empty()
            && (current.imports.len() >= BATCH_MESSAGES || bytes + import.size > BATCH_BYTES)
        {
            out.push((std::mem::take(&mut current), std::mem::take(&mut ids)));
            bytes = 0;
        }
        bytes += import.size;
        ids.push(import.source);
        current.imports.push(WireImport {
            source: import.source.0,
            size: import.size,
            summary_len: 0,
            placements: import.placements.iter().map(WirePlacement::from).collect(),
            uidl: None,
        });
    }
    // Copies (of bodies the target held when planned) and fixes in the last batch: the
    // counters end as the source's.
    current.copies = plan
        .copies
        .iter()
        .map(|(id, p)| (id.0, WirePlacement::from(p)))
        .collect();
    current.fixes = plan.fixes.iter().filter_map(WireOp::from_op).collect();
    out.push((current, ids));
    out
}

/// A frame: the length, then the JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Why a frame cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} octets is over the limit")]
    TooLong(usize),
    #[error("bad frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// The length a frame's first 4 octets announce, checked.
pub fn frame_len(head: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(head) as usize;
    if n > HEADER_MAX {
        return Err(FrameError::TooLong(n));
    }
    Ok(n)
}

pub fn decode<T: for<'de> Deserialize<'de>>(json: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(json)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::state::INBOX;

    fn placement(uid: u32) -> Placement {
        Placement {
            folder: INBOX,
            uidvalidity: 1,
            uid,
            flags: Flags {
                system: 3,
                keywords: vec!["$Work".into()],
            },
            internal_date: 1_700_000_000,
            zone_minutes: -300,
            modseq: 7,
        }
    }

    #[test]
    fn frames_round_trip_and_a_long_one_is_refused() {
        let r = Request::Hello {
            from: "a".into(),
            user: "bea".into(),
        };
        let frame = encode(&r);
        let n = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, frame.len() - 4);
        assert_eq!(decode::<Request>(&frame[4..]).unwrap(), r);
        assert!(frame_len((HEADER_MAX as u32 + 1).to_be_bytes()).is_err());
        let p = placement(3);
        assert_eq!(Placement::from(&WirePlacement::from(&p)), p);
        let op = StateOp::SetFlags {
            folder: 2,
            uid: 3,
            flags: p.flags.clone(),
            modseq: 9,
        };
        assert_eq!(WireOp::from_op(&op).unwrap().to_op(), op);
        assert!(WireOp::from_op(&StateOp::Reset).is_none());
    }

    fn apply(uidl: Option<Uidl>) -> Request {
        Request::Apply {
            batch: Batch {
                imports: vec![WireImport {
                    source: QueueId::new(1_764_000_000_000_000, 2).0,
                    size: 10,
                    summary_len: 0,
                    placements: vec![WirePlacement::from(&placement(1))],
                    uidl,
                }],
                ..Batch::default()
            },
        }
    }

    #[test]
    fn a_uidl_rides_with_its_import_and_an_older_frame_lacks_it() {
        let kept = Uidl::new("00062D2F5E0C8A0003").unwrap();
        let r = apply(Some(kept.clone()));
        let frame = encode(&r);
        let back = decode::<Request>(&frame[4..]).unwrap();
        assert_eq!(back, r);
        let Request::Apply { batch } = back else {
            panic!("an Apply")
        };
        assert_eq!(batch.imports[0].uidl(), kept);

        // An older sender's frame has no `uidl`: the target keeps the source's queue id,
        // which is what the older sender's POP3 showed. A frame without one is the same
        // bytes an older sender wrote (an older target reads it as before).
        let old = apply(None);
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("uidl"), "{json}");
        let Request::Apply { batch } = decode::<Request>(json.as_bytes()).unwrap() else {
            panic!("an Apply")
        };
        assert_eq!(
            batch.imports[0].uidl().as_str(),
            QueueId::new(1_764_000_000_000_000, 2).to_string()
        );
        // A newer sender's frame read by a reader that does not know the field.
        #[derive(Deserialize)]
        struct OlderImport {
            source: u64,
        }
        let with = serde_json::to_value(apply(Some(kept))).unwrap();
        let import = &with["Apply"]["batch"]["imports"][0];
        let older: OlderImport = serde_json::from_value(import.clone()).unwrap();
        assert_eq!(older.source, QueueId::new(1_764_000_000_000_000, 2).0);
    }

    #[test]
    fn a_frame_with_a_bad_uidl_is_an_error_not_a_panic() {
        let good = serde_json::to_string(&apply(Some(Uidl::new("X").unwrap()))).unwrap();
        let long = format!("\"{}\"", "x".repeat(71));
        for bad in [
            "\"\"",
            long.as_str(),
            "\"a b\"",
            "\"a\\r\\n\"",
            "\"\\u0000\"",
            "\"\u{e9}\"",
            "7",
            "[\"X\"]",
        ] {
            let json = good.replace("\"uidl\":\"X\"", &format!("\"uidl\":{bad}"));
            assert_ne!(json, good);
            match decode::<Request>(json.as_bytes()) {
                Err(FrameError::Json(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        // `null` is an older sender's absent field.
        let null = good.replace("\"uidl\":\"X\"", "\"uidl\":null");
        assert!(decode::<Request>(null.as_bytes()).is_ok());
        // Every cut of a frame is an error, never a panic.
        for n in 0..good.len() {
            assert!(decode::<Request>(&good.as_bytes()[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn a_plan_is_cut_by_count_and_size_with_folders_first_and_fixes_last() {
        let imports = (0..BATCH_MESSAGES as u32 + 10)
            .map(|i| super::super::move_plan::Import {
                source: QueueId(u64::from(i)),
                size: if i == 3 { BATCH_BYTES } else { 10 },
                placements: vec![placement(i + 1)],
            })
            .collect();
        let plan = Plan {
            folders: vec![StateOp::DeleteFolder { folder: 4 }],
            copies: vec![(QueueId(99), placement(1000))],
            imports,
            fixes: vec![StateOp::FolderCounters {
                folder: INBOX,
                uidnext: 2000,
                highest_modseq: 9,
            }],
        };
        let b = batches(&plan);
        // [0..3), [3] alone (8 MiB), then by count.
        assert_eq!(b[0].0.imports.len(), 3);
        assert_eq!(b[1].0.imports.len(), 1);
        assert_eq!(b[2].0.imports.len(), BATCH_MESSAGES);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].0.folders.len(), 1);
        assert!(b[1..].iter().all(|(x, _)| x.folders.is_empty()));
        let last = &b[3].0;
        assert_eq!((last.copies.len(), last.fixes.len()), (1, 1));
        let total: usize = b
            .iter()
            .map(|(x, ids)| {
                assert_eq!(x.imports.len(), ids.len());
                x.imports.len()
            })
            .sum();
        assert_eq!(total, BATCH_MESSAGES + 10);
    }
}
