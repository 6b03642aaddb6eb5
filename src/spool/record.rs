//! The spool's disk format, version 1: the rkyv payloads of the three record kinds.
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

impl From<MessageMeta> for MessageV1 {
    fn from(m: MessageMeta) -> Self {
        let MessageMeta {
            id,
            arrival_unix_micros,
            origin,
            envelope,
            received_len,
            mailboxes,
            remote,
        } = m;
        MessageV1 {
            id: id.into(),
            arrival_unix_micros,
            origin: origin.into(),
            envelope: envelope.into(),
            received_len,
            mailboxes,
            remote,
        }
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
        }
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

#[cfg(test)]
mod tests {
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
                        rkyv::to_bytes::<BoxedError>(&MessageV1::from(m))
                    }
                    Record::Deletion(d) => {
                        kinds[1] += 1;
                        rkyv::to_bytes::<BoxedError>(&DeletionV1::from(&d))
                    }
                    Record::Delivery(d) => {
                        kinds[2] += 1;
                        rkyv::to_bytes::<BoxedError>(&DeliveryV1::from(&d))
                    }
                }
                .unwrap();
                assert_eq!(&again[..], v.meta, "record at {:?}", v.location);
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        assert_eq!(kinds, [5, 2, 5], "the fixture holds every kind");
    }
}
