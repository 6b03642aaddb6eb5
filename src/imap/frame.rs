//! Command framing: splits client bytes into whole commands (lines and the literals they
//! announce) before imap-codec parses them, so that the limits hold before anything is parsed
//! and a rejected command is skipped exactly (its literal bytes are never read as commands).
//!
//! A literal is announced by `{n}`, `{n+}` (RFC 7888 LITERAL+) or `~{n}` (RFC 3516 literal8)
//! at the very end of a line; quoted strings cannot contain a line end, so a line ending in `}`
//! followed by CRLF can only be a literal announcement (or garbage the parser refuses later).

/// The bounds one connection's framer enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// One line (tag, arguments, literal announcement, line end).
    pub line_max: usize,
    /// One literal in a command other than APPEND.
    pub literal_max: u64,
    /// The whole of a command other than APPEND (lines and literals).
    pub command_max: usize,
    /// One APPEND message (RFC 7889 APPENDLIMIT); an APPEND command may hold this plus
    /// `command_max`.
    pub append_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            line_max: 8 * 1024,
            literal_max: 64 * 1024,
            command_max: 256 * 1024,
            append_max: 32 * 1024 * 1024,
        }
    }
}

/// Why a command was skipped without being parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("line too long")]
    LineTooLong,
    #[error("literal too large")]
    LiteralTooLarge,
    #[error("APPEND message larger than APPENDLIMIT")]
    AppendTooLarge,
    #[error("command too long")]
    CommandTooLong,
}

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Every byte given was consumed; more are needed.
    Need,
    /// A synchronising literal was accepted: the client waits for a continuation request.
    Continue,
    /// A whole command (all its lines and literals) is in [`Framer::command`].
    Command,
    /// A command was skipped. A rejected synchronising literal is answered at once (the
    /// client sends its data only after a continuation request, so nothing remains to skip);
    /// other rejections are reported once the whole command has gone by.
    Rejected { tag: Option<String>, why: Rejection },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Line,
    Literal { remaining: u64 },
}

/// The framer of one connection. Memory: at most `command_max` (or `append_max +
/// command_max` for APPEND) octets of one command, plus a fixed tail when skipping.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    /// Where the current line starts in `buf` (or, when skipping, how long it is so far).
    line_start: usize,
    state: State,
    /// The command is being skipped: nothing more is stored, only literal announcements are
    /// followed (from `tail`), and this is reported when it ends.
    skipping: Option<Rejection>,
    /// The command's tag, kept when skipping starts.
    skip_tag: Option<String>,
    /// The last octets of the line being skipped, enough to see a literal announcement.
    tail: Vec<u8>,
    skipped_line_len: usize,
    is_append: Option<bool>,
}

