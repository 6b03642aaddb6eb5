//! Queue transfer between cluster nodes (`relay node drain`, KumoMTA's `xfer`), the pure
//! parts: what a draining node sends for one queued message, and how the receiving node turns
//! it back into spool records with the same schedule.
//!
//! **Wire form.** One SMTP transaction per message on the cluster listener (mutual TLS):
//! `MAIL FROM:<rp>` with the message's own parameters (SIZE, BODY, SMTPUTF8, RET, ENVID) and
//! `XQUEUE=<xtext>`: the drainer's node, its queue id and the arrival time; then one
//! `RCPT TO:<addr>` per pending remote recipient with its NOTIFY/ORCPT and
//! `XSCHED=<xtext>`: attempts so far, the next attempt, the last attempt's time and reply, and
//! whether the delay notice went out. Both values are RFC 3461 xtext of `key=value` fields
//! separated by `;` (the reply hex-encoded inside, so any byte survives). The body is the
//! drainer's stored body (its Received header included) as DATA.
//!
//! **History kept.** The receiver writes, per recipient, one Deferred result carrying the
//! attempt count, the last attempt's time and reply and the next attempt (what recovery and
//! `relay queue list` read), and a Delay DSN marker when the delay notice was sent: the
//! schedule and the notices continue where they stopped. Earlier replies are not carried
//! (the spool keeps only the latest Deferred per recipient after compaction as well).
//!
//! **Dedup key.** `node:queue-id` of the drainer ([`Transfer::key`]): the receiver stores it
//! with the message (its origin) and in its transfer log, so a message sent twice (the
//! drainer died between the peer's 250 and its own record) is stored once.
//!
//! Exposure: everything decoded here comes from a peer node (authenticated by mutual TLS, but
//! still bounded and checked): lengths are capped and numbers parsed strictly.

use std::fmt::Write as _;

use crate::envelope::{Envelope, MailParams, Notify, QueueId, Recipient};
use crate::smtp::params::{xtext_decode, xtext_encode};
use crate::spool::{DeliveryRecord, DeliveryResult, DsnKind, DsnSent, Outcome, REPLY_MAX_LEN};

/// The MAIL FROM parameter that marks a transfer.
pub const XQUEUE: &str = "XQUEUE";
/// The RCPT TO parameter with one recipient's schedule.
pub const XSCHED: &str = "XSCHED";
/// Longest decoded XQUEUE / XSCHED value accepted (a 1 KiB reply hex-encoded is 2 KiB).
pub const VALUE_MAX: usize = 4096;

/// Why a transfer parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XferError {
    #[error("bad {0} value: {1}")]
    Bad(&'static str, &'static str),
}

/// One queued message as the drainer hands it over (without its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub origin: XQueue,
    pub reverse_path: String,
    pub params: MailParams,
    pub recipients: Vec<TransferRecipient>,
}

/// The MAIL FROM side: where the message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XQueue {
    /// The drainer's node name.
    pub node: String,
    /// The message's queue id on the drainer.
    pub id: QueueId,
    pub arrival_unix_micros: u64,
}

/// One pending remote recipient and where its schedule stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecipient {
    pub address: String,
    pub notify: Option<Notify>,
    pub orcpt: Option<String>,
    pub sched: XSched,
}

/// The RCPT TO side: one recipient's schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XSched {
    /// Attempts made so far (0: never tried).
    pub attempts: u32,
    /// When to try next; `None`: at once.
    pub next_attempt_unix_micros: Option<u64>,
    pub last_attempt_unix_micros: Option<u64>,
    pub last_reply: Option<String>,
    /// The delay notice for this recipient was sent.
    pub delay_noticed: bool,
}

impl Transfer {
    /// The receiver's dedup key: the drainer's node and queue id.
    pub fn key(&self) -> String {
        self.origin.key()
    }

    /// The envelope the receiver stores.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            reverse_path: self.reverse_path.clone(),
            params: self.params.clone(),
            recipients: self
                .recipients
                .iter()
                .map(|r| Recipient {
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
        }
    }

    /// The remote list the receiver stores (one per recipient, in order).
    pub fn remote(&self) -> Vec<String> {
        self.recipients.iter().map(|r| r.address.clone()).collect()
    }

