//! Encryption at rest: a message for a local user whose mail is sealed
//! ([`KeyStore::seal_key`]) is encrypted to that user's key before it is written, on every
//! path that stores mail into a mailbox (SMTP ingest, notices, DMARC reports, IMAP APPEND
//! and the web mail's Sent copy).
//!
//! **One frame per sealing user.** A frame's body is shared by every mailbox it names, so a
//! message for several local users is stored once in clear for those without sealing (with
//! the remote recipients, as before) and once per sealing user: its own queue id, its own
//! frame naming only that mailbox and no remote recipient, its IMAP summary computed from
//! the sealed bytes. The remote copy is never sealed: it is not ours to keep.
//!
//! **What is sealed**: the whole message as stored, our `Received` and
//! `Authentication-Results` fields included; [`crate::mailcrypt::entity::split`] keeps the
//! routing and identifying fields (ours among them) in the clear outer header and encrypts
//! the content with its `Content-*` fields. A message that is already encrypted
//! ([`crate::mailcrypt::is_encrypted`]) is stored as it came.
//!
//! **Failure**: every copy is sealed before any frame is appended, so a copy that cannot be
//! sealed stores nothing ([`StoreError::Seal`]: a temporary failure; the plaintext is never
//! stored for a sealing user). Every frame is appended, then every commit awaited: the
//! caller answers only when all are durable. A frame whose commit fails is abandoned (its
//! UIDs become holes) while the frames that committed stay: the caller reports a temporary
//! failure, the sender tries again, and the users whose copy committed get it twice. A
//! duplicate is acceptable; a loss is not.

use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

use super::{Filing, KeyStore, MailStore};
use crate::envelope::{Envelope, Origin, QueueId};
use crate::logsafe::Safe;
use crate::mailcrypt::{self, KeyKind, PublicKey, SealError};
use crate::spool::{NewMessage, ShardHandle, SpoolError};

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A copy could not be sealed: nothing was stored.
    #[error(transparent)]
    Seal(#[from] SealFailed),
    /// A frame did not commit (those that did stay: see the module doc).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A mailbox is being moved to another node (`relay user move`): nothing was stored;
    /// the sender tries again and reaches the new home.
    #[error("a mailbox is being moved to another node")]
    Moving,
}

/// A copy for `mailbox` could not be sealed.
#[derive(Debug, thiserror::Error)]
#[error("mail for {} cannot be sealed: {error}", Safe(mailbox))]
pub struct SealFailed {
    pub mailbox: String,
    pub error: SealError,
}

/// One sealing user's copy: the stored bytes, cut like a frame's (our fields, the rest).
#[derive(Debug)]
pub struct SealedCopy {
    pub mailbox: String,
    pub kind: KeyKind,
    /// The prefix of the sealed message that is `received` as given (our fields, in the clear
    /// outer header); empty when the sealed message does not start with it.
    pub received_header: Vec<u8>,
    pub body: Vec<u8>,
}

/// `mailboxes` cut into those stored in clear and the sealed copies for the others.
#[derive(Debug)]
pub struct Partition {
    pub plain: Vec<String>,
    pub sealed: Vec<SealedCopy>,
}

/// The key `mailbox`'s copy of `message` is sealed with: `None` when the user's mail is not
/// sealed or `message` is already encrypted.
pub fn key_for(keys: Option<&KeyStore>, mailbox: &str, message: &[u8]) -> Option<PublicKey> {
    let key = keys?.seal_key(mailbox)?;
    (!mailcrypt::is_encrypted(message)).then_some(key)
}

/// `received` ‖ `message` sealed to `key` (see [`SealedCopy::received_header`]).
pub fn seal_copy(
    key: &PublicKey,
    mailbox: &str,
    received: &[u8],
    message: &[u8],
) -> Result<SealedCopy, SealFailed> {
    let failed = |error| SealFailed {
        mailbox: mailbox.to_string(),
        error,
    };
    let sealed = if received.is_empty() {
        mailcrypt::seal(key, message)
    } else {
        let mut whole = Vec::with_capacity(received.len() + message.len());
        whole.extend_from_slice(received);
        whole.extend_from_slice(message);
        mailcrypt::seal(key, &whole)
    }
    .map_err(failed)?;
    let (received_header, body) = if !received.is_empty() && sealed.starts_with(received) {
        let mut body = sealed;
        let rest = body.split_off(received.len());
        (body, rest)
    } else {
        (Vec::new(), sealed)
    };
    Ok(SealedCopy {
        mailbox: mailbox.to_string(),
        kind: key.kind(),
        received_header,
        body,
    })
}

