//! ESMTP parameters of MAIL FROM and RCPT TO, and the xtext encoding they use.
//!
//! Exposure: peer-controlled text. Decoded values (ENVID, ORCPT) are limited to printable
//! US-ASCII so that they can later go into a DSN header without further escaping.
//!
//! Standards: RFC 5321 §4.1.2 (`esmtp-param` syntax) and §4.1.1.11 (unrecognized parameters),
//! RFC 1870 (SIZE), RFC 6152 (BODY=8BITMIME), RFC 3030 (BODY=BINARYMIME), RFC 6531 (SMTPUTF8),
//! RFC 3461 §4 (RET, ENVID, NOTIFY, ORCPT; xtext in §4 "Additional parameters").
//!
//! Limits: ENVID 100 characters (RFC 3461 §4.4), ORCPT address 500 characters (RFC 3461
//! §4.2), SIZE 20 digits (RFC 1870 §4, values beyond u64 saturate and are then too large).

use crate::envelope::{BodyType, DsnRet, MailParams, Notify};

/// RFC 3461 §4.4.
pub const ENVID_MAX: usize = 100;
/// RFC 3461 §4.2.
pub const ORCPT_MAX: usize = 500;
/// Cluster-private MAIL parameters per command, and the length of one value.
pub const CLUSTER_PARAMS_MAX: usize = 8;
pub const CLUSTER_VALUE_MAX: usize = 200;
/// RFC 1870 §4: `size-value ::= 1*20DIGIT`.
const SIZE_DIGITS_MAX: usize = 20;

/// RCPT TO parameters (RFC 3461 §4.1, §4.2).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// `addr-type;address` with the address xtext-decoded.
    pub orcpt: Option<String>,
}

