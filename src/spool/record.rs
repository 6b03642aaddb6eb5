//! The spool's disk format: the rkyv payloads of the record kinds, every layout version still
//! read (`Message` v1, v2 and v3, `MailboxDeletion` v1, `DeliveryResult` v1, `MailboxState` v1).
//!
//! These types, and nothing else, define the bytes of a frame's meta. The protocol's types
//! (`crate::envelope`) and the spool's API types ([`MessageMeta`], [`MailboxDeletion`],
//! [`DeliveryRecord`]) are converted at the boundary (`From` both ways, below), so a field
//! added to a protocol type cannot change what is on disk by accident: the conversions
//! destructure every struct and match every enum, so such a change fails to compile here.
//!
//! Never change a type here (field order, field types, enum variants and their order) without
//! a version bump: add the new layout as new types, raise `RecordKind::current_version` of the
//! kind, and keep these readable. The layouts mirror, field for field, the protocol types the
//! first format archived directly; `tests/spool_golden.rs` and the test below prove the bytes
//! are the same.

use rkyv::{Archive, Deserialize, Serialize};

use super::frame::{
    DeliveryRecord, DeliveryResult, DsnKind, DsnSent, MailboxDeletion, MessageMeta, Outcome,
};
use super::state::{system_flag, Flags, MailboxState, Placement, SpecialUse, StateOp};
use crate::envelope::{BodyType, DsnRet, Envelope, MailParams, Notify, Origin, QueueId, Recipient};

/// The payload of a `Message` frame, version 1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageV1 {
    pub id: QueueIdV1,
    pub arrival_unix_micros: u64,
    pub origin: OriginV1,
    pub envelope: EnvelopeV1,
    pub received_len: u64,
    pub mailboxes: Vec<String>,
    pub remote: Vec<String>,
}

/// The payload of a `Message` frame, version 2: version 1 and, parallel to `mailboxes`, the
/// placement of each local copy (`None`: the store assigns one, as for every v1 frame; an
/// empty list: no placements at all).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageV2 {
    pub id: QueueIdV1,
    pub arrival_unix_micros: u64,
    pub origin: OriginV1,
    pub envelope: EnvelopeV1,
    pub received_len: u64,
    pub mailboxes: Vec<String>,
    pub remote: Vec<String>,
    pub placements: Vec<Option<PlacementV1>>,
}

/// The payload of a `Message` frame, version 3: version 2 and the IMAP summary of the stored
/// body (`None` for a message without local mailboxes). The summary's bytes are opaque here:
/// `imap::structure::Summary` defines and versions them; the spool only keeps and returns
/// them ([`super::Spool::read_summary`] reads them without deserialising the rest, and the
/// other readers deserialise everything but them).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageV3 {
    pub id: QueueIdV1,
    pub arrival_unix_micros: u64,
    pub origin: OriginV1,
    pub envelope: EnvelopeV1,
    pub received_len: u64,
    pub mailboxes: Vec<String>,
    pub remote: Vec<String>,
    pub placements: Vec<Option<PlacementV1>>,
    pub summary: Option<Vec<u8>>,
}

