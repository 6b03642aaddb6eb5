//! What one delivery attempt means for the queue: the decision table from the next hop's
//! per-recipient answers to spool records, the entry's next wait and the notices due.
//!
//! **Role.** Pure: the per-core delivery runtime (`crate::delivery`) calls [`settle`] with what
//! the SMTP client reported and the clock it read, then carries out the [`Settlement`]
//! (notices first, then the record, then the requeue: see that module for why in that order).
//!
//! | client said | record | queue | notice (RFC 3461 NOTIFY permitting) |
//! |---|---|---|---|
//! | 2xx to the data | `Delivered` + reply | done | `relayed` if NOTIFY=SUCCESS and the hop lacks DSN |
//! | 5xx (or a local permanent reason) | `Bounced` + reply | done | `failed` |
//! | 4xx, timeout, broken connection | `Deferred` + reply + next attempt | back in the deferred index | `delayed`, once, after `delivery.delay_warning` |
//! | 4xx, but no attempt fits before `max_age` | `Expired` + the last reply | done | `failed` |
//!
//! A failure notice to the null sender is a double bounce: it is logged and dropped (RFC 3461
//! §6.2, RFC 5321 §4.5.5), never sent.
//!
//! **Exposure.** Replies come from next hops; they are only copied (bounded by the spool's
//! `REPLY_MAX_LEN` and by the DSN builder), never interpreted beyond their code.
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::{Envelope, Notify, Recipient};
use crate::smtp::client::RecipientResult;
use crate::smtp::reply::Reply;
use crate::spool::{DeliveryResult, Outcome};

use super::destinations::{QueueEntry, RcptSet};
use super::dsn::{
    notify_decision, success_action, Action, Decision, Delivered, DsnPolicy, Suppressed,
};
use super::schedule::{self, NextAttempt, RetrySchedule};
use super::to_millis;

/// What one attempt on one entry produced, with what [`settle`] needs around it.
pub struct Attempted<'a> {
    pub entry: &'a QueueEntry,
    /// The message's remote addresses (`MessageMeta::remote`): the entry's indices point here.
    pub remote: &'a [String],
    /// The stored envelope (sender, NOTIFY per recipient).
    pub envelope: &'a Envelope,
    /// One per index of `entry.recipients`, in that order.
    pub results: &'a [RecipientResult],
    /// The next hop announced DSN, so NOTIFY and ORCPT went on with the message and a
    /// success notice is its duty, not ours (RFC 3461 §5.2).
    pub hop_dsn: bool,
    pub now: SystemTime,
}

/// A notice due about one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Index into the message's remote addresses.
    pub index: usize,
    pub action: Action,
    /// The reply it reports (the next hop's, or ours).
    pub reply: Reply,
    /// `reply` came from the next hop (Diagnostic-Code: smtp) rather than from us.
    pub remote: bool,
}

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// One result per recipient, to append to the spool.
    pub results: Vec<DeliveryResult>,
    /// The recipients still to deliver, with their next attempt; `None` when every
    /// recipient of the entry is final.
    pub requeue: Option<QueueEntry>,
    pub notices: Vec<Notice>,
    /// Recipients whose failure cannot be reported (null sender): logged, dropped.
    pub double_bounces: Vec<usize>,
}

/// The stored envelope's recipient for a remote address (with its NOTIFY and ORCPT), or a
/// bare one for an alias forward, which has no RCPT of its own.
pub fn recipient_of(envelope: &Envelope, address: &str) -> Recipient {
    envelope
        .recipients
        .iter()
        .find(|r| r.address == address)
        .cloned()
        .unwrap_or_else(|| Recipient {
            address: address.to_string(),
            notify: None,
            orcpt: None,
        })
}

