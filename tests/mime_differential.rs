//! Differential tests of `relay::mime` against parsers no one here wrote: the `mail-parser`
//! crate and Python's stdlib `email` package (tests/py/mime_tree.py), on a generated corpus
//! (nested multiparts of every subtype, message/rfc822 and digest defaults, every transfer
//! encoding, odd and prefix-sharing boundaries, transport padding, folded and oddly cased
//! headers, CRLF and LF-only text) and on the golden files in tests/mime/.
//!
//! The generator knows the truth (the tree it wrote and each leaf's content), so all three
//! parsers are compared with it and not only with each other: same part tree (depth and
//! media type, depth-first), same decoded bytes.
//!
//! Known, deliberate differences are listed where they are excused (search "differs").

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use relay::mime::{self, base64 as b64, qp, Limits, PartKind};

/// One part as every parser reports it: depth, media type, decoded content (None for a
/// container).
type Outline = Vec<(usize, String, Option<Vec<u8>>)>;

/// A small deterministic PRNG (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A generated entity and the truth about it.
enum Node {
    Leaf {
        ctype: &'static str,
        cte: &'static str,
        content: Vec<u8>,
    },
    Multipart {
        sub: &'static str,
        boundary: String,
        children: Vec<Node>,
    },
    Message(Box<Node>),
}

struct Gen {
    rng: Rng,
    /// "\r\n" or "\n".
    le: &'static str,
    boundaries: usize,
}

const WORDS: &[&str] = &[
    "mail", "relay", "boundary", "part", "x=y", "a.b", "text", "100%", "(c)", "end.", "\"q\"",
];
const UTF8_WORDS: &[&str] = &["café", "Grüße", "日本", "ñandú", "€5"];

impl Gen {
    fn text(&mut self, eight_bit: bool) -> Vec<u8> {
        let mut s = String::new();
        for _ in 0..self.rng.below(8) {
            for w in 0..1 + self.rng.below(12) {
                if w > 0 {
                    s.push(' ');
                }
                if eight_bit && self.rng.chance(20) {
                    let w: &&str = self.rng.pick(UTF8_WORDS);
                    s.push_str(w);
                } else {
                    let w: &&str = self.rng.pick(WORDS);
                    s.push_str(w);
                }
            }
            s.push_str(self.le);
        }
        if self.rng.chance(30) {
            s.push_str("no final line end");
        }
        s.into_bytes()
    }

    fn boundary(&mut self, parent: Option<&str>) -> String {
        self.boundaries += 1;
        let n = self.boundaries;
        // Prefix-sharing boundaries: RFC 2046 §5.1.1 forbids them, senders write them.
        if let Some(p) = parent {
            if self.rng.chance(40) {
                return format!("{p}{}", self.rng.pick(&["-1", "_x", "--z", "0"]));
            }
        }
        match self.rng.below(6) {
            0 => format!("b{n}"),
            1 => format!("----=_NextPart_000_{n:04}_01D8A1B2.C3D4E5F6"),
            2 => format!("=_Part_{n}_1234567.890"),
            3 => format!("a'()+_,-./:=?b{n}"),
            4 => format!("with space {n}"),
            _ => format!("{n}{}", "x".repeat(66)),
        }
    }

    fn leaf(&mut self) -> Node {
        let (ctype, binary) = *self.rng.pick(&[
            ("text/plain", false),
            ("text/html", false),
            ("application/octet-stream", true),
            ("image/png", true),
        ]);
        let cte = if binary {
            "base64"
        } else {
            *self
                .rng
                .pick(&["7bit", "8bit", "quoted-printable", "base64", ""])
        };
        let content = if binary {
            (0..self.rng.below(3000))
                .map(|_| self.rng.next() as u8)
                .collect()
        } else {
            self.text(cte != "7bit" && !cte.is_empty())
        };
        Node::Leaf {
            ctype,
            cte,
            content,
        }
    }

    fn node(&mut self, depth: usize, parent_boundary: Option<&str>) -> Node {
        let r = self.rng.below(10);
        if depth >= 4 || r < 4 {
            return self.leaf();
        }
        if r < 6 {
            return Node::Message(Box::new(self.node(depth + 1, None)));
        }
        let sub = *self
            .rng
            .pick(&["mixed", "alternative", "parallel", "digest", "related"]);
        let boundary = self.boundary(parent_boundary);
        let digest = sub == "digest";
        // At least one part: RFC 2046 §5.1.1 requires it, and Python reads a multipart
        // without parts as text.
        let children = (0..1 + self.rng.below(3))
            .map(|_| {
                if digest {
                    Node::Message(Box::new(self.node(depth + 2, None)))
                } else {
                    self.node(depth + 1, Some(&boundary))
                }
            })
            .collect();
        Node::Multipart {
            sub,
            boundary,
            children,
        }
    }