    /// The records that carry the schedule over, for the message stored as `id`: one
    /// Deferred result per recipient that was tried (with its attempts, last reply and next
    /// attempt) and a Delay marker per recipient whose delay notice was sent. Empty when
    /// nothing was tried yet.
    pub fn schedule_record(&self, id: QueueId) -> DeliveryRecord {
        let mut record = DeliveryRecord::default();
        for r in &self.recipients {
            let s = &r.sched;
            if s.attempts > 0 || s.next_attempt_unix_micros.is_some() {
                let mut reply = s
                    .last_reply
                    .clone()
                    .unwrap_or_else(|| "451 4.4.0 transferred from a draining node".into());
                crate::spool::frame::bound_reply(&mut reply);
                record.results.push(DeliveryResult {
                    id,
                    recipient: r.address.clone(),
                    outcome: Outcome::Deferred,
                    reply,
                    attempt: s.attempts,
                    at_unix_micros: s
                        .last_attempt_unix_micros
                        .unwrap_or(self.origin.arrival_unix_micros),
                    next_attempt_unix_micros: s.next_attempt_unix_micros,
                });
            }
            if s.delay_noticed {
                record.dsn_sent.push(DsnSent {
                    id,
                    recipient: r.address.clone(),
                    kind: DsnKind::Delay,
                    at_unix_micros: s
                        .last_attempt_unix_micros
                        .unwrap_or(self.origin.arrival_unix_micros),
                    notice_id: None,
                });
            }
        }
        record
    }
}

impl XQueue {
    pub fn key(&self) -> String {
        format!("{}:{}", self.node, self.id)
    }

    /// The XQUEUE value (xtext).
    pub fn encode(&self) -> String {
        let plain = format!(
            "node={};id={};arrival={}",
            self.node, self.id, self.arrival_unix_micros
        );
        xtext(&plain)
    }

    pub fn decode(value: &str) -> Result<XQueue, XferError> {
        const P: &str = XQUEUE;
        let plain = decode_value(P, value)?;
        let (mut node, mut id, mut arrival) = (None, None, None);
        for (k, v) in fields(P, &plain)? {
            match k {
                "node" => node = Some(v),
                "id" => id = Some(v),
                "arrival" => arrival = Some(v),
                _ => {} // a later version's field: ignored
            }
        }
        let node = node.ok_or(XferError::Bad(P, "no node"))?;
        if !node_name_ok(node) {
            return Err(XferError::Bad(P, "bad node name"));
        }
        let id = id
            .and_then(|v| v.parse::<QueueId>().ok())
            .ok_or(XferError::Bad(P, "bad id"))?;
        let arrival = number(P, arrival.ok_or(XferError::Bad(P, "no arrival"))?)?;
        Ok(XQueue {
            node: node.to_string(),
            id,
            arrival_unix_micros: arrival,
        })
    }
}

impl XSched {
    /// The XSCHED value (xtext).
    pub fn encode(&self) -> String {
        let mut plain = format!("attempts={}", self.attempts);
        if let Some(n) = self.next_attempt_unix_micros {
            let _ = write!(plain, ";next={n}");
        }
        if let Some(at) = self.last_attempt_unix_micros {
            let _ = write!(plain, ";last={at}");
        }
        if let Some(reply) = &self.last_reply {
            plain.push_str(";reply=");
            for b in reply.as_bytes() {
                let _ = write!(plain, "{b:02X}");
            }
        }
        if self.delay_noticed {
            plain.push_str(";delayed=1");
        }
        xtext(&plain)
    }

    pub fn decode(value: &str) -> Result<XSched, XferError> {
        const P: &str = XSCHED;
        let plain = decode_value(P, value)?;
        let mut sched = XSched::default();
        let mut attempts = None;
        for (k, v) in fields(P, &plain)? {
            match k {
                "attempts" => attempts = Some(number(P, v)?),
                "next" => sched.next_attempt_unix_micros = Some(number(P, v)?),
                "last" => sched.last_attempt_unix_micros = Some(number(P, v)?),
                "reply" => sched.last_reply = Some(unhex(v)?),
                "delayed" => sched.delay_noticed = v == "1",
                _ => {}
            }
        }
        let attempts = attempts.ok_or(XferError::Bad(P, "no attempts"))?;
        sched.attempts = u32::try_from(attempts).map_err(|_| XferError::Bad(P, "attempts"))?;
        Ok(sched)
    }
}

/// A node name as `config::cluster` defines it (1–32 of a-z 0-9 -); checked again here
/// because this layer does not read the config.
fn node_name_ok(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn xtext(plain: &str) -> String {
    let mut out = Vec::with_capacity(plain.len());
    xtext_encode(plain, &mut out);
    // xtext_encode writes only ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_value(param: &'static str, value: &str) -> Result<String, XferError> {
    if value.len() > VALUE_MAX * 3 {
        return Err(XferError::Bad(param, "too long"));
    }
    let plain = xtext_decode(value).ok_or(XferError::Bad(param, "not xtext"))?;
    if plain.len() > VALUE_MAX {
        return Err(XferError::Bad(param, "too long"));
    }
    Ok(plain)
}

fn fields<'a>(param: &'static str, plain: &'a str) -> Result<Vec<(&'a str, &'a str)>, XferError> {
    plain
        .split(';')
        .map(|f| {
            f.split_once('=')
                .ok_or(XferError::Bad(param, "field without ="))
        })
        .collect()
}

