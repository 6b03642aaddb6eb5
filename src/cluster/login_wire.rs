//! The proxied-login conversation on the cluster listener (TLS ALPN [`ALPN`]): a node that
//! has checked a client's credentials itself asks the user's home node to start a POP3 or
//! IMAP session already logged in as that user, and then relays the client's bytes there.
//! Sans-IO: the types, their framing and their limits.
//!
//! Who may ask: only a peer whose certificate chains to the cluster CA (the listener's
//! mutual TLS; a client without one fails the handshake before any frame). No password
//! crosses: the front node vouches for the user, the home node checks only that the user
//! exists and is homed there.
//!
//! Frames: a 4-octet big-endian length, then that many octets of JSON; a [`Request`] is at
//! most [`REQUEST_MAX`] octets, an [`Answer`] at most [`ANSWER_MAX`]. After an
//! [`Answer::Accepted`] the connection carries the protocol's own bytes (the client's
//! commands one way, the home session's responses the other), starting after the login:
//! the front node writes the answer to the client's login itself, from the answer's `text`
//! (POP3 `+OK text`) or `capabilities` (IMAP `tag OK [CAPABILITY …] text`).
//!
//! 1. front → home: `Request {protocol, user, client, from}`;
//! 2. home → front: `Accepted {capabilities, text}` and the session runs, or `Refused
//!    {reason}` (a [`Refusal`]: the front node's client gets the matching response code,
//!    e.g. POP3 `[IN-USE]` for a maildrop in use there) and the connection closes.
//!
//! Versions: a request carries `version` ([`VERSION`]; a node before versions sends none,
//! read as 0). A home node answers with the refusal reasons the front node's version
//! knows; a reason a front node does not know reads as [`Refusal::Other`] (temporary). For web mail (`protocol: web`) the answer is
//!    `Accepted {session}`, the id of a web session the home node started for the user, and
//!    the connection closes after it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The ALPN protocol name of the conversation.
pub const ALPN: &[u8] = b"relay-login";
/// The ALPN protocol name of a web session's requests after a web login (`protocol: web`):
/// the TLS stream carries plain HTTP/1.1 to the home node's web server (`server::web_in`),
/// one request per connection from the front node (`server::web_proxy`).
pub const WEB_ALPN: &[u8] = b"relay-web";
/// The conversation's version, sent in each [`Request`] (absent: 0). Version 1 added the
/// refusal reasons [`Refusal::OverLimit`] and [`Refusal::ShuttingDown`].
pub const VERSION: u32 = 1;
/// Longest request frame (a user name, a node name and an address).
pub const REQUEST_MAX: usize = 2048;
/// Longest answer frame (an IMAP capability list).
pub const ANSWER_MAX: usize = 16 * 1024;
/// Longest user name a request may carry (RFC 5321's local part plus a domain).
pub const USER_MAX: usize = 320;

/// The protocol the home node's session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Pop3,
    Imap,
    /// A web-mail login: the home node starts a web session and answers with its id; the
    /// connection closes (the browser's requests are forwarded to the home node with that
    /// session's cookie, over the cluster listener as ALPN [`WEB_ALPN`]).
    Web,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
            Protocol::Web => "web",
        }
    }
}

/// What the front node asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub protocol: Protocol,
    /// The directory's name of the user the front node authenticated.
    pub user: String,
    /// The client's own address (for the home node's logs and limits).
    pub client: SocketAddr,
    /// The front node's name (for the logs).
    pub from: String,
    /// The conversation version the front node speaks ([`VERSION`]; absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
}

fn is_zero(version: &u32) -> bool {
    *version == 0
}

