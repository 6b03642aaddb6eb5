//! The IMAP side of the integration tests: tests/py/imaplib_client.py as a long-lived child
//! (one JSON request a line, one JSON answer a line), so a test interleaves IMAP commands of
//! several sessions with SMTP deliveries, POP3 sessions, restarts and kills.
//!
//! Bytes cross the pipe as latin-1 strings (one char per byte), so bodies compare exactly.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::json::Json;
use crate::common::{repo_path, TEST_PASSWORD};

/// Bound on one request (the script's own socket timeout is 20 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One argument of a client method call.
pub enum A<'a> {
    S(&'a str),
    B(&'a [u8]),
    I(i64),
    F(f64),
    T(bool),
    Null,
}

fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The bytes of a latin-1 string from the script.
pub fn bytes(text: &str) -> Vec<u8> {
    text.chars().map(|c| c as u32 as u8).collect()
}

impl A<'_> {
    fn json(&self) -> String {
        match self {
            A::S(s) => quote(s),
            A::B(b) => format!("{{\"b\": {}}}", quote(&latin1(b))),
            A::I(i) => i.to_string(),
            A::F(f) => f.to_string(),
            A::T(b) => b.to_string(),
            A::Null => "null".into(),
        }
    }
}

/// The answer to one imaplib call.
#[derive(Debug)]
pub struct Reply {
    pub typ: String,
    pub data: Json,
    /// Untagged responses collected during the call: (name, items).
    pub untagged: Vec<(String, Vec<Json>)>,
}

impl Reply {
    pub fn from(json: &Json) -> Reply {
        let untagged = json
            .get("untagged")
            .array()
            .iter()
            .map(|pair| (pair.at(0).str().to_string(), pair.at(1).array().to_vec()))
            .collect();
        Reply {
            typ: json.get("typ").str().to_string(),
            data: json.get("data").clone(),
            untagged,
        }
    }

    /// Every string of the data, joined by " " (literals included).
    pub fn text(&self) -> String {
        flat(&self.data)
    }

    /// The items of one untagged response kind (`EXISTS`, `FETCH`, `COPYUID`...), flattened.
    pub fn untagged(&self, name: &str) -> Vec<String> {
        self.untagged
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, items)| items.iter().map(flat))
            .collect()
    }

    /// A UIDPLUS response code (`COPYUID`, `APPENDUID`) from the tagged text or, where
    /// imaplib filed it, the untagged responses: (uidvalidity, source set, destination set).
    pub fn uid_code(&self, name: &str) -> Option<(u64, Vec<u64>, Vec<u64>)> {
        uid_code(&self.text(), name).or_else(|| {
            let code = self.untagged(name).join(" ");
            uid_code(&format!("{name} {code}]"), name)
        })
    }

    /// FETCH data with literals: (the text before the literal, the literal's bytes).
    pub fn literals(&self) -> Vec<(String, Vec<u8>)> {
        self.data
            .array()
            .iter()
            .filter_map(|item| match item {
                Json::Arr(parts) if parts.len() == 2 => {
                    Some((parts[0].str().to_string(), bytes(parts[1].str())))
                }
                _ => None,
            })
            .collect()
    }
}