    fn header_name(&mut self, name: &str) -> String {
        match self.rng.below(4) {
            0 => name.to_ascii_lowercase(),
            1 => name.to_ascii_uppercase(),
            _ => name.to_string(),
        }
    }

    /// Writes `node` as an entity (header fields, blank line, body). `in_digest` lets a
    /// message/rfc822 child of a digest omit its Content-Type (RFC 2046 §5.1.5).
    fn write(&mut self, node: &Node, out: &mut Vec<u8>, in_digest: bool, top: bool) {
        let le = self.le;
        if top {
            write!(
                S(out),
                "From: gen@example.org{le}Subject: generated{le}MIME-Version: 1.0{le}"
            )
            .ok();
        }
        match node {
            Node::Leaf {
                ctype,
                cte,
                content,
            } => {
                let ct = self.header_name("Content-Type");
                if *ctype != "text/plain" || in_digest || self.rng.chance(50) {
                    let shown = if self.rng.chance(30) {
                        ctype.to_ascii_uppercase()
                    } else {
                        ctype.to_string()
                    };
                    write!(S(out), "{ct}: {shown}; charset=utf-8{le}").ok();
                }
                if !cte.is_empty() {
                    let name = self.header_name("Content-Transfer-Encoding");
                    write!(S(out), "{name}: {cte}{le}").ok();
                }
                out.extend_from_slice(le.as_bytes());
                let encoded = match *cte {
                    "base64" => {
                        if self.rng.chance(50) {
                            b64::encode_wrapped(content)
                        } else {
                            // A foreign encoder with another line width.
                            use base64::Engine as _;
                            let plain = base64::engine::general_purpose::STANDARD.encode(content);
                            let width = *self.rng.pick(&[60usize, 64, 72, 76]);
                            let mut s = Vec::new();
                            for line in plain.as_bytes().chunks(width) {
                                s.extend_from_slice(line);
                                s.extend_from_slice(b"\r\n");
                            }
                            s
                        }
                    }
                    "quoted-printable" => qp::encode(content, qp::Mode::Text),
                    _ => content.clone(),
                };
                if le == "\n" {
                    out.extend(encoded.iter().copied().filter(|&b| b != b'\r'));
                } else {
                    out.extend_from_slice(&encoded);
                }
            }
            Node::Message(inner) => {
                if !in_digest || self.rng.chance(50) {
                    let ct = self.header_name("Content-Type");
                    write!(S(out), "{ct}: message/rfc822{le}").ok();
                }
                out.extend_from_slice(le.as_bytes());
                self.write(inner, out, false, true);
            }
            Node::Multipart {
                sub,
                boundary,
                children,
            } => {
                let ct = self.header_name("Content-Type");
                let needs_quotes = boundary.bytes().any(|b| b"()<>@,;:\\\"/[]?= ".contains(&b));
                let b = if needs_quotes || self.rng.chance(50) {
                    format!("\"{boundary}\"")
                } else {
                    boundary.clone()
                };
                let fold = if self.rng.chance(50) {
                    format!("{le}\t")
                } else {
                    " ".to_string()
                };
                let sub_shown = if self.rng.chance(30) {
                    format!("Multipart/{}", sub.to_ascii_uppercase())
                } else {
                    format!("multipart/{sub}")
                };
                write!(S(out), "{ct}: {sub_shown};{fold}boundary={b}{le}{le}").ok();
                if self.rng.chance(50) {
                    write!(S(out), "This is a preamble.{le}").ok();
                }
                for child in children {
                    let pad = *self.rng.pick(&["", "", " ", "\t ", "  "]);
                    write!(S(out), "--{boundary}{pad}{le}").ok();
                    self.write(child, out, *sub == "digest", false);
                    out.extend_from_slice(le.as_bytes());
                }
                let pad = *self.rng.pick(&["", "", " "]);
                write!(S(out), "--{boundary}--{pad}").ok();
                if self.rng.chance(50) {
                    write!(S(out), "{le}epilogue text{le}").ok();
                }
            }
        }
    }
}

