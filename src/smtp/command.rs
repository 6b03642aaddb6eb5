//! SMTP commands: one type for the server (which parses), the outbound client and the load
//! generator (which encode), with `parse(encode(c)) == c` checked by a property test
//! (docs/ARCHITECTURE.md §10).
//!
//! Exposure: `parse` reads raw peer lines (without their CRLF, at most the command-line
//! limit). It allocates only for the owned parts of the result.
//!
//! Standards: RFC 5321 §4.1 (command syntax; verbs are case-insensitive, §2.4), RFC 2920
//! §3.1 (which commands end a pipelined group), RFC 3030 (BDAT), RFC 3207 (STARTTLS), RFC
//! 4954 (AUTH), RFC 5321 Appendix F (obsolete TURN, SEND, SOML, SAML).

use std::fmt;

use memchr::memchr;

use super::address::{AddressError, ForwardPath, ReversePath};
use super::params::{self, ParamError, RcptParams};
use super::reply::Reply;
use crate::envelope::MailParams;

/// The command verbs, alphabetical. `Verb::spec` gives the table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Auth,
    Bdat,
    Data,
    Ehlo,
    Expn,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    Saml,
    Send,
    Soml,
    StartTls,
    Turn,
    Vrfy,
}

/// Properties of a command, as data (Postfix's `smtpd_cmd_table`).
#[derive(Debug)]
pub struct CommandSpec {
    pub verb: Verb,
    pub name: &'static str,
    /// RFC 2920 §3.1: "EHLO, DATA, VRFY, EXPN, TURN, QUIT, and NOOP ... can only appear as the
    /// last command in a group since their success or failure produces a change of state
    /// which the client SMTP must accommodate". HELO for the same reason as EHLO, STARTTLS by
    /// RFC 3207 §4.2, AUTH by RFC 4954 §4 (the client waits for the server's challenge).
    pub ends_group: bool,
    /// Commands that move no mail (Postfix `smtpd_junk_command_limit`: NOOP, VRFY, RSET;
    /// here also HELP and HELO/EHLO, whose 10-line reply is the largest a peer can ask for).
    /// Past a limit each one counts as an error, so a peer cannot keep a session busy with them.
    pub counts_as_junk: bool,
    /// Obsolete commands, with the reason the server refuses or reinterprets them.
    pub legacy: Option<&'static str>,
    /// The syntax, for 501 replies.
    pub usage: &'static str,
    key: u64,
}

/// Packs an upper-case verb of up to 8 ASCII letters into a `u64` (0 if it does not fit), so
/// that lookup compares integers instead of strings.
const fn pack(name: &str) -> u64 {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 8 {
        return 0;
    }
    let mut key = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        key = (key << 8) | bytes[i] as u64;
        i += 1;
    }
    key
}

/// Like [`pack`], upper-casing ASCII letters; `None` for anything that is not a verb shape.
fn pack_upper(verb: &[u8]) -> Option<u64> {
    if verb.is_empty() || verb.len() > 8 {
        return None;
    }
    let mut key = 0u64;
    for &b in verb {
        if !b.is_ascii_alphabetic() {
            return None;
        }
        key = (key << 8) | u64::from(b.to_ascii_uppercase());
    }
    Some(key)
}

/// Flags for the table below.
const GROUP_END: u8 = 1;
const JUNK: u8 = 2;

const fn spec(
    verb: Verb,
    name: &'static str,
    flags: u8,
    legacy: Option<&'static str>,
    usage: &'static str,
) -> CommandSpec {
    CommandSpec {
        verb,
        name,
        ends_group: flags & GROUP_END != 0,
        counts_as_junk: flags & JUNK != 0,
        legacy,
        usage,
        key: pack(name),
    }
}