/// Enough for `~{4294967295+}\r\n`.
const TAIL: usize = 24;

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            line_start: 0,
            state: State::Line,
            skipping: None,
            skip_tag: None,
            tail: Vec::new(),
            skipped_line_len: 0,
            is_append: None,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The complete command after [`Step::Command`], until [`Framer::clear`].
    pub fn command(&self) -> &[u8] {
        &self.buf
    }

    /// Hands out the finished command and starts the next.
    pub fn take_command(&mut self) -> Vec<u8> {
        let command = std::mem::take(&mut self.buf);
        self.clear();
        command
    }

    /// Forgets the finished command and gives back its buffer's memory if it was large.
    pub fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > self.limits.line_max.saturating_mul(4) {
            self.buf = Vec::new();
        }
        self.line_start = 0;
        self.state = State::Line;
        self.skipping = None;
        self.skip_tag = None;
        self.tail.clear();
        self.skipped_line_len = 0;
        self.is_append = None;
    }

    /// Whether nothing of a command has been received.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.skipping.is_none() && self.state == State::Line
    }

    /// Consumes bytes from `input` until a step worth reporting; returns how many it
    /// consumed. After `Command` or `Rejected`, call [`Framer::clear`] before pushing more.
    pub fn push(&mut self, input: &[u8]) -> (usize, Step) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.state {
                State::Literal { remaining } => {
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if self.skipping.is_none() {
                        self.buf.extend_from_slice(&rest[..take]);
                    }
                    used += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        self.line_start = self.buf.len();
                        State::Line
                    } else {
                        State::Literal { remaining: left }
                    };
                }
                State::Line => {
                    let newline = memchr::memchr(b'\n', rest);
                    let take = newline.map_or(rest.len(), |i| i + 1);
                    used += take;
                    if let Some(step) = self.line_bytes(&rest[..take], newline.is_some()) {
                        return (used, step);
                    }
                }
            }
        }
        (used, Step::Need)
    }

    /// Takes part of a line (`complete`: through its LF).
    fn line_bytes(&mut self, part: &[u8], complete: bool) -> Option<Step> {
        if self.skipping.is_some() {
            self.skipped_line_len += part.len();
            self.tail.extend_from_slice(part);
            let cut = self.tail.len().saturating_sub(TAIL);
            self.tail.drain(..cut);
            if !complete {
                return None;
            }
            let announced = literal_announcement(&self.tail);
            self.tail.clear();
            self.skipped_line_len = 0;
            return match announced {
                // Skipping a synchronising literal: the client waits for a continuation we
                // never send, so the command ends here.
                Some((_, false)) | None => self.finish_skip(),
                Some((n, true)) => {
                    self.state = State::Literal { remaining: n };
                    None
                }
            };
        }
        let line_len = self.buf.len() - self.line_start + part.len();
        if line_len > self.limits.line_max {
            return self.start_skip(Rejection::LineTooLong, part, complete);
        }
        if self.buf.len() + part.len() > self.command_max() {
            return self.start_skip(Rejection::CommandTooLong, part, complete);
        }
        self.buf.extend_from_slice(part);
        if !complete {
            return None;
        }
        let line = &self.buf[self.line_start..];
        let Some((n, non_sync)) = literal_announcement(line) else {
            return Some(Step::Command);
        };
        let is_append = *self
            .is_append
            .get_or_insert_with(|| command_name_is(&self.buf, b"APPEND"));
        let over = if is_append {
            (n > self.limits.append_max).then_some(Rejection::AppendTooLarge)
        } else if n > self.limits.literal_max {
            Some(Rejection::LiteralTooLarge)
        } else {
            None
        };
        let over = over.or_else(|| {
            let total = (self.buf.len() as u64).saturating_add(n);
            (total > self.command_max() as u64).then_some(Rejection::CommandTooLong)
        });
        match (over, non_sync) {
            (Some(why), false) => {
                let tag = tag_of(&self.buf);
                Some(Step::Rejected { tag, why })
            }
            (Some(why), true) => {
                self.skip_tag = tag_of(&self.buf);
                self.skipping = Some(why);
                self.buf.clear();
                self.state = State::Literal { remaining: n };
                None
            }
            (None, non_sync) => {
                self.state = State::Literal { remaining: n };
                self.line_start = self.buf.len();
                if n == 0 {
                    self.state = State::Line;
                }
                (!non_sync).then_some(Step::Continue)
            }
        }
    }

    fn command_max(&self) -> usize {
        if self.is_append == Some(true) {
            let append = usize::try_from(self.limits.append_max).unwrap_or(usize::MAX);
            self.limits.command_max.saturating_add(append)
        } else {
            self.limits.command_max
        }
    }

    fn start_skip(&mut self, why: Rejection, part: &[u8], complete: bool) -> Option<Step> {
        self.skip_tag = tag_of(&self.buf).or_else(|| tag_of(part));
        self.skipping = Some(why);
        self.tail = self.buf[self.line_start..].to_vec();
        self.buf.clear();
        self.line_start = 0;
        self.line_bytes(part, complete)
    }

    fn finish_skip(&mut self) -> Option<Step> {
        let why = self.skipping.take()?;
        Some(Step::Rejected {
            tag: self.skip_tag.take(),
            why,
        })
    }
}

/// `{n}`, `{n+}` or `~{n}` and the line end closing `line`: the length and whether it is
/// non-synchronising.
fn literal_announcement(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = memchr::memrchr(b'{', inner)?;
    let digits = &inner[open + 1..];
    let (digits, non_sync) = match digits.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (digits, false),
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    (n <= u64::from(u32::MAX)).then_some((n, non_sync))
}

/// The tag of a command (its first word), if it is a valid tag.
pub fn tag_of(command: &[u8]) -> Option<String> {
    let end = command
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(command.len());
    let tag = &command[..end];
    let valid = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b));
    valid.then(|| String::from_utf8_lossy(tag).into_owned())
}

