//! POP3 commands: one type for the server (which parses) and the load generator or a test
//! client (which encode), with `parse(encode(c)) == c` checked by a property test
//! (docs/ARCHITECTURE.md §10).
//!
//! Exposure: `parse` reads raw peer lines (without their line end, at most 255 octets, from
//! unauthenticated peers). It allocates only for the owned parts of the result. `Debug` and
//! `Display` redact secrets (the PASS argument, the AUTH initial response, the APOP digest),
//! so a command can be logged.
//!
//! Syntax: RFC 1939 §3: a keyword of three or four characters, case-insensitive, then
//! arguments separated by spaces. Extra spaces between and after arguments are tolerated.
//! PASS is the exception: its argument is the rest of the line verbatim, spaces included,
//! because RFC 1939 §7 allows passwords with spaces. Message numbers are decimal and fit u64.
//!
//! Standards: RFC 1939 (USER, PASS, APOP, QUIT, STAT, LIST, RETR, DELE, NOOP, RSET, TOP,
//! UIDL), RFC 2449 (CAPA), RFC 5034 (AUTH).

use std::fmt;

use memchr::memchr;

use super::reply::Response;

/// The command keywords, alphabetical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Apop,
    Auth,
    Capa,
    Dele,
    List,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    /// RFC 2595 §4.
    Stls,
    Top,
    Uidl,
    User,
}

/// Every verb, in `Verb` order.
pub const VERBS: [Verb; 15] = [
    Verb::Apop,
    Verb::Auth,
    Verb::Capa,
    Verb::Dele,
    Verb::List,
    Verb::Noop,
    Verb::Pass,
    Verb::Quit,
    Verb::Retr,
    Verb::Rset,
    Verb::Stat,
    Verb::Stls,
    Verb::Top,
    Verb::Uidl,
    Verb::User,
];

impl Verb {
    pub const fn name(self) -> &'static str {
        match self {
            Verb::Apop => "APOP",
            Verb::Auth => "AUTH",
            Verb::Capa => "CAPA",
            Verb::Dele => "DELE",
            Verb::List => "LIST",
            Verb::Noop => "NOOP",
            Verb::Pass => "PASS",
            Verb::Quit => "QUIT",
            Verb::Retr => "RETR",
            Verb::Rset => "RSET",
            Verb::Stat => "STAT",
            Verb::Stls => "STLS",
            Verb::Top => "TOP",
            Verb::Uidl => "UIDL",
            Verb::User => "USER",
        }
    }

    /// The syntax, for `-ERR syntax:` replies.
    pub const fn usage(self) -> &'static str {
        match self {
            Verb::Apop => "APOP name digest",
            Verb::Auth => "AUTH [mechanism [initial-response]]",
            Verb::Capa => "CAPA",
            Verb::Dele => "DELE msg",
            Verb::List => "LIST [msg]",
            Verb::Noop => "NOOP",
            Verb::Pass => "PASS string",
            Verb::Quit => "QUIT",
            Verb::Retr => "RETR msg",
            Verb::Rset => "RSET",
            Verb::Stat => "STAT",
            Verb::Stls => "STLS",
            Verb::Top => "TOP msg n",
            Verb::Uidl => "UIDL [msg]",
            Verb::User => "USER name",
        }
    }

    fn lookup(keyword: &[u8]) -> Option<Verb> {
        if !(3..=4).contains(&keyword.len()) {
            return None;
        }
        VERBS
            .into_iter()
            .find(|verb| verb.name().as_bytes().eq_ignore_ascii_case(keyword))
    }
}

/// One parsed command. Message numbers are as the client sent them (1-based).
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 1939 §7: `digest` is 32 hexadecimal digits, as sent (compare case-insensitively).
    Apop {
        name: String,
        digest: String,
    },
    /// RFC 5034 §4. `mechanism: None` asks for the list of mechanisms. `initial_response` is
    /// the base64 text as sent (`=` stands for an empty response).
    Auth {
        mechanism: Option<String>,
        initial_response: Option<String>,
    },
    Capa,
    Dele {
        msg: u64,
    },
    List {
        msg: Option<u64>,
    },
    Noop,
    Pass {
        password: String,
    },
    Quit,
    Retr {
        msg: u64,
    },
    Rset,
    Stat,
    Stls,
    Top {
        msg: u64,
        lines: u64,
    },
    Uidl {
        msg: Option<u64>,
    },
    User {
        name: String,
    },
}

/// Why a line is not a command. [`ParseError::reply`] is the one place it becomes a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("syntax error in {}", .0.name())]
    Syntax(Verb),
    #[error("command not recognized")]
    Unknown,
}