/// Why the home node does not start the session; the front node answers its client with
/// the matching response code (`server::login_proxy`). On the wire a reason is one
/// snake_case JSON string (`"in_use"`); a reason a front node does not know (a newer
/// home node's) reads as [`Refusal::Other`], a temporary failure. A home node sends the
/// reasons of [`VERSION`] 1 only to a front node whose request says it knows them
/// ([`Refusal::for_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The user is not in the home node's directory (deleted, or not yet seen there).
    #[error("the user is not in the home node's directory")]
    UnknownUser,
    /// The directories disagree for a moment (a user move).
    #[error("the user is homed on another node")]
    NotHomedHere,
    /// Another POP3 session holds the maildrop at the home node.
    #[error("the maildrop is in use")]
    InUse,
    #[error("the mailbox is unavailable")]
    Unavailable,
    #[error("the request was not understood")]
    BadRequest,
    /// The user is over a limit of the home node's (version 1).
    #[error("the user is over a limit")]
    OverLimit,
    /// The home node is draining or stopping (version 1).
    #[error("the home node is shutting down")]
    ShuttingDown,
    /// A reason this node does not know (sent by a newer one): a temporary failure.
    #[serde(other)]
    #[error("a reason this node does not know")]
    Other,
}

impl Refusal {
    /// The reason as a front node of conversation version `version` can read it: the
    /// reasons of version 1 are [`Refusal::Unavailable`] to a version 0 node (whose decoder
    /// would take an unknown reason for a broken answer).
    pub fn for_version(self, version: u32) -> Refusal {
        match self {
            Refusal::OverLimit | Refusal::ShuttingDown | Refusal::Other if version < 1 => {
                Refusal::Unavailable
            }
            reason => reason,
        }
    }
}

/// The home node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The session runs: `capabilities` (IMAP, post-login) and the login answer's text;
    /// `session`: the web session's id (web only).
    Accepted {
        capabilities: Option<String>,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    Refused {
        reason: Refusal,
    },
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} octets is over the limit of {1}")]
    TooLong(usize, usize),
    #[error("frame is not valid: {0}")]
    Invalid(String),
}

/// One frame: the length, then the JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; an empty object is refused by the peer.
    let json = serde_json::to_vec(message).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// The frame at the start of `input`, if whole: the message and the octets it took.
/// `Ok(None)`: more input is needed (never more than `max` + 4 octets in all).
pub fn decode<T: for<'de> Deserialize<'de>>(
    input: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(head) = input.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLong(len, max));
    }
    let Some(json) = input.get(4..4 + len) else {
        return Ok(None);
    };
    let message = serde_json::from_slice(json).map_err(|e| FrameError::Invalid(e.to_string()))?;
    Ok(Some((message, 4 + len)))
}

/// A request, decoded and checked: a user name of at most [`USER_MAX`] octets with no
/// space or control character, a valid node name.
pub fn decode_request(input: &[u8]) -> Result<Option<(Request, usize)>, FrameError> {
    let Some((request, used)) = decode::<Request>(input, REQUEST_MAX)? else {
        return Ok(None);
    };
    let user_ok = !request.user.is_empty()
        && request.user.len() <= USER_MAX
        && !request
            .user
            .chars()
            .any(|c| c.is_control() || c.is_whitespace());
    if !user_ok {
        return Err(FrameError::Invalid("user name".into()));
    }
    if !crate::config::cluster::valid_node_name(&request.from) {
        return Err(FrameError::Invalid("node name".into()));
    }
    Ok(Some((request, used)))
}

/// The front node's side after its request is sent: reads the answer and says what the
/// client gets. Fed the home node's bytes as they come.
#[derive(Debug)]
pub struct FrontLogin {
    protocol: Protocol,
    /// The client's IMAP login tag (IMAP only).
    tag: String,
    input: Vec<u8>,
    done: bool,
}

/// What the front does next.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontStep {
    /// Read more from the home node.
    Wait,
    /// The session runs at the home node: write `reply` to the client (its login's answer),
    /// then `leftover` (home-node bytes that followed the answer), then relay.
    Ready {
        reply: Vec<u8>,
        leftover: Vec<u8>,
    },
    /// A web login: the home node's session id.
    WebSession(String),
    Refused(Refusal),
    Failed(FrameError),
}

impl FrontLogin {
    /// The request frame to send and the machine that reads the answer; `tag` is the
    /// client's IMAP login tag (empty for POP3).
    pub fn start(request: &Request, tag: &str) -> (Vec<u8>, FrontLogin) {
        let machine = FrontLogin {
            protocol: request.protocol,
            tag: tag.to_string(),
            input: Vec::new(),
            done: false,
        };
        (encode(request), machine)
    }