/// Whether the command's second word is `name` (case-insensitive).
fn command_name_is(command: &[u8], name: &[u8]) -> bool {
    let mut words = command.split(|&b| b == b' ');
    let _tag = words.next();
    words
        .next()
        .is_some_and(|word| word.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits {
            line_max: 32,
            literal_max: 10,
            command_max: 64,
            append_max: 40,
        }
    }

    #[test]
    fn announcements() {
        assert_eq!(literal_announcement(b"a LOGIN {5}\r\n"), Some((5, false)));
        assert_eq!(literal_announcement(b"a LOGIN {5+}\r\n"), Some((5, true)));
        assert_eq!(
            literal_announcement(b"a APPEND x ~{7}\r\n"),
            Some((7, false))
        );
        assert_eq!(literal_announcement(b"a LOGIN {}\r\n"), None);
        assert_eq!(literal_announcement(b"a LOGIN {5x}\r\n"), None);
        assert_eq!(literal_announcement(b"a LOGIN {99999999999}\r\n"), None);
        assert_eq!(literal_announcement(b"a NOOP\r\n"), None);
    }

    #[test]
    fn sync_literal_asks_to_continue_then_completes() {
        let mut f = Framer::new(small());
        let input = b"a LOGIN {3}\r\nbob x\r\nb NOOP\r\n";
        let (n, step) = f.push(input);
        assert_eq!((n, step), (13, Step::Continue));
        let (m, step) = f.push(&input[n..]);
        assert_eq!(step, Step::Command);
        assert_eq!(f.command(), b"a LOGIN {3}\r\nbob x\r\n");
        f.clear();
        let (_, step) = f.push(&input[n + m..]);
        assert_eq!(step, Step::Command);
        assert_eq!(f.command(), b"b NOOP\r\n");
    }

    #[test]
    fn literal_data_is_never_a_command() {
        let mut f = Framer::new(small());
        let (_, step) = f.push(b"a LOGIN {7+}\r\nb NOOP\n x\r\n");
        assert_eq!(step, Step::Command);
        assert_eq!(f.command(), b"a LOGIN {7+}\r\nb NOOP\n x\r\n");
    }

    #[test]
    fn long_line_is_skipped_to_its_end() {
        let mut f = Framer::new(small());
        let long = [b'x'; 100];
        let (n, step) = f.push(b"t1 NOOP ");
        assert_eq!((n, step), (8, Step::Need));
        let (_, step) = f.push(&long);
        assert_eq!(step, Step::Need);
        let (n, step) = f.push(b"\r\nt2 NOOP\r\n");
        assert_eq!(
            step,
            Step::Rejected {
                tag: Some("t1".into()),
                why: Rejection::LineTooLong
            }
        );
        assert_eq!(n, 2);
        f.clear();
        assert_eq!(f.push(b"t2 NOOP\r\n").1, Step::Command);
    }

    #[test]
    fn oversized_non_sync_literal_is_skipped_with_its_data() {
        let mut f = Framer::new(small());
        let mut input = b"a LOGIN {20+}\r\n".to_vec();
        input.extend_from_slice(b"b NOOP\r\nc NOOP\r\nxxxx");
        input.extend_from_slice(b" pw\r\nd NOOP\r\n");
        let (n, step) = f.push(&input);
        assert_eq!(
            step,
            Step::Rejected {
                tag: Some("a".into()),
                why: Rejection::LiteralTooLarge
            }
        );
        f.clear();
        assert_eq!(f.push(&input[n..]).1, Step::Command);
        assert_eq!(f.command(), b"d NOOP\r\n");
    }

    #[test]
    fn oversized_sync_literal_is_refused_at_once() {
        let mut f = Framer::new(small());
        let (n, step) = f.push(b"a LOGIN {11}\r\nb NOOP\r\n");
        assert_eq!(n, 14);
        assert_eq!(
            step,
            Step::Rejected {
                tag: Some("a".into()),
                why: Rejection::LiteralTooLarge
            }
        );
    }

    #[test]
    fn append_has_its_own_limit() {
        let mut f = Framer::new(small());
        assert_eq!(f.push(b"a APPEND x {40}\r\n").1, Step::Continue);
        f.clear();
        assert_eq!(
            f.push(b"a APPEND x {41}\r\n").1,
            Step::Rejected {
                tag: Some("a".into()),
                why: Rejection::AppendTooLarge
            }
        );
    }

    #[test]
    fn command_limit_counts_literals() {
        let mut f = Framer::new(small());
        let mut input = Vec::new();
        for _ in 0..8 {
            input.extend_from_slice(b"{10+}\r\n0123456789");
        }
        let mut all = b"a X ".to_vec();
        all.extend_from_slice(&input);
        all.extend_from_slice(b"\r\n");
        let (n, step) = f.push(&all);
        assert_eq!(n, all.len());
        assert_eq!(
            step,
            Step::Rejected {
                tag: Some("a".into()),
                why: Rejection::CommandTooLong
            }
        );
    }
}
