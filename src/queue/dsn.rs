//! Delivery status notifications: whether to send one, and the message itself.
//!
//! **Role.** Two pure steps for the delivery runtime. [`notify_decision`] applies the RFC 3461
//! rules to one recipient's outcome (send a notice or not, and why not); [`build_dsn`] turns
//! the recipients to report into a complete RFC 5322 message and the envelope to queue it
//! with (`MAIL FROM:<>`, `RCPT TO:<original sender>`), through the same queue as any mail.
//!
//! **When** ([`notify_decision`]):
//! - never to the null sender `<>`: a failure of a message that was itself a notice (or any
//!   null-sender mail) is dropped, and the caller logs it as a double bounce;
//! - `NOTIFY=NEVER` → nothing;
//! - failure: when NOTIFY is absent (RFC 3461 §4.1: the default is to report failures) or
//!   includes FAILURE;
//! - delay: when NOTIFY includes DELAY, or NOTIFY is absent and [`DsnPolicy::delay_without_notify`]
//!   (default on: senders should learn that their mail waits; RFC 3461 §4.1 leaves it to the
//!   MTA). The timing is `schedule::delay_notice_due`;
//! - success (delivered, relayed, expanded): only with NOTIFY including SUCCESS; a next hop
//!   that advertises DSN gets NOTIFY passed on and reports itself ([`success_action`]).
//!
//! **What** ([`build_dsn`], RFC 3464 inside RFC 6522's multipart/report):
//! - header: `From: Mail Delivery System <MAILER-DAEMON@host>`, `To:` the original sender,
//!   `Subject`, `Date` (the injected `now`), `Message-ID`, `Auto-Submitted: auto-replied`
//!   (RFC 3834 §5, so auto-responders stay quiet), `MIME-Version`, `Content-Type:
//!   multipart/report; report-type=delivery-status`;
//! - part 1, `text/plain`: what happened, for a person;
//! - part 2, `message/delivery-status`: per-message fields (`Reporting-MTA: dns; host`,
//!   `Original-Envelope-Id` when ENVID was given, `Arrival-Date`, and the extension field
//!   `X-Relay-Queue-ID`) and per recipient `Original-Recipient` (from ORCPT),
//!   `Final-Recipient`, `Action`, `Status`, `Remote-MTA`, `Diagnostic-Code` (`smtp; <the
//!   remote reply>` or `X-Relay; <our reason>`), `Last-Attempt-Date`, `Will-Retry-Until`;
//! - part 3, the original ([`returned_content`]): `message/rfc822` with the whole message
//!   for RET=FULL (cut at a line end after `return_max` octets, and the text says so), or
//!   for no RET when the message fits in `return_max`; otherwise `text/rfc822-headers`.
//!   Notices that report no failure carry the headers only (RFC 3461 §4.3 ties RET=FULL to
//!   "failed" DSNs), and so does a BINARYMIME original (binary cannot ride in a
//!   message/rfc822 part of an SMTP message).
//! - SMTPUTF8 (RFC 6533): when an address is not ASCII, the report uses
//!   `message/global-delivery-status`, the `utf-8` address type, and `message/global` /
//!   `message/global-headers` for the original.
//!
//! **Exposure.** Remote replies, addresses, ENVID, ORCPT and the original message come from
//! peers. Nothing of theirs may start a header line or a MIME boundary: every text value is
//! stripped of control characters (CR and LF become spaces) and folded to at most 78
//! columns where it has spaces and 998 octets where it has not (RFC 5322 §2.1.1); the
//! boundary is chosen so that it occurs in none of the parts.
//!
//! **Standards.** RFC 3464 (message/delivery-status), RFC 3461 (NOTIFY, RET, ENVID, ORCPT),
//! RFC 6522 (multipart/report), RFC 3462 → 6522 (text/rfc822-headers), RFC 3834
//! (Auto-Submitted), RFC 5322, RFC 2045/2046 (MIME), RFC 6533 (internationalized DSNs).
//!
//! **Limits.** At most [`REPORT_RECIPIENTS_MAX`] recipients per notice; field values are cut
//! at [`VALUE_MAX`] octets; the original at `return_max` (default 50 kB, Postfix's
//! `bounce_size_limit`), its header block at the same size.
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Utc};