    /// Takes the home node's bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> FrontStep {
        if self.done {
            return FrontStep::Failed(FrameError::Invalid("answer already read".into()));
        }
        self.input.extend_from_slice(bytes);
        let (answer, used) = match decode::<Answer>(&self.input, ANSWER_MAX) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return FrontStep::Wait,
            Err(error) => {
                self.done = true;
                return FrontStep::Failed(error);
            }
        };
        self.done = true;
        let leftover = self.input.split_off(used);
        self.input = Vec::new();
        match answer {
            Answer::Refused { reason } => FrontStep::Refused(reason),
            Answer::Accepted {
                capabilities,
                text,
                session,
            } => {
                let text = one_line(&text);
                let reply = match self.protocol {
                    Protocol::Web => {
                        let Some(id) = session.filter(|id| valid_session_id(id)) else {
                            return FrontStep::Failed(FrameError::Invalid(
                                "no session id in a web answer".into(),
                            ));
                        };
                        return FrontStep::WebSession(id);
                    }
                    Protocol::Pop3 => {
                        if text.is_empty() {
                            "+OK\r\n".to_string()
                        } else {
                            format!("+OK {text}\r\n")
                        }
                    }
                    Protocol::Imap => {
                        let Some(caps) = capabilities.as_deref().map(one_line) else {
                            return FrontStep::Failed(FrameError::Invalid(
                                "no capabilities in an IMAP answer".into(),
                            ));
                        };
                        let text = if text.is_empty() { "Logged in" } else { &text };
                        format!("{} OK [CAPABILITY {caps}] {text}\r\n", self.tag)
                    }
                };
                FrontStep::Ready {
                    reply: reply.into_bytes(),
                    leftover,
                }
            }
        }
    }
}