/// Cuts `mailboxes` into plain ones and sealed copies of `received` ‖ `message`. Every
/// copy is sealed here, before anything is stored: one failure fails them all.
pub fn partition(
    keys: Option<&KeyStore>,
    mailboxes: Vec<String>,
    received: &[u8],
    message: &[u8],
) -> Result<Partition, SealFailed> {
    let mut plain = Vec::with_capacity(mailboxes.len());
    let mut sealed = Vec::new();
    // Already encrypted: stored as it came for everyone. Asked once, and only when some
    // recipient seals: mail for users without keys pays no header parse here.
    let mut encrypted = None;
    for mailbox in mailboxes {
        let key = keys
            .and_then(|k| k.seal_key(&mailbox))
            .filter(|_| !*encrypted.get_or_insert_with(|| mailcrypt::is_encrypted(message)));
        match key {
            Some(key) => sealed.push(seal_copy(&key, &mailbox, received, message)?),
            None => plain.push(mailbox),
        }
    }
    Ok(Partition { plain, sealed })
}

/// Where and how a message is stored.
pub struct Target<'a> {
    /// The spool writer the frames go to.
    pub spool: &'a ShardHandle,
    pub mail_store: &'a MailStore,
    /// Users' keys (`None`: nothing is sealed, as in tests without a key store).
    pub keys: Option<&'a KeyStore>,
    /// `relay_messages_sealed_total`.
    pub sealed: Option<&'a Counter>,
}

/// A message for local mailboxes and remote recipients, as the spool takes it.
pub struct Message {
    /// The transaction's id (named in its `Received` field): the plain frame's, or the first
    /// sealed copy's when there is no plain frame.
    pub id: QueueId,
    pub arrival: SystemTime,
    pub origin: Origin,
    pub envelope: Envelope,
    pub received_header: Vec<u8>,
    pub body: Vec<u8>,
    pub mailboxes: Vec<String>,
    pub remote: Vec<String>,
    /// The folder the local copies are filed in.
    pub filing: Filing,
}

/// What was stored.
#[derive(Debug)]
pub struct Stored {
    /// The transaction's id (see [`Message::id`]).
    pub id: QueueId,
    /// The plain frame, when there is one: its stored length (remote recipients ride in it).
    pub plain_len: Option<u64>,
    /// Octets stored, over every frame.
    pub bytes: u64,
    /// Sealed copies stored.
    pub sealed: usize,
}