impl ParseError {
    pub fn reply(&self) -> Response {
        match self {
            ParseError::Syntax(verb) => Response::syntax(verb.usage()),
            ParseError::Unknown => Response::unknown_command(),
        }
    }
}

/// Parses one command line, without its line end.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (keyword, rest) = match memchr(b' ', line) {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[][..]),
    };
    let verb = Verb::lookup(keyword).ok_or(ParseError::Unknown)?;
    parse_arguments(verb, rest).ok_or(ParseError::Syntax(verb))
}

fn parse_arguments(verb: Verb, rest: &[u8]) -> Option<Command> {
    let rest = std::str::from_utf8(rest).ok()?;
    if verb == Verb::Pass {
        // Verbatim: spaces are part of the password (RFC 1939 §7); controls are not.
        if rest.is_empty() || rest.chars().any(char::is_control) {
            return None;
        }
        return Some(Command::Pass {
            password: rest.to_owned(),
        });
    }
    if rest.chars().any(char::is_control) {
        return None;
    }
    let mut words = rest.split(' ').filter(|word| !word.is_empty());
    let mut next = || words.next();
    let command = match verb {
        Verb::Apop => {
            let name = next()?.to_owned();
            let digest = next()?;
            if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            Command::Apop {
                name,
                digest: digest.to_owned(),
            }
        }
        Verb::Auth => {
            let mechanism = next().map(str::to_owned);
            let initial_response = next().map(str::to_owned);
            Command::Auth {
                mechanism,
                initial_response,
            }
        }
        Verb::Capa => Command::Capa,
        Verb::Dele => Command::Dele {
            msg: number(next()?)?,
        },
        Verb::List => Command::List {
            msg: optional_number(next())?,
        },
        Verb::Noop => Command::Noop,
        Verb::Pass => return None,
        Verb::Quit => Command::Quit,
        Verb::Retr => Command::Retr {
            msg: number(next()?)?,
        },
        Verb::Rset => Command::Rset,
        Verb::Stat => Command::Stat,
        Verb::Stls => Command::Stls,
        Verb::Top => Command::Top {
            msg: number(next()?)?,
            lines: number(next()?)?,
        },
        Verb::Uidl => Command::Uidl {
            msg: optional_number(next())?,
        },
        Verb::User => Command::User {
            name: next()?.to_owned(),
        },
    };
    if next().is_some() {
        return None;
    }
    Some(command)
}

/// An optional message number: `Some(None)` when absent, `None` when malformed.
fn optional_number(word: Option<&str>) -> Option<Option<u64>> {
    match word {
        None => Some(None),
        Some(word) => number(word).map(Some),
    }
}