/// Every string in a JSON value, joined by " ".
pub fn flat(json: &Json) -> String {
    match json {
        Json::Str(s) => s.clone(),
        Json::Arr(items) => items.iter().map(flat).collect::<Vec<_>>().join(" "),
        Json::Null => String::new(),
        Json::Num(n) if n.fract() == 0.0 => format!("{}", *n as i64),
        Json::Num(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        Json::Obj(map) => map
            .iter()
            .map(|(k, v)| format!("{k} {}", flat(v)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The number after `key` in `text` (`UID 5`, `RFC822.SIZE 120`, `UIDNEXT 7`).
pub fn num_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// `[COPYUID v 1:2 5:6]` / `[APPENDUID v 5]` → (uidvalidity, source set, destination set).
pub fn uid_code(text: &str, code: &str) -> Option<(u64, Vec<u64>, Vec<u64>)> {
    let at = text.find(code)? + code.len();
    let rest = text[at..].trim_start();
    let end = rest.find(']')?;
    let words: Vec<&str> = rest[..end].split_whitespace().collect();
    let validity = words.first()?.parse().ok()?;
    let set = |s: &str| -> Option<Vec<u64>> {
        let mut out = Vec::new();
        for part in s.split(',') {
            match part.split_once(':') {
                Some((a, b)) => {
                    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                    out.extend(a.min(b)..=a.max(b));
                }
                None => out.push(part.parse().ok()?),
            }
        }
        Some(out)
    };
    match words.len() {
        2 => Some((validity, Vec::new(), set(words[1])?)),
        3 => Some((validity, set(words[1])?, set(words[2])?)),
        _ => None,
    }
}

/// The child script and its pipes.
pub struct Py {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Py {
    pub fn spawn() -> Py {
        let mut child = Command::new("python3")
            .arg(repo_path("tests/py/imaplib_client.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3 imaplib_client.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            if let Ok(mut s) = sink.lock() {
                s.push_str(&text);
            }
        });
        Py {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// Sends one request line; returns the parsed answer.
    pub fn request(&mut self, line: &str) -> Json {
        writeln!(self.stdin, "{line}").expect("write to the imaplib script");
        self.stdin.flush().expect("flush");
        let answer = self
            .lines
            .recv_timeout(REQUEST_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "no answer from the imaplib script to {line} ({e}); stderr:\n{}",
                    self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
                )
            });
        Json::parse(&answer).unwrap_or_else(|e| panic!("bad JSON ({e}): {answer}"))
    }

    /// Connects session `s` (imaplib, plaintext); returns the connect answer.
    pub fn connect(&mut self, s: &str, port: u16) -> Json {
        self.connect_with(s, port, "none", "", "imaplib")
    }

    pub fn connect_with(&mut self, s: &str, port: u16, tls: &str, cafile: &str, lib: &str) -> Json {
        let answer = self.request(&format!(
            "{{\"op\": \"connect\", \"s\": {}, \"port\": {port}, \"tls\": {}, \"cafile\": {}, \"lib\": {}}}",
            quote(s),
            quote(tls),
            quote(cafile),
            quote(lib)
        ));
        if let Json::Obj(map) = &answer {
            assert!(!map.contains_key("error"), "connect {s}: {answer:?}");
        }
        answer
    }

    /// Connects `s` and logs in as `user` with LOGIN.
    pub fn login(&mut self, s: &str, port: u16, user: &str) {
        self.connect(s, port);
        let reply = self.ok(s, "login", &[A::S(user), A::S(TEST_PASSWORD)]);
        assert!(reply.text().contains("Logged in") || reply.typ == "OK");
    }

    /// Calls a client method; the raw answer (may be an error).
    pub fn raw(&mut self, s: &str, method: &str, args: &[A]) -> Json {
        let args: Vec<String> = args.iter().map(A::json).collect();
        self.request(&format!(
            "{{\"op\": \"call\", \"s\": {}, \"method\": {}, \"args\": [{}]}}",
            quote(s),
            quote(method),
            args.join(", ")
        ))
    }

    /// Calls an imaplib method; panics when it raised.
    pub fn call(&mut self, s: &str, method: &str, args: &[A]) -> Reply {
        let json = self.raw(s, method, args);
        if let Json::Obj(map) = &json {
            if let Some(error) = map.get("error") {
                panic!(
                    "{s}.{method}: {} {}\n{}",
                    error.str(),
                    map.get("msg").map(flat).unwrap_or_default(),
                    map.get("trace").map(flat).unwrap_or_default()
                );
            }
        }
        Reply::from(&json)
    }

    /// Calls an imaplib method and asserts a tagged OK.
    pub fn ok(&mut self, s: &str, method: &str, args: &[A]) -> Reply {
        let reply = self.call(s, method, args);
        assert_eq!(reply.typ, "OK", "{s}.{method}: {reply:?}");
        reply
    }

    /// An imapclient call: its parsed value.
    pub fn value(&mut self, s: &str, method: &str, args: &[A]) -> Json {
        let json = self.raw(s, method, args);
        if let Json::Obj(map) = &json {
            if let Some(error) = map.get("error") {
                panic!("{s}.{method}: {} {:?}", error.str(), map.get("msg"));
            }
            if let Some(value) = map.get("value") {
                return value.clone();
            }
        }
        panic!("{s}.{method}: no value in {json:?}")
    }

    /// Closes `s`'s socket without LOGOUT.
    pub fn drop_session(&mut self, s: &str) {
        self.request(&format!("{{\"op\": \"drop\", \"s\": {}}}", quote(s)));
    }

    /// AUTHENTICATE PLAIN through imaplib.
    pub fn auth_plain(&mut self, s: &str, user: &str, password: &str) -> Json {
        self.request(&format!(
            "{{\"op\": \"auth_plain\", \"s\": {}, \"user\": {}, \"password\": {}}}",
            quote(s),
            quote(user),
            quote(password)
        ))
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// UID FETCH of every message in the selected folder: uid → (flags text, RFC822.SIZE, body).
pub fn fetch_all(py: &mut Py, s: &str) -> std::collections::BTreeMap<u64, (String, u64, Vec<u8>)> {
    let reply = py.ok(
        s,
        "uid",
        &[
            A::S("FETCH"),
            A::S("1:*"),
            A::S("(UID FLAGS RFC822.SIZE BODY.PEEK[])"),
        ],
    );
    let mut out = std::collections::BTreeMap::new();
    for (head, body) in reply.literals() {
        let uid = num_after(&head, "UID ").unwrap_or_else(|| panic!("no UID in {head}"));
        let size = num_after(&head, "RFC822.SIZE ").unwrap_or_else(|| panic!("no size in {head}"));
        let flags = head
            .find("FLAGS (")
            .map(|at| {
                let rest = &head[at + 7..];
                rest[..rest.find(')').unwrap_or(rest.len())].to_string()
            })
            .unwrap_or_else(|| panic!("no FLAGS in {head}"));
        out.insert(uid, (flags, size, body));
    }
    out
}

impl Py {
    /// Connects `s` (imaplib IMAP4_stream) to the IMAP server a shell command runs on its
    /// stdin and stdout, such as a preauthenticated `doveadm exec imap`.
    pub fn connect_command(&mut self, s: &str, command: &str) -> Json {
        let answer = self.request(&format!(
            "{{\"op\": \"connect\", \"s\": {}, \"command\": {}}}",
            quote(s),
            quote(command)
        ));
        if let Json::Obj(map) = &answer {
            assert!(
                !map.contains_key("error"),
                "connect {s} to {command}: {answer:?}"
            );
        }
        answer
    }
}