/// A queue id: the bits of [`QueueId`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueIdV1(pub u64);

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct OriginV1 {
    pub client_ip: String,
    pub client_port: u16,
    pub helo: String,
    pub protocol: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvelopeV1 {
    pub reverse_path: String,
    pub params: MailParamsV1,
    pub recipients: Vec<RecipientV1>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailParamsV1 {
    pub size: Option<u64>,
    pub body: BodyTypeV1,
    pub smtputf8: bool,
    pub ret: Option<DsnRetV1>,
    pub envid: Option<String>,
}

/// Archived as its variant index: the order is the format.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyTypeV1 {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DsnRetV1 {
    Full,
    Headers,
}

/// The NOTIFY bit set as [`Notify`] stores it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotifyV1(pub u8);

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecipientV1 {
    pub address: String,
    pub notify: Option<NotifyV1>,
    pub orcpt: Option<String>,
}

/// The payload of a `MailboxDeletion` frame, version 1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeletionV1 {
    pub mailbox: String,
    pub ids: Vec<QueueIdV1>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OutcomeV1 {
    Delivered = 0,
    Deferred = 1,
    Bounced = 2,
    Expired = 3,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultV1 {
    pub id: QueueIdV1,
    pub recipient: String,
    pub outcome: OutcomeV1,
    pub reply: String,
    pub attempt: u32,
    pub at_unix_micros: u64,
    pub next_attempt_unix_micros: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum DsnKindV1 {
    Failure = 0,
    Delay = 1,
    Success = 2,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DsnSentV1 {
    pub id: QueueIdV1,
    pub recipient: String,
    pub kind: DsnKindV1,
    pub at_unix_micros: u64,
    pub notice_id: Option<QueueIdV1>,
}

/// The payload of a `DeliveryResult` frame, version 1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryV1 {
    pub results: Vec<ResultV1>,
    pub dsn_sent: Vec<DsnSentV1>,
}

/// [`Flags`]: the system flag bits and the keywords.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlagsV1 {
    pub system: u8,
    pub keywords: Vec<String>,
}

/// Archived as its variant index: the order is the format (not [`SpecialUse`]'s numbers).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpecialUseV1 {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

/// [`Placement`], field for field.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlacementV1 {
    pub folder: u32,
    pub uidvalidity: u32,
    pub uid: u32,
    pub flags: FlagsV1,
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

/// [`StateOp`]. Archived as its variant index: the order is the format; append new variants
/// only with a version bump of the `MailboxState` kind.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateOpV1 {
    CreateFolder {
        folder: u32,
        name: String,
        uidvalidity: u32,
        special_use: Option<SpecialUseV1>,
    },
    RenameFolder {
        folder: u32,
        name: String,
    },
    DeleteFolder {
        folder: u32,
    },
    Subscribe {
        name: String,
        subscribed: bool,
    },
    Place {
        id: QueueIdV1,
        placement: PlacementV1,
    },
    SetFlags {
        folder: u32,
        uid: u32,
        flags: FlagsV1,
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
    Reset,
}

/// The payload of a `MailboxState` frame, version 1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxStateV1 {
    pub user: String,
    pub seq: u64,
    pub ops: Vec<StateOpV1>,
    pub released: Vec<QueueIdV1>,
}

// Conversions. Moves where the caller gives up the value (a message on its way to the
// writer, a record just read), clones where the caller keeps it (deletions and delivery
// records are applied to the index after they are written).

impl From<QueueId> for QueueIdV1 {
    fn from(id: QueueId) -> Self {
        QueueIdV1(id.0)
    }
}

impl From<QueueIdV1> for QueueId {
    fn from(id: QueueIdV1) -> Self {
        QueueId(id.0)
    }
}

/// Only a meta without placements has a v1 layout (this build writes v2; v1 is encoded again
/// only to prove the old bytes are unchanged).
impl TryFrom<MessageMeta> for MessageV1 {
    type Error = MessageMeta;

    fn try_from(m: MessageMeta) -> Result<Self, MessageMeta> {
        if !m.placements.is_empty() {
            return Err(m);
        }
        let MessageMeta {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
            placements: _,
        } = m;
        Ok(MessageV1 {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
        })
    }
}

impl From<MessageV1> for MessageMeta {
    fn from(m: MessageV1) -> Self {
        let MessageV1 {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
        } = m;
        MessageMeta {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
            placements: Vec::new(),
        }
    }
}

impl From<MessageMeta> for MessageV2 {
    fn from(m: MessageMeta) -> Self {
        let MessageMeta {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
            placements,
        } = m;
        MessageV2 {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
            placements: placements.into_iter().map(|p| p.map(Into::into)).collect(),
        }
    }
}

impl From<MessageV2> for MessageMeta {
    fn from(m: MessageV2) -> Self {
        let MessageV2 {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
            placements,
        } = m;
        MessageMeta {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
            placements: placements.into_iter().map(|p| p.map(Into::into)).collect(),
        }
    }
}

impl MessageV3 {
    pub(crate) fn new(meta: MessageMeta, summary: Option<Vec<u8>>) -> Self {
        let MessageMeta {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
            placements,
        } = meta;
        MessageV3 {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
            placements: placements.into_iter().map(|p| p.map(Into::into)).collect(),
            summary,
        }
    }
}

/// A frame without a summary (tests and tools that store messages no IMAP reader reads).
impl From<MessageMeta> for MessageV3 {
    fn from(m: MessageMeta) -> Self {
        MessageV3::new(m, None)
    }
}

/// The meta without the summary.
impl From<MessageV3> for MessageMeta {
    fn from(m: MessageV3) -> Self {
        let MessageV3 {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
            placements,
            summary: _,
        } = m;
        MessageMeta {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
            placements: placements.into_iter().map(|p| p.map(Into::into)).collect(),
        }
    }
}

/// The meta without the summary, deserialised field by field from the archive so that
/// recovery, replay and `relay spool` never copy a summary they do not need.
impl TryFrom<&ArchivedMessageV3> for MessageMeta {
    type Error = rkyv::rancor::BoxedError;

    fn try_from(m: &ArchivedMessageV3) -> Result<Self, Self::Error> {
        use rkyv::rancor::BoxedError;
        let ArchivedMessageV3 {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
            placements,
            summary: _,
        } = m;
        Ok(MessageMeta {
            id: rkyv::deserialize::<QueueIdV1, BoxedError>(id)?.into(),
            arrival_unix_micros: arrival_unix_micros.to_native(),
            origin: rkyv::deserialize::<OriginV1, BoxedError>(origin)?.into(),
            envelope: rkyv::deserialize::<EnvelopeV1, BoxedError>(envelope)?.into(),
            received_len: received_len.to_native(),
            mailboxes: rkyv::deserialize::<Vec<String>, BoxedError>(mailboxes)?,
            remote: rkyv::deserialize::<Vec<String>, BoxedError>(remote)?,
            placements: rkyv::deserialize::<Vec<Option<PlacementV1>>, BoxedError>(placements)?
                .into_iter()
                .map(|p| p.map(Into::into))
                .collect(),
        })
    }
}

impl From<Origin> for OriginV1 {
    fn from(o: Origin) -> Self {
        let Origin {
            client_ip,
            client_port,
            helo,
            protocol,
        } = o;
        OriginV1 {
            client_ip,
            client_port,
            helo,
            protocol,
        }
    }
}

impl From<OriginV1> for Origin {
    fn from(o: OriginV1) -> Self {
        let OriginV1 {
            client_ip,
            client_port,
            helo,
            protocol,
        } = o;
        Origin {
            client_ip,
            client_port,
            helo,
            protocol,
        }
    }
}

impl From<Envelope> for EnvelopeV1 {
    fn from(e: Envelope) -> Self {
        let Envelope {
            reverse_path,
            params,
            recipients,
        } = e;
        EnvelopeV1 {
            reverse_path,
            params: params.into(),
            recipients: recipients.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<EnvelopeV1> for Envelope {
    fn from(e: EnvelopeV1) -> Self {
        let EnvelopeV1 {
            reverse_path,
            params,
            recipients,
        } = e;
        Envelope {
            reverse_path,
            params: params.into(),
            recipients: recipients.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<MailParams> for MailParamsV1 {
    fn from(p: MailParams) -> Self {
        let MailParams {
            size,
            body,
            smtputf8,
            ret,
            envid,
            cluster: _,
        } = p;
        MailParamsV1 {
            size,
            body: body.into(),
            smtputf8,
            ret: ret.map(Into::into),
            envid,
        }
    }
}

impl From<MailParamsV1> for MailParams {
    fn from(p: MailParamsV1) -> Self {
        let MailParamsV1 {
            size,
            body,
            smtputf8,
            ret,
            envid,
        } = p;
        MailParams {
            size,
            body: body.into(),
            smtputf8,
            ret: ret.map(Into::into),
            envid,
            cluster: Default::default(),
        }
    }
}

impl From<BodyType> for BodyTypeV1 {
    fn from(b: BodyType) -> Self {
        match b {
            BodyType::SevenBit => BodyTypeV1::SevenBit,
            BodyType::EightBitMime => BodyTypeV1::EightBitMime,
            BodyType::BinaryMime => BodyTypeV1::BinaryMime,
        }
    }
}

impl From<BodyTypeV1> for BodyType {
    fn from(b: BodyTypeV1) -> Self {
        match b {
            BodyTypeV1::SevenBit => BodyType::SevenBit,
            BodyTypeV1::EightBitMime => BodyType::EightBitMime,
            BodyTypeV1::BinaryMime => BodyType::BinaryMime,
        }
    }
}

impl From<DsnRet> for DsnRetV1 {
    fn from(r: DsnRet) -> Self {
        match r {
            DsnRet::Full => DsnRetV1::Full,
            DsnRet::Headers => DsnRetV1::Headers,
        }
    }
}

impl From<DsnRetV1> for DsnRet {
    fn from(r: DsnRetV1) -> Self {
        match r {
            DsnRetV1::Full => DsnRet::Full,
            DsnRetV1::Headers => DsnRet::Headers,
        }
    }
}

impl From<Recipient> for RecipientV1 {
    fn from(r: Recipient) -> Self {
        let Recipient {
            address,
            notify,
            orcpt,
        } = r;
        RecipientV1 {
            address,
            notify: notify.map(|Notify(bits)| NotifyV1(bits)),
            orcpt,
        }
    }
}

impl From<RecipientV1> for Recipient {
    fn from(r: RecipientV1) -> Self {
        let RecipientV1 {
            address,
            notify,
            orcpt,
        } = r;
        Recipient {
            address,
            notify: notify.map(|NotifyV1(bits)| Notify(bits)),
            orcpt,
        }
    }
}

impl From<&MailboxDeletion> for DeletionV1 {
    fn from(d: &MailboxDeletion) -> Self {
        let MailboxDeletion { mailbox, ids } = d;
        DeletionV1 {
            mailbox: mailbox.clone(),
            ids: ids.iter().map(|&id| id.into()).collect(),
        }
    }
}

impl From<DeletionV1> for MailboxDeletion {
    fn from(d: DeletionV1) -> Self {
        let DeletionV1 { mailbox, ids } = d;
        MailboxDeletion {
            mailbox,
            ids: ids.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Outcome> for OutcomeV1 {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Delivered => OutcomeV1::Delivered,
            Outcome::Deferred => OutcomeV1::Deferred,
            Outcome::Bounced => OutcomeV1::Bounced,
            Outcome::Expired => OutcomeV1::Expired,
        }
    }
}

impl From<OutcomeV1> for Outcome {
    fn from(o: OutcomeV1) -> Self {
        match o {
            OutcomeV1::Delivered => Outcome::Delivered,
            OutcomeV1::Deferred => Outcome::Deferred,
            OutcomeV1::Bounced => Outcome::Bounced,
            OutcomeV1::Expired => Outcome::Expired,
        }
    }
}

impl From<DsnKind> for DsnKindV1 {
    fn from(k: DsnKind) -> Self {
        match k {
            DsnKind::Failure => DsnKindV1::Failure,
            DsnKind::Delay => DsnKindV1::Delay,
            DsnKind::Success => DsnKindV1::Success,
        }
    }
}

impl From<DsnKindV1> for DsnKind {
    fn from(k: DsnKindV1) -> Self {
        match k {
            DsnKindV1::Failure => DsnKind::Failure,
            DsnKindV1::Delay => DsnKind::Delay,
            DsnKindV1::Success => DsnKind::Success,
        }
    }
}

impl From<&DeliveryResult> for ResultV1 {
    fn from(r: &DeliveryResult) -> Self {
        let DeliveryResult {
            id,
            recipient,
            outcome,
            reply,
            attempt,
            at_unix_micros,
            next_attempt_unix_micros,
        } = r;
        ResultV1 {
            id: (*id).into(),
            recipient: recipient.clone(),
            outcome: (*outcome).into(),
            reply: reply.clone(),
            attempt: *attempt,
            at_unix_micros: *at_unix_micros,
            next_attempt_unix_micros: *next_attempt_unix_micros,
        }
    }
}

impl From<ResultV1> for DeliveryResult {
    fn from(r: ResultV1) -> Self {
        let ResultV1 {
            id,
            recipient,
            outcome,
            reply,
            attempt,
            at_unix_micros,
            next_attempt_unix_micros,
        } = r;
        DeliveryResult {
            id: id.into(),
            recipient,
            outcome: outcome.into(),
            reply,
            attempt,
            at_unix_micros,
            next_attempt_unix_micros,
        }
    }
}

impl From<&DsnSent> for DsnSentV1 {
    fn from(d: &DsnSent) -> Self {
        let DsnSent {
            id,
            recipient,
            kind,
            at_unix_micros,
            notice_id,
        } = d;
        DsnSentV1 {
            id: (*id).into(),
            recipient: recipient.clone(),
            kind: (*kind).into(),
            at_unix_micros: *at_unix_micros,
            notice_id: notice_id.map(Into::into),
        }
    }
}

impl From<DsnSentV1> for DsnSent {
    fn from(d: DsnSentV1) -> Self {
        let DsnSentV1 {
            id,
            recipient,
            kind,
            at_unix_micros,
            notice_id,
        } = d;
        DsnSent {
            id: id.into(),
            recipient,
            kind: kind.into(),
            at_unix_micros,
            notice_id: notice_id.map(Into::into),
        }
    }
}

impl From<&DeliveryRecord> for DeliveryV1 {
    fn from(d: &DeliveryRecord) -> Self {
        let DeliveryRecord { results, dsn_sent } = d;
        DeliveryV1 {
            results: results.iter().map(Into::into).collect(),
            dsn_sent: dsn_sent.iter().map(Into::into).collect(),
        }
    }
}

impl From<DeliveryV1> for DeliveryRecord {
    fn from(d: DeliveryV1) -> Self {
        let DeliveryV1 { results, dsn_sent } = d;
        DeliveryRecord {
            results: results.into_iter().map(Into::into).collect(),
            dsn_sent: dsn_sent.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Flags> for FlagsV1 {
    fn from(f: Flags) -> Self {
        let Flags { system, keywords } = f;
        FlagsV1 { system, keywords }
    }
}

impl From<FlagsV1> for Flags {
    fn from(f: FlagsV1) -> Self {
        let FlagsV1 { system, keywords } = f;
        Flags {
            // Bits no build defines are ignored (state.rs), not carried into the store.
            system: system & system_flag::ALL,
            keywords,
        }
    }
}

impl From<SpecialUse> for SpecialUseV1 {
    fn from(u: SpecialUse) -> Self {
        match u {
            SpecialUse::Sent => SpecialUseV1::Sent,
            SpecialUse::Drafts => SpecialUseV1::Drafts,
            SpecialUse::Trash => SpecialUseV1::Trash,
            SpecialUse::Junk => SpecialUseV1::Junk,
            SpecialUse::Archive => SpecialUseV1::Archive,
        }
    }
}

impl From<SpecialUseV1> for SpecialUse {
    fn from(u: SpecialUseV1) -> Self {
        match u {
            SpecialUseV1::Sent => SpecialUse::Sent,
            SpecialUseV1::Drafts => SpecialUse::Drafts,
            SpecialUseV1::Trash => SpecialUse::Trash,
            SpecialUseV1::Junk => SpecialUse::Junk,
            SpecialUseV1::Archive => SpecialUse::Archive,
        }
    }
}

impl From<Placement> for PlacementV1 {
    fn from(p: Placement) -> Self {
        let Placement {
            folder,
            uidvalidity,
            uid,
            flags,
            internal_date,
            zone_minutes,
            modseq,
        } = p;
        PlacementV1 {
            folder,
            uidvalidity,
            uid,
            flags: flags.into(),
            internal_date,
            zone_minutes,
            modseq,
        }
    }
}

impl From<PlacementV1> for Placement {
    fn from(p: PlacementV1) -> Self {
        let PlacementV1 {
            folder,
            uidvalidity,
            uid,
            flags,
            internal_date,
            zone_minutes,
            modseq,
        } = p;
        Placement {
            folder,
            uidvalidity,
            uid,
            flags: flags.into(),
            internal_date,
            zone_minutes,
            modseq,
        }
    }
}

impl From<StateOp> for StateOpV1 {
    fn from(op: StateOp) -> Self {
        match op {
            StateOp::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use,
            } => StateOpV1::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use: special_use.map(Into::into),
            },
            StateOp::RenameFolder { folder, name } => StateOpV1::RenameFolder { folder, name },
            StateOp::DeleteFolder { folder } => StateOpV1::DeleteFolder { folder },
            StateOp::Subscribe { name, subscribed } => StateOpV1::Subscribe { name, subscribed },
            StateOp::Place { id, placement } => StateOpV1::Place {
                id: id.into(),
                placement: placement.into(),
            },
            StateOp::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            } => StateOpV1::SetFlags {
                folder,
                uid,
                flags: flags.into(),
                modseq,
            },
            StateOp::Expunge {
                folder,
                uids,
                modseq,
            } => StateOpV1::Expunge {
                folder,
                uids,
                modseq,
            },
            StateOp::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            } => StateOpV1::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            },
            StateOp::Reset => StateOpV1::Reset,
        }
    }
}

impl From<StateOpV1> for StateOp {
    fn from(op: StateOpV1) -> Self {
        match op {
            StateOpV1::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use,
            } => StateOp::CreateFolder {
                folder,
                name,
                uidvalidity,
                special_use: special_use.map(Into::into),
            },
            StateOpV1::RenameFolder { folder, name } => StateOp::RenameFolder { folder, name },
            StateOpV1::DeleteFolder { folder } => StateOp::DeleteFolder { folder },
            StateOpV1::Subscribe { name, subscribed } => StateOp::Subscribe { name, subscribed },
            StateOpV1::Place { id, placement } => StateOp::Place {
                id: id.into(),
                placement: placement.into(),
            },
            StateOpV1::SetFlags {
                folder,
                uid,
                flags,
                modseq,
            } => StateOp::SetFlags {
                folder,
                uid,
                flags: flags.into(),
                modseq,
            },
            StateOpV1::Expunge {
                folder,
                uids,
                modseq,
            } => StateOp::Expunge {
                folder,
                uids,
                modseq,
            },
            StateOpV1::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            } => StateOp::FolderCounters {
                folder,
                uidnext,
                highest_modseq,
            },
            StateOpV1::Reset => StateOp::Reset,
        }
    }
}

/// Clones: the writer applies the record to the index after writing it.
impl From<&MailboxState> for MailboxStateV1 {
    fn from(m: &MailboxState) -> Self {
        let MailboxState {
            user,
            seq,
            ops,
            released,
        } = m;
        MailboxStateV1 {
            user: user.clone(),
            seq: *seq,
            ops: ops.iter().cloned().map(Into::into).collect(),
            released: released.iter().map(|&id| id.into()).collect(),
        }
    }
}

impl From<MailboxStateV1> for MailboxState {
    fn from(m: MailboxStateV1) -> Self {
        let MailboxStateV1 {
            user,
            seq,
            ops,
            released,
        } = m;
        MailboxState {
            user,
            seq,
            ops: ops.into_iter().map(Into::into).collect(),
            released: released.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::ops::ControlFlow;

    use rkyv::rancor::BoxedError;

    use super::*;
    use crate::spool::frame::Record;
    use crate::spool::io::{FsIo, SegmentIo};
    use crate::spool::recovery::{scan_shard, Mode};

    /// Every payload of the format-1 fixture, decoded and encoded again by this build, is
    /// byte for byte what is on disk: the spool's own types archive exactly as the protocol
    /// types did when the fixture was written.
    #[test]
    fn reencoding_the_v1_fixture_gives_the_same_bytes() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-v1");
        // Read-only scans change nothing, but the fixture is evidence: scan a copy anyway.
        let tmp = tempfile::tempdir().unwrap();
        for shard in std::fs::read_dir(fixture).unwrap() {
            let shard = shard.unwrap().path();
            let to = tmp.path().join(shard.file_name().unwrap());
            std::fs::create_dir_all(&to).unwrap();
            for seg in std::fs::read_dir(&shard).unwrap() {
                let seg = seg.unwrap().path();
                std::fs::copy(&seg, to.join(seg.file_name().unwrap())).unwrap();
            }
        }
        let io = FsIo::new(tmp.path());
        let mut kinds = [0usize; 3];
        for shard in io.list_shards().unwrap() {
            scan_shard(&io, shard, Mode::ReadOnly, &mut |v| {
                let again = match v.record {
                    Record::Message(m) => {
                        kinds[0] += 1;
                        assert_eq!(v.header.version, 1);
                        let v1 = MessageV1::try_from(m).expect("a v1 frame has no placements");
                        rkyv::to_bytes::<BoxedError>(&v1)
                    }
                    Record::Deletion(d) => {
                        kinds[1] += 1;
                        rkyv::to_bytes::<BoxedError>(&DeletionV1::from(&d))
                    }
                    Record::Delivery(d) => {
                        kinds[2] += 1;
                        rkyv::to_bytes::<BoxedError>(&DeliveryV1::from(&d))
                    }
                    Record::State(_) => panic!("no state record in a v1 fixture"),
                }
                .unwrap();
                assert_eq!(&again[..], v.meta, "record at {:?}", v.location);
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        assert_eq!(kinds, [5, 2, 5], "the fixture holds every kind");
    }

    pub(crate) fn sample_placement(uid: u32) -> Placement {
        Placement {
            folder: 3,
            uidvalidity: 1_764_000_000,
            uid,
            flags: Flags {
                system: system_flag::SEEN | system_flag::FLAGGED,
                keywords: vec!["$Forwarded".into(), "Work".into()],
            },
            internal_date: -86_400,
            zone_minutes: -300,
            modseq: u64::MAX - uid as u64,
        }
    }

    /// One record with every op, every special use and both checkpoint shapes' parts.
    pub(crate) fn sample_state(seq: u64) -> MailboxState {
        let mut ops = vec![StateOp::Reset];
        for (i, u) in [
            None,
            Some(SpecialUse::Sent),
            Some(SpecialUse::Drafts),
            Some(SpecialUse::Trash),
            Some(SpecialUse::Junk),
            Some(SpecialUse::Archive),
        ]
        .into_iter()
        .enumerate()
        {
            ops.push(StateOp::CreateFolder {
                folder: i as u32,
                name: format!("F{i}/ü"),
                uidvalidity: 7 + i as u32,
                special_use: u,
            });
        }
        ops.extend([
            StateOp::RenameFolder {
                folder: 2,
                name: "Renamed".into(),
            },
            StateOp::DeleteFolder { folder: 5 },
            StateOp::Subscribe {
                name: "Renamed".into(),
                subscribed: true,
            },
            StateOp::Subscribe {
                name: String::new(),
                subscribed: false,
            },
            StateOp::Place {
                id: QueueId::new(42, 3),
                placement: sample_placement(9),
            },
            StateOp::SetFlags {
                folder: 0,
                uid: 1,
                flags: Flags::default(),
                modseq: 12,
            },
            StateOp::Expunge {
                folder: 0,
                uids: vec![1, 2, u32::MAX],
                modseq: 13,
            },
            StateOp::FolderCounters {
                folder: 0,
                uidnext: 4,
                highest_modseq: 13,
            },
        ]);
        MailboxState {
            user: "alice".into(),
            seq,
            ops,
            released: vec![QueueId::new(5, 1), QueueId::new(6, 0)],
        }
    }

    fn round_trip_state(s: &MailboxState) -> MailboxState {
        let bytes = rkyv::to_bytes::<BoxedError>(&MailboxStateV1::from(s)).unwrap();
        let archived = rkyv::access::<ArchivedMailboxStateV1, BoxedError>(&bytes).unwrap();
        rkyv::deserialize::<MailboxStateV1, BoxedError>(archived)
            .unwrap()
            .into()
    }

    #[test]
    fn mailbox_state_round_trips_every_op() {
        let s = sample_state(77);
        assert!(s.is_checkpoint());
        assert_eq!(round_trip_state(&s), s);
        let empty = MailboxState {
            user: String::new(),
            seq: 0,
            ops: Vec::new(),
            released: Vec::new(),
        };
        assert!(!empty.is_checkpoint());
        assert_eq!(round_trip_state(&empty), empty);
    }

    /// Enums are archived by variant order, not by the API's discriminants: pin both orders,
    /// so reordering a variant fails here rather than silently changing the disk format.
    #[test]
    fn state_enums_are_archived_by_variant_order() {
        let uses = [
            SpecialUse::Sent,
            SpecialUse::Drafts,
            SpecialUse::Trash,
            SpecialUse::Junk,
            SpecialUse::Archive,
        ];
        for (i, u) in uses.into_iter().enumerate() {
            let bytes = rkyv::to_bytes::<BoxedError>(&SpecialUseV1::from(u)).unwrap();
            assert_eq!(&bytes[..], &[i as u8], "{u:?}");
        }
        let op_index = |op: StateOp| {
            let bytes = rkyv::to_bytes::<BoxedError>(&StateOpV1::from(op)).unwrap();
            // rkyv puts an enum's tag first in its archived form.
            bytes[bytes.len() - std::mem::size_of::<ArchivedStateOpV1>()]
        };
        let s = sample_state(1);
        let tags: Vec<u8> = s.ops.iter().cloned().map(op_index).collect();
        assert_eq!(tags, [8, 0, 0, 0, 0, 0, 0, 1, 2, 3, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn unknown_flag_bits_are_ignored_when_read() {
        let f = FlagsV1 {
            system: 0xff,
            keywords: vec!["k".into()],
        };
        assert_eq!(
            Flags::from(f),
            Flags {
                system: system_flag::ALL,
                keywords: vec!["k".into()],
            }
        );
    }

    #[test]
    fn message_v3_round_trips_the_meta_and_the_summary() {
        let mut meta = crate::spool::frame::tests::sample_meta(5);
        meta.mailboxes = vec!["bob".into(), "carol".into()];
        meta.placements = vec![Some(sample_placement(2)), None];
        for summary in [None, Some(Vec::new()), Some(b"(NIL \"x\")\0\xff".to_vec())] {
            let v3 = MessageV3::new(meta.clone(), summary.clone());
            let bytes = rkyv::to_bytes::<BoxedError>(&v3).unwrap();
            let archived = rkyv::access::<ArchivedMessageV3, BoxedError>(&bytes).unwrap();
            assert_eq!(
                archived.summary.as_ref().map(|s| s.as_slice()),
                summary.as_deref()
            );
            // Field by field (the readers' path) and whole agree.
            assert_eq!(MessageMeta::try_from(archived).unwrap(), meta);
            let whole = rkyv::deserialize::<MessageV3, BoxedError>(archived).unwrap();
            assert_eq!(whole, v3);
            assert_eq!(MessageMeta::from(whole), meta);
        }
        // v3 without a summary is v2 followed by an archived `None`: not the v2 bytes.
        let v2 = rkyv::to_bytes::<BoxedError>(&MessageV2::from(meta.clone())).unwrap();
        let v3 = rkyv::to_bytes::<BoxedError>(&MessageV3::from(meta)).unwrap();
        assert_ne!(&v2[..], &v3[..]);
    }

    #[test]
    fn message_v2_round_trips_placements_and_v1_has_none() {
        let mut meta = crate::spool::frame::tests::sample_meta(4);
        meta.mailboxes = vec!["bob".into(), "carol".into()];
        meta.placements = vec![Some(sample_placement(1)), None];
        let bytes = rkyv::to_bytes::<BoxedError>(&MessageV2::from(meta.clone())).unwrap();
        let archived = rkyv::access::<ArchivedMessageV2, BoxedError>(&bytes).unwrap();
        let back: MessageMeta = rkyv::deserialize::<MessageV2, BoxedError>(archived)
            .unwrap()
            .into();
        assert_eq!(back, meta);
        // A meta with placements has no v1 layout; one without converts losslessly.
        let meta = MessageV1::try_from(meta).unwrap_err();
        let mut plain = meta.clone();
        plain.placements.clear();
        let v1 = MessageV1::try_from(plain.clone()).unwrap();
        assert_eq!(MessageMeta::from(v1), plain);
    }
}