use crate::envelope::{BodyType, DsnRet, Envelope, MailParams, Notify, QueueId, Recipient};
use crate::smtp::reply::{EnhancedStatus, Reply};

use super::SplitMix64;

/// Recipients in one notice: far above the session's `recipients_max`.
pub const REPORT_RECIPIENTS_MAX: usize = 10_000;
/// Octets of one peer-supplied field value (a remote's multi-line reply, an ORCPT).
pub const VALUE_MAX: usize = 2000;
/// RFC 5322 §2.1.1 line lengths: SHOULD 78, MUST 998 (without CRLF).
const FOLD_AT: usize = 78;
const LINE_MAX: usize = 998;

/// RFC 3464 §2.3.3 `Action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    /// Delivered to a next hop that does not do DSN (no further notices will come).
    Relayed,
    /// Delivered to a list or alias, which expanded it.
    Expanded,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    fn is_success(self) -> bool {
        matches!(self, Action::Delivered | Action::Relayed | Action::Expanded)
    }
}

/// Choices RFC 3461 leaves to the MTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsnPolicy {
    /// Send delay notices for recipients without NOTIFY.
    pub delay_without_notify: bool,
}

impl Default for DsnPolicy {
    fn default() -> Self {
        DsnPolicy {
            delay_without_notify: true,
        }
    }
}

/// Why no notice goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppressed {
    /// The sender is `<>`. For a failure this is a double bounce: log it and drop it.
    NullSender,
    /// NOTIFY=NEVER.
    NotifyNever,
    /// NOTIFY was given without this kind of event (or, for delays without NOTIFY, the policy
    /// is off).
    NotRequested,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Send,
    Suppress(Suppressed),
}

/// Should the sender hear about `action` for a recipient with `notify`? See the module doc.
pub fn notify_decision(
    reverse_path: &str,
    notify: Option<Notify>,
    action: Action,
    policy: &DsnPolicy,
) -> Decision {
    if reverse_path.is_empty() {
        return Decision::Suppress(Suppressed::NullSender);
    }
    if notify.is_some_and(|n| n.contains(Notify::NEVER)) {
        return Decision::Suppress(Suppressed::NotifyNever);
    }
    let wanted = match (action, notify) {
        (Action::Failed, None) => true,
        (Action::Failed, Some(n)) => n.contains(Notify::FAILURE),
        (Action::Delayed, None) => policy.delay_without_notify,
        (Action::Delayed, Some(n)) => n.contains(Notify::DELAY),
        (_, None) => false,
        (_, Some(n)) => n.contains(Notify::SUCCESS),
    };
    if wanted {
        Decision::Send
    } else {
        Decision::Suppress(Suppressed::NotRequested)
    }
}

/// How a recipient was delivered, for [`success_action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Into a local mailbox.
    Local,
    /// Into a local list or alias with several members.
    Expanded,
    /// Accepted by a next hop that advertised DSN (NOTIFY and ORCPT were passed on).
    RelayedWithDsn,
    /// Accepted by a next hop without DSN.
    RelayedWithoutDsn,
}

/// The success action to report (if NOTIFY=SUCCESS asks for one): none when the next hop
/// took over the DSN duty (a relay to a DSN-capable server passes NOTIFY and ORCPT on, RFC
/// 3461 §5.2), else per RFC 3464 §2.3.3.
pub fn success_action(how: Delivered) -> Option<Action> {
    match how {
        Delivered::Local => Some(Action::Delivered),
        Delivered::Expanded => Some(Action::Expanded),
        Delivered::RelayedWithDsn => None,
        Delivered::RelayedWithoutDsn => Some(Action::Relayed),
    }
}

/// Why a recipient ended where it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnostic<'a> {
    /// The remote MTA's reply (`Diagnostic-Code: smtp; …`).
    Smtp(&'a Reply),
    /// This relay's own reason: DNS, expiry, policy (`Diagnostic-Code: X-Relay; …`).
    Local(&'a str),
}

/// One recipient's line in the report.
#[derive(Clone, Debug)]
pub struct RecipientReport<'a> {
    /// From the original envelope: address, NOTIFY, ORCPT.
    pub recipient: &'a Recipient,
    pub action: Action,
    pub status: EnhancedStatus,
    /// The host that answered (`Remote-MTA: dns; host`).
    pub remote_mta: Option<&'a str>,
    pub diagnostic: Option<Diagnostic<'a>>,
    pub last_attempt: Option<SystemTime>,
    /// For `delayed`: the deadline (`schedule::RetrySchedule::deadline`).
    pub will_retry_until: Option<SystemTime>,
}