/// `1*DIGIT` that fits u64 (no sign, no spaces).
fn number(word: &str) -> Option<u64> {
    if word.bytes().all(|b| b.is_ascii_digit()) {
        word.parse().ok()
    } else {
        None
    }
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Apop { .. } => Verb::Apop,
            Command::Auth { .. } => Verb::Auth,
            Command::Capa => Verb::Capa,
            Command::Dele { .. } => Verb::Dele,
            Command::List { .. } => Verb::List,
            Command::Noop => Verb::Noop,
            Command::Pass { .. } => Verb::Pass,
            Command::Quit => Verb::Quit,
            Command::Retr { .. } => Verb::Retr,
            Command::Rset => Verb::Rset,
            Command::Stat => Verb::Stat,
            Command::Stls => Verb::Stls,
            Command::Top { .. } => Verb::Top,
            Command::Uidl { .. } => Verb::Uidl,
            Command::User { .. } => Verb::User,
        }
    }

    /// Appends the command line, CRLF included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.write(out, false);
    }

    fn write(&self, out: &mut Vec<u8>, redact: bool) {
        const REDACTED: &str = "<redacted>";
        let hide = |secret: &str| {
            if redact {
                REDACTED.to_owned()
            } else {
                secret.to_owned()
            }
        };
        out.extend_from_slice(self.verb().name().as_bytes());
        let mut push = |argument: &str| {
            out.push(b' ');
            out.extend_from_slice(argument.as_bytes());
        };
        match self {
            Command::Apop { name, digest } => {
                push(name);
                push(&hide(digest));
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                if let Some(mechanism) = mechanism {
                    push(mechanism);
                }
                if let Some(response) = initial_response {
                    push(&hide(response));
                }
            }
            Command::Dele { msg } | Command::Retr { msg } => push(&msg.to_string()),
            Command::List { msg } | Command::Uidl { msg } => {
                if let Some(msg) = msg {
                    push(&msg.to_string());
                }
            }
            Command::Pass { password } => push(&hide(password)),
            Command::Top { msg, lines } => {
                push(&msg.to_string());
                push(&lines.to_string());
            }
            Command::User { name } => push(name),
            Command::Capa
            | Command::Noop
            | Command::Quit
            | Command::Rset
            | Command::Stat
            | Command::Stls => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `command`'s line (CRLF included) to `out`.
pub fn encode(command: &Command, out: &mut Vec<u8>) {
    command.encode(out);
}

impl fmt::Display for Command {
    /// The command line without CRLF, secrets replaced by `<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = Vec::new();
        self.write(&mut line, true);
        line.truncate(line.len().saturating_sub(2));
        f.write_str(&String::from_utf8_lossy(&line))
    }
}

impl fmt::Debug for Command {
    /// As `Display`: secrets never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(line: &str) -> Result<Command, ParseError> {
        parse(line.as_bytes())
    }

    #[test]
    fn verbs_are_in_order_and_found_in_any_case() {
        for (i, verb) in VERBS.iter().enumerate() {
            assert_eq!(*verb as usize, i);
            assert_eq!(Verb::lookup(verb.name().as_bytes()), Some(*verb));
            let lower = verb.name().to_ascii_lowercase();
            assert_eq!(Verb::lookup(lower.as_bytes()), Some(*verb));
            assert!(verb.usage().starts_with(verb.name()));
        }
    }

    #[test]
    fn parses_every_command() {
        let digest = "c4c9334bac560ecc979e58001b3e22fb";
        let table: Vec<(&str, Command)> = vec![
            (
                "USER alice",
                Command::User {
                    name: "alice".into(),
                },
            ),
            (
                "user  alice  ",
                Command::User {
                    name: "alice".into(),
                },
            ),
            (
                "PASS secret",
                Command::Pass {
                    password: "secret".into(),
                },
            ),
            // Verbatim, spaces included.
            (
                "PASS  two words ",
                Command::Pass {
                    password: " two words ".into(),
                },
            ),
            (
                "pass p\u{e4}ss",
                Command::Pass {
                    password: "p\u{e4}ss".into(),
                },
            ),
            (
                "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                Command::Apop {
                    name: "mrose".into(),
                    digest: digest.into(),
                },
            ),
            (
                "APOP mrose C4C9334BAC560ECC979E58001B3E22FB",
                Command::Apop {
                    name: "mrose".into(),
                    digest: digest.to_ascii_uppercase(),
                },
            ),
            (
                "AUTH",
                Command::Auth {
                    mechanism: None,
                    initial_response: None,
                },
            ),
            (
                "AUTH PLAIN",
                Command::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial_response: None,
                },
            ),
            (
                "auth plain AGFsaWNlAHNlY3JldA==",
                Command::Auth {
                    mechanism: Some("plain".into()),
                    initial_response: Some("AGFsaWNlAHNlY3JldA==".into()),
                },
            ),
            (
                "AUTH PLAIN =",
                Command::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial_response: Some("=".into()),
                },
            ),
            ("CAPA", Command::Capa),
            ("QUIT", Command::Quit),
            ("quit", Command::Quit),
            ("STAT", Command::Stat),
            ("NOOP", Command::Noop),
            ("RSET", Command::Rset),
            ("LIST", Command::List { msg: None }),
            ("LIST 2", Command::List { msg: Some(2) }),
            ("LIST 0", Command::List { msg: Some(0) }),
            ("LIST 007", Command::List { msg: Some(7) }),
            ("RETR 1", Command::Retr { msg: 1 }),
            ("DELE 18446744073709551615", Command::Dele { msg: u64::MAX }),
            ("TOP 1 0", Command::Top { msg: 1, lines: 0 }),
            ("TOP 1 10", Command::Top { msg: 1, lines: 10 }),
            ("UIDL", Command::Uidl { msg: None }),
            ("UIDL 3", Command::Uidl { msg: Some(3) }),
        ];
        for (line, expected) in table {
            assert_eq!(parsed(line), Ok(expected), "{line:?}");
        }
    }

    #[test]
    fn parse_errors_and_their_replies() {
        use ParseError::{Syntax, Unknown};
        let table: &[(&[u8], ParseError)] = &[
            (b"", Unknown),
            (b" USER a", Unknown),
            (b"HELO x", Unknown),
            (b"STLSX", Unknown),
            (b"STLS now", Syntax(Verb::Stls)),
            (b"RETRX 1", Unknown),
            (b"TO", Unknown),
            (b"USER", Syntax(Verb::User)),
            (b"USER a b", Syntax(Verb::User)),
            (b"USER a\tb", Syntax(Verb::User)),
            (b"PASS", Syntax(Verb::Pass)),
            (b"PASS ", Syntax(Verb::Pass)),
            (b"PASS a\x00b", Syntax(Verb::Pass)),
            (b"PASS \xff", Syntax(Verb::Pass)),
            (b"APOP mrose", Syntax(Verb::Apop)),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22f",
                Syntax(Verb::Apop),
            ),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fg",
                Syntax(Verb::Apop),
            ),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fb x",
                Syntax(Verb::Apop),
            ),
            (b"AUTH PLAIN a b", Syntax(Verb::Auth)),
            (b"CAPA x", Syntax(Verb::Capa)),
            (b"QUIT now", Syntax(Verb::Quit)),
            (b"STAT 1", Syntax(Verb::Stat)),
            (b"RETR", Syntax(Verb::Retr)),
            (b"RETR x", Syntax(Verb::Retr)),
            (b"RETR -1", Syntax(Verb::Retr)),
            (b"RETR +1", Syntax(Verb::Retr)),
            (b"RETR 1 2", Syntax(Verb::Retr)),
            (b"DELE 18446744073709551616", Syntax(Verb::Dele)),
            (b"LIST 1 2", Syntax(Verb::List)),
            (b"LIST a", Syntax(Verb::List)),
            (b"TOP 1", Syntax(Verb::Top)),
            (b"TOP 1 -1", Syntax(Verb::Top)),
            (b"UIDL x", Syntax(Verb::Uidl)),
        ];
        for (line, expected) in table {
            let shown = String::from_utf8_lossy(line);
            assert_eq!(parse(line), Err(*expected), "{shown:?}");
        }
        assert_eq!(Unknown.reply(), Response::unknown_command());
        assert_eq!(
            Syntax(Verb::Top).reply().to_string(),
            "-ERR syntax: TOP msg n"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let commands = [
            Command::Pass {
                password: "hunter2 x".into(),
            },
            Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: Some("AGh1bnRlcjI=".into()),
            },
            Command::Apop {
                name: "a".into(),
                digest: "0123456789abcdef0123456789abcdef".into(),
            },
        ];
        for command in commands {
            for shown in [format!("{command}"), format!("{command:?}")] {
                assert!(shown.contains("<redacted>"), "{shown}");
                for secret in ["hunter2", "AGh1bnRlcjI", "0123456789abcdef"] {
                    assert!(!shown.contains(secret), "{shown}");
                }
            }
        }
        assert_eq!(Command::Top { msg: 1, lines: 2 }.to_string(), "TOP 1 2");
        let mut line = Vec::new();
        encode(
            &Command::Pass {
                password: "hunter2".into(),
            },
            &mut line,
        );
        assert_eq!(line, b"PASS hunter2\r\n");
    }

    fn word() -> impl Strategy<Value = String> {
        "[!-~]{1,40}"
    }

    fn command() -> impl Strategy<Value = Command> {
        let msg = prop_oneof![0..10u64, any::<u64>()];
        prop_oneof![
            (word(), "[0-9a-fA-F]{32}").prop_map(|(name, digest)| Command::Apop { name, digest }),
            (proptest::option::of(word()), proptest::option::of(word())).prop_map(
                |(mechanism, initial_response)| Command::Auth {
                    // An initial response needs a mechanism before it.
                    initial_response: mechanism.as_ref().and(initial_response),
                    mechanism,
                }
            ),
            Just(Command::Capa),
            msg.clone().prop_map(|msg| Command::Dele { msg }),
            proptest::option::of(msg.clone()).prop_map(|msg| Command::List { msg }),
            Just(Command::Noop),
            "[ -~\u{a0}-\u{ff}]{1,60}".prop_map(|password| Command::Pass { password }),
            Just(Command::Quit),
            msg.clone().prop_map(|msg| Command::Retr { msg }),
            Just(Command::Rset),
            Just(Command::Stat),
            (msg.clone(), msg.clone()).prop_map(|(msg, lines)| Command::Top { msg, lines }),
            proptest::option::of(msg).prop_map(|msg| Command::Uidl { msg }),
            word().prop_map(|name| Command::User { name }),
        ]
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_identity(command in command()) {
            let mut line = Vec::new();
            encode(&command, &mut line);
            prop_assert!(line.ends_with(b"\r\n"));
            let body = &line[..line.len() - 2];
            prop_assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
            prop_assert_eq!(parse(body), Ok(command));
        }

        #[test]
        fn any_line_parses_or_errs(line in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line);
        }
    }
}
