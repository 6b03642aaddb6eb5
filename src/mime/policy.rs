//! The content policy evaluated at end of DATA.
//!
//! Role: decide, before the 250 and before anything is queued, whether a message's structure
//! and attachments are acceptable: how many parts, how deep, which file extensions and media
//! types. A violation carries the reason for a `554 5.7.1` reply (RFC 3463: 5.7.1 "delivery
//! not authorized, message refused"); success returns the counts for the transaction log.
//!
//! What is checked, over every part of the tree (enclosed messages included):
//! - the part count and nesting depth (the parser's own limits, set from the policy);
//! - `blocked_extensions`: the last extension of every file name (Content-Disposition
//!   `filename`, else Content-Type `name`; RFC 2231 and RFC 2047 decoded), compared
//!   case-insensitively after removing the trailing dots and spaces Windows ignores
//!   (`evil.exe.` runs as `evil.exe`);
//! - `blocked_types`: the media type of every part, `type/subtype` or `type/*`,
//!   case-insensitive.
//!
//! Not checked (out of scope for structure policy): archive contents, content sniffing.
//!
//! Exposure: the reason text quotes a peer-supplied file name, so it is reduced to printable
//! ASCII and bounded ([`REASON_NAME_MAX`]) before it can reach a reply line.

use super::tree::{parse, PartKind};
use super::{LimitExceeded, Limits};

/// Characters of a file name or type quoted in a reason.
pub const REASON_NAME_MAX: usize = 64;

/// The configured content policy (`[policy]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Entities in the tree, the message itself included.
    pub max_parts: usize,
    /// Nesting levels below the top-level message.
    pub max_nesting: usize,
    /// File extensions refused, without or with the dot (`exe`, `.scr`), any case.
    pub blocked_extensions: Vec<String>,
    /// Media types refused: `type/subtype` or `type/*`, any case.
    pub blocked_types: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        let limits = Limits::default();
        Policy {
            max_parts: limits.max_parts,
            max_nesting: limits.max_depth,
            blocked_extensions: Vec::new(),
            blocked_types: Vec::new(),
        }
    }
}

/// What the transaction log records about an accepted message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageStats {
    /// Entities in the tree, the message itself and containers included.
    pub parts: usize,
    /// Leaf parts (the ones with content).
    pub leaves: usize,
    /// Leaves that are attachments (disposition `attachment` or a file name).
    pub attachments: usize,
    /// The deepest nesting level seen (0 for a single-part message).
    pub depth: usize,
    /// `Received:` fields in the top-level header: the hops the message has made, counted
    /// during this parse so the session's hop limit (mail loops) costs no second scan.
    pub received: usize,
}

/// Why a message is refused. [`PolicyViolation::reason`] is the text of the `554 5.7.1`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("too many MIME parts (limit {limit})")]
    TooManyParts { limit: usize },
    #[error("MIME nesting too deep (limit {limit})")]
    TooDeep { limit: usize },
    #[error("message header too large")]
    HeaderTooLarge,
    #[error("attachment type .{extension} not accepted ({filename})")]
    BlockedExtension { extension: String, filename: String },
    #[error("content type {media_type} not accepted")]
    BlockedType { media_type: String },
}

impl PolicyViolation {
    /// The reply text after `554 5.7.1 `: printable ASCII, bounded.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

impl From<LimitExceeded> for PolicyViolation {
    fn from(e: LimitExceeded) -> Self {
        match e {
            LimitExceeded::Depth { limit } => PolicyViolation::TooDeep { limit },
            LimitExceeded::Parts { limit } => PolicyViolation::TooManyParts { limit },
            LimitExceeded::HeaderBytes { .. }
            | LimitExceeded::HeaderFields { .. }
            | LimitExceeded::TotalHeaderFields { .. } => PolicyViolation::HeaderTooLarge,
        }
    }
}

/// Peer text made safe for a reply line: printable ASCII only (others become `?`), at most
/// [`REASON_NAME_MAX`] characters.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(REASON_NAME_MAX)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > REASON_NAME_MAX {
        out.push_str("...");
    }
    out
}

