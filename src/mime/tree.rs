//! The parser and the part tree.
//!
//! Role: [`parse`] walks a message once and returns a [`Message`]: a flat arena of [`Part`]s
//! whose ranges point into the message bytes. Siblings are contiguous in the arena (parts are
//! numbered breadth-first), so a part's children are a `Range<usize>`; [`Message::walk`]
//! gives the depth-first order readers expect.
//!
//! Why iterative and breadth-first: a work queue instead of recursion means no input can
//! drive the stack, whatever `max_depth` is configured; and numbering children as they are
//! queued makes each sibling group one contiguous slice without a second pass.
//!
//! Which parts are containers (RFC 2046):
//! - `multipart/*` with a usable boundary: its body is split (§5.1; every subtype, unknown
//!   ones as mixed, §5.1.7). Inside `multipart/digest` the default type is message/rfc822
//!   (§5.1.5); everywhere else text/plain (RFC 2045 §5.2).
//! - `message/rfc822` and `message/global` (RFC 6532 §3.5) with an identity encoding: the body
//!   is a message (§5.2.1 forbids other encodings; an encoded one is kept as a leaf and noted).
//! - Everything else is a leaf.
//!
//! Exposure and limits: see the module doc of `mime`; every limit is checked before the work
//! it bounds is done.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;

use super::base64;
use super::boundary::{Splitter, TooManyParts};
use super::header::{self, ContentType, Disposition, Field, TransferEncoding};
use super::qp;
use super::{LimitExceeded, Limits};

/// Something wrong with the message that the parser read around, as RFC 2045/2046 tell a
/// reader to. Kept for the policy and for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// A Content-Type field without `type/subtype`; read as text/plain (RFC 2045 §5.2).
    InvalidContentType,
    /// A multipart without a usable boundary parameter; read as a leaf.
    NoBoundary,
    /// A multipart whose body has no delimiter line: all preamble, no parts.
    NoDelimiter,
    /// A multipart without its close delimiter (RFC 2046 §5.1.1).
    MissingCloseDelimiter,
    /// A message/rfc822 part with a non-identity encoding (RFC 2046 §5.2.1); read as a leaf.
    EncodedMessage,
}

/// What a part contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartKind {
    /// A leaf: `body` is its content in its transfer encoding.
    Leaf,
    /// A multipart: the children are its body parts.
    Multipart {
        preamble: Range<usize>,
        epilogue: Range<usize>,
        closed: bool,
    },
    /// message/rfc822: one child, the enclosed message.
    Message,
}

/// One entity of the tree (the top-level message, a body part or an enclosed message). All
/// ranges are into the parsed buffer.
#[derive(Clone, Debug)]
pub struct Part<'a> {
    /// Header and body together.
    pub span: Range<usize>,
    /// The header fields' octets (no blank line).
    pub header: Range<usize>,
    /// The body: after the blank line to the end of the part.
    pub body: Range<usize>,
    /// Indices into [`Message::fields`].
    pub fields: Range<usize>,
    /// The media type: from Content-Type, or the default of the context.
    pub content_type: ContentType<'a>,
    pub encoding: TransferEncoding,
    pub disposition: Option<Disposition<'a>>,
    /// 0 for the top-level message.
    pub depth: usize,
    pub parent: Option<usize>,
    /// Indices into [`Message::parts`].
    pub children: Range<usize>,
    pub kind: PartKind,
}

impl Part<'_> {
    /// Is this an attachment: a leaf with `Content-Disposition: attachment` or with a file
    /// name (RFC 2183 §2; senders that omit the disposition still name the file)?
    pub fn is_attachment(&self) -> bool {
        matches!(self.kind, PartKind::Leaf)
            && (self.disposition.as_ref().is_some_and(|d| d.is_attachment())
                || self.filename().is_some())
    }

    /// The file name: Content-Disposition's `filename`, else Content-Type's `name` (the
    /// older form), as display text (RFC 2231 and RFC 2047 decoded).
    pub fn filename(&self) -> Option<String> {
        self.disposition
            .as_ref()
            .and_then(|d| d.param("filename"))
            .or_else(|| self.content_type.param("name"))
            .map(|v| v.text())
    }
}