/// Every command, in `Verb` order.
pub const COMMANDS: [CommandSpec; 18] = [
    spec(
        Verb::Auth,
        "AUTH",
        GROUP_END,
        None,
        "AUTH mechanism [initial-response]",
    ),
    spec(Verb::Bdat, "BDAT", 0, None, "BDAT chunk-size [LAST]"),
    spec(Verb::Data, "DATA", GROUP_END, None, "DATA"),
    spec(Verb::Ehlo, "EHLO", GROUP_END | JUNK, None, "EHLO hostname"),
    spec(Verb::Expn, "EXPN", GROUP_END, None, "EXPN list"),
    spec(Verb::Helo, "HELO", GROUP_END | JUNK, None, "HELO hostname"),
    spec(Verb::Help, "HELP", JUNK, None, "HELP [topic]"),
    spec(
        Verb::Mail,
        "MAIL",
        0,
        None,
        "MAIL FROM:<address> [parameters]",
    ),
    spec(Verb::Noop, "NOOP", GROUP_END | JUNK, None, "NOOP [text]"),
    spec(Verb::Quit, "QUIT", GROUP_END, None, "QUIT"),
    spec(
        Verb::Rcpt,
        "RCPT",
        0,
        None,
        "RCPT TO:<address> [parameters]",
    ),
    spec(Verb::Rset, "RSET", JUNK, None, "RSET"),
    spec(
        Verb::Saml,
        "SAML",
        0,
        Some("RFC 5321 Appendix F.6: no terminals exist, so it is MAIL"),
        "SAML FROM:<address> [parameters]",
    ),
    spec(
        Verb::Send,
        "SEND",
        0,
        Some("RFC 5321 Appendix F.6: terminal delivery is obsolete; refused with 502"),
        "SEND FROM:<address>",
    ),
    spec(
        Verb::Soml,
        "SOML",
        0,
        Some("RFC 5321 Appendix F.6: no terminals exist, so it is MAIL"),
        "SOML FROM:<address> [parameters]",
    ),
    spec(Verb::StartTls, "STARTTLS", GROUP_END, None, "STARTTLS"),
    spec(
        Verb::Turn,
        "TURN",
        GROUP_END,
        Some("RFC 5321 Appendix F.1: hands the connection to an unauthenticated peer; 502"),
        "TURN",
    ),
    spec(Verb::Vrfy, "VRFY", GROUP_END | JUNK, None, "VRFY address"),
];

impl Verb {
    pub fn spec(self) -> &'static CommandSpec {
        &COMMANDS[self as usize]
    }

    fn lookup(verb: &[u8]) -> Option<Verb> {
        let key = pack_upper(verb)?;
        COMMANDS.iter().find(|s| s.key == key).map(|s| s.verb)
    }
}

/// MAIL and its obsolete synonyms (RFC 5321 Appendix F.6): without terminals, SOML and SAML
/// mean exactly MAIL. The kind is kept so that a round trip returns the same verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MailKind {
    Mail,
    Saml,
    Soml,
}

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// RFC 4954; the argument is kept raw until AUTH is implemented.
    Auth {
        argument: String,
    },
    /// RFC 3030: `size` octets follow the command line immediately.
    Bdat {
        size: u64,
        last: bool,
    },
    Data,
    Ehlo {
        domain: String,
    },
    /// The argument is not needed (EXPN is refused) but kept for the round trip.
    Expn {
        argument: String,
    },
    Helo {
        domain: String,
    },
    Help {
        topic: Option<String>,
    },
    Mail {
        kind: MailKind,
        from: ReversePath,
        params: MailParams,
    },
    Noop {
        argument: Option<String>,
    },
    Quit,
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Rset,
    /// Obsolete: refused. The argument is kept raw.
    Send {
        argument: String,
    },
    StartTls,
    Turn,
    Vrfy {
        argument: String,
    },
}

/// Why a line is not a command. [`ParseError::reply`] is the one place it becomes a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("bad sender address: {0}")]
    Sender(AddressError),
    #[error("bad {0:?} parameter: {1}")]
    Parameter(Verb, ParamError),
    #[error("bad recipient address: {0}")]
    Recipient(AddressError),
    #[error("syntax error in {0:?}")]
    Syntax(Verb),
    #[error("command not recognized")]
    Unknown,
}

impl ParseError {
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Sender(_) => Reply::bad_sender_syntax(),
            ParseError::Parameter(verb, error) => match error {
                ParamError::BadValue(keyword) => Reply::bad_parameter_value(keyword),
                ParamError::Duplicate(keyword) => Reply::duplicate_parameter(keyword),
                ParamError::Syntax => Reply::syntax(verb.spec().usage),
                ParamError::Unknown(keyword) => Reply::parameter_not_recognized(keyword),
            },
            ParseError::Recipient(_) => Reply::bad_recipient_syntax(),
            ParseError::Syntax(verb) => Reply::syntax(verb.spec().usage),
            ParseError::Unknown => Reply::unknown_command(),
        }
    }
}