/// `write!` into a Vec<u8>.
struct S<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for S<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The truth about a generated tree, in depth-first order.
fn truth(node: &Node, depth: usize, out: &mut Outline) {
    match node {
        Node::Leaf { ctype, content, .. } => {
            out.push((depth, ctype.to_string(), Some(content.clone())))
        }
        Node::Message(inner) => {
            out.push((depth, "message/rfc822".into(), None));
            truth(inner, depth + 1, out);
        }
        Node::Multipart { sub, children, .. } => {
            out.push((depth, format!("multipart/{sub}"), None));
            for c in children {
                truth(c, depth + 1, out);
            }
        }
    }
}

fn relay_outline(text: &[u8]) -> Outline {
    let msg = mime::parse(text, &Limits::default()).expect("parse");
    msg.walk()
        .into_iter()
        .map(|i| {
            let p = &msg.parts[i];
            let content = match p.kind {
                PartKind::Leaf => Some(msg.decoded(i).expect("decode").into_owned()),
                _ => None,
            };
            (p.depth, p.content_type.essence(), content)
        })
        .collect()
}

fn mail_parser_outline(text: &[u8]) -> Outline {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    fn walk(msg: &mail_parser::Message<'_>, id: usize, depth: usize, out: &mut Outline) {
        let part = &msg.parts[id];
        let ctype = part
            .content_type()
            .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase())
            .unwrap_or_else(|| "?".into());
        match &part.body {
            PartType::Multipart(ids) => {
                out.push((depth, ctype, None));
                for &c in ids {
                    walk(msg, c as usize, depth + 1, out);
                }
            }
            PartType::Message(inner) => {
                out.push((depth, ctype, None));
                walk(inner, 0, depth + 1, out);
            }
            PartType::Text(t) | PartType::Html(t) => {
                out.push((depth, ctype, Some(t.as_bytes().to_vec())))
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                out.push((depth, ctype, Some(b.to_vec())))
            }
        }
    }
    let msg = MessageParser::default()
        .parse(text)
        .expect("mail-parser parse");
    let mut out = Vec::new();
    walk(&msg, 0, 0, &mut out);
    out
}

/// Runs the Python oracle over `files`; `None` if python3 is missing.
fn python_outlines(files: &[PathBuf]) -> Option<Vec<Outline>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/mime_tree.py");
    let output = match Command::new("python3").arg(script).args(files).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("python3 not runnable ({e}); skipping the Python oracle");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "mime_tree.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let all = parse_outlines(&String::from_utf8(output.stdout).expect("utf-8 output"));
    assert_eq!(all.len(), files.len());
    Some(all)
}

/// Reads the outline format of tests/py/mime_tree.py (also written by `mail_parser_child`).
fn parse_outlines(text: &str) -> Vec<Outline> {
    let mut all = Vec::new();
    let mut current: Option<Outline> = None;
    for line in text.lines() {
        if line.starts_with("FILE ") {
            current = Some(Vec::new());
        } else if line == "END" {
            all.push(current.take().expect("END after FILE"));
        } else if let Some(cur) = current.as_mut() {
            let mut f = line.split('\t');
            let depth = f.next().and_then(|d| d.parse().ok()).expect("depth");
            let ctype = f.next().expect("ctype").to_string();
            let payload = f.next().expect("payload");
            let content = (payload != "-").then(|| b64::decode(payload.as_bytes()).expect("b64"));
            cur.push((depth, ctype, content));
        }
    }
    all
}

fn write_outline(name: &str, o: &Outline) -> String {
    let mut s = format!("FILE {name}\n");
    for (d, t, c) in o {
        let payload = match c {
            Some(c) => String::from_utf8(b64::encode_wrapped(c))
                .expect("ascii")
                .replace("\r\n", ""),
            None => "-".into(),
        };
        let _ = writeln!(s, "{d}\t{t}\t{payload}");
    }
    s.push_str("END\n");
    s
}