/// A decoded body could not be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad base64: {0}")]
    Base64(#[from] base64::Base64Error),
    #[error("the part is a container, not a leaf")]
    NotALeaf,
}

/// A parsed message: the buffer, the part arena and the header field arena.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
    /// Breadth-first: `parts[0]` is the top-level message; siblings are contiguous.
    pub parts: Vec<Part<'a>>,
    /// Every header field of every part, in order; each part has a range of them.
    pub fields: Vec<Field>,
    /// What the parser read around, with the index of the part concerned.
    pub defects: Vec<(usize, Defect)>,
}

/// A part waiting to be parsed.
struct Pending {
    span: Range<usize>,
    depth: usize,
    parent: Option<usize>,
    digest: bool,
}

/// Parses `buf` as a message (RFC 5322 header, MIME body) within `limits`.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Result<Message<'a>, LimitExceeded> {
    let mut msg = Message {
        buf,
        parts: Vec::new(),
        fields: Vec::new(),
        defects: Vec::new(),
    };
    let mut queue = VecDeque::new();
    queue.push_back(Pending {
        span: 0..buf.len(),
        depth: 0,
        parent: None,
        digest: false,
    });
    let mut needle = Vec::new();
    while let Some(p) = queue.pop_front() {
        let index = msg.parts.len();
        let first_field = msg.fields.len();
        // The field arena grows with the message; a message of tiny parts full of tiny
        // fields would otherwise cost 48 octets of arena per 3 octets of input.
        let total_max = limits.total_header_fields();
        let room = total_max.saturating_sub(msg.fields.len());
        let block = header::parse_block(
            buf,
            p.span.clone(),
            limits.max_header_bytes,
            limits.max_header_fields.min(room),
            &mut msg.fields,
        )
        .map_err(|e| match e {
            LimitExceeded::HeaderFields { .. } if room < limits.max_header_fields => {
                LimitExceeded::TotalHeaderFields { limit: total_max }
            }
            other => other,
        })?;
        let fields = first_field..msg.fields.len();
        let field_value = |name: &str| -> Option<&'a [u8]> {
            msg.fields[fields.clone()]
                .iter()
                .find(|f| f.is(buf, name))
                .map(|f| &buf[f.value.clone()])
        };
        let default = if p.digest {
            ContentType::MESSAGE_RFC822
        } else {
            ContentType::TEXT_PLAIN
        };
        let mut invalid_type = false;
        let content_type = match field_value("content-type") {
            Some(v) => ContentType::parse(v).unwrap_or_else(|| {
                invalid_type = true;
                ContentType::TEXT_PLAIN
            }),
            None => default,
        };
        let encoding = field_value("content-transfer-encoding")
            .map_or(TransferEncoding::SevenBit, TransferEncoding::parse);
        let disposition = field_value("content-disposition").and_then(Disposition::parse);
        if invalid_type {
            msg.defects.push((index, Defect::InvalidContentType));
        }
        let body = block.body_start..p.span.end;
        let mut kind = PartKind::Leaf;
        let mut children = 0..0;
        // The index the first queued child will get: everything queued before it comes first.
        let next_index = index + 1 + queue.len();
        let child_depth = p.depth + 1;
        if content_type.is_top("multipart") {
            match content_type.boundary() {
                None => msg.defects.push((index, Defect::NoBoundary)),
                Some(boundary) => {
                    if child_depth > limits.max_depth {
                        return Err(LimitExceeded::Depth {
                            limit: limits.max_depth,
                        });
                    }
                    let room = limits.max_parts.saturating_sub(next_index);
                    let split = Splitter::new(&boundary, &mut needle)
                        .split(buf, body.clone(), room)
                        .map_err(|TooManyParts| LimitExceeded::Parts {
                            limit: limits.max_parts,
                        })?;
                    if split.parts.is_empty() && !split.closed {
                        msg.defects.push((index, Defect::NoDelimiter));
                    } else if !split.closed {
                        msg.defects.push((index, Defect::MissingCloseDelimiter));
                    }
                    let digest = content_type.sub.eq_ignore_ascii_case(b"digest");
                    children = next_index..next_index + split.parts.len();
                    for span in split.parts {
                        queue.push_back(Pending {
                            span,
                            depth: child_depth,
                            parent: Some(index),
                            digest,
                        });
                    }
                    kind = PartKind::Multipart {
                        preamble: split.preamble,
                        epilogue: split.epilogue,
                        closed: split.closed,
                    };
                }
            }
        } else if content_type.is("message", "rfc822") || content_type.is("message", "global") {
            if !encoding.is_identity() {
                msg.defects.push((index, Defect::EncodedMessage));
            } else {
                if child_depth > limits.max_depth {
                    return Err(LimitExceeded::Depth {
                        limit: limits.max_depth,
                    });
                }
                if next_index >= limits.max_parts {
                    return Err(LimitExceeded::Parts {
                        limit: limits.max_parts,
                    });
                }
                children = next_index..next_index + 1;
                queue.push_back(Pending {
                    span: body.clone(),
                    depth: child_depth,
                    parent: Some(index),
                    digest: false,
                });
                kind = PartKind::Message;
            }
        }
        msg.parts.push(Part {
            span: p.span,
            header: block.header,
            body,
            fields,
            content_type,
            encoding,
            disposition,
            depth: p.depth,
            parent: p.parent,
            children,
            kind,
        });
    }
    Ok(msg)
}

