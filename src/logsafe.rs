//! Peer text in log lines: [`Safe`] shows any value as bounded printable ASCII, so a name,
//! address or reply a peer chose can neither forge a log line (a newline followed by a
//! fake entry a log watcher would act on) nor reach a terminal as an escape sequence.
//!
//! Printable ASCII passes unchanged except the backslash, which is doubled; `\n`, `\r` and
//! `\t` become those two-character escapes; every other character becomes `\u{..}`. The
//! escaped text is cut at [`SHOWN_MAX`] bytes and marked with `...` (a peer's 1 MB "name"
//! is not copied into every line about it).

use std::fmt::{self, Write};

/// At most this many bytes of escaped text are shown per value.
pub const SHOWN_MAX: usize = 256;

/// A value shown escaped and bounded; use it for every field a peer controls:
/// `tracing::info!(user = %Safe(&name), ...)`.
#[derive(Debug, Clone, Copy)]
pub struct Safe<T>(pub T);

impl<T: fmt::Display> fmt::Display for Safe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut escaper = Escaper {
            out: f,
            shown: 0,
            cut: false,
        };
        // An error here is our own stop at the bound (or the sink's, seen again below).
        let _ = write!(escaper, "{}", self.0);
        if escaper.cut {
            f.write_str("...")?;
        }
        Ok(())
    }
}

struct Escaper<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    shown: usize,
    cut: bool,
}

impl Write for Escaper<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut escaped = [0u8; 12];
        for c in text.chars() {
            let piece: &str = match c {
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                ' '..='~' => c.encode_utf8(&mut escaped),
                _ => {
                    let mut cursor = &mut escaped[..];
                    // 12 bytes hold the longest, `\u{10ffff}`.
                    std::io::Write::write_fmt(&mut cursor, format_args!("\\u{{{:x}}}", c as u32))
                        .map_err(|_| fmt::Error)?;
                    let written = 12 - cursor.len();
                    std::str::from_utf8(&escaped[..written]).map_err(|_| fmt::Error)?
                }
            };
            if self.shown + piece.len() > SHOWN_MAX {
                self.cut = true;
                return Err(fmt::Error);
            }
            self.shown += piece.len();
            self.out.write_str(piece)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(value: impl fmt::Display) -> String {
        Safe(value).to_string()
    }

    #[test]
    fn printable_ascii_passes_and_the_rest_is_escaped() {
        assert_eq!(shown("alice@example.test"), "alice@example.test");
        assert_eq!(
            shown("x\nrelay: auth ok user=root\r\t"),
            "x\\nrelay: auth ok user=root\\r\\t"
        );
        assert_eq!(shown("\x1b[2J\x07"), "\\u{1b}[2J\\u{7}");
        assert_eq!(
            shown("a\\nb"),
            "a\\\\nb",
            "a literal backslash-n is not a newline"
        );
        assert_eq!(
            shown("é\u{202e}\u{10ffff}\0"),
            "\\u{e9}\\u{202e}\\u{10ffff}\\u{0}"
        );
    }

    #[test]
    fn long_values_are_cut_and_marked() {
        let long = "a".repeat(10_000);
        let out = shown(&long);
        assert_eq!(out.len(), SHOWN_MAX + 3);
        assert!(out.ends_with("..."));
        // An escape is never split at the cut.
        let out = shown("\u{1}".repeat(100));
        assert!(out.ends_with("\\u{1}..."), "{out}");
        assert!(out.len() <= SHOWN_MAX + 3);
        assert_eq!(shown("a".repeat(SHOWN_MAX)), "a".repeat(SHOWN_MAX));
    }

    #[test]
    fn any_display_value_is_escaped() {
        struct Reply;
        impl fmt::Display for Reply {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "550 no\r\n{}", 7)
            }
        }
        assert_eq!(shown(Reply), "550 no\\r\\n7");
    }
}