fn notify_of(envelope: &Envelope, address: &str) -> Option<Notify> {
    envelope
        .recipients
        .iter()
        .find(|r| r.address == address)
        .and_then(|r| r.notify)
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The decision table of the module doc. `results` shorter than the entry's recipients
/// defers the rest (a client that reported fewer is a bug; mail is not lost over it).
pub fn settle(attempt: &Attempted<'_>, schedule: &RetrySchedule, policy: &DsnPolicy) -> Settlement {
    let entry = attempt.entry;
    let now = attempt.now;
    let number = u32::from(entry.attempts) + 1;
    let sender = attempt.envelope.reverse_path.as_str();
    let mut out = Settlement {
        results: Vec::new(),
        requeue: None,
        notices: Vec::new(),
        double_bounces: Vec::new(),
    };
    let mut deferred: Vec<(usize, Reply, bool)> = Vec::new();
    let notify =
        |out: &mut Settlement, index: usize, action: Action, reply: &Reply, remote: bool| {
            let address = attempt.remote.get(index).map(String::as_str).unwrap_or("");
            match notify_decision(sender, notify_of(attempt.envelope, address), action, policy) {
                Decision::Send => out.notices.push(Notice {
                    index,
                    action,
                    reply: reply.clone(),
                    remote,
                }),
                Decision::Suppress(Suppressed::NullSender) if action == Action::Failed => {
                    out.double_bounces.push(index);
                }
                Decision::Suppress(_) => {}
            }
        };
    let record =
        |index: usize, outcome: Outcome, reply: &Reply, next: Option<SystemTime>| DeliveryResult {
            id: entry.id,
            recipient: attempt.remote.get(index).cloned().unwrap_or_default(),
            outcome,
            reply: reply.to_string(),
            attempt: number,
            at_unix_micros: micros(now),
            next_attempt_unix_micros: next.map(micros),
        };

    let aborted = RecipientResult::Deferred(crate::smtp::client::Diagnostic::Local {
        stage: crate::smtp::client::Stage::Prepare,
        reply: Reply::delivery_aborted(),
    });
    for (k, index) in entry.recipients.indices().into_iter().enumerate() {
        let result = attempt.results.get(k).unwrap_or(&aborted);
        match result {
            RecipientResult::Delivered(reply) => {
                out.results
                    .push(record(index, Outcome::Delivered, reply, None));
                let how = if attempt.hop_dsn {
                    Delivered::RelayedWithDsn
                } else {
                    Delivered::RelayedWithoutDsn
                };
                if let Some(action) = success_action(how) {
                    notify(&mut out, index, action, reply, true);
                }
            }
            RecipientResult::Bounced(diagnostic) => {
                let reply = diagnostic.reply();
                out.results
                    .push(record(index, Outcome::Bounced, reply, None));
                notify(
                    &mut out,
                    index,
                    Action::Failed,
                    reply,
                    diagnostic.is_remote(),
                );
            }
            RecipientResult::Deferred(diagnostic) => {
                deferred.push((index, diagnostic.reply().clone(), diagnostic.is_remote()));
            }
        }
    }
    if deferred.is_empty() {
        return out;
    }

    match schedule::next_attempt(number, entry.first_seen(), now, entry.seed(), schedule) {
        NextAttempt::Expired => {
            for (index, reply, _) in &deferred {
                let expired = Reply::delivery_expired(&reply.to_string());
                out.results
                    .push(record(*index, Outcome::Expired, &expired, None));
                notify(&mut out, *index, Action::Failed, &expired, false);
            }
        }
        NextAttempt::At(at) => {
            let warn =
                schedule::delay_notice_due(entry.first_seen(), now, entry.delay_noticed, schedule);
            for (index, reply, remote) in &deferred {
                out.results
                    .push(record(*index, Outcome::Deferred, reply, Some(at)));
                if warn {
                    notify(&mut out, *index, Action::Delayed, reply, *remote);
                }
            }
            let indices: Vec<usize> = deferred.iter().map(|(i, _, _)| *i).collect();
            let recipients =
                RcptSet::from_indices(&indices).unwrap_or_else(|_| entry.recipients.clone());
            out.requeue = Some(QueueEntry {
                id: entry.id,
                due_ms: to_millis(at),
                recipients,
                attempts: entry.attempts.saturating_add(1),
                dest: entry.dest,
                delay_noticed: entry.delay_noticed || warn,
            });
        }
    }
    out
}

/// How [`finalize_all`] ends every recipient.
#[derive(Clone, Copy, Debug)]
pub struct Finalization<'a> {
    pub outcome: Outcome,
    pub reply: &'a Reply,
    /// No failure notice (an operator's delete).
    pub silent: bool,
}

