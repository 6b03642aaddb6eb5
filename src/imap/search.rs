//! SEARCH evaluation (RFC 9051 §6.4.4, RFC 7162 MODSEQ) and the ESEARCH RETURN options
//! (RFC 4731, RFC 9051 §6.4.4.1).
//!
//! A message is first judged on what the session keeps of it (flags, size, dates, UIDs);
//! keys that need its text (HEADER, SUBJECT, BODY, TEXT, SENT*...) leave it undecided
//! ([`eval`] returns `None`), and only undecided messages are fetched, one body at a time,
//! and judged again with [`Content`]. Text keys are case-insensitive substring matches over
//! decoded text: RFC 2047 words in header fields, quoted-printable and base64 text parts in
//! their declared charset, all through [`crate::mime`].

use std::cmp::Ordering;

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::mime::{encoded_word, header, Message, PartKind};

use super::store::{system_flag, MessageMeta};

/// What a key is judged against, besides the message.
pub struct Ctx<'a> {
    pub seq: u32,
    pub meta: &'a MessageMeta,
    /// `\Recent` to this session (always false for IMAP4rev2).
    pub recent: bool,
    /// What `*` means: the last message number and the last UID.
    pub last_seq: u32,
    pub last_uid: u32,
}

/// A message's bytes and their MIME parse (`None`: the MIME engine refused it; then the raw
/// bytes are searched as text).
pub struct Content<'a> {
    pub raw: &'a [u8],
    pub msg: Option<Message<'a>>,
}

impl<'a> Content<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Content {
            raw,
            msg: super::structure::parse(raw),
        }
    }
}

/// The inclusive range one element of a sequence set names; `*` is `last`.
pub fn bounds(seq: &Sequence, last: u32) -> (u32, u32) {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => last,
    };
    let (a, b) = match seq {
        Sequence::Single(v) => (value(v), value(v)),
        Sequence::Range(a, b) => (value(a), value(b)),
    };
    (a.min(b), a.max(b))
}

fn in_set(set: &SequenceSet, n: u32, last: u32) -> bool {
    set.0.as_ref().iter().any(|s| {
        let (lo, hi) = bounds(s, last);
        (lo..=hi).contains(&n)
    })
}