/// The extension Windows would run a file as: after the last dot, once trailing dots and
/// spaces are gone. `None` without a dot.
pub fn extension_of(filename: &str) -> Option<&str> {
    let name = filename.trim_end_matches(['.', ' ']);
    // Only the last path component counts ("a.exe/b" is a file "b" to a saver that honours
    // the slash; to one that does not, the name ends in "b" anyway).
    let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let dot = name.rfind('.')?;
    let ext = &name[dot + 1..];
    (!ext.is_empty()).then_some(ext)
}

impl Policy {
    /// The parser limits this policy implies (header limits keep their defaults).
    pub fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_nesting,
            max_parts: self.max_parts,
            ..Limits::default()
        }
    }

    fn extension_blocked(&self, ext: &str) -> bool {
        self.blocked_extensions
            .iter()
            .any(|b| b.trim_start_matches('.').eq_ignore_ascii_case(ext))
    }

    fn type_blocked(&self, essence: &str) -> bool {
        let (top, _) = essence.split_once('/').unwrap_or((essence, ""));
        self.blocked_types.iter().any(|b| {
            let b = b.trim();
            match b.strip_suffix("/*") {
                Some(btop) => btop.eq_ignore_ascii_case(top),
                None => b.eq_ignore_ascii_case(essence),
            }
        })
    }

    /// Checks a complete message (the spooled body bytes).
    pub fn check(&self, message: &[u8]) -> Result<MessageStats, PolicyViolation> {
        let msg = parse(message, &self.limits())?;
        let mut stats = MessageStats {
            parts: msg.parts.len(),
            received: msg
                .headers(0)
                .filter(|(name, _)| name.eq_ignore_ascii_case(b"received"))
                .count(),
            ..MessageStats::default()
        };
        for part in &msg.parts {
            stats.depth = stats.depth.max(part.depth);
            let essence = part.content_type.essence();
            if !self.blocked_types.is_empty() && self.type_blocked(&essence) {
                return Err(PolicyViolation::BlockedType {
                    media_type: sanitize(&essence),
                });
            }
            if part.kind != PartKind::Leaf {
                continue;
            }
            stats.leaves += 1;
            if part.is_attachment() {
                stats.attachments += 1;
            }
            // Both names are checked: a sender can put a harmless one in one place and the
            // one a client saves under in the other.
            let names = [
                part.disposition
                    .as_ref()
                    .and_then(|d| d.param("filename"))
                    .map(|v| v.text()),
                part.content_type.param("name").map(|v| v.text()),
            ];
            for name in names.into_iter().flatten() {
                if let Some(ext) = extension_of(&name) {
                    if self.extension_blocked(ext) {
                        return Err(PolicyViolation::BlockedExtension {
                            extension: sanitize(&ext.to_ascii_lowercase()),
                            filename: sanitize(&name),
                        });
                    }
                }
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_parts: 50,
            max_nesting: 4,
            blocked_extensions: vec!["exe".into(), ".SCR".into(), "js".into()],
            blocked_types: vec!["application/x-msdownload".into(), "audio/*".into()],
        }
    }

    fn with_attachment(headers: &str) -> Vec<u8> {
        format!(
            "Subject: t\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nbody\r\n--b\r\n{headers}\r\n\r\nAAAA\r\n--b--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn accepts_and_counts() {
        let stats = policy()
            .check(&with_attachment(
                "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=report.pdf",
            ))
            .unwrap();
        assert_eq!(
            stats,
            MessageStats {
                parts: 3,
                leaves: 2,
                attachments: 1,
                depth: 1,
                received: 0
            }
        );
        assert_eq!(policy().check(b"Subject: x\r\n\r\nhi").unwrap().parts, 1);
    }

    #[test]
    fn counts_the_received_fields_of_the_top_level_header_only() {
        let message = "Received: from a\r\n\tby b\r\nreceived: x\r\nRECEIVED:y\r\nX-Received: no\r\n\
            Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nReceived: inner\r\n\r\nx\r\n--b--\r\n";
        assert_eq!(policy().check(message.as_bytes()).unwrap().received, 3);
        assert_eq!(
            policy()
                .check(b"Subject: x\r\n\r\nReceived: body\r\n")
                .unwrap()
                .received,
            0
        );
    }

    #[test]
    fn blocked_extensions() {
        let cases = [
            "Content-Disposition: attachment; filename=\"invoice.pdf.EXE\"",
            "Content-Type: application/octet-stream; name=run.scr",
            "Content-Disposition: attachment; filename*=utf-8''evil.exe.%20.",
            "Content-Disposition: attachment; filename=\"=?utf-8?B?w6l2aWwuanM=?=\"",
            "Content-Disposition: inline; filename=a.txt\r\nContent-Type: text/plain; name=a.js",
        ];
        for headers in cases {
            let err = policy().check(&with_attachment(headers)).unwrap_err();
            assert!(
                matches!(err, PolicyViolation::BlockedExtension { .. }),
                "{headers}: {err:?}"
            );
        }
        let err = policy()
            .check(&with_attachment(
                "Content-Disposition: attachment; filename=\"x\u{7}\u{0}y.exe\"",
            ))
            .unwrap_err();
        assert!(err.reason().is_ascii());
        assert!(
            !err.reason().chars().any(|c| c.is_ascii_control()),
            "{}",
            err.reason()
        );
        // Not blocked: no extension, or an extension that merely contains a blocked one.
        for headers in [
            "Content-Disposition: attachment; filename=exe",
            "Content-Disposition: attachment; filename=a.exee",
        ] {
            assert!(
                policy().check(&with_attachment(headers)).is_ok(),
                "{headers}"
            );
        }
    }

    #[test]
    fn blocked_types() {
        for headers in [
            "Content-Type: Application/X-MSDownload",
            "Content-Type: audio/mpeg",
        ] {
            assert_eq!(
                policy()
                    .check(&with_attachment(headers))
                    .map_err(|e| e.to_string().contains("not accepted")),
                Err(true),
                "{headers}"
            );
        }
        assert!(policy()
            .check(&with_attachment("Content-Type: audiox/mpeg"))
            .is_ok());
    }

    #[test]
    fn limits_become_violations() {
        let mut deep = Vec::new();
        for i in 0..6 {
            deep.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        assert_eq!(
            policy().check(&deep),
            Err(PolicyViolation::TooDeep { limit: 4 })
        );
        let mut many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..100 {
            many.extend_from_slice(b"--b\r\n\r\nx\r\n");
        }
        let err = policy().check(&many).unwrap_err();
        assert_eq!(err, PolicyViolation::TooManyParts { limit: 50 });
        assert_eq!(err.reason(), "too many MIME parts (limit 50)");
    }

    #[test]
    fn attachments_inside_enclosed_messages_count() {
        let text = b"Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n--i\r\nContent-Disposition: attachment; filename=x.js\r\n\r\nalert(1)\r\n--i--\r\n";
        assert!(matches!(
            policy().check(text),
            Err(PolicyViolation::BlockedExtension { .. })
        ));
    }

    #[test]
    fn extensions() {
        assert_eq!(extension_of("a.exe"), Some("exe"));
        assert_eq!(extension_of("a.tar.gz"), Some("gz"));
        assert_eq!(extension_of("a.exe. . "), Some("exe"));
        assert_eq!(extension_of("noext"), None);
        assert_eq!(extension_of("trailing."), None);
        assert_eq!(extension_of("dir.d\\file"), None);
    }
}