/// Parses one command line, without its line end.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (verb, rest) = match memchr(b' ', line) {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[][..]),
    };
    let verb = Verb::lookup(verb).ok_or(ParseError::Unknown)?;
    let syntax = ParseError::Syntax(verb);
    let rest = std::str::from_utf8(rest).map_err(|_| syntax.clone())?;
    // Clients pad with spaces now and then; RFC 5321 §4.1.1 has none, but nothing is lost
    // by tolerating them at the ends of the argument.
    let argument = rest.trim_matches([' ', '\t']);
    match verb {
        Verb::Mail | Verb::Saml | Verb::Soml => parse_mail(verb, argument),
        Verb::Rcpt => parse_rcpt(argument),
        Verb::Bdat => parse_bdat(argument).ok_or(syntax),
        Verb::Data | Verb::Quit | Verb::Rset | Verb::StartTls | Verb::Turn => {
            if !argument.is_empty() {
                return Err(syntax);
            }
            Ok(match verb {
                Verb::Data => Command::Data,
                Verb::Quit => Command::Quit,
                Verb::Rset => Command::Rset,
                Verb::StartTls => Command::StartTls,
                _ => Command::Turn,
            })
        }
        _ => parse_text_command(verb, argument).ok_or(syntax),
    }
}

/// Commands whose argument is free text: it must hold no control characters (other than
/// TAB), so that it can never reach a log line or a header as anything but text.
fn parse_text_command(verb: Verb, argument: &str) -> Option<Command> {
    if argument.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    let text = || argument.to_owned();
    let nonempty = || (!argument.is_empty()).then(text);
    Some(match verb {
        Verb::Auth => Command::Auth { argument: text() },
        Verb::Ehlo => Command::Ehlo {
            domain: nonempty()?,
        },
        Verb::Expn => Command::Expn { argument: text() },
        Verb::Helo => Command::Helo {
            domain: nonempty()?,
        },
        Verb::Help => Command::Help { topic: nonempty() },
        Verb::Noop => Command::Noop {
            argument: nonempty(),
        },
        Verb::Send => Command::Send { argument: text() },
        Verb::Vrfy => Command::Vrfy {
            argument: nonempty()?,
        },
        _ => return None,
    })
}

/// `MAIL FROM:<reverse-path> [SP Mail-parameters]`; one space after the colon is tolerated,
/// as Postfix does (many clients send `MAIL FROM: <a@b>`).
fn parse_mail(verb: Verb, argument: &str) -> Result<Command, ParseError> {
    let path = strip_keyword(argument, "FROM:").ok_or(ParseError::Syntax(verb))?;
    let (from, rest) = ReversePath::parse_prefix(path).map_err(ParseError::Sender)?;
    let params = params::parse_mail(rest).map_err(|e| ParseError::Parameter(verb, e))?;
    let kind = match verb {
        Verb::Saml => MailKind::Saml,
        Verb::Soml => MailKind::Soml,
        _ => MailKind::Mail,
    };
    Ok(Command::Mail { kind, from, params })
}

/// `RCPT TO:<forward-path> [SP Rcpt-parameters]`.
fn parse_rcpt(argument: &str) -> Result<Command, ParseError> {
    let path = strip_keyword(argument, "TO:").ok_or(ParseError::Syntax(Verb::Rcpt))?;
    let (to, rest) = ForwardPath::parse_prefix(path).map_err(ParseError::Recipient)?;
    let params = params::parse_rcpt(rest).map_err(|e| ParseError::Parameter(Verb::Rcpt, e))?;
    Ok(Command::Rcpt { to, params })
}