/// Whether the message matches `key`; `None` when that needs its text and `content` is
/// `None`. With `content`, the answer is always `Some`.
pub fn eval(key: &SearchKey<'_>, c: &Ctx<'_>, content: Option<&Content<'_>>) -> Option<bool> {
    let m = c.meta;
    let sys = |bit: u8| m.flags.system & bit != 0;
    let internal = |d: &NaiveDate| {
        let when = chrono::DateTime::from_timestamp(m.internal_date, 0)
            .and_then(|t| {
                chrono::FixedOffset::east_opt(i32::from(m.zone_minutes) * 60)
                    .map(|z| t.with_timezone(&z).date_naive())
            })
            .unwrap_or_default();
        when.cmp(d.as_ref())
    };
    let text = |f: &dyn Fn(&Content<'_>) -> bool| content.map(f);
    Some(match key {
        SearchKey::All => true,
        SearchKey::Answered => sys(system_flag::ANSWERED),
        SearchKey::Deleted => sys(system_flag::DELETED),
        SearchKey::Draft => sys(system_flag::DRAFT),
        SearchKey::Flagged => sys(system_flag::FLAGGED),
        SearchKey::Seen => sys(system_flag::SEEN),
        SearchKey::Unanswered => !sys(system_flag::ANSWERED),
        SearchKey::Undeleted => !sys(system_flag::DELETED),
        SearchKey::Undraft => !sys(system_flag::DRAFT),
        SearchKey::Unflagged => !sys(system_flag::FLAGGED),
        SearchKey::Unseen => !sys(system_flag::SEEN),
        SearchKey::New => c.recent && !sys(system_flag::SEEN),
        SearchKey::Old => !c.recent,
        SearchKey::Recent => c.recent,
        SearchKey::Keyword(k) => m.flags.has_keyword(k.inner()),
        SearchKey::Unkeyword(k) => !m.flags.has_keyword(k.inner()),
        SearchKey::Larger(n) => m.size > *n,
        SearchKey::Smaller(n) => m.size < *n,
        SearchKey::SequenceSet(set) => in_set(set, c.seq, c.last_seq),
        SearchKey::Uid(set) => in_set(set, m.uid, c.last_uid),
        SearchKey::Before(d) => internal(d) == Ordering::Less,
        SearchKey::On(d) => internal(d) == Ordering::Equal,
        SearchKey::Since(d) => internal(d) != Ordering::Less,
        SearchKey::ModSequence { modseq, .. } => m.modseq >= *modseq,
        SearchKey::SentBefore(d) => text(&|t| sent(t, d) == Some(Ordering::Less))?,
        SearchKey::SentOn(d) => text(&|t| sent(t, d) == Some(Ordering::Equal))?,
        SearchKey::SentSince(d) => {
            text(&|t| matches!(sent(t, d), Some(Ordering::Equal | Ordering::Greater)))?
        }
        SearchKey::Header(name, value) => {
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            text(&|t| header_contains(t, Some(&name), value))?
        }
        SearchKey::Subject(v) => text(&|t| header_contains(t, Some("Subject"), v))?,
        SearchKey::From(v) => text(&|t| header_contains(t, Some("From"), v))?,
        SearchKey::To(v) => text(&|t| header_contains(t, Some("To"), v))?,
        SearchKey::Cc(v) => text(&|t| header_contains(t, Some("Cc"), v))?,
        SearchKey::Bcc(v) => text(&|t| header_contains(t, Some("Bcc"), v))?,
        SearchKey::Body(v) => text(&|t| body_contains(t, v))?,
        SearchKey::Text(v) => text(&|t| header_contains(t, None, v) || body_contains(t, v))?,
        SearchKey::Not(k) => !eval(k, c, content)?,
        // Undecided only when neither side decides.
        SearchKey::Or(a, b) => match (eval(a, c, content), eval(b, c, content)) {
            (Some(true), _) | (_, Some(true)) => true,
            (Some(false), Some(false)) => false,
            _ => return None,
        },
        SearchKey::And(keys) => return all(keys.as_ref(), c, content),
        #[allow(unreachable_patterns)]
        _ => false,
    })
}

/// Whether every key matches (`None`: undecided and none is false).
pub fn all(keys: &[SearchKey<'_>], c: &Ctx<'_>, content: Option<&Content<'_>>) -> Option<bool> {
    let mut undecided = false;
    for k in keys {
        match eval(k, c, content) {
            Some(false) => return Some(false),
            Some(true) => {}
            None => undecided = true,
        }
    }
    (!undecided).then_some(true)
}

/// Whether a key is one this session evaluates (the `ext_within` keys are not).
pub fn supported(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::Not(k) => supported(k),
        SearchKey::Or(a, b) => supported(a) && supported(b),
        SearchKey::And(keys) => keys.as_ref().iter().all(supported),
        #[allow(unreachable_patterns)]
        SearchKey::All
        | SearchKey::Answered
        | SearchKey::Deleted
        | SearchKey::Draft
        | SearchKey::Flagged
        | SearchKey::Seen
        | SearchKey::Unanswered
        | SearchKey::Undeleted
        | SearchKey::Undraft
        | SearchKey::Unflagged
        | SearchKey::Unseen
        | SearchKey::New
        | SearchKey::Old
        | SearchKey::Recent
        | SearchKey::Keyword(_)
        | SearchKey::Unkeyword(_)
        | SearchKey::Larger(_)
        | SearchKey::Smaller(_)
        | SearchKey::SequenceSet(_)
        | SearchKey::Uid(_)
        | SearchKey::Before(_)
        | SearchKey::On(_)
        | SearchKey::Since(_)
        | SearchKey::ModSequence { .. }
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Header(..)
        | SearchKey::Subject(_)
        | SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Cc(_)
        | SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Text(_) => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

pub fn has_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::Not(k) => has_modseq(k),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::And(keys) => keys.as_ref().iter().any(has_modseq),
        _ => false,
    }
}

/// Case-insensitive substring (Unicode simple lowercase on both sides).
fn contains(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.to_lowercase().contains(&needle.to_lowercase())
}

fn needle(v: &AString<'_>) -> String {
    String::from_utf8_lossy(v.as_ref()).into_owned()
}

/// A field called `name` (any field when `None`; then its name is searched too) whose
/// decoded value contains `value`. RFC 9051: HEADER with an empty string matches every
/// message that has the field.
fn header_contains(t: &Content<'_>, name: Option<&str>, value: &AString<'_>) -> bool {
    let value = needle(value);
    match &t.msg {
        Some(msg) => msg.headers(0).any(|(n, v)| {
            let named =
                name.is_none_or(|want| n.trim_ascii().eq_ignore_ascii_case(want.as_bytes()));
            named && {
                let text = header::display_value(v);
                contains(&text, &value)
                    || (name.is_none() && contains(&String::from_utf8_lossy(n), &value))
            }
        }),
        None => {
            let (head, _) = super::session::split_header(t.raw);
            let head = String::from_utf8_lossy(head);
            match name {
                None => contains(&encoded_word::decode(head.as_bytes()), &value),
                Some(want) => head.split('\n').any(|line| {
                    line.split_once(':').is_some_and(|(n, v)| {
                        n.trim().eq_ignore_ascii_case(want)
                            && contains(&encoded_word::decode(v.trim().as_bytes()), &value)
                    })
                }),
            }
        }
    }
}

/// The decoded text of the message's text parts contains `value`.
fn body_contains(t: &Content<'_>, value: &AString<'_>) -> bool {
    let value = needle(value);
    let Some(msg) = &t.msg else {
        let (_, body) = super::session::split_header(t.raw);
        return contains(&String::from_utf8_lossy(body), &value);
    };
    msg.walk().into_iter().any(|i| {
        let part = &msg.parts[i];
        if part.kind != PartKind::Leaf || !part.content_type.is_top("text") {
            return false;
        }
        let Ok(bytes) = msg.decoded_lenient(i) else {
            return false;
        };
        let text = match part.content_type.param("charset") {
            Some(cs) => encoded_word::charset_to_string(cs.text().as_bytes(), &bytes),
            None => String::from_utf8_lossy(&bytes).into_owned(),
        };
        contains(&text, &value)
    })
}

/// The Date field's day (in its own zone) compared with `d`; `None` without a usable Date.
fn sent(t: &Content<'_>, d: &NaiveDate) -> Option<Ordering> {
    let raw = match &t.msg {
        Some(msg) => msg.header_text(0, "Date")?,
        None => {
            let (head, _) = super::session::split_header(t.raw);
            let fields = super::session::header_fields(head, &["DATE".to_string()], false);
            let fields = String::from_utf8_lossy(&fields).into_owned();
            fields.split_once(':')?.1.trim().to_string()
        }
    };
    // chrono reads RFC 5322 dates but not a trailing comment such as "(UTC)".
    let text = match raw.find('(') {
        Some(at) => raw[..at].trim(),
        None => raw.trim(),
    };
    let when = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some(when.date_naive().cmp(d.as_ref()))
}

/// ESEARCH RETURN options (RFC 4731).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Return {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
}