/// Why a parameter list was refused; the command parser maps it to a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("bad {0} parameter value")]
    BadValue(&'static str),
    #[error("duplicate {0} parameter")]
    Duplicate(&'static str),
    #[error("malformed parameter list")]
    Syntax,
    /// RFC 5321 §4.1.1.11: answered 555. The keyword is kept (bounded) for the reply text.
    #[error("unrecognized parameter {0}")]
    Unknown(String),
}

/// Parameter keywords as a bit each, for duplicate detection.
const SIZE: u8 = 1;
const BODY: u8 = 2;
const SMTPUTF8: u8 = 4;
const RET: u8 = 8;
const ENVID: u8 = 16;
const NOTIFY: u8 = 32;
const ORCPT: u8 = 64;
const AUTH: u8 = 128;
/// RFC 4954 §5: AUTH=<> or an xtext mailbox; longer values than this are refused.
const AUTH_MAX: usize = 500;

/// Parses the text after MAIL FROM's path: empty, or `SP esmtp-param *(SP esmtp-param)`.
pub fn parse_mail(text: &str) -> Result<MailParams, ParamError> {
    let mut params = MailParams::default();
    let mut seen = 0u8;
    for (keyword, value) in split(text)? {
        let bit = if keyword.eq_ignore_ascii_case("SIZE") {
            params.size = Some(parse_size(value)?);
            SIZE
        } else if keyword.eq_ignore_ascii_case("BODY") {
            params.body = parse_body(value)?;
            BODY
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() {
                return Err(ParamError::BadValue("SMTPUTF8"));
            }
            params.smtputf8 = true;
            SMTPUTF8
        } else if keyword.eq_ignore_ascii_case("RET") {
            params.ret = Some(parse_ret(value)?);
            RET
        } else if keyword.eq_ignore_ascii_case("ENVID") {
            let envid = value
                .and_then(xtext_decode)
                .filter(|v| !v.is_empty() && v.len() <= ENVID_MAX)
                .ok_or(ParamError::BadValue("ENVID"))?;
            params.envid = Some(envid);
            ENVID
        } else if keyword.eq_ignore_ascii_case("AUTH") {
            // RFC 4954 §5: accepted, then treated as AUTH=<> (this relay does not vouch for
            // another server's authenticated submitter): checked, not stored or passed on.
            value
                .and_then(xtext_decode)
                .filter(|v| !v.is_empty() && v.len() <= AUTH_MAX)
                .ok_or(ParamError::BadValue("AUTH"))?;
            AUTH
        } else if keyword.len() > 1
            && keyword.as_bytes()[0].eq_ignore_ascii_case(&b'X')
            && value.is_some()
        {
            // A cluster-private parameter: parsed here, allowed only by the cluster listener's
            // session (which answers 555 for it elsewhere, as for any unknown keyword).
            let value = value
                .and_then(xtext_decode)
                .filter(|v| !v.is_empty() && v.len() <= CLUSTER_VALUE_MAX)
                .ok_or(ParamError::BadValue("X-"))?;
            let keyword = keyword.to_ascii_uppercase();
            if params.cluster.iter().any(|(k, _)| *k == keyword) {
                return Err(ParamError::Duplicate("X-"));
            }
            if params.cluster.len() >= CLUSTER_PARAMS_MAX {
                return Err(ParamError::Syntax);
            }
            params.cluster.push((keyword, value));
            continue;
        } else {
            return Err(unknown(keyword));
        };
        mark(&mut seen, bit, keyword_name(bit))?;
    }
    Ok(params)
}

/// Parses the text after RCPT TO's path.
pub fn parse_rcpt(text: &str) -> Result<RcptParams, ParamError> {
    let mut params = RcptParams::default();
    let mut seen = 0u8;
    for (keyword, value) in split(text)? {
        let bit = if keyword.eq_ignore_ascii_case("NOTIFY") {
            params.notify = Some(parse_notify(value)?);
            NOTIFY
        } else if keyword.eq_ignore_ascii_case("ORCPT") {
            params.orcpt = Some(parse_orcpt(value)?);
            ORCPT
        } else {
            return Err(unknown(keyword));
        };
        mark(&mut seen, bit, keyword_name(bit))?;
    }
    Ok(params)
}

/// Appends MAIL parameters, each preceded by a space. BODY=7BIT is the default and omitted.
pub fn encode_mail(params: &MailParams, out: &mut Vec<u8>) {
    if let Some(size) = params.size {
        out.extend_from_slice(b" SIZE=");
        out.extend_from_slice(size.to_string().as_bytes());
    }
    match params.body {
        BodyType::SevenBit => {}
        BodyType::EightBitMime => out.extend_from_slice(b" BODY=8BITMIME"),
        BodyType::BinaryMime => out.extend_from_slice(b" BODY=BINARYMIME"),
    }
    if params.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    match params.ret {
        None => {}
        Some(DsnRet::Full) => out.extend_from_slice(b" RET=FULL"),
        Some(DsnRet::Headers) => out.extend_from_slice(b" RET=HDRS"),
    }
    if let Some(envid) = &params.envid {
        out.extend_from_slice(b" ENVID=");
        xtext_encode(envid, out);
    }
    for (keyword, value) in params.cluster.iter() {
        out.push(b' ');
        out.extend_from_slice(keyword.as_bytes());
        out.push(b'=');
        xtext_encode(value, out);
    }
}

/// Appends RCPT parameters, each preceded by a space.
pub fn encode_rcpt(params: &RcptParams, out: &mut Vec<u8>) {
    if let Some(notify) = params.notify {
        out.extend_from_slice(b" NOTIFY=");
        if notify.contains(Notify::NEVER) {
            out.extend_from_slice(b"NEVER");
        } else {
            let mut first = true;
            for (flag, name) in [
                (Notify::SUCCESS, "SUCCESS"),
                (Notify::FAILURE, "FAILURE"),
                (Notify::DELAY, "DELAY"),
            ] {
                if notify.contains(flag) {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    first = false;
                }
            }
        }
    }
    if let Some(orcpt) = &params.orcpt {
        out.extend_from_slice(b" ORCPT=");
        // parse_orcpt guarantees the `type;` prefix; encode what follows as xtext.
        match orcpt.split_once(';') {
            Some((kind, address)) => {
                out.extend_from_slice(kind.as_bytes());
                out.push(b';');
                xtext_encode(address, out);
            }
            None => xtext_encode(orcpt, out),
        }
    }
}

/// RFC 3461 §4: `xtext = *( xchar / hexchar )`, `hexchar = "+" 2HEXDIG`. Decoded bytes must be
/// printable US-ASCII (32–126); anything else (CR, LF, NUL, 8-bit) makes the value invalid.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let c = match b {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let value = (hex_value(hex[0])? << 4) | hex_value(hex[1])?;
                i += 3;
                value
            }
            b'=' => return None,
            33..=126 => {
                i += 1;
                b
            }
            _ => return None,
        };
        if !(32..=126).contains(&c) {
            return None;
        }
        decoded.push(char::from(c));
    }
    Some(decoded)
}