/// Strips `FROM:`/`TO:` case-insensitively, then at most one space.
fn strip_keyword<'a>(argument: &'a str, keyword: &str) -> Option<&'a str> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &argument[keyword.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// `BDAT SP chunk-size [SP end-marker]` (RFC 3030 §2), chunk-size `1*DIGIT` that fits u64.
fn parse_bdat(argument: &str) -> Option<Command> {
    let mut words = argument.split(' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse::<u64>().ok()?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Command::Bdat { size, last })
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Auth { .. } => Verb::Auth,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Data => Verb::Data,
            Command::Ehlo { .. } => Verb::Ehlo,
            Command::Expn { .. } => Verb::Expn,
            Command::Helo { .. } => Verb::Helo,
            Command::Help { .. } => Verb::Help,
            Command::Mail { kind, .. } => match kind {
                MailKind::Mail => Verb::Mail,
                MailKind::Saml => Verb::Saml,
                MailKind::Soml => Verb::Soml,
            },
            Command::Noop { .. } => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Rset => Verb::Rset,
            Command::Send { .. } => Verb::Send,
            Command::StartTls => Verb::StartTls,
            Command::Turn => Verb::Turn,
            Command::Vrfy { .. } => Verb::Vrfy,
        }
    }

    /// Appends the command line, CRLF included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.verb().spec().name.as_bytes());
        match self {
            Command::Auth { argument }
            | Command::Expn { argument }
            | Command::Send { argument }
            | Command::Vrfy { argument }
            | Command::Ehlo { domain: argument }
            | Command::Helo { domain: argument } => push_argument(out, argument),
            Command::Help { topic: argument } | Command::Noop { argument } => {
                if let Some(argument) = argument {
                    push_argument(out, argument);
                }
            }
            Command::Bdat { size, last } => {
                out.push(b' ');
                out.extend_from_slice(size.to_string().as_bytes());
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Command::Mail { from, params, .. } => {
                out.extend_from_slice(b" FROM:");
                from.encode(out);
                params::encode_mail(params, out);
            }
            Command::Rcpt { to, params } => {
                out.extend_from_slice(b" TO:");
                to.encode(out);
                params::encode_rcpt(params, out);
            }
            Command::Data | Command::Quit | Command::Rset | Command::StartTls | Command::Turn => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn push_argument(out: &mut Vec<u8>, argument: &str) {
    if !argument.is_empty() {
        out.push(b' ');
        out.extend_from_slice(argument.as_bytes());
    }
}

/// Appends `command`'s line (CRLF included) to `out`.
pub fn encode(command: &Command, out: &mut Vec<u8>) {
    command.encode(out);
}

impl fmt::Display for Command {
    /// The command line without CRLF, for logs and test messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = Vec::new();
        self.encode(&mut line);
        line.truncate(line.len().saturating_sub(2));
        f.write_str(&String::from_utf8_lossy(&line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyType, DsnRet, Notify};
    use crate::smtp::address::Mailbox;
    use crate::smtp::reply::ReplyCode;
    use proptest::prelude::*;

    fn mailbox(text: &str) -> Mailbox {
        Mailbox::parse(text).unwrap()
    }

    #[test]
    fn table_is_in_verb_order_and_keys_are_unique() {
        for (i, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(spec.verb as usize, i, "{}", spec.name);
            assert_ne!(spec.key, 0, "{}", spec.name);
            assert_eq!(Verb::lookup(spec.name.as_bytes()), Some(spec.verb));
            assert_eq!(
                Verb::lookup(spec.name.to_lowercase().as_bytes()),
                Some(spec.verb)
            );
        }
        let group_enders: Vec<&str> = COMMANDS
            .iter()
            .filter(|s| s.ends_group)
            .map(|s| s.name)
            .collect();
        assert_eq!(
            group_enders,
            ["AUTH", "DATA", "EHLO", "EXPN", "HELO", "NOOP", "QUIT", "STARTTLS", "TURN", "VRFY"]
        );
        let junk: Vec<&str> = COMMANDS
            .iter()
            .filter(|s| s.counts_as_junk)
            .map(|s| s.name)
            .collect();
        assert_eq!(junk, ["EHLO", "HELO", "HELP", "NOOP", "RSET", "VRFY"]);
    }

    #[test]
    fn parses_every_command() {
        let table: Vec<(&str, Command)> = vec![
            (
                "HELO client.example",
                Command::Helo {
                    domain: "client.example".into(),
                },
            ),
            (
                "helo [192.0.2.1]",
                Command::Helo {
                    domain: "[192.0.2.1]".into(),
                },
            ),
            (
                "EHLO client.example",
                Command::Ehlo {
                    domain: "client.example".into(),
                },
            ),
            (
                "eHlO  spaced.example  ",
                Command::Ehlo {
                    domain: "spaced.example".into(),
                },
            ),
            (
                "MAIL FROM:<a@b.example>",
                Command::Mail {
                    kind: MailKind::Mail,
                    from: ReversePath::Mailbox(mailbox("a@b.example")),
                    params: MailParams::default(),
                },
            ),
            (
                "mail from: <>",
                Command::Mail {
                    kind: MailKind::Mail,
                    from: ReversePath::Null,
                    params: MailParams::default(),
                },
            ),
            (
                "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME RET=FULL ENVID=x",
                Command::Mail {
                    kind: MailKind::Mail,
                    from: ReversePath::Mailbox(mailbox("a@b")),
                    params: MailParams {
                        size: Some(10),
                        body: BodyType::EightBitMime,
                        smtputf8: false,
                        ret: Some(DsnRet::Full),
                        envid: Some("x".into()),
                        cluster: Default::default(),
                    },
                },
            ),
            (
                "SOML FROM:<a@b>",
                Command::Mail {
                    kind: MailKind::Soml,
                    from: ReversePath::Mailbox(mailbox("a@b")),
                    params: MailParams::default(),
                },
            ),
            (
                "saml FROM:<a@b>",
                Command::Mail {
                    kind: MailKind::Saml,
                    from: ReversePath::Mailbox(mailbox("a@b")),
                    params: MailParams::default(),
                },
            ),
            (
                "RCPT TO:<c@d.example>",
                Command::Rcpt {
                    to: ForwardPath::Mailbox(mailbox("c@d.example")),
                    params: RcptParams::default(),
                },
            ),
            (
                "rcpt to:<Postmaster> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y",
                Command::Rcpt {
                    to: ForwardPath::Postmaster,
                    params: RcptParams {
                        notify: Some(Notify::SUCCESS.union(Notify::FAILURE)),
                        orcpt: Some("rfc822;x@y".into()),
                    },
                },
            ),
            ("DATA", Command::Data),
            ("data", Command::Data),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "bdat 1000",
                Command::Bdat {
                    size: 1000,
                    last: false,
                },
            ),
            (
                "BDAT 18446744073709551615 last",
                Command::Bdat {
                    size: u64::MAX,
                    last: true,
                },
            ),
            ("RSET", Command::Rset),
            ("RSET ", Command::Rset),
            ("NOOP", Command::Noop { argument: None }),
            (
                "NOOP hello there",
                Command::Noop {
                    argument: Some("hello there".into()),
                },
            ),
            ("QUIT", Command::Quit),
            ("HELP", Command::Help { topic: None }),
            (
                "HELP MAIL",
                Command::Help {
                    topic: Some("MAIL".into()),
                },
            ),
            (
                "VRFY someone",
                Command::Vrfy {
                    argument: "someone".into(),
                },
            ),
            (
                "EXPN list",
                Command::Expn {
                    argument: "list".into(),
                },
            ),
            ("TURN", Command::Turn),
            (
                "SEND FROM:<a@b>",
                Command::Send {
                    argument: "FROM:<a@b>".into(),
                },
            ),
            ("STARTTLS", Command::StartTls),
            (
                "AUTH PLAIN AGFAAGI=",
                Command::Auth {
                    argument: "PLAIN AGFAAGI=".into(),
                },
            ),
        ];
        for (line, expected) in table {
            assert_eq!(parse(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn parse_errors_and_their_replies() {
        use AddressError as A;
        let table: Vec<(&[u8], ParseError, u16, &str)> = vec![
            (b"", ParseError::Unknown, 500, "5.5.1"),
            (b"FOO", ParseError::Unknown, 500, "5.5.1"),
            (b"MAILX FROM:<>", ParseError::Unknown, 500, "5.5.1"),
            (b"STARTTLSX", ParseError::Unknown, 500, "5.5.1"),
            (b" NOOP", ParseError::Unknown, 500, "5.5.1"),
            (b"NO\xffOP", ParseError::Unknown, 500, "5.5.1"),
            (b"HELO", ParseError::Syntax(Verb::Helo), 501, "5.5.4"),
            (b"EHLO ", ParseError::Syntax(Verb::Ehlo), 501, "5.5.4"),
            (b"EHLO a\x01b", ParseError::Syntax(Verb::Ehlo), 501, "5.5.4"),
            (b"EHLO \xff", ParseError::Syntax(Verb::Ehlo), 501, "5.5.4"),
            (b"MAIL", ParseError::Syntax(Verb::Mail), 501, "5.5.4"),
            (
                b"MAIL TO:<a@b>",
                ParseError::Syntax(Verb::Mail),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:a@b",
                ParseError::Sender(A::Brackets),
                501,
                "5.1.7",
            ),
            (
                b"MAIL FROM:  <a@b>",
                ParseError::Sender(A::Brackets),
                501,
                "5.1.7",
            ),
            (
                b"MAIL FROM:<a@b..c>",
                ParseError::Sender(A::Domain),
                501,
                "5.1.7",
            ),
            (
                b"MAIL FROM:<postmaster>",
                ParseError::Sender(A::MissingDomain),
                501,
                "5.1.7",
            ),
            (
                b"RCPT TO:<>",
                ParseError::Recipient(A::NullRecipient),
                501,
                "5.1.3",
            ),
            (
                b"RCPT TO:<@x>",
                ParseError::Recipient(A::SourceRoute),
                501,
                "5.1.3",
            ),
            (
                b"RCPT FROM:<a@b>",
                ParseError::Syntax(Verb::Rcpt),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> FOO=1",
                ParseError::Parameter(Verb::Mail, ParamError::Unknown("FOO".into())),
                555,
                "5.5.4",
            ),
            (
                b"RCPT TO:<a@b> SIZE=1",
                ParseError::Parameter(Verb::Rcpt, ParamError::Unknown("SIZE".into())),
                555,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=x",
                ParseError::Parameter(Verb::Mail, ParamError::BadValue("SIZE")),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> BODY=7BIT BODY=7BIT",
                ParseError::Parameter(Verb::Mail, ParamError::Duplicate("BODY")),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b>SIZE=1",
                ParseError::Parameter(Verb::Mail, ParamError::Syntax),
                501,
                "5.5.4",
            ),
            (b"DATA x", ParseError::Syntax(Verb::Data), 501, "5.5.4"),
            (b"QUIT now", ParseError::Syntax(Verb::Quit), 501, "5.5.4"),
            (b"RSET x", ParseError::Syntax(Verb::Rset), 501, "5.5.4"),
            (
                b"STARTTLS x",
                ParseError::Syntax(Verb::StartTls),
                501,
                "5.5.4",
            ),
            (b"VRFY", ParseError::Syntax(Verb::Vrfy), 501, "5.5.4"),
            (b"NOOP a\rb", ParseError::Syntax(Verb::Noop), 501, "5.5.4"),
            (b"BDAT", ParseError::Syntax(Verb::Bdat), 501, "5.5.4"),
            (b"BDAT x", ParseError::Syntax(Verb::Bdat), 501, "5.5.4"),
            (b"BDAT -1", ParseError::Syntax(Verb::Bdat), 501, "5.5.4"),
            (b"BDAT +1", ParseError::Syntax(Verb::Bdat), 501, "5.5.4"),
            (
                b"BDAT 1 FIRST",
                ParseError::Syntax(Verb::Bdat),
                501,
                "5.5.4",
            ),
            (
                b"BDAT 1 LAST x",
                ParseError::Syntax(Verb::Bdat),
                501,
                "5.5.4",
            ),
            (
                b"BDAT 18446744073709551616",
                ParseError::Syntax(Verb::Bdat),
                501,
                "5.5.4",
            ),
        ];
        for (line, error, code, status) in table {
            let shown = String::from_utf8_lossy(line);
            assert_eq!(parse(line), Err(error.clone()), "{shown}");
            let reply = error.reply();
            assert_eq!(reply.code(), ReplyCode::new(code).unwrap(), "{shown}");
            assert_eq!(reply.status().unwrap().to_string(), status, "{shown}");
        }
    }

    #[test]
    fn syntax_reply_names_the_usage() {
        let reply = parse(b"MAIL").unwrap_err().reply();
        assert_eq!(reply.text(), "Syntax: MAIL FROM:<address> [parameters]");
    }

    #[test]
    fn encodes_canonical_lines() {
        let table: Vec<(&str, &str)> = vec![
            (
                "mail from: <a@b> size=5 body=8bitmime",
                "MAIL FROM:<a@b> SIZE=5 BODY=8BITMIME",
            ),
            ("rcpt to:<POSTMASTER>", "RCPT TO:<postmaster>"),
            (
                "rcpt to:<@r.example:a@b> notify=never",
                "RCPT TO:<a@b> NOTIFY=NEVER",
            ),
            ("bdat 007 last", "BDAT 7 LAST"),
            ("ehlo x", "EHLO x"),
            ("noop", "NOOP"),
            ("soml from:<>", "SOML FROM:<>"),
        ];
        for (line, canonical) in table {
            let command = parse(line.as_bytes()).unwrap();
            assert_eq!(command.to_string(), canonical);
            let mut wire = Vec::new();
            encode(&command, &mut wire);
            assert_eq!(wire, format!("{canonical}\r\n").into_bytes());
        }
    }

    fn domain() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", 1..4).prop_map(|l| l.join("."))
    }

    fn local_part() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", 1..3)
                .prop_map(|atoms| atoms.join(".")),
            "[ !#-\\[\\]-~]{0,10}".prop_map(|q| format!("\"{q}\"")),
            "[a-zé]{1,5}",
        ]
    }

    fn mailbox_strategy() -> impl Strategy<Value = Mailbox> {
        (
            local_part(),
            prop_oneof![domain(), Just("[192.0.2.7]".to_string())],
        )
            .prop_map(|(l, d)| mailbox(&format!("{l}@{d}")))
    }

    fn mail_params() -> impl Strategy<Value = MailParams> {
        (
            prop::option::of(any::<u64>()),
            prop_oneof![
                Just(BodyType::SevenBit),
                Just(BodyType::EightBitMime),
                Just(BodyType::BinaryMime)
            ],
            any::<bool>(),
            prop::option::of(prop_oneof![Just(DsnRet::Full), Just(DsnRet::Headers)]),
            prop::option::of("[ -~]{1,100}"),
        )
            .prop_map(|(size, body, smtputf8, ret, envid)| MailParams {
                size,
                body,
                smtputf8,
                ret,
                envid,
                cluster: Default::default(),
            })
    }

    fn rcpt_params() -> impl Strategy<Value = RcptParams> {
        (
            prop::option::of(prop_oneof![Just(Notify::NEVER), (1u8..8).prop_map(Notify)]),
            prop::option::of(
                ("[a-z0-9-]{1,8}", "[ -~]{1,40}").prop_map(|(t, a)| format!("{t};{a}")),
            ),
        )
            .prop_map(|(notify, orcpt)| RcptParams { notify, orcpt })
    }

    /// Free text as `parse` returns it: no control characters, no spaces at either end.
    fn text() -> impl Strategy<Value = String> {
        "[!-~]([ -~]{0,20}[!-~])?"
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            text().prop_map(|argument| Command::Auth { argument }),
            (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
            Just(Command::Data),
            text().prop_map(|domain| Command::Ehlo { domain }),
            text().prop_map(|argument| Command::Expn { argument }),
            text().prop_map(|domain| Command::Helo { domain }),
            prop::option::of(text()).prop_map(|topic| Command::Help { topic }),
            (
                prop_oneof![
                    Just(MailKind::Mail),
                    Just(MailKind::Saml),
                    Just(MailKind::Soml)
                ],
                prop_oneof![
                    Just(ReversePath::Null),
                    mailbox_strategy().prop_map(ReversePath::Mailbox)
                ],
                mail_params(),
            )
                .prop_map(|(kind, from, params)| Command::Mail { kind, from, params }),
            prop::option::of(text()).prop_map(|argument| Command::Noop { argument }),
            Just(Command::Quit),
            (
                prop_oneof![
                    Just(ForwardPath::Postmaster),
                    mailbox_strategy().prop_map(ForwardPath::Mailbox)
                ],
                rcpt_params(),
            )
                .prop_map(|(to, params)| Command::Rcpt { to, params }),
            Just(Command::Rset),
            text().prop_map(|argument| Command::Send { argument }),
            Just(Command::StartTls),
            Just(Command::Turn),
            text().prop_map(|argument| Command::Vrfy { argument }),
        ]
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_identity(command in command()) {
            let mut wire = Vec::new();
            encode(&command, &mut wire);
            prop_assert!(wire.ends_with(b"\r\n"));
            let line = &wire[..wire.len() - 2];
            prop_assert_eq!(parse(line), Ok(command));
        }

        #[test]
        fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&line);
        }

        #[test]
        fn parse_never_panics_on_command_shaped_lines(
            verb in "(MAIL FROM:|RCPT TO:|BDAT |EHLO |NOOP )",
            rest in "[ -~\u{e9}]{0,80}",
        ) {
            let line = format!("{verb}{rest}");
            let _ = parse(line.as_bytes());
        }
    }
}
