//! Delivery status notifications (RFC 3464) about one entry: built by `queue::dsn`, stored as
//! new messages from `<>` and routed like any other mail: into the sender's mailbox when the
//! sender is local, else queued for the sender's domain.
//!
//! One notice per kind (failure, delay, success) per attempt, listing every recipient of that
//! kind. Each notice is committed before the markers that say it was sent (see the durable
//! order in the parent module). A notice the spool could not take (backpressure, a write
//! error, closing) fails the whole step: the caller retries it before any result is recorded,
//! so the sender is never left without the notice. A notice that can never be stored (no
//! such local sender, built wrong) is logged and recorded without a notice id.
//!
//! A notice to a local sender whose mail is sealed is sealed like any delivery
//! (`mailbox::sealing`); a notice that cannot be sealed now is retried like one the spool
//! refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Core;
use crate::envelope::{Origin, QueueId};
use crate::logsafe::Safe;
use crate::mailbox::sealing::{self, Failed, Message, StoreError, Target};
use crate::net::io::Connector;
use crate::queue::dsn::{build_dsn, Diagnostic, Dsn, DsnInput, RecipientReport};
use crate::queue::outcome::{recipient_of, Notice};
use crate::queue::{Action, QueueEntry};
use crate::smtp::reply::EnhancedStatus;
use crate::smtp::Lookup;
use crate::spool::{DsnKind, DsnSent, SpoolError, StoredMessage};