/// Takes `RETURN (...)` off a SEARCH command (imap-codec does not parse it). Returns the
/// line without it, and `Some(options)` if there was one (`Some(None)`: invalid or
/// unsupported options, such as SAVE).
pub fn split_return(line: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<Option<Return>>) {
    let mut at = match memchr::memchr(b' ', line) {
        Some(i) => i + 1,
        None => return (line.into(), None),
    };
    let word = |from: usize, w: &[u8]| {
        line.get(from..from + w.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(w))
    };
    if word(at, b"UID ") {
        at += 4;
    }
    if !word(at, b"SEARCH RETURN (") {
        return (line.into(), None);
    }
    let start = at + b"SEARCH RETURN (".len();
    // The options are atoms; the line is already bounded by the framer.
    let Some(close) = memchr::memchr(b')', &line[start..]).map(|i| start + i) else {
        return (line.into(), None);
    };
    let mut ret = Return::default();
    let mut ok = true;
    for w in line[start..close]
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
    {
        match w.to_ascii_uppercase().as_slice() {
            b"MIN" => ret.min = true,
            b"MAX" => ret.max = true,
            b"ALL" => ret.all = true,
            b"COUNT" => ret.count = true,
            _ => ok = false,
        }
    }
    // RFC 4731 §3.1: RETURN () means ALL.
    if ret == Return::default() {
        ret.all = true;
    }
    let mut stripped = line[..at + b"SEARCH".len()].to_vec();
    let rest = &line[close + 1..];
    stripped.extend_from_slice(rest);
    (stripped.into(), Some(ok.then_some(ret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_options_are_taken_off() {
        let (line, ret) = split_return(b"a UID SEARCH RETURN (min COUNT) ALL\r\n");
        assert_eq!(&*line, b"a UID SEARCH ALL\r\n");
        let ret = ret.flatten().unwrap();
        assert!(ret.min && ret.count && !ret.max && !ret.all);
        let (line, ret) = split_return(b"a SEARCH RETURN () SEEN\r\n");
        assert_eq!(&*line, b"a SEARCH SEEN\r\n");
        assert!(ret.flatten().unwrap().all);
        assert_eq!(
            split_return(b"a SEARCH RETURN (SAVE) SEEN\r\n").1,
            Some(None)
        );
        assert_eq!(split_return(b"a SEARCH SEEN\r\n").1, None);
        assert_eq!(split_return(b"a SEARCH RETURN (MIN").1, None);
        assert_eq!(split_return(b"a FETCH RETURN (MIN)").1, None);
    }

    #[test]
    fn text_keys_decode_mime() {
        let raw = b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.org>\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nDate: Mon, 3 Mar 2025 23:30:00 -0500 (EST)\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSch=F6ne Gr=FC=DFe\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+Ym9sZDwvYj4=\r\n--b--\r\n";
        let t = Content::new(raw);
        let a = |s: &'static str| AString::try_from(s).unwrap();
        assert!(header_contains(&t, Some("from"), &a("jürgen")));
        assert!(
            header_contains(&t, Some("Subject"), &a("GRÜSSE"))
                || header_contains(&t, Some("Subject"), &a("grüße"))
        );
        assert!(!header_contains(&t, Some("To"), &a("")));
        assert!(header_contains(&t, Some("From"), &a("")));
        assert!(body_contains(&t, &a("schöne")));
        assert!(body_contains(&t, &a("<B>BOLD")));
        assert!(!body_contains(&t, &a("Subject")));
        assert!(
            header_contains(&t, None, &a("subject: gr"))
                || header_contains(&t, None, &a("subject"))
        );
        let day = |y, m, d| {
            NaiveDate::try_from(chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()).unwrap()
        };
        assert_eq!(sent(&t, &day(2025, 3, 3)), Some(Ordering::Equal));
        assert_eq!(sent(&t, &day(2025, 3, 4)), Some(Ordering::Less));
    }
}