/// Every recipient of `entry` ends with `outcome` (an operator's delete or bounce, an expiry
/// found while waiting): the results, and the failure notices unless `silent`.
pub fn finalize_all(
    entry: &QueueEntry,
    remote: &[String],
    envelope: &Envelope,
    ending: Finalization<'_>,
    now: SystemTime,
    policy: &DsnPolicy,
) -> Settlement {
    let Finalization {
        outcome,
        reply,
        silent,
    } = ending;
    let mut out = Settlement {
        results: Vec::new(),
        requeue: None,
        notices: Vec::new(),
        double_bounces: Vec::new(),
    };
    for index in entry.recipients.indices() {
        let address = remote.get(index).cloned().unwrap_or_default();
        out.results.push(DeliveryResult {
            id: entry.id,
            recipient: address.clone(),
            outcome,
            reply: reply.to_string(),
            attempt: u32::from(entry.attempts) + 1,
            at_unix_micros: micros(now),
            next_attempt_unix_micros: None,
        });
        if silent {
            continue;
        }
        match notify_decision(
            &envelope.reverse_path,
            notify_of(envelope, &address),
            Action::Failed,
            policy,
        ) {
            Decision::Send => out.notices.push(Notice {
                index,
                action: Action::Failed,
                reply: reply.clone(),
                remote: false,
            }),
            Decision::Suppress(Suppressed::NullSender) => out.double_bounces.push(index),
            Decision::Suppress(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use crate::queue::destinations::DestId;
    use crate::smtp::client::{Diagnostic, Stage};
    use crate::smtp::reply::{EnhancedStatus, ReplyCode};
    use std::time::Duration;

    const ARRIVAL: u64 = 1_764_000_000_000_000;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            intervals: vec![Duration::from_secs(60), Duration::from_secs(300)],
            repeat: Duration::from_secs(3600),
            jitter_percent: 0,
            max_age: Duration::from_secs(24 * 3600),
            delay_warning: Some(Duration::from_secs(4 * 3600)),
        }
    }

    fn entry(indices: &[usize]) -> QueueEntry {
        let id = QueueId::new(ARRIVAL, 0);
        let first = UNIX_EPOCH + Duration::from_micros(ARRIVAL);
        QueueEntry::new(
            id,
            DestId(0),
            RcptSet::from_indices(indices).unwrap(),
            first,
        )
    }

    fn envelope(sender: &str, rcpts: &[(&str, Option<Notify>)]) -> Envelope {
        Envelope {
            reverse_path: sender.into(),
            params: Default::default(),
            recipients: rcpts
                .iter()
                .map(|(a, n)| Recipient {
                    address: (*a).into(),
                    notify: *n,
                    orcpt: None,
                })
                .collect(),
        }
    }

    fn reply(code: u16, text: &str) -> Reply {
        let st = EnhancedStatus::new((code / 100) as u8, 0, 0);
        Reply::new(ReplyCode::new(code).unwrap(), st, text.to_string())
    }

    fn remote(code: u16) -> Diagnostic {
        Diagnostic::Remote {
            stage: Stage::Rcpt,
            reply: reply(code, "remote says so"),
        }
    }

    fn at(secs_after_arrival: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(ARRIVAL) + Duration::from_secs(secs_after_arrival)
    }

    fn addrs() -> Vec<String> {
        vec!["a@x.test".into(), "b@x.test".into(), "c@x.test".into()]
    }

    /// `settle` over the three addresses of [`addrs`] with the test schedule.
    fn run(
        e: &QueueEntry,
        env: &Envelope,
        results: &[RecipientResult],
        hop_dsn: bool,
        now: SystemTime,
    ) -> Settlement {
        let remote = addrs();
        settle(
            &Attempted {
                entry: e,
                remote: &remote,
                envelope: env,
                results,
                hop_dsn,
                now,
            },
            &schedule(),
            &DsnPolicy::default(),
        )
    }

    #[test]
    fn delivered_bounced_deferred_each_get_their_record_and_only_the_deferred_requeue() {
        let e = entry(&[0, 1, 2]);
        let env = envelope(
            "s@y.test",
            &[("a@x.test", None), ("b@x.test", None), ("c@x.test", None)],
        );
        let results = [
            RecipientResult::Delivered(reply(250, "ok")),
            RecipientResult::Bounced(remote(550)),
            RecipientResult::Deferred(remote(451)),
        ];
        let s = run(&e, &env, &results, false, at(10));
        let outcomes: Vec<_> = s
            .results
            .iter()
            .map(|r| (r.recipient.as_str(), r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("a@x.test", Outcome::Delivered),
                ("b@x.test", Outcome::Bounced),
                ("c@x.test", Outcome::Deferred)
            ]
        );
        assert!(s.results.iter().all(|r| r.attempt == 1));
        assert_eq!(s.results[2].next_attempt_unix_micros, Some(micros(at(70))));
        let requeue = s.requeue.expect("c is requeued");
        assert_eq!(requeue.recipients.indices(), [2]);
        assert_eq!(requeue.attempts, 1);
        assert_eq!(requeue.due(), at(70));
        // Only the bounce is reported: no NOTIFY means failures only.
        assert_eq!(s.notices.len(), 1);
        assert_eq!(
            (s.notices[0].index, s.notices[0].action),
            (1, Action::Failed)
        );
        assert!(s.notices[0].remote);
    }

    #[test]
    fn the_null_sender_gets_no_notice_and_the_failure_is_a_double_bounce() {
        let e = entry(&[0]);
        let env = envelope("", &[("a@x.test", None)]);
        let results = [RecipientResult::Bounced(remote(550))];
        let s = run(&e, &env, &results, false, at(1));
        assert!(s.notices.is_empty());
        assert_eq!(s.double_bounces, [0]);
        assert_eq!(s.results[0].outcome, Outcome::Bounced);
    }

    #[test]
    fn a_deferral_past_max_age_expires_with_a_failure_notice() {
        let e = entry(&[0]);
        let env = envelope("s@y.test", &[("a@x.test", None)]);
        let results = [RecipientResult::Deferred(remote(451))];
        // 23h59m after arrival: the next wait (60s, first attempt) passes the 24h deadline.
        let s = run(&e, &env, &results, false, at(24 * 3600 - 30));
        assert_eq!(s.results[0].outcome, Outcome::Expired);
        assert!(
            s.results[0].reply.starts_with("554 5.4.7"),
            "{}",
            s.results[0].reply
        );
        assert!(s.results[0].reply.contains("451"), "keeps the last reason");
        assert!(s.requeue.is_none());
        assert_eq!(s.notices[0].action, Action::Failed);
    }

    #[test]
    fn a_delay_notice_goes_once_after_the_warning_time() {
        let mut e = entry(&[0]);
        let env = envelope("s@y.test", &[("a@x.test", None)]);
        let results = [RecipientResult::Deferred(remote(451))];
        let run = |e: &QueueEntry, now| run(e, &env, &results, false, now);
        let early = run(&e, at(3600));
        assert!(early.notices.is_empty());
        assert!(!early.requeue.as_ref().unwrap().delay_noticed);
        let late = run(&e, at(5 * 3600));
        assert_eq!(late.notices.len(), 1);
        assert_eq!(late.notices[0].action, Action::Delayed);
        e = late.requeue.unwrap();
        assert!(e.delay_noticed);
        let later = run(&e, at(6 * 3600));
        assert!(later.notices.is_empty(), "a second delay notice was due");
    }

    #[test]
    fn notify_success_asks_for_a_relayed_notice_only_from_a_hop_without_dsn() {
        let e = entry(&[0]);
        let env = envelope("s@y.test", &[("a@x.test", Some(Notify::SUCCESS))]);
        let results = [RecipientResult::Delivered(reply(250, "ok"))];
        let run = |hop_dsn| run(&e, &env, &results, hop_dsn, at(1));
        let without = run(false);
        assert_eq!(without.notices.len(), 1);
        assert_eq!(without.notices[0].action, Action::Relayed);
        assert!(run(true).notices.is_empty());
    }

    #[test]
    fn notify_never_silences_failures() {
        let e = entry(&[0]);
        let env = envelope("s@y.test", &[("a@x.test", Some(Notify::NEVER))]);
        let results = [RecipientResult::Bounced(remote(550))];
        let s = run(&e, &env, &results, false, at(1));
        assert!(s.notices.is_empty());
        assert!(s.double_bounces.is_empty());
    }

    #[test]
    fn missing_results_defer_rather_than_lose() {
        let e = entry(&[0, 1]);
        let env = envelope("s@y.test", &[]);
        let results = [RecipientResult::Delivered(reply(250, "ok"))];
        let s = run(&e, &env, &results, false, at(1));
        assert_eq!(s.results[1].outcome, Outcome::Deferred);
        assert_eq!(s.requeue.unwrap().recipients.indices(), [1]);
    }

    #[test]
    fn finalize_all_records_every_recipient_and_notices_unless_silent() {
        let e = entry(&[0, 2]);
        let env = envelope("s@y.test", &[]);
        let remote_addrs = addrs();
        let r = Reply::bounced_by_operator();
        let loud = finalize_all(
            &e,
            &remote_addrs,
            &env,
            Finalization {
                outcome: Outcome::Bounced,
                reply: &r,
                silent: false,
            },
            at(1),
            &DsnPolicy::default(),
        );
        assert_eq!(loud.results.len(), 2);
        assert_eq!(loud.results[1].recipient, "c@x.test");
        assert_eq!(loud.notices.len(), 2);
        let quiet = finalize_all(
            &e,
            &remote_addrs,
            &env,
            Finalization {
                outcome: Outcome::Bounced,
                reply: &r,
                silent: true,
            },
            at(1),
            &DsnPolicy::default(),
        );
        assert!(quiet.notices.is_empty());
    }
}