/// Stores `message`: sealed for the users whose mail is sealed, in clear for the rest (see
/// the module doc); Ok once every frame is durable and its copies are visible. The caller
/// hands the remote recipients on when `plain_len` is Some (also on Err: see
/// [`Failed::plain_len`]).
pub async fn store(target: &Target<'_>, message: Message) -> Result<Stored, Failed> {
    let Message {
        id,
        arrival,
        origin,
        envelope,
        received_header,
        body,
        mailboxes,
        remote,
        filing,
    } = message;
    // Held until every frame resolved: a user's move waits for these before its last copy.
    let _deliveries = target
        .mail_store
        .begin_deliveries(&mailboxes)
        .map_err(|_| Failed {
            error: StoreError::Moving,
            plain_len: None,
        })?;
    target
        .mail_store
        .prepare_filing(target.spool, &mailboxes, filing)
        .await;
    let Partition { plain, sealed } = partition(target.keys, mailboxes, &received_header, &body)
        .map_err(|e| Failed {
            error: e.into(),
            plain_len: None,
        })?;
    let arrival_unix_micros = micros(arrival);
    let internal_date = i64::try_from(arrival_unix_micros / 1_000_000).unwrap_or(0);

    // The frames: the plain one (when it has a mailbox or a remote recipient), then one per
    // sealing user.
    let mut frames: Vec<(NewMessage, Option<Vec<u8>>, Option<KeyKind>)> = Vec::new();
    let mut next_id = Some(id);
    let mut take_id = || {
        next_id
            .take()
            .unwrap_or_else(|| target.spool.next_id(arrival))
    };
    if !plain.is_empty() || !remote.is_empty() {
        // Only IMAP reads the summary: a message relayed only pays nothing.
        let summary = if plain.is_empty() {
            None
        } else {
            crate::imap::structure::Summary::encoded(&received_header, &body)
        };
        let placements = target.mail_store.place(&plain, internal_date, filing);
        let new = NewMessage {
            id: take_id(),
            arrival_unix_micros,
            origin: origin.clone(),
            envelope: envelope.clone(),
            received_header,
            body,
            mailboxes: plain,
            remote,
            placements,
        };
        frames.push((new, summary, None));
    }
    for copy in sealed {
        let summary = crate::imap::structure::Summary::encoded(&copy.received_header, &copy.body);
        let mailboxes = vec![copy.mailbox];
        let placements = target.mail_store.place(&mailboxes, internal_date, filing);
        let new = NewMessage {
            id: take_id(),
            arrival_unix_micros,
            origin: origin.clone(),
            envelope: envelope.clone(),
            received_header: copy.received_header,
            body: copy.body,
            mailboxes,
            remote: Vec::new(),
            placements,
        };
        frames.push((new, summary, Some(copy.kind)));
    }

    // Every frame queued for the group commit, then every commit awaited.
    let mut pending = Vec::with_capacity(frames.len());
    for (new, summary, kind) in frames {
        let (frame_id, mailboxes, placements) =
            (new.id, new.mailboxes.clone(), new.placements.clone());
        let receiver = target.spool.append_message_with_summary(new, summary);
        pending.push((frame_id, mailboxes, placements, kind, receiver));
    }
    let mut stored = Stored {
        id,
        plain_len: None,
        bytes: 0,
        sealed: 0,
    };
    let mut error = None;
    for (frame_id, mailboxes, placements, kind, receiver) in pending {
        let committed = match receiver {
            Ok(receiver) => match receiver.await {
                Ok(result) => result,
                Err(_) => Err(SpoolError::Closed),
            },
            Err(error) => Err(error),
        };
        match committed {
            Ok(committed) => {
                let len = committed.location.body_len;
                target
                    .mail_store
                    .delivered(target.spool, frame_id, len, &mailboxes, &placements)
                    .await;
                stored.bytes += len;
                match kind {
                    None => stored.plain_len = Some(len),
                    Some(kind) => {
                        stored.sealed += 1;
                        if let Some(counter) = target.sealed {
                            counter.inc();
                        }
                        tracing::info!(
                            target: "relay::sealing",
                            queue_id = %frame_id,
                            of = %id,
                            user = %Safe(mailboxes.first().map_or("", String::as_str)),
                            key = kind.name(),
                            size = len,
                            "sealed copy stored"
                        );
                    }
                }
            }
            Err(e) => {
                // Abandoned alone: the frames that committed stay (a duplicate on retry).
                tracing::warn!(
                    target: "relay::sealing",
                    queue_id = %frame_id,
                    of = %id,
                    error = %e,
                    "frame not stored"
                );
                target
                    .mail_store
                    .abandoned(target.spool, &mailboxes, &placements)
                    .await;
                error.get_or_insert(e);
            }
        }
    }
    match error {
        None => Ok(stored),
        Some(error) => Err(Failed {
            error: error.into(),
            plain_len: stored.plain_len,
        }),
    }
}

/// Why [`store`] failed, and whether the plain frame committed all the same (its remote
/// recipients must then be handed on: they are in the spool and pending).
#[derive(Debug)]
pub struct Failed {
    pub error: StoreError,
    pub plain_len: Option<u64>,
}