/// Runs mail-parser over the files in `MIME_MP_DIR` from index `MIME_MP_START` on, printing
/// outlines; run as a child process by `mail_parser_outlines`, because mail-parser can
/// overflow its stack (unbounded recursion), which no test can catch in-process.
#[test]
fn mail_parser_child() {
    let (Some(dir), Some(start)) = (
        std::env::var_os("MIME_MP_DIR"),
        std::env::var("MIME_MP_START")
            .ok()
            .and_then(|s| s.parse::<usize>().ok()),
    ) else {
        return; // Only meaningful as a child.
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(std::env::var_os("MIME_MP_OUT").expect("MIME_MP_OUT"))
        .expect("open output");
    for (n, path) in files.iter().enumerate().skip(start) {
        let text = std::fs::read(path).expect("read");
        let line = match std::panic::catch_unwind(|| mail_parser_outline(&text)) {
            Ok(o) => write_outline(&n.to_string(), &o),
            Err(_) => format!("PANIC {n}\n"),
        };
        use std::io::Write as _;
        // One write per message, so a crash leaves whole records behind.
        out.write_all(line.as_bytes()).expect("write output");
    }
}

/// mail-parser's outline of every message, `Err` where it crashed: "panic" or "abort" (a
/// stack overflow kills the child; it is restarted after that message).
fn mail_parser_outlines(texts: &[Vec<u8>]) -> Vec<Result<Outline, &'static str>> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, t) in texts.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{n:06}.eml")), t).expect("write");
    }
    let exe = std::env::current_exe().expect("current exe");
    let out_path = dir.path().join("outlines.txt");
    let mut results: Vec<Result<Outline, &'static str>> = Vec::new();
    while results.len() < texts.len() {
        let _ = std::fs::remove_file(&out_path);
        let status = Command::new(&exe)
            .args(["--exact", "mail_parser_child", "--test-threads=1"])
            .env("MIME_MP_DIR", dir.path())
            .env("MIME_MP_START", results.len().to_string())
            .env("MIME_MP_OUT", &out_path)
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run child");
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let before = results.len();
        let mut block = String::new();
        for line in text.lines() {
            if line.starts_with("PANIC ") {
                results.push(Err("panic"));
            } else {
                block.push_str(line);
                block.push('\n');
                if line == "END" {
                    let mut o = parse_outlines(&block);
                    results.push(Ok(o.pop().expect("one outline")));
                    block.clear();
                }
            }
        }
        if !status.success() || results.len() == before {
            // The child died on the next message (a stack overflow aborts the process).
            results.push(Err("abort"));
        }
    }
    results.truncate(texts.len());
    results
}

fn show(o: &Outline) -> String {
    o.iter()
        .map(|(d, t, c)| {
            format!(
                "{}{} {}\n",
                "  ".repeat(*d),
                t,
                c.as_ref()
                    .map(|c| format!("{:?}", String::from_utf8_lossy(&c[..c.len().min(60)])))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn corpus(n: usize) -> Vec<(Vec<u8>, Outline)> {
    let mut rng_seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|i| {
            rng_seed = rng_seed.wrapping_add(0x1234_5678_9ABC_DEF1);
            let mut g = Gen {
                rng: Rng(rng_seed | 1),
                le: if i % 5 == 4 { "\n" } else { "\r\n" },
                boundaries: 0,
            };
            let root = g.node(0, None);
            // The top level is the message itself: a Message node's entity is written as a
            // message/rfc822 leaf of the top; keep the root a leaf or multipart.
            let root = match root {
                Node::Message(inner) => *inner,
                other => other,
            };
            let mut text = Vec::new();
            g.write(&root, &mut text, false, true);
            let mut want = Vec::new();
            truth(&root, 0, &mut want);
            // The truth's text content was generated with the message's line ends.
            (text, want)
        })
        .collect()
}

const CORPUS_SIZE: usize = 400;

#[test]
fn relay_matches_the_generator() {
    let mut parts = 0;
    for (n, (text, want)) in corpus(CORPUS_SIZE).iter().enumerate() {
        let got = relay_outline(text);
        assert_eq!(
            got,
            *want,
            "message {n}:\n{}\nrelay:\n{}\ntruth:\n{}",
            String::from_utf8_lossy(text),
            show(&got),
            show(want)
        );
        parts += got.len();
    }
    eprintln!("relay: {CORPUS_SIZE} messages, {parts} parts identical to the generator's truth");
}

#[test]
fn python_email_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus(CORPUS_SIZE);
    let mut files = Vec::new();
    for (n, (text, _)) in corpus.iter().enumerate() {
        let path = dir.path().join(format!("{n:04}.eml"));
        std::fs::write(&path, text).expect("write");
        files.push(path);
    }
    // relay_only_* files hold what Python's compat32 parser does not read (comments in
    // Content-Type: it splits the value at ';' only); they are checked by their outlines.
    let golden: Vec<PathBuf> = golden_files()
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("relay_only_"))
        })
        .collect();
    files.extend(golden.iter().cloned());
    let Some(py) = python_outlines(&files) else {
        return;
    };
    let mut parts = 0;
    for (n, (text, want)) in corpus.iter().enumerate() {
        assert_eq!(
            py[n],
            *want,
            "message {n}: python differs from the truth:\n{}\npython:\n{}",
            String::from_utf8_lossy(text),
            show(&py[n])
        );
        parts += want.len();
    }
    for (k, path) in golden.iter().enumerate() {
        let text = std::fs::read(path).expect("read golden");
        let got = relay_outline(&text);
        let py = &py[corpus.len() + k];
        assert_eq!(
            &got,
            py,
            "{}: relay vs python\nrelay:\n{}\npython:\n{}",
            path.display(),
            show(&got),
            show(py)
        );
        parts += got.len();
    }
    eprintln!(
        "python email: {} generated + {} golden messages, {parts} parts agree",
        corpus.len(),
        golden.len()
    );
}