fn kind_of(action: Action) -> DsnKind {
    match action {
        Action::Failed => DsnKind::Failure,
        Action::Delayed => DsnKind::Delay,
        Action::Delivered | Action::Relayed | Action::Expanded => DsnKind::Success,
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why a notice was not stored.
enum NotStored {
    /// The spool did not take it now (backpressure, a write error, closing): try again.
    Transient(String),
    /// It never will be (no such local sender, a full mailbox): record the results without.
    Permanent(String),
}

/// Sends the notices; returns the markers to record with the results, or why the spool did
/// not take one (a notice stored before it may be sent again when the step is repeated:
/// at least once). A notice that can never be stored is logged and gets a marker without a
/// notice id.
pub async fn send<C: Connector + 'static>(
    core: &Core<C>,
    entry: &QueueEntry,
    message: &StoredMessage,
    notices: &[Notice],
    hop: Option<&str>,
) -> Result<Vec<DsnSent>, String> {
    let mut markers = Vec::new();
    let now = core.wall();
    for kind in [DsnKind::Failure, DsnKind::Delay, DsnKind::Success] {
        let group: Vec<&Notice> = notices
            .iter()
            .filter(|n| kind_of(n.action) == kind)
            .collect();
        if group.is_empty() {
            continue;
        }
        let notice_id = match build(core, entry, message, &group, hop, now) {
            Ok(dsn) => match store(core, dsn).await {
                Ok(id) => Some(id),
                Err(NotStored::Transient(why)) => return Err(why),
                Err(NotStored::Permanent(why)) => {
                    tracing::warn!(target: "relay::delivery", queue_id = %entry.id, ?kind, "notice not sent: {why}");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(target: "relay::delivery", queue_id = %entry.id, ?kind, %error, "notice not built");
                None
            }
        };
        if let Some(id) = notice_id {
            tracing::info!(target: "relay::delivery", queue_id = %entry.id, notice_id = %id, ?kind, to = %Safe(&message.meta.envelope.reverse_path), "delivery status notification queued");
        }
        for n in group {
            markers.push(DsnSent {
                id: entry.id,
                recipient: message
                    .meta
                    .remote
                    .get(n.index)
                    .cloned()
                    .unwrap_or_default(),
                kind,
                at_unix_micros: micros(now),
                notice_id,
            });
        }
    }
    Ok(markers)
}

fn build<C: Connector + 'static>(
    core: &Core<C>,
    entry: &QueueEntry,
    message: &StoredMessage,
    group: &[&Notice],
    hop: Option<&str>,
    now: SystemTime,
) -> Result<Dsn, crate::queue::dsn::DsnError> {
    let meta = &message.meta;
    let recipients: Vec<_> = group
        .iter()
        .map(|n| {
            recipient_of(
                &meta.envelope,
                meta.remote.get(n.index).map(String::as_str).unwrap_or(""),
            )
        })
        .collect();
    let deadline = core.shared.schedule.deadline(entry.first_seen());
    let texts: Vec<String> = group.iter().map(|n| n.reply.to_string()).collect();
    let reports = group
        .iter()
        .zip(&recipients)
        .zip(&texts)
        .map(|((n, recipient), text)| {
            let status = n
                .reply
                .status()
                .unwrap_or(EnhancedStatus::undefined(n.reply.code().class()));
            RecipientReport {
                recipient,
                action: n.action,
                status,
                remote_mta: if n.remote { hop } else { None },
                diagnostic: Some(if n.remote {
                    Diagnostic::Smtp(&n.reply)
                } else {
                    Diagnostic::Local(text)
                }),
                last_attempt: Some(now),
                will_retry_until: (n.action == Action::Delayed).then_some(deadline),
            }
        })
        .collect();
    let received = usize::try_from(meta.received_len).unwrap_or(0);
    let original = message.body.get(received..).unwrap_or(&message.body);
    build_dsn(&DsnInput {
        hostname: &core.shared.hostname,
        now,
        queue_id: entry.id,
        arrival: UNIX_EPOCH + Duration::from_micros(meta.arrival_unix_micros),
        envelope: &meta.envelope,
        reports,
        original,
        return_max: core.shared.dsn_return_max,
    })
}

/// Stores a notice as a new message and routes it; returns its queue id once durable.
async fn store<C: Connector + 'static>(core: &Core<C>, dsn: Dsn) -> Result<QueueId, NotStored> {
    let Dsn { message, envelope } = dsn;
    let Some(to) = envelope.recipients.first().map(|r| r.address.clone()) else {
        return Err(NotStored::Permanent("notice without a recipient".into()));
    };
    let (mailboxes, remote) = if core.shared.is_local_domain(&to) {
        match &core.shared.mailboxes {
            Some(directory) => match directory.0.lookup(&to, message.len() as u64) {
                Lookup::Deliver { mailboxes, forward } => (mailboxes, forward),
                Lookup::Unknown => {
                    return Err(NotStored::Permanent(format!(
                        "the sender <{to}> is not a local user"
                    )))
                }
                Lookup::OverQuota => {
                    return Err(NotStored::Permanent(format!(
                        "the sender's mailbox <{to}> is full"
                    )))
                }
                // Only the cluster listener's lookup answers this.
                Lookup::Elsewhere => {
                    return Err(NotStored::Permanent(format!(
                        "the sender <{to}> is not a local user"
                    )))
                }
            },
            None => (Vec::new(), Vec::new()),
        }
    } else {
        (Vec::new(), vec![to])
    };
    let now = core.wall();
    let id = core.spool.next_id(now);
    let counter = core.metrics.as_ref().map(|m| m.messages_sealed.clone());
    let target = Target {
        spool: &core.spool,
        mail_store: &core.mail_store,
        keys: core.shared.keys.as_deref(),
        sealed: counter.as_ref(),
    };
    let queued_remote = remote.clone();
    let notice = Message {
        id,
        arrival: now,
        origin: Origin {
            client_ip: "127.0.0.1".into(),
            client_port: 0,
            helo: core.shared.hostname.clone(),
            protocol: "LOCAL".into(),
        },
        envelope,
        received_header: Vec::new(),
        body: message,
        mailboxes,
        remote,
        filing: Default::default(),
    };
    match sealing::store(&target, notice).await {
        Ok(stored) => {
            if let Some(len) = stored.plain_len {
                super::hand_on(&core.shared, core.index, id, len, &queued_remote);
            }
            Ok(stored.id)
        }
        Err(Failed { error, plain_len }) => {
            if let Some(len) = plain_len {
                super::hand_on(&core.shared, core.index, id, len, &queued_remote);
            }
            Err(match error {
                StoreError::Spool(error @ SpoolError::TooLarge { .. }) => {
                    NotStored::Permanent(error.to_string())
                }
                // Sealing fails for now (the plaintext is never stored instead) or the
                // spool did not take it: tried again with the step.
                error => NotStored::Transient(error.to_string()),
            })
        }
    }
}