fn micros(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::keys::EncryptionPolicy;
    use crate::mailbox::{Directory, User};
    use std::sync::Arc;

    /// Alice's public key (GnuPG 2.2, ed25519 with a cv25519 encryption subkey, made with
    /// `--faked-system-time 20200101T000000`, never expires).
    const ALICE: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEXgvhABYJKwYBBAHaRw8BAQdAgrYJkk5UScQXkmWlTL71+spVGTgB5kx8UM/O\ne8rlYPe0GkFsaWNlIDxhbGljZUBleGFtcGxlLnRlc3Q+iJAEExYIADgWIQQzBlNZ\nNMQWhhWtkuOGNujQQtaQuQUCXgvhAAIbAwULCQgHAgYVCgkICwIEFgIDAQIeAQIX\ngAAKCRCGNujQQtaQuTdBAQDQcEqkPQcLe8wtVfVEXXsWxiyGMIoD4hmg/XRQdB3J\niQD/ct80SLhrWF21mIjbowTFx2vtoHVhZeN4LNePkVsMgQa4OAReC+EAEgorBgEE\nAZdVAQUBAQdAQUtnBT20wKy27GjgT1LDdUVaDDNkJZLwWpt5Zpi96AUDAQgHiHgE\nGBYIACAWIQQzBlNZNMQWhhWtkuOGNujQQtaQuQUCXgvhAAIbDAAKCRCGNujQQtaQ\nuXlzAP9GfJyMDpg21zWg2Vg/bKI7y2xLtSuW2eTgFEez1Wn3nQEA8cuuM2M6BlgU\njeR/roiz5AK7e881u6xQql5Q51XOCAE=\n=P6Aj\n-----END PGP PUBLIC KEY BLOCK-----\n";

    fn store(dir: &std::path::Path) -> KeyStore {
        let hash = crate::mailbox::password::hash("pw").unwrap();
        let users = ["alice", "bob"]
            .iter()
            .map(|name| User {
                name: name.to_string(),
                password: hash.clone(),
                quota: None,
                apop_secret: None,
                home: None,
            })
            .collect();
        let directory = Arc::new(
            Directory::new(vec!["example.test".into()], users, &Default::default()).unwrap(),
        );
        let policy = EncryptionPolicy {
            default: true,
            required: false,
        };
        let keys = KeyStore::open(dir, directory, policy, SystemTime::now()).unwrap();
        keys.set("alice", ALICE.as_bytes(), None, SystemTime::now())
            .unwrap();
        keys
    }

    const RECEIVED: &[u8] = b"Received: from client.test by relay.test with ESMTP id X;\r\n\tSat, 5 Dec 2026 12:00:00 +0000\r\n";
    const MESSAGE: &[u8] =
        b"From: b@example.test\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\nthe secret\r\n";

    fn both() -> Vec<String> {
        vec!["alice".to_string(), "bob".to_string()]
    }

    #[test]
    fn the_sealing_users_copy_is_sealed_with_our_fields_in_clear_first() {
        let dir = tempfile::tempdir().unwrap();
        let keys = store(dir.path());
        let out = partition(Some(&keys), both(), RECEIVED, MESSAGE).unwrap();
        assert_eq!(out.plain, ["bob"]);
        assert_eq!(out.sealed.len(), 1);
        let copy = &out.sealed[0];
        assert_eq!(copy.mailbox, "alice");
        assert_eq!(copy.kind, KeyKind::OpenPgp);
        assert_eq!(copy.received_header, RECEIVED, "our fields lead, in clear");
        let body = String::from_utf8_lossy(&copy.body);
        assert!(
            body.starts_with("From: b@example.test\r\nSubject: hi\r\n"),
            "{body}"
        );
        assert!(body.contains("multipart/encrypted"));
        assert!(!body.contains("the secret"));
    }

    #[test]
    fn nothing_is_sealed_without_keys_by_choice_or_when_it_came_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let keys = store(dir.path());
        let out = partition(None, both(), RECEIVED, MESSAGE).unwrap();
        assert_eq!((out.plain, out.sealed.len()), (both(), 0));

        let sealed = partition(Some(&keys), both(), RECEIVED, MESSAGE).unwrap();
        let came_sealed = &sealed.sealed[0].body;
        let out = partition(Some(&keys), both(), b"", came_sealed).unwrap();
        assert_eq!((out.plain, out.sealed.len()), (both(), 0));
        assert!(key_for(Some(&keys), "alice", came_sealed).is_none());

        keys.set_encrypt("alice", Some(false)).unwrap();
        let out = partition(Some(&keys), both(), RECEIVED, MESSAGE).unwrap();
        assert_eq!((out.plain, out.sealed.len()), (both(), 0));
        assert!(key_for(Some(&keys), "alice", MESSAGE).is_none());
    }
}