/// mail-parser's outline normalised for what it does differently by design: it has no
/// digest default type (a digest child without Content-Type reports no type, shown "?"),
/// and it reports text/* parts as `str` (the corpus's text is UTF-8, so bytes compare).
fn mail_parser_matches(got: &Outline, want: &Outline) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|((gd, gt, gc), (wd, wt, wc))| gd == wd && (gt == "?" || gt == wt) && gc == wc)
}

/// mail-parser 0.11.9 against the truth. It is not always right: on some valid nestings it
/// panics ("Invalid part ID, could not find multipart") or loses the parts after an enclosed
/// message that itself holds a multipart. Every message where it disagrees with the truth
/// must be one where Python's email agrees with the truth (and relay does, by
/// `relay_matches_the_generator`), so the disagreement is mail-parser's; and it must agree on
/// most of the corpus.
#[test]
fn mail_parser_agrees() {
    let corpus = corpus(CORPUS_SIZE);
    let mut agree = 0;
    let mut parts = 0;
    let mut panics = Vec::new();
    let mut differs = Vec::new();
    let texts: Vec<Vec<u8>> = corpus.iter().map(|(t, _)| t.clone()).collect();
    for (n, result) in mail_parser_outlines(&texts).into_iter().enumerate() {
        let want = &corpus[n].1;
        match result {
            Err(how) => panics.push((n, how)),
            Ok(got) if mail_parser_matches(&got, want) => {
                agree += 1;
                parts += want.len();
            }
            Ok(_) => differs.push(n),
        }
    }
    eprintln!(
        "mail-parser: {agree}/{} messages ({parts} parts) agree; it crashed on {} {panics:?} \
         and differs on {} {differs:?}",
        corpus.len(),
        panics.len(),
        differs.len()
    );
    // Python decides the disputed ones.
    let dir = tempfile::tempdir().expect("tempdir");
    let disputed: Vec<usize> = panics
        .iter()
        .map(|p| p.0)
        .chain(differs.iter().copied())
        .collect();
    let files: Vec<PathBuf> = disputed
        .iter()
        .map(|&n| {
            let path = dir.path().join(format!("{n:04}.eml"));
            std::fs::write(&path, &corpus[n].0).expect("write");
            path
        })
        .collect();
    if let Some(py) = python_outlines(&files) {
        for (k, &n) in disputed.iter().enumerate() {
            assert_eq!(
                py[k], corpus[n].1,
                "message {n}: mail-parser and Python both differ"
            );
        }
    }
    assert!(
        agree * 4 >= corpus.len() * 3,
        "mail-parser agrees on fewer than 3/4 of the corpus: {agree}"
    );
}

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mime");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/mime")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
}

/// Golden files: each tests/mime/X.eml has X.outline, the expected tree (depth, type and
/// decoded content) as `relay` prints it. Set MIME_BLESS=1 to rewrite them after checking
/// the difference by hand.
#[test]
fn golden_outlines() {
    let bless = std::env::var_os("MIME_BLESS").is_some();
    for path in golden_files() {
        let text = std::fs::read(&path).expect("read");
        let got = show(&relay_outline(&text));
        let outline = path.with_extension("outline");
        if bless {
            std::fs::write(&outline, &got).expect("write outline");
            continue;
        }
        let want = std::fs::read_to_string(&outline)
            .unwrap_or_else(|e| panic!("{}: {e} (run with MIME_BLESS=1)", outline.display()));
        assert_eq!(got, want, "{}", path.display());
    }
}

#[test]
fn downgrade_keeps_every_generated_message() {
    for (n, (text, _)) in corpus(CORPUS_SIZE).iter().enumerate() {
        let out = mime::downgrade(text, &Limits::default()).expect("downgrade");
        assert!(out.iter().all(|b| b.is_ascii()), "message {n}");
        let before = relay_outline(text);
        let after = relay_outline(&out);
        assert_eq!(before.len(), after.len(), "message {n}");
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((b.0, &b.1), (a.0, &a.1), "message {n}");
            assert_eq!(b.2, a.2, "message {n}:\n{}", String::from_utf8_lossy(&out));
        }
    }
}