fn number(param: &'static str, v: &str) -> Result<u64, XferError> {
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XferError::Bad(param, "not a number"));
    }
    v.parse().map_err(|_| XferError::Bad(param, "not a number"))
}

fn unhex(v: &str) -> Result<String, XferError> {
    let b = v.as_bytes();
    if !b.len().is_multiple_of(2) || b.len() > REPLY_MAX_LEN * 2 {
        return Err(XferError::Bad(XSCHED, "bad reply"));
    }
    let bytes: Option<Vec<u8>> = b
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect();
    let bytes = bytes.ok_or(XferError::Bad(XSCHED, "bad reply"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What the drainer knows of one message: its stored envelope and remote list, and per
/// pending recipient its schedule (from the spool's replay).
pub struct ExportInput<'a> {
    pub node: &'a str,
    pub id: QueueId,
    pub arrival_unix_micros: u64,
    pub envelope: &'a Envelope,
    /// Pending remote recipients with their schedule, in the stored order.
    pub pending: Vec<(String, XSched)>,
}

/// The transfer of one message. Each pending recipient takes the NOTIFY/ORCPT of the
/// envelope recipient with its address (an alias forward has none: the next hop's default).
pub fn export(input: ExportInput<'_>) -> Transfer {
    let recipients = input
        .pending
        .into_iter()
        .map(|(address, sched)| {
            let original = input
                .envelope
                .recipients
                .iter()
                .find(|r| r.address.eq_ignore_ascii_case(&address));
            TransferRecipient {
                notify: original.and_then(|r| r.notify),
                orcpt: original.and_then(|r| r.orcpt.clone()),
                address,
                sched,
            }
        })
        .collect();
    Transfer {
        origin: XQueue {
            node: input.node.to_string(),
            id: input.id,
            arrival_unix_micros: input.arrival_unix_micros,
        },
        reverse_path: input.envelope.reverse_path.clone(),
        // Another hop's cluster parameters are not ours to pass on (XQUEUE is added anew).
        params: MailParams {
            cluster: Default::default(),
            ..input.envelope.params.clone()
        },
        recipients,
    }
}

/// The MAIL FROM and RCPT TO command lines of a transfer (without CRLF).
pub fn commands(t: &Transfer) -> (String, Vec<String>) {
    let mut mail = format!("MAIL FROM:<{}>", t.reverse_path).into_bytes();
    crate::smtp::params::encode_mail(&t.params, &mut mail);
    mail.extend_from_slice(format!(" {XQUEUE}={}", t.origin.encode()).as_bytes());
    let rcpts = t
        .recipients
        .iter()
        .map(|r| {
            let mut line = format!("RCPT TO:<{}>", r.address).into_bytes();
            let params = crate::smtp::params::RcptParams {
                notify: r.notify,
                orcpt: r.orcpt.clone(),
            };
            crate::smtp::params::encode_rcpt(&params, &mut line);
            line.extend_from_slice(format!(" {XSCHED}={}", r.sched.encode()).as_bytes());
            String::from_utf8_lossy(&line).into_owned()
        })
        .collect();
    (String::from_utf8_lossy(&mail).into_owned(), rcpts)
}

/// Splits an XQUEUE / XSCHED parameter off a MAIL or RCPT parameter text: `(rest, value)`.
/// The rest goes to the ordinary parameter parser.
pub fn take_param<'a>(text: &'a str, keyword: &str) -> (String, Option<&'a str>) {
    let mut rest = String::with_capacity(text.len());
    let mut found = None;
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        match token.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case(keyword) && found.is_none() => found = Some(v),
            _ => {
                rest.push(' ');
                rest.push_str(token);
            }
        }
    }
    (rest, found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyType, DsnRet};

    fn sample() -> Transfer {
        let envelope = Envelope {
            reverse_path: "sender@a.test".into(),
            params: MailParams {
                size: Some(1234),
                body: BodyType::EightBitMime,
                smtputf8: false,
                ret: Some(DsnRet::Headers),
                envid: Some("env+id=1".into()),
                cluster: Default::default(),
            },
            recipients: vec![
                Recipient {
                    address: "one@remote.test".into(),
                    notify: Some(Notify::FAILURE.union(Notify::DELAY)),
                    orcpt: Some("rfc822;One@Remote.test".into()),
                },
                Recipient {
                    address: "alias@local.test".into(),
                    notify: None,
                    orcpt: None,
                },
            ],
        };
        export(ExportInput {
            node: "node-a",
            id: QueueId::new(1_764_000_000_000_000, 3),
            arrival_unix_micros: 1_764_000_000_000_000,
            envelope: &envelope,
            pending: vec![
                (
                    "one@remote.test".into(),
                    XSched {
                        attempts: 3,
                        next_attempt_unix_micros: Some(1_764_000_900_000_000),
                        last_attempt_unix_micros: Some(1_764_000_300_000_000),
                        last_reply: Some("451 4.7.1 try; later = ok ü".into()),
                        delay_noticed: true,
                    },
                ),
                ("fwd@elsewhere.test".into(), XSched::default()),
            ],
        })
    }

    #[test]
    fn export_takes_dsn_parameters_from_the_envelope() {
        let t = sample();
        assert_eq!(t.recipients[0].notify, Some(Notify(0b0110)));
        assert_eq!(
            t.recipients[0].orcpt.as_deref(),
            Some("rfc822;One@Remote.test")
        );
        assert_eq!(t.recipients[1].notify, None, "a forward has no NOTIFY");
        assert_eq!(t.key(), format!("node-a:{}", t.origin.id));
    }

    #[test]
    fn parameters_round_trip_through_the_command_lines() {
        let t = sample();
        let (mail, rcpts) = commands(&t);
        assert!(mail.starts_with("MAIL FROM:<sender@a.test> SIZE=1234 BODY=8BITMIME RET=HDRS ENVID=env+2Bid+3D1 XQUEUE="), "{mail}");
        // The receiving side: split XQUEUE off, parse the rest as usual.
        let text = mail.split_once('>').unwrap().1;
        let (rest, xq) = take_param(text, XQUEUE);
        let params = crate::smtp::params::parse_mail(&rest).unwrap();
        assert_eq!(params, t.params);
        assert_eq!(XQueue::decode(xq.unwrap()).unwrap(), t.origin);
        for (line, r) in rcpts.iter().zip(&t.recipients) {
            assert!(!line.contains('\r') && !line.contains('\n'));
            let text = line.split_once('>').unwrap().1;
            let (rest, xs) = take_param(text, XSCHED);
            let p = crate::smtp::params::parse_rcpt(&rest).unwrap();
            assert_eq!(p.notify, r.notify);
            assert_eq!(p.orcpt, r.orcpt);
            assert_eq!(XSched::decode(xs.unwrap()).unwrap(), r.sched);
        }
    }

    #[test]
    fn the_schedule_record_keeps_attempts_next_time_and_the_delay_marker() {
        let t = sample();
        let id = QueueId::new(1_765_000_000_000_000, 0);
        let rec = t.schedule_record(id);
        assert_eq!(rec.results.len(), 1, "the untried forward needs no result");
        let r = &rec.results[0];
        assert_eq!(r.id, id);
        assert_eq!(r.outcome, Outcome::Deferred);
        assert_eq!(r.attempt, 3);
        assert_eq!(r.next_attempt_unix_micros, Some(1_764_000_900_000_000));
        assert_eq!(r.at_unix_micros, 1_764_000_300_000_000);
        assert_eq!(r.reply, "451 4.7.1 try; later = ok ü");
        assert_eq!(rec.dsn_sent.len(), 1);
        assert_eq!(rec.dsn_sent[0].kind, DsnKind::Delay);
        assert_eq!(t.envelope().recipients.len(), 2);
        assert_eq!(t.remote(), vec!["one@remote.test", "fwd@elsewhere.test"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(XQueue::decode(&xtext("node=a;id=zz;arrival=1")).is_err());
        assert!(XQueue::decode(&xtext("node=A B;id=0000000000000001;arrival=1")).is_err());
        assert!(XQueue::decode(&xtext("id=0000000000000001;arrival=1")).is_err());
        assert!(XQueue::decode(&xtext("node=a;id=0000000000000001;arrival=-1")).is_err());
        assert!(XQueue::decode(&xtext("node=a;id=0000000000000001;arrival=1")).is_ok());
        assert!(
            XSched::decode(&xtext("next=5")).is_err(),
            "attempts is required"
        );
        assert!(
            XSched::decode(&xtext("attempts=1;reply=4")).is_err(),
            "odd hex"
        );
        assert!(XSched::decode(&xtext("attempts=99999999999")).is_err());
        assert!(XSched::decode(&"a".repeat(VALUE_MAX * 3 + 1)).is_err());
        assert!(
            XSched::decode(&xtext("attempts=1;future=x")).is_ok(),
            "unknown fields ignored"
        );
        assert!(XSched::decode(&xtext("attempts")).is_err());
    }

    #[test]
    fn take_param_leaves_the_others() {
        let (rest, v) = take_param(" SIZE=10 xqueue=abc BODY=7BIT", XQUEUE);
        assert_eq!(v, Some("abc"));
        assert_eq!(rest, " SIZE=10 BODY=7BIT");
        let (rest, v) = take_param("", XQUEUE);
        assert_eq!((rest.as_str(), v), ("", None));
    }
}