/// Appends `text` as xtext: `+`, `=`, and bytes outside 33–126 become `+XX`.
pub fn xtext_encode(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'+', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// RFC 3461 says upper-case hex digits; lower case is accepted (be liberal in what we accept).
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Splits `SP keyword[=value] ...` into pairs, checking RFC 5321 §4.1.2's syntax.
/// Repeated spaces are tolerated (Postfix does too); anything before the first space is not.
fn split(text: &str) -> Result<impl Iterator<Item = (&str, Option<&str>)>, ParamError> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(ParamError::Syntax);
    }
    let mut pairs = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        let (keyword, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let keyword_ok = keyword
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531 §3.3)
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|b| matches!(b, 33..=60 | 62..=126 | 0x80..))
        });
        if !keyword_ok || !value_ok {
            return Err(ParamError::Syntax);
        }
        pairs.push((keyword, value));
    }
    Ok(pairs.into_iter())
}

fn mark(seen: &mut u8, bit: u8, name: &'static str) -> Result<(), ParamError> {
    if *seen & bit != 0 {
        return Err(ParamError::Duplicate(name));
    }
    *seen |= bit;
    Ok(())
}

fn keyword_name(bit: u8) -> &'static str {
    match bit {
        SIZE => "SIZE",
        BODY => "BODY",
        SMTPUTF8 => "SMTPUTF8",
        RET => "RET",
        ENVID => "ENVID",
        NOTIFY => "NOTIFY",
        AUTH => "AUTH",
        _ => "ORCPT",
    }
}

/// The keyword for the 555 text, cut to a sane length (it is only there to help the sender).
fn unknown(keyword: &str) -> ParamError {
    ParamError::Unknown(keyword.chars().take(32).collect())
}

fn parse_size(value: Option<&str>) -> Result<u64, ParamError> {
    let digits = value.ok_or(ParamError::BadValue("SIZE"))?;
    if digits.is_empty()
        || digits.len() > SIZE_DIGITS_MAX
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ParamError::BadValue("SIZE"));
    }
    // 20 digits can exceed u64: such a size is over any limit, so saturating keeps the meaning.
    Ok(digits.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn parse_body(value: Option<&str>) -> Result<BodyType, ParamError> {
    match value {
        Some(v) if v.eq_ignore_ascii_case("7BIT") => Ok(BodyType::SevenBit),
        Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Ok(BodyType::EightBitMime),
        Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => Ok(BodyType::BinaryMime),
        _ => Err(ParamError::BadValue("BODY")),
    }
}

fn parse_ret(value: Option<&str>) -> Result<DsnRet, ParamError> {
    match value {
        Some(v) if v.eq_ignore_ascii_case("FULL") => Ok(DsnRet::Full),
        Some(v) if v.eq_ignore_ascii_case("HDRS") => Ok(DsnRet::Headers),
        _ => Err(ParamError::BadValue("RET")),
    }
}

/// RFC 3461 §4.1: `NEVER`, or a comma list of SUCCESS, FAILURE, DELAY.
fn parse_notify(value: Option<&str>) -> Result<Notify, ParamError> {
    let value = value.ok_or(ParamError::BadValue("NOTIFY"))?;
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::NEVER);
    }
    let mut notify = Notify::default();
    for item in value.split(',') {
        let flag = if item.eq_ignore_ascii_case("SUCCESS") {
            Notify::SUCCESS
        } else if item.eq_ignore_ascii_case("FAILURE") {
            Notify::FAILURE
        } else if item.eq_ignore_ascii_case("DELAY") {
            Notify::DELAY
        } else {
            // Includes NEVER in a list, which RFC 3461 §4.1 forbids.
            return Err(ParamError::BadValue("NOTIFY"));
        };
        notify = notify.union(flag);
    }
    Ok(notify)
}