impl<'a> Message<'a> {
    /// The parsed bytes.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The top-level message.
    pub fn root(&self) -> &Part<'a> {
        // parse() always pushes the root before returning Ok.
        &self.parts[0]
    }

    pub fn children(&self, index: usize) -> &[Part<'a>] {
        &self.parts[self.parts[index].children.clone()]
    }

    /// Part indices in depth-first order (the order of the parts in the message text).
    pub fn walk(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.parts.len());
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            order.push(i);
            stack.extend(self.parts[i].children.clone().rev());
        }
        order
    }

    /// The header fields of a part as (name, raw value) slices.
    pub fn headers(&self, index: usize) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        let buf = self.buf;
        self.fields[self.parts[index].fields.clone()]
            .iter()
            .map(move |f| (&buf[f.name.clone()], &buf[f.value.clone()]))
    }

    /// The first field called `name` in a part's header, raw (folding kept).
    pub fn header(&self, index: usize, name: &str) -> Option<&'a [u8]> {
        let buf = self.buf;
        self.fields[self.parts[index].fields.clone()]
            .iter()
            .find(|f| f.is(buf, name))
            .map(|f| &buf[f.value.clone()])
    }

    /// The first field called `name` as display text (unfolded, RFC 2047 decoded).
    pub fn header_text(&self, index: usize, name: &str) -> Option<String> {
        self.header(index, name).map(header::display_value)
    }

    /// A part's body in its transfer encoding.
    pub fn body(&self, index: usize) -> &'a [u8] {
        &self.buf[self.parts[index].body.clone()]
    }

    /// A leaf's body with its transfer encoding undone: borrowed for the identity encodings,
    /// decoded for quoted-printable and base64 (strictly: bad base64 is an error).
    pub fn decoded(&self, index: usize) -> Result<Cow<'a, [u8]>, DecodeError> {
        let part = &self.parts[index];
        if part.kind != PartKind::Leaf {
            return Err(DecodeError::NotALeaf);
        }
        let body = self.body(index);
        Ok(match part.encoding {
            TransferEncoding::Base64 => Cow::Owned(base64::decode(body)?),
            TransferEncoding::QuotedPrintable => Cow::Owned(qp::decode(body)),
            _ => Cow::Borrowed(body),
        })
    }

    /// [`Message::decoded`], reading damaged base64 the RFC 2045 §6.8 way (never fails for a
    /// leaf).
    pub fn decoded_lenient(&self, index: usize) -> Result<Cow<'a, [u8]>, DecodeError> {
        match self.decoded(index) {
            Err(DecodeError::Base64(_)) => Ok(Cow::Owned(base64::decode_lenient(self.body(index)))),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outline(text: &[u8]) -> Vec<(usize, String, String)> {
        let msg = parse(text, &Limits::default()).unwrap();
        msg.walk()
            .into_iter()
            .map(|i| {
                let p = &msg.parts[i];
                let content = match p.kind {
                    PartKind::Leaf => {
                        String::from_utf8_lossy(&msg.decoded(i).unwrap()).into_owned()
                    }
                    _ => String::new(),
                };
                (p.depth, p.content_type.essence(), content)
            })
            .collect()
    }

    const NESTED: &[u8] = b"From: a@example.org\r\n\
Subject: nested\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
preamble\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=outer-inner\r\n\
\r\n\
--outer-inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
caf=C3=A9\r\n\
--outer-inner\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>hi</p>\r\n\
--outer-inner--\r\n\
--outer\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"x.bin\"\r\n\
\r\n\
AAEC\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: inner\r\n\
\r\n\
inner body\r\n\
--outer--\r\n\
epilogue\r\n";

    #[test]
    fn nested_tree() {
        let got = outline(NESTED);
        let want: Vec<(usize, String, String)> = vec![
            (0, "multipart/mixed".into(), "".into()),
            (1, "multipart/alternative".into(), "".into()),
            (2, "text/plain".into(), "café".into()),
            (2, "text/html".into(), "<p>hi</p>".into()),
            (1, "application/octet-stream".into(), "\0\u{1}\u{2}".into()),
            (1, "message/rfc822".into(), "".into()),
            (2, "text/plain".into(), "inner body".into()),
        ];
        assert_eq!(got, want);
        let msg = parse(NESTED, &Limits::default()).unwrap();
        let root = msg.root();
        match &root.kind {
            PartKind::Multipart {
                preamble,
                epilogue,
                closed,
            } => {
                assert_eq!(&NESTED[preamble.clone()], b"preamble");
                assert_eq!(&NESTED[epilogue.clone()], b"epilogue\r\n");
                assert!(closed);
            }
            other => panic!("{other:?}"),
        }
        // Siblings are contiguous and point back at their parent.
        for (i, p) in msg.parts.iter().enumerate() {
            for c in p.children.clone() {
                assert_eq!(msg.parts[c].parent, Some(i));
            }
        }
        let att: Vec<_> = msg.parts.iter().filter(|p| p.is_attachment()).collect();
        assert_eq!(att.len(), 1);
        assert_eq!(att[0].filename().as_deref(), Some("x.bin"));
        assert_eq!(msg.header_text(0, "subject").as_deref(), Some("nested"));
        assert!(msg.defects.is_empty());
    }

    #[test]
    fn lf_only_parses_the_same() {
        let lf: Vec<u8> = NESTED.iter().copied().filter(|&b| b != b'\r').collect();
        let crlf = outline(NESTED);
        let lf_outline = outline(&lf);
        assert_eq!(crlf.len(), lf_outline.len());
        for (a, b) in crlf.iter().zip(&lf_outline) {
            assert_eq!((a.0, &a.1), (b.0, &b.1));
            assert_eq!(a.2.replace("\r\n", "\n"), b.2);
        }
    }

    #[test]
    fn digest_default_type() {
        let text = b"Content-Type: multipart/digest; boundary=d\r\n\r\n\
--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n\
--d\r\nContent-Type: text/plain\r\n\r\nnot a message\r\n--d--\r\n";
        let got = outline(text);
        assert_eq!(
            got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
            [
                "multipart/digest",
                "message/rfc822",
                "text/plain",
                "text/plain"
            ]
        );
        assert_eq!(got[2].2, "first");
    }

    #[test]
    fn every_multipart_subtype_splits() {
        for sub in [
            "mixed",
            "alternative",
            "parallel",
            "related",
            "signed",
            "x-unknown",
        ] {
            let text = format!(
                "Content-Type: multipart/{sub}; boundary=b\r\n\r\n--b\r\n\r\na\r\n--b\r\n\r\nb\r\n--b--\r\n"
            );
            assert_eq!(outline(text.as_bytes()).len(), 3, "{sub}");
        }
    }

    #[test]
    fn defects_are_noted() {
        let cases: &[(&[u8], Defect)] = &[
            (b"Content-Type: garbage\r\n\r\nx", Defect::InvalidContentType),
            (b"Content-Type: multipart/mixed\r\n\r\nx", Defect::NoBoundary),
            (b"Content-Type: multipart/mixed; boundary=b\r\n\r\nno delimiters", Defect::NoDelimiter),
            (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx", Defect::MissingCloseDelimiter),
            (b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA==", Defect::EncodedMessage),
        ];
        for (text, defect) in cases {
            let msg = parse(text, &Limits::default()).unwrap();
            assert_eq!(
                msg.defects,
                vec![(0, *defect)],
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    fn nest(depth: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for i in 0..depth {
            text.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        text.extend_from_slice(b"\r\nleaf\r\n");
        text
    }

    #[test]
    fn depth_limit() {
        let limits = Limits {
            max_depth: 5,
            ..Limits::default()
        };
        assert!(parse(&nest(5), &limits).is_ok());
        assert_eq!(
            parse(&nest(6), &limits).unwrap_err(),
            LimitExceeded::Depth { limit: 5 }
        );
        // Absurd nesting stays an error, not a stack overflow.
        assert!(parse(&nest(100_000), &Limits::default()).is_err());
        // message/rfc822 nesting counts too.
        let mut text = Vec::new();
        for _ in 0..40 {
            text.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        assert_eq!(
            parse(&text, &Limits::default()).unwrap_err(),
            LimitExceeded::Depth { limit: 32 }
        );
    }

    #[test]
    fn part_limit() {
        let mut text = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..100_000 {
            text.extend_from_slice(b"--b\r\n\r\nx\r\n");
        }
        assert_eq!(
            parse(&text, &Limits::default()).unwrap_err(),
            LimitExceeded::Parts { limit: 10_000 }
        );
        let limits = Limits {
            max_parts: 200_000,
            ..Limits::default()
        };
        assert_eq!(parse(&text, &limits).unwrap().parts.len(), 100_001);
        // The limit counts every level.
        let limits = Limits {
            max_parts: 3,
            ..Limits::default()
        };
        assert!(parse(NESTED, &limits).is_err());
    }

    #[test]
    fn header_bomb() {
        let mut text = b"Subject: x\r\n".to_vec();
        for _ in 0..200_000 {
            text.extend_from_slice(b"X: y\r\n");
        }
        assert_eq!(
            parse(&text, &Limits::default()).unwrap_err(),
            LimitExceeded::HeaderFields { limit: 1000 }
        );
    }

    #[test]
    fn total_fields_are_bounded() {
        let limits = Limits {
            max_parts: 100,
            max_header_fields: 1000,
            ..Limits::default()
        };
        let mut text = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..90 {
            text.extend_from_slice(b"--b\r\n");
            text.extend_from_slice(&b"a:\r\n".repeat(900));
            text.extend_from_slice(b"\r\nx\r\n");
        }
        assert_eq!(
            parse(&text, &limits).unwrap_err(),
            LimitExceeded::TotalHeaderFields {
                limit: limits.total_header_fields()
            }
        );
    }

    #[test]
    fn bad_base64_is_a_decode_error() {
        let text = b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n";
        let msg = parse(text, &Limits::default()).unwrap();
        assert!(matches!(msg.decoded(0), Err(DecodeError::Base64(_))));
        assert_eq!(msg.decoded_lenient(0).unwrap().as_ref(), b"");
    }

    #[test]
    fn ranges_are_zero_copy() {
        let msg = parse(NESTED, &Limits::default()).unwrap();
        for (i, p) in msg.parts.iter().enumerate() {
            assert!(p.span.start <= p.header.start && p.header.end <= p.body.start);
            assert!(p.body.end <= p.span.end && p.span.end <= NESTED.len());
            assert!(std::ptr::eq(
                msg.body(i).as_ptr(),
                NESTED[p.body.start..].as_ptr()
            ));
        }
    }
}