/// A session id as the web layer makes them (hex digits; letters, digits, `-`, `_` of a sane
/// length taken): it
/// becomes a cookie value.
fn valid_session_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `text` without CR, LF or other control characters (it becomes part of one line).
fn one_line(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocol: Protocol) -> Request {
        Request {
            protocol,
            user: "carol".into(),
            client: "192.0.2.7:40000".parse().unwrap(),
            from: "c".into(),
            version: VERSION,
        }
    }

    #[test]
    fn a_request_round_trips_in_every_chunking() {
        let frame = encode(&request(Protocol::Imap));
        for split in 0..frame.len() {
            assert_eq!(decode_request(&frame[..split]), Ok(None), "split {split}");
        }
        let mut longer = frame.clone();
        longer.extend_from_slice(b"rest");
        assert_eq!(
            decode_request(&longer),
            Ok(Some((request(Protocol::Imap), frame.len())))
        );
    }

    #[test]
    fn bad_requests_are_refused_not_panics() {
        // Over the limit, announced before the bytes come.
        let mut huge = u32::try_from(REQUEST_MAX + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        huge.extend_from_slice(b"{");
        assert_eq!(
            decode_request(&huge),
            Err(FrameError::TooLong(REQUEST_MAX + 1, REQUEST_MAX))
        );
        assert_eq!(
            decode_request(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLong(u32::MAX as usize, REQUEST_MAX))
        );
        let frame = |json: &str| {
            let mut f = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
            f.extend_from_slice(json.as_bytes());
            f
        };
        for json in [
            "not json",
            "{}",
            r#"{"protocol":"smtp","user":"a","client":"127.0.0.1:1","from":"c"}"#,
            r#"{"protocol":"pop3","user":"","client":"127.0.0.1:1","from":"c"}"#,
            r#"{"protocol":"pop3","user":"a b","client":"127.0.0.1:1","from":"c"}"#,
            r#"{"protocol":"pop3","user":"a\r\nb","client":"127.0.0.1:1","from":"c"}"#,
            r#"{"protocol":"pop3","user":"a","client":"nowhere","from":"c"}"#,
            r#"{"protocol":"pop3","user":"a","client":"127.0.0.1:1","from":"C D"}"#,
        ] {
            assert!(
                matches!(decode_request(&frame(json)), Err(FrameError::Invalid(_))),
                "{json}"
            );
        }
        let long_user = format!(
            r#"{{"protocol":"pop3","user":"{}","client":"127.0.0.1:1","from":"c"}}"#,
            "u".repeat(USER_MAX + 1)
        );
        assert!(decode_request(&frame(&long_user)).is_err());
    }

    #[test]
    fn the_front_answers_a_pop3_login_from_the_home_nodes_text() {
        let (sent, mut front) = FrontLogin::start(&request(Protocol::Pop3), "");
        assert_eq!(
            decode_request(&sent).unwrap().unwrap().0,
            request(Protocol::Pop3)
        );
        let mut answer = encode(&Answer::Accepted {
            capabilities: None,
            text: "maildrop has 2 messages (30 octets)".into(),
            session: None,
        });
        answer.extend_from_slice(b"+OK extra");
        // Byte by byte: nothing before the whole frame.
        for byte in &answer[..answer.len() - 10] {
            assert_eq!(front.feed(&[*byte]), FrontStep::Wait);
        }
        assert_eq!(
            front.feed(&answer[answer.len() - 10..]),
            FrontStep::Ready {
                reply: b"+OK maildrop has 2 messages (30 octets)\r\n".to_vec(),
                leftover: b"+OK extra".to_vec(),
            }
        );
    }

    #[test]
    fn the_front_answers_an_imap_login_with_the_home_nodes_capabilities() {
        let (_, mut front) = FrontLogin::start(&request(Protocol::Imap), "a001");
        let answer = encode(&Answer::Accepted {
            capabilities: Some("IMAP4rev2 IDLE\r\nMOVE".into()),
            text: String::new(),
            session: None,
        });
        assert_eq!(
            front.feed(&answer),
            FrontStep::Ready {
                reply: b"a001 OK [CAPABILITY IMAP4rev2 IDLEMOVE] Logged in\r\n".to_vec(),
                leftover: Vec::new(),
            }
        );
        // An IMAP answer without capabilities is not one to relay.
        let (_, mut front) = FrontLogin::start(&request(Protocol::Imap), "a001");
        let answer = encode(&Answer::Accepted {
            capabilities: None,
            text: "x".into(),
            session: None,
        });
        assert!(matches!(front.feed(&answer), FrontStep::Failed(_)));
    }

    #[test]
    fn a_web_login_gets_the_home_nodes_session_id() {
        let (_, mut front) = FrontLogin::start(&request(Protocol::Web), "");
        let id = "AbC-_0123456789xyzXYZ";
        let answer = encode(&Answer::Accepted {
            capabilities: None,
            text: String::new(),
            session: Some(id.into()),
        });
        assert_eq!(front.feed(&answer), FrontStep::WebSession(id.into()));
        // A session id that could not be a cookie value, or none: not relayed.
        for session in [None, Some("short".to_string()), Some(format!("{id}; x=1"))] {
            let (_, mut front) = FrontLogin::start(&request(Protocol::Web), "");
            let answer = encode(&Answer::Accepted {
                capabilities: None,
                text: String::new(),
                session,
            });
            assert!(matches!(front.feed(&answer), FrontStep::Failed(_)));
        }
    }

    #[test]
    fn refusals_and_bad_answers_fail_the_login() {
        let (_, mut front) = FrontLogin::start(&request(Protocol::Pop3), "");
        let answer = encode(&Answer::Refused {
            reason: Refusal::NotHomedHere,
        });
        assert_eq!(
            front.feed(&answer),
            FrontStep::Refused(Refusal::NotHomedHere)
        );
        let (_, mut front) = FrontLogin::start(&request(Protocol::Pop3), "");
        assert_eq!(
            front.feed(&u32::try_from(ANSWER_MAX + 1).unwrap().to_be_bytes()),
            FrontStep::Failed(FrameError::TooLong(ANSWER_MAX + 1, ANSWER_MAX))
        );
        let (_, mut front) = FrontLogin::start(&request(Protocol::Pop3), "");
        assert!(matches!(
            front.feed(b"\0\0\0\x02{}"),
            FrontStep::Failed(FrameError::Invalid(_))
        ));
        // Nothing is read after the answer.
        assert!(matches!(front.feed(b"x"), FrontStep::Failed(_)));
    }
    /// Every reason, as the bytes a home node sends (length, then JSON).
    const REFUSALS: [(Refusal, &str); 8] = [
        (Refusal::UnknownUser, "unknown_user"),
        (Refusal::NotHomedHere, "not_homed_here"),
        (Refusal::InUse, "in_use"),
        (Refusal::Unavailable, "unavailable"),
        (Refusal::BadRequest, "bad_request"),
        (Refusal::OverLimit, "over_limit"),
        (Refusal::ShuttingDown, "shutting_down"),
        (Refusal::Other, "other"),
    ];

    fn refused_frame(reason: &str) -> Vec<u8> {
        let json = format!(r#"{{"answer":"refused","reason":"{reason}"}}"#);
        let mut frame = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(json.as_bytes());
        frame
    }

    #[test]
    fn refusals_are_pinned_byte_by_byte_and_read_in_every_chunking() {
        assert_eq!(
            encode(&Answer::Refused {
                reason: Refusal::InUse
            }),
            b"\0\0\0\x26{\"answer\":\"refused\",\"reason\":\"in_use\"}".to_vec()
        );
        for (reason, name) in REFUSALS {
            let frame = encode(&Answer::Refused { reason });
            assert_eq!(frame, refused_frame(name), "{name}");
            for split in 0..=frame.len() {
                let (_, mut front) = FrontLogin::start(&request(Protocol::Pop3), "");
                let first = front.feed(&frame[..split]);
                let step = if split == frame.len() {
                    first
                } else {
                    assert_eq!(first, FrontStep::Wait, "{name} split {split}");
                    front.feed(&frame[split..])
                };
                assert_eq!(step, FrontStep::Refused(reason), "{name} split {split}");
            }
        }
    }

    #[test]
    fn a_reason_this_node_does_not_know_is_a_temporary_failure() {
        let (_, mut front) = FrontLogin::start(&request(Protocol::Imap), "a");
        assert_eq!(
            front.feed(&refused_frame("quota_exceeded_in_2030")),
            FrontStep::Refused(Refusal::Other)
        );
        // Not a reason at all: a broken answer, never a panic.
        for json in [
            r#"{"answer":"refused","reason":7}"#,
            r#"{"answer":"refused","reason":null}"#,
            r#"{"answer":"refused"}"#,
            r#"{"answer":"refused","reason":["in_use"]}"#,
            r#"{"answer":"maybe","reason":"in_use"}"#,
        ] {
            let mut frame = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
            frame.extend_from_slice(json.as_bytes());
            let (_, mut front) = FrontLogin::start(&request(Protocol::Pop3), "");
            assert!(
                matches!(
                    front.feed(&frame),
                    FrontStep::Failed(FrameError::Invalid(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn the_version_travels_and_old_front_nodes_get_old_reasons() {
        let frame = encode(&request(Protocol::Pop3));
        let json = std::str::from_utf8(&frame[4..]).unwrap();
        assert!(json.ends_with(r#","from":"c","version":1}"#), "{json}");
        // A node before versions sends none: version 0.
        let old = r#"{"protocol":"pop3","user":"a","client":"127.0.0.1:1","from":"c"}"#;
        let mut frame = u32::try_from(old.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(old.as_bytes());
        let (decoded, _) = decode_request(&frame).unwrap().unwrap();
        assert_eq!(decoded.version, 0);
        // ... and it is sent only the reasons it knows.
        for (reason, _) in REFUSALS {
            let old = reason.for_version(0);
            let known = [
                Refusal::UnknownUser,
                Refusal::NotHomedHere,
                Refusal::InUse,
                Refusal::Unavailable,
                Refusal::BadRequest,
            ];
            assert!(known.contains(&old), "{reason:?} -> {old:?}");
            if known.contains(&reason) {
                assert_eq!(old, reason);
            }
            assert_eq!(reason.for_version(VERSION), reason);
        }
    }
}