/// RFC 3461 §4.2: `addr-type ";" xtext`, addr-type an atom (e.g. `rfc822`).
fn parse_orcpt(value: Option<&str>) -> Result<String, ParamError> {
    let bad = ParamError::BadValue("ORCPT");
    let (kind, address) = value.and_then(|v| v.split_once(';')).ok_or(bad.clone())?;
    let kind_ok = !kind.is_empty()
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b));
    let address = xtext_decode(address).ok_or(bad.clone())?;
    if !kind_ok || address.is_empty() || address.len() > ORCPT_MAX {
        return Err(bad);
    }
    Ok(format!("{kind};{address}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_parameters() {
        let all = parse_mail(" SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B314").unwrap();
        assert_eq!(
            all,
            MailParams {
                size: Some(1000),
                body: BodyType::EightBitMime,
                smtputf8: true,
                ret: Some(DsnRet::Headers),
                envid: Some("QQ+314".into()),
                cluster: Default::default(),
            }
        );
        assert_eq!(parse_mail("").unwrap(), MailParams::default());
        assert_eq!(parse_mail("  size=5  ").unwrap().size, Some(5));
        assert_eq!(
            parse_mail(" body=binarymime").unwrap().body,
            BodyType::BinaryMime
        );
        assert_eq!(parse_mail(" BODY=7BIT").unwrap().body, BodyType::SevenBit);
        assert_eq!(parse_mail(" RET=full").unwrap().ret, Some(DsnRet::Full));
        assert_eq!(
            parse_mail(" SIZE=99999999999999999999").unwrap().size,
            Some(u64::MAX)
        );
    }

    #[test]
    fn mail_parameter_errors() {
        let table: &[(&str, ParamError)] = &[
            ("SIZE=1", ParamError::Syntax),
            (" SIZE", ParamError::BadValue("SIZE")),
            (" SIZE=", ParamError::Syntax),
            (" SIZE=-1", ParamError::BadValue("SIZE")),
            (" SIZE=1k", ParamError::BadValue("SIZE")),
            (" SIZE=123456789012345678901", ParamError::BadValue("SIZE")),
            (" SIZE=1 SIZE=2", ParamError::Duplicate("SIZE")),
            (" BODY=9BIT", ParamError::BadValue("BODY")),
            (" BODY", ParamError::BadValue("BODY")),
            (" SMTPUTF8=yes", ParamError::BadValue("SMTPUTF8")),
            (" RET=ALL", ParamError::BadValue("RET")),
            (" ENVID=a+0D+0Ab", ParamError::BadValue("ENVID")),
            (" ENVID=a+G1", ParamError::BadValue("ENVID")),
            (" ENVID=a+4", ParamError::BadValue("ENVID")),
            (" ENVID=a=b", ParamError::Syntax),
            (" AUTH=a+G1", ParamError::BadValue("AUTH")),
            (" X-FOO", ParamError::Unknown("X-FOO".into())),
            (" NOTIFY=NEVER", ParamError::Unknown("NOTIFY".into())),
            (" -X", ParamError::Syntax),
            (" A\u{1}", ParamError::Syntax),
            (" A=\u{7f}", ParamError::Syntax),
        ];
        for (input, error) in table {
            assert_eq!(parse_mail(input).as_ref(), Err(error), "{input:?}");
        }
        // Cluster parameters: `X…=xtext`, upper-cased, each once, a bounded number.
        let cluster = parse_mail(" SIZE=5 xqueue=a.0000000000000001 XNEXT=b+2Bc").unwrap();
        assert_eq!(
            cluster.cluster.as_slice(),
            [
                ("XQUEUE".to_string(), "a.0000000000000001".to_string()),
                ("XNEXT".to_string(), "b+c".to_string())
            ]
        );
        let mut encoded = Vec::new();
        encode_mail(&cluster, &mut encoded);
        assert_eq!(encoded, b" SIZE=5 XQUEUE=a.0000000000000001 XNEXT=b+2Bc");
        assert_eq!(parse_mail(" XA=1 Xa=2"), Err(ParamError::Duplicate("X-")));
        assert_eq!(parse_mail(" XA=a+0D"), Err(ParamError::BadValue("X-")));
        let many: String = (0..=CLUSTER_PARAMS_MAX)
            .map(|i| format!(" X{i}=v"))
            .collect();
        assert_eq!(parse_mail(&many), Err(ParamError::Syntax));
        let envid_max = format!(" ENVID={}", "e".repeat(ENVID_MAX));
        assert!(parse_mail(&envid_max).is_ok());
        let envid_long = format!(" ENVID={}", "e".repeat(ENVID_MAX + 1));
        assert_eq!(parse_mail(&envid_long), Err(ParamError::BadValue("ENVID")));
    }

    #[test]
    fn rcpt_parameters() {
        let table: &[(&str, RcptParams)] = &[
            ("", RcptParams::default()),
            (
                " NOTIFY=NEVER",
                RcptParams {
                    notify: Some(Notify::NEVER),
                    orcpt: None,
                },
            ),
            (
                " notify=success,delay",
                RcptParams {
                    notify: Some(Notify::SUCCESS.union(Notify::DELAY)),
                    orcpt: None,
                },
            ),
            (
                " NOTIFY=FAILURE ORCPT=rfc822;a+2Bb@example.com",
                RcptParams {
                    notify: Some(Notify::FAILURE),
                    orcpt: Some("rfc822;a+b@example.com".into()),
                },
            ),
        ];
        for (input, expected) in table {
            assert_eq!(parse_rcpt(input).as_ref(), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn rcpt_parameter_errors() {
        let table: &[(&str, ParamError)] = &[
            (" NOTIFY=NEVER,SUCCESS", ParamError::BadValue("NOTIFY")),
            (" NOTIFY=SOMETIMES", ParamError::BadValue("NOTIFY")),
            (" NOTIFY=SUCCESS,", ParamError::BadValue("NOTIFY")),
            (" NOTIFY", ParamError::BadValue("NOTIFY")),
            (
                " NOTIFY=NEVER NOTIFY=NEVER",
                ParamError::Duplicate("NOTIFY"),
            ),
            (" ORCPT=a@b", ParamError::BadValue("ORCPT")),
            (" ORCPT=;a@b", ParamError::BadValue("ORCPT")),
            (" ORCPT=rfc822;", ParamError::BadValue("ORCPT")),
            (" ORCPT=rfc822;a+0Ab", ParamError::BadValue("ORCPT")),
            (" ORCPT=rfc822;a+C3+A9", ParamError::BadValue("ORCPT")),
            (" ORCPT=x;a ORCPT=x;b", ParamError::Duplicate("ORCPT")),
            (" SIZE=1", ParamError::Unknown("SIZE".into())),
        ];
        for (input, error) in table {
            assert_eq!(parse_rcpt(input).as_ref(), Err(error), "{input:?}");
        }
    }

    #[test]
    fn mail_auth_is_checked_and_dropped() {
        assert_eq!(parse_mail(" AUTH=<>"), Ok(MailParams::default()));
        assert_eq!(
            parse_mail(" AUTH=alice+40example.test SIZE=10").map(|p| p.size),
            Ok(Some(10))
        );
        assert_eq!(parse_mail(" AUTH"), Err(ParamError::BadValue("AUTH")));
        assert_eq!(
            parse_mail(" AUTH=bad+zz"),
            Err(ParamError::BadValue("AUTH"))
        );
        assert!(matches!(
            parse_mail(" AUTH=<> AUTH=<>"),
            Err(ParamError::Duplicate(_))
        ));
    }

    #[test]
    fn xtext_round_trip_and_rfc_examples() {
        // RFC 3461 §4: "+" and "=" and anything outside 33..126 are hex-encoded.
        let mut out = Vec::new();
        xtext_encode("a+b=c d~", &mut out);
        assert_eq!(out, b"a+2Bb+3Dc+20d~");
        assert_eq!(xtext_decode("a+2Bb+3Dc+20d~").as_deref(), Some("a+b=c d~"));
        assert_eq!(xtext_decode("+2b").as_deref(), Some("+"));
        assert_eq!(xtext_decode(""), Some(String::new()));
        assert_eq!(xtext_decode("+00"), None);
        assert_eq!(xtext_decode("+7F"), None);
        assert_eq!(xtext_decode("é"), None);
    }

    #[test]
    fn encoding_matches_parsing() {
        let params = parse_mail(" SIZE=7 BODY=BINARYMIME SMTPUTF8 RET=FULL ENVID=x+2By").unwrap();
        let mut out = Vec::new();
        encode_mail(&params, &mut out);
        assert_eq!(
            out,
            b" SIZE=7 BODY=BINARYMIME SMTPUTF8 RET=FULL ENVID=x+2By"
        );
        let params = parse_rcpt(" NOTIFY=DELAY,SUCCESS ORCPT=rfc822;x+2By").unwrap();
        let mut out = Vec::new();
        encode_rcpt(&params, &mut out);
        assert_eq!(out, b" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By");
    }
}