/// Everything a notice is made of.
#[derive(Clone, Debug)]
pub struct DsnInput<'a> {
    /// This relay's host name (Reporting-MTA, From, Message-ID).
    pub hostname: &'a str,
    pub now: SystemTime,
    pub queue_id: QueueId,
    pub arrival: SystemTime,
    /// The original envelope: sender, RET, ENVID, BODY.
    pub envelope: &'a Envelope,
    pub reports: Vec<RecipientReport<'a>>,
    /// The original message as spooled (header and body).
    pub original: &'a [u8],
    /// Octets of the original to return at most (`delivery.dsn_original_max`).
    pub return_max: usize,
}

/// A notice, ready to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dsn {
    pub message: Vec<u8>,
    /// `MAIL FROM:<>` (RFC 3461 §6.1, RFC 5321 §4.5.5) to the original sender.
    pub envelope: Envelope,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("no notice to the null sender")]
    NullSender,
    #[error("a notice needs at least one recipient to report")]
    NoRecipients,
    #[error("more than {REPORT_RECIPIENTS_MAX} recipients in one notice")]
    TooManyRecipients,
    #[error("no MIME boundary absent from the content (cannot happen for finite content)")]
    Boundary,
}

/// Which form of the original goes into part 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returned {
    /// The whole message as message/rfc822.
    Full,
    /// The first `n` octets (cut at a line end) as message/rfc822.
    Truncated(usize),
    /// The header block as text/rfc822-headers.
    Headers,
}

/// The rule for part 3 (see the module doc).
pub fn returned_content(
    ret: Option<DsnRet>,
    any_failed: bool,
    body: BodyType,
    original: &[u8],
    return_max: usize,
) -> Returned {
    if !any_failed || body == BodyType::BinaryMime {
        return Returned::Headers;
    }
    let fits = original.len() <= return_max;
    match ret {
        Some(DsnRet::Headers) => Returned::Headers,
        Some(DsnRet::Full) if fits => Returned::Full,
        Some(DsnRet::Full) => Returned::Truncated(cut_at_line(original, return_max)),
        None if fits => Returned::Full,
        None => Returned::Headers,
    }
}

/// The length of the longest prefix of at most `max` octets ending in LF (or `max` if there
/// is no line end in it).
fn cut_at_line(bytes: &[u8], max: usize) -> usize {
    let max = max.min(bytes.len());
    match memchr::memrchr(b'\n', &bytes[..max]) {
        Some(i) => i + 1,
        None => max,
    }
}

/// The header block (without the empty line), at most `max` octets, cut before a field.
fn header_block(original: &[u8], max: usize) -> &[u8] {
    let end = memchr::memmem::find(original, b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| memchr::memmem::find(original, b"\n\n").map(|i| i + 1))
        .unwrap_or(original.len());
    let header = &original[..end];
    if header.len() <= max {
        return header;
    }
    // Cut at the last line end before `max` that starts a new field (not a continuation).
    let mut cut = cut_at_line(header, max);
    while cut > 0 {
        match header.get(cut) {
            Some(b' ' | b'\t') => cut = cut_at_line(header, cut - 1),
            _ => break,
        }
    }
    &header[..cut]
}

/// RFC 5322 date-time in UTC, e.g. `Tue, 1 Jul 2003 10:52:37 +0000`.
fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    DateTime::<Utc>::from_timestamp(secs, 0)
        // A four-digit year, as RFC 5322 needs; chrono's formatter panics beyond it.
        .filter(|d| d.year() <= 9999)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc2822()
}

/// Peer text made safe for one header or body line: control characters become spaces,
/// runs of spaces collapse, at most `VALUE_MAX` octets (cut on a char boundary, marked).
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(VALUE_MAX));
    let mut space = false;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' {
            if space || out.is_empty() {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        if out.len() + c.len_utf8() > VALUE_MAX {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Appends `text` (already clean) as lines: each starts with `first` (then `indent` for
/// continuations), breaks at spaces to stay within 78 columns where it can, and hard-breaks
/// words longer than the 998-octet limit.
fn push_folded(out: &mut Vec<u8>, first: &str, indent: &str, text: &str) {
    let mut line = String::from(first);
    // A field name counts as a word: the value follows it after one space.
    let mut line_has_word = !first.is_empty();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        // A word that cannot fit even on a line of its own is split (on a char boundary).
        while indent.len() + word.len() > LINE_MAX {
            let mut at = LINE_MAX - indent.len() - 1;
            while !word.is_char_boundary(at) {
                at -= 1;
            }
            if line_has_word {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
                line = String::from(indent);
            }
            line.push_str(&word[..at]);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
            line = String::from(indent);
            line_has_word = false;
            word = &word[at..];
        }
        let sep = usize::from(line_has_word);
        if line_has_word && line.len() + sep + word.len() > FOLD_AT {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
            line = String::from(indent);
            line_has_word = false;
        }
        if line_has_word {
            line.push(' ');
        }
        line.push_str(word);
        line_has_word = true;
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A header field `Name: value`, folded before a space (RFC 5322 §2.2.3), so unfolding gives
/// back the value exactly.
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    push_folded(out, &format!("{name}:"), " ", &clean(value));
}

fn reply_text(reply: &Reply) -> String {
    let status = reply.status().map(|s| format!(" {s}")).unwrap_or_default();
    format!(
        "{}{status} {}",
        reply.code(),
        reply.text().replace('\n', " ")
    )
}

fn diagnostic_text(d: &Diagnostic<'_>) -> String {
    match d {
        Diagnostic::Smtp(reply) => reply_text(reply),
        Diagnostic::Local(text) => text.to_string(),
    }
}

/// `addr-type; address` for Final-Recipient, by RFC 6533 §3 when not ASCII.
fn address_field(address: &str) -> String {
    if address.is_ascii() {
        format!("rfc822; {address}")
    } else {
        format!("utf-8; {address}")
    }
}

/// A rough "2 days 4h"-style age, in whole minutes.
fn age_text(from: SystemTime, to: SystemTime) -> String {
    let secs = to.duration_since(from).unwrap_or_default().as_secs();
    let rounded = std::time::Duration::from_secs(secs - secs % 60);
    if rounded.is_zero() {
        "less than a minute".to_string()
    } else {
        humantime::format_duration(rounded).to_string()
    }
}

fn human_text(input: &DsnInput<'_>, returned: Returned) -> Vec<u8> {
    let mut text = Vec::new();
    let host = clean(input.hostname);
    let any_failed = input.reports.iter().any(|r| r.action == Action::Failed);
    let any_delayed = input.reports.iter().any(|r| r.action == Action::Delayed);
    let para = |text: &mut Vec<u8>, s: &str| {
        push_folded(text, "", "", s);
        text.extend_from_slice(b"\r\n");
    };
    para(
        &mut text,
        &format!("This is the mail system at host {host}."),
    );
    if any_failed {
        para(
            &mut text,
            "I'm sorry to have to inform you that your message could not be delivered to one \
             or more recipients. The details are below.",
        );
    }
    if any_delayed {
        let until = input
            .reports
            .iter()
            .filter_map(|r| r.will_retry_until)
            .max()
            .map(|t| format!(" until {}", rfc5322_date(t)))
            .unwrap_or_default();
        para(
            &mut text,
            &format!(
                "Your message has not been delivered yet to one or more recipients after {}. \
                 It will be retried{until}; you do not need to send it again. You will be \
                 notified if it cannot be delivered.",
                age_text(input.arrival, input.now)
            ),
        );
    }
    if input.reports.iter().any(|r| r.action.is_success()) {
        para(
            &mut text,
            "Your message was delivered to the recipients marked as delivered, relayed or \
             expanded below, as you asked.",
        );
    }
    para(
        &mut text,
        &format!("For further assistance, please send mail to <postmaster@{host}>."),
    );
    for r in &input.reports {
        let address = clean(&r.recipient.address);
        let mut line = format!("<{address}>: {} ({})", r.action.as_str(), r.status);
        match (&r.diagnostic, r.remote_mta) {
            (Some(d @ Diagnostic::Smtp(_)), Some(host)) => line.push_str(&format!(
                "; host {} said: {}",
                clean(host),
                clean(&diagnostic_text(d))
            )),
            (Some(d), _) => line.push_str(&format!("; {}", clean(&diagnostic_text(d)))),
            (None, _) => {}
        }
        push_folded(&mut text, "", "    ", &line);
    }
    text.extend_from_slice(b"\r\n");
    let note = match returned {
        Returned::Full => "The original message is attached.".to_string(),
        Returned::Truncated(n) => format!(
            "The original message is attached, cut to its first {n} octets (of {}).",
            input.original.len()
        ),
        Returned::Headers => "The header of the original message is attached.".to_string(),
    };
    push_folded(&mut text, "", "", &note);
    text
}

fn report_body(input: &DsnInput<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    field(
        &mut out,
        "Reporting-MTA",
        &format!("dns; {}", input.hostname),
    );
    field(&mut out, "X-Relay-Queue-ID", &input.queue_id.to_string());
    if let Some(envid) = &input.envelope.params.envid {
        field(&mut out, "Original-Envelope-Id", envid);
    }
    field(&mut out, "Arrival-Date", &rfc5322_date(input.arrival));
    for r in &input.reports {
        out.extend_from_slice(b"\r\n");
        if let Some(orcpt) = &r.recipient.orcpt {
            let value = if orcpt.contains(';') {
                orcpt.clone()
            } else {
                address_field(orcpt)
            };
            field(&mut out, "Original-Recipient", &value);
        }
        field(
            &mut out,
            "Final-Recipient",
            &address_field(&r.recipient.address),
        );
        field(&mut out, "Action", r.action.as_str());
        field(&mut out, "Status", &r.status.to_string());
        if let Some(host) = r.remote_mta {
            field(&mut out, "Remote-MTA", &format!("dns; {host}"));
        }
        match &r.diagnostic {
            Some(d @ Diagnostic::Smtp(_)) => {
                field(
                    &mut out,
                    "Diagnostic-Code",
                    &format!("smtp; {}", diagnostic_text(d)),
                );
            }
            Some(Diagnostic::Local(text)) => {
                field(&mut out, "Diagnostic-Code", &format!("X-Relay; {text}"));
            }
            None => {}
        }
        if let Some(t) = r.last_attempt {
            field(&mut out, "Last-Attempt-Date", &rfc5322_date(t));
        }
        if r.action == Action::Delayed {
            if let Some(t) = r.will_retry_until {
                field(&mut out, "Will-Retry-Until", &rfc5322_date(t));
            }
        }
    }
    out
}

fn with_crlf_end(mut bytes: Vec<u8>) -> Vec<u8> {
    if !bytes.ends_with(b"\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

/// A boundary that occurs in none of `parts`: `=_` cannot occur in quoted-printable or
/// base64 text, and a random tail makes a planted collision useless; each candidate that
/// does occur is replaced by the next, so at most one per occurrence is tried.
fn choose_boundary(seed: u64, parts: &[&[u8]]) -> Result<String, DsnError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut rng = SplitMix64::new(seed);
    for _ in 0..=total / 16 + 1 {
        let candidate = format!("=_relay_dsn_{:016x}{:016x}", rng.next_u64(), rng.next_u64());
        let finder = memchr::memmem::Finder::new(candidate.as_bytes());
        if parts.iter().all(|p| finder.find(p).is_none()) {
            return Ok(candidate);
        }
    }
    Err(DsnError::Boundary)
}

fn subject(input: &DsnInput<'_>) -> &'static str {
    if input.reports.iter().any(|r| r.action == Action::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if input.reports.iter().any(|r| r.action == Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    }
}

/// Builds the notice (see the module doc for its shape). Callers decide first, per
/// recipient, with [`notify_decision`]; this refuses the null sender again anyway.
pub fn build_dsn(input: &DsnInput<'_>) -> Result<Dsn, DsnError> {
    let sender = &input.envelope.reverse_path;
    if sender.is_empty() {
        return Err(DsnError::NullSender);
    }
    if input.reports.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    if input.reports.len() > REPORT_RECIPIENTS_MAX {
        return Err(DsnError::TooManyRecipients);
    }
    let params: &MailParams = &input.envelope.params;
    let utf8 = !sender.is_ascii()
        || input.reports.iter().any(|r| {
            !r.recipient.address.is_ascii()
                || r.recipient.orcpt.as_ref().is_some_and(|o| !o.is_ascii())
        });
    let any_failed = input.reports.iter().any(|r| r.action == Action::Failed);
    let returned = returned_content(
        params.ret,
        any_failed,
        params.body,
        input.original,
        input.return_max,
    );

    let human = human_text(input, returned);
    let report = report_body(input);
    let original: Vec<u8> = match returned {
        Returned::Full => with_crlf_end(input.original.to_vec()),
        Returned::Truncated(n) => with_crlf_end(input.original[..n].to_vec()),
        Returned::Headers => with_crlf_end(header_block(input.original, input.return_max).to_vec()),
    };
    let original_8bit = !original.is_ascii();
    let text_8bit = !human.is_ascii() || !report.is_ascii();

    let now_micros = input
        .now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let boundary = choose_boundary(
        input.queue_id.0 ^ now_micros.rotate_left(17),
        &[&human, &report, &original],
    )?;
    let host = clean(input.hostname);

    let mut out = Vec::with_capacity(human.len() + report.len() + original.len() + 1024);
    field(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    field(&mut out, "To", &format!("<{sender}>"));
    field(&mut out, "Subject", subject(input));
    field(&mut out, "Date", &rfc5322_date(input.now));
    field(
        &mut out,
        "Message-ID",
        &format!("<{}.{now_micros}.dsn@{host}>", input.queue_id),
    );
    field(&mut out, "Auto-Submitted", "auto-replied");
    field(&mut out, "MIME-Version", "1.0");
    out.extend_from_slice(
        format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
        )
        .as_bytes(),
    );
    if original_8bit || text_8bit {
        field(&mut out, "Content-Transfer-Encoding", "8bit");
    }
    out.extend_from_slice(
        b"\r\nThis is a MIME-encapsulated message: a delivery status notification.\r\n",
    );

    let cte = |eight: bool| if eight { "8bit" } else { "7bit" };
    // Part 1: for people.
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    let charset = if human.is_ascii() {
        "us-ascii"
    } else {
        "utf-8"
    };
    field(
        &mut out,
        "Content-Type",
        &format!("text/plain; charset={charset}"),
    );
    field(&mut out, "Content-Description", "Notification");
    field(
        &mut out,
        "Content-Transfer-Encoding",
        cte(!human.is_ascii()),
    );
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&human);
    // Part 2: for programs.
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    let report_type = if utf8 {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    field(&mut out, "Content-Type", report_type);
    field(&mut out, "Content-Description", "Delivery report");
    if !report.is_ascii() {
        field(&mut out, "Content-Transfer-Encoding", "8bit");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&report);
    // Part 3: the original.
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    let (kind, description) = match (returned, utf8) {
        (Returned::Headers, false) => ("text/rfc822-headers", "Headers of the original message"),
        (Returned::Headers, true) => ("message/global-headers", "Headers of the original message"),
        (_, false) => ("message/rfc822", "Original message"),
        (_, true) => ("message/global", "Original message"),
    };
    field(&mut out, "Content-Type", kind);
    field(&mut out, "Content-Description", description);
    field(&mut out, "Content-Transfer-Encoding", cte(original_8bit));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&original);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let envelope = Envelope {
        reverse_path: String::new(),
        params: MailParams {
            size: Some(out.len() as u64),
            body: if out.is_ascii() {
                BodyType::SevenBit
            } else {
                BodyType::EightBitMime
            },
            smtputf8: utf8,
            ret: None,
            envid: None,
            cluster: Default::default(),
        },
        recipients: vec![Recipient {
            address: sender.clone(),
            notify: None,
            orcpt: None,
        }],
    };
    Ok(Dsn {
        message: out,
        envelope,
    })
}

#[cfg(test)]
mod tests;
