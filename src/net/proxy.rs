//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): a sans-IO,
//! incremental parser of the first bytes a load balancer sends, naming the client it
//! connected for.
//!
//! Role: on listeners that enable it (`smtp.proxy_protocol`, `pop3.proxy_protocol`), the
//! connection driver feeds the first bytes here until the header is `Complete`; the source
//! address then stands for the client in admission, relay control and logs, and the bytes
//! after the header are the protocol's first input.
//!
//! Exposure: bytes from a network peer, which the operator says is a trusted proxy. A client
//! that could send this header itself could claim any address, hence off by default.
//!
//! Standard: proxy-protocol.txt §2.1 (v1, text) and §2.2 (v2, binary); the version is told by
//! the signature. Accepted: v1 `TCP4`, `TCP6`, `UNKNOWN`; v2 `LOCAL` (any family) and `PROXY`
//! over `INET`/`INET6` with `STREAM`, or `UNSPEC` (§2.2: the receiver may then use the real
//! endpoint addresses). Everything else, UNIX and datagram families included, is refused.
//!
//! Limits: a v1 header is at most 107 bytes (§2.1); a v2 header at most [`V2_MAX`] bytes: its
//! addresses plus up to 500 bytes of TLVs, which are skipped unread (the spec allows 65535; no
//! TLV is used here, and a bound keeps a peer from holding a large buffer before admission).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// §2.1: "a 108-byte buffer": 107 bytes plus a terminating NUL in C.
pub const V1_MAX: usize = 107;
/// v2: 16 fixed bytes, 36 for an IPv6 address block, 500 of TLVs.
pub const V2_MAX: usize = 16 + 536;
/// The longest header [`parse`] may need before it decides.
pub const MAX_HEADER: usize = V2_MAX;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid beginning: read more (at most [`MAX_HEADER`] bytes in all).
    Incomplete,
    /// The header takes the first `consumed` bytes. `source` is the client the proxy connected
    /// for, `destination` the address it connected to; `None` for a v1 `UNKNOWN`, a v2
    /// `LOCAL` (the proxy's own health check) and v2 `UNSPEC`: no client is named, and the
    /// server decides what stands for it (`server::shard`: the unspecified address, unless
    /// `allow_proxy_local_trust` keeps the socket's).
    Complete {
        consumed: usize,
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    },
}

/// Why the bytes are not a header we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol signature")]
    NoSignature,
    #[error("PROXY v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("PROXY v2 command {0:#x} (only LOCAL and PROXY are defined)")]
    V2Command(u8),
    #[error("PROXY v2 header of {0} bytes, more than the {V2_MAX} accepted")]
    V2TooLong(usize),
    #[error("PROXY v2 family/protocol {0:#04x} not supported (only TCP over IPv4 or IPv6)")]
    V2Unsupported(u8),
    #[error("PROXY v2 address block of {got} bytes, {need} needed")]
    V2ShortAddresses { got: usize, need: usize },
}

/// Parses the start of a connection's input. Call again with more bytes on `Incomplete`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.first() == Some(&V2_SIGNATURE[0]) {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(ProxyError::NoSignature);
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyError::NoSignature);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let malformed = ProxyError::V1Malformed;
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(malformed("line does not end in CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| malformed("not ASCII"))?;
    if !line.is_ascii() || line.bytes().any(|b| b.is_ascii_control()) {
        return Err(malformed("not printable ASCII"));
    }
    let consumed = lf + 1;
    let mut fields = line.split(' ');
    // The prefix matched, so the first field is "PROXY".
    fields.next();
    let protocol = fields.next().ok_or(malformed("no protocol"))?;
    if protocol == "UNKNOWN" {
        // §2.1: whatever follows UNKNOWN up to the CRLF is ignored.
        return Ok(Parsed::Complete {
            consumed,
            source: None,
            destination: None,
        });
    }
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(malformed("not five fields separated by single spaces"));
    };
    let address = |text: &str| -> Result<IpAddr, ProxyError> {
        if v6 {
            text.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| malformed("bad IPv6 address"))
        } else {
            text.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| malformed("bad IPv4 address"))
        }
    };
    let source = SocketAddr::new(address(src)?, port(sport)?);
    let destination = SocketAddr::new(address(dst)?, port(dport)?);
    Ok(Parsed::Complete {
        consumed,
        source: Some(source),
        destination: Some(destination),
    })
}

/// A decimal port, digits only (no sign, no spaces), 0–65535.
fn port(text: &str) -> Result<u16, ProxyError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::V1Malformed("bad port"));
    }
    text.parse()
        .map_err(|_| ProxyError::V1Malformed("port out of range"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() > 12 {
        let version = buf[12] >> 4;
        if version != 2 {
            return Err(ProxyError::V2Version(version));
        }
        let command = buf[12] & 0x0f;
        if command > 1 {
            return Err(ProxyError::V2Command(command));
        }
    }
    let [_, _, _, _, _, _, _, _, _, _, _, _, command, family, hi, lo, ..] = *buf else {
        return Ok(Parsed::Incomplete);
    };
    let length = usize::from(u16::from_be_bytes([hi, lo]));
    let total = 16 + length;
    if total > V2_MAX {
        return Err(ProxyError::V2TooLong(total));
    }
    let Some(block) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete);
    };
    let local = Parsed::Complete {
        consumed: total,
        source: None,
        destination: None,
    };
    if command & 0x0f == 0 {
        // LOCAL: the proxy speaking for itself (health checks); the address block is ignored.
        return Ok(local);
    }
    let (source, destination) = match family {
        // UNSPEC: §2.2 leaves it to the receiver; the socket's own addresses stand.
        0x00 => return Ok(local),
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
        0x11 => {
            let b = need(block, 12)?;
            let ip = |at: usize| IpAddr::from([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            (
                SocketAddr::new(ip(0), u16::from_be_bytes([b[8], b[9]])),
                SocketAddr::new(ip(4), u16::from_be_bytes([b[10], b[11]])),
            )
        }
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
        0x21 => {
            let b = need(block, 36)?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[at..at + 16]);
                IpAddr::from(octets)
            };
            (
                SocketAddr::new(ip(0), u16::from_be_bytes([b[32], b[33]])),
                SocketAddr::new(ip(16), u16::from_be_bytes([b[34], b[35]])),
            )
        }
        other => return Err(ProxyError::V2Unsupported(other)),
    };
    Ok(Parsed::Complete {
        consumed: total,
        source: Some(source),
        destination: Some(destination),
    })
}

fn need(block: &[u8], need: usize) -> Result<&[u8], ProxyError> {
    block.get(..need).ok_or(ProxyError::V2ShortAddresses {
        got: block.len(),
        need,
    })
}

/// Encodes a v2 `PROXY` header for a TCP connection from `source` to `destination` (both of
/// one family), followed by `tlvs` (already encoded). For tests and the load generator.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    let mut block = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            out.push(0x21);
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            block.extend_from_slice(&v6(s).octets());
            block.extend_from_slice(&v6(d).octets());
        }
    }
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    block.extend_from_slice(tlvs);
    let length = u16::try_from(block.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&block);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(consumed: usize, src: &str, dst: &str) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Complete {
            consumed,
            source: Some(addr(src)),
            destination: Some(addr(dst)),
        })
    }

    fn unknown(consumed: usize) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Complete {
            consumed,
            source: None,
            destination: None,
        })
    }

    /// Feeding every prefix must say Incomplete until the whole header, then the same as the
    /// whole input at once.
    fn assert_incremental(input: &[u8]) {
        let whole = parse(input);
        let end = match whole {
            Ok(Parsed::Complete { consumed, .. }) => consumed,
            _ => input.len(),
        };
        for cut in 0..end {
            let part = parse(&input[..cut]);
            match (&part, &whole) {
                (Ok(Parsed::Incomplete), _) => {}
                // An error may show before the end, but only the same error.
                (Err(e), Err(w)) if e == w => {}
                _ => panic!("prefix {cut} of {input:?}: {part:?}, whole: {whole:?}"),
            }
        }
        assert_eq!(parse(&input[..end]), whole, "{input:?}");
    }

    #[test]
    fn v1_table() {
        let cases: &[(&[u8], Result<Parsed, ProxyError>)] = &[
            (
                b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n",
                complete(40, "192.0.2.7:5555", "127.0.0.1:25"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\nEHLO x\r\n",
                complete(40, "192.0.2.7:5555", "127.0.0.1:25"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n",
                complete(36, "[2001:db8::1]:0", "[::1]:65535"),
            ),
            (
                b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
                complete(37, "[::ffff:192.0.2.1]:1", "[::1]:2"),
            ),
            (b"PROXY UNKNOWN\r\n", unknown(15)),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
                unknown(59),
            ),
            (b"PROXY", Ok(Parsed::Incomplete)),
            (b"PROXY TCP4 1.2.3.4", Ok(Parsed::Incomplete)),
            (b"", Ok(Parsed::Incomplete)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &parse(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
            assert_incremental(input);
        }
    }

    #[test]
    fn v1_malformed() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\r\n",
            b"PROXY TCP4 192.0.2.7  127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25 \r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25 1\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 +5555 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 -1 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 099999\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 0x10 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1  25\r\n",
            b"PROXY TCP4 192.0.2 127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 192.0.2.256 127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 ::1 127.0.0.1 5555 25\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 5555 25\r\n",
            b"PROXY TCP6 [::1] ::1 5555 25\r\n",
            b"PROXY tcp4 192.0.2.7 127.0.0.1 5555 25\r\n",
            b"PROXY UDP4 192.0.2.7 127.0.0.1 5555 25\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 192.0.2.7\t127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\0\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 \xc3\xa925\r\n",
        ];
        for input in cases {
            let result = parse(input);
            assert!(
                matches!(result, Err(ProxyError::V1Malformed(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(input)
            );
            assert_incremental(input);
        }
    }

    #[test]
    fn not_a_proxy_header() {
        let cases: &[&[u8]] = &[
            b"EHLO client.example\r\n",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXYTCP4",
            b"PROXY\tTCP4 192.0.2.7 127.0.0.1 5555 25\r\n",
            b"\r\n\r\n\0\r\nQUIX\n",
            b"\r\nEHLO",
            b"\x16\x03\x01",
        ];
        for input in cases {
            assert_eq!(parse(input), Err(ProxyError::NoSignature), "{input:?}");
            assert_incremental(input);
        }
    }

    #[test]
    fn v1_length_bound() {
        // 107 bytes with the CRLF is the longest accepted; one more without an LF is refused.
        let mut longest = b"PROXY UNKNOWN ".to_vec();
        longest.resize(V1_MAX - 2, b'x');
        longest.extend_from_slice(b"\r\n");
        assert_eq!(parse(&longest), unknown(V1_MAX));
        let mut over = b"PROXY UNKNOWN ".to_vec();
        over.resize(V1_MAX - 1, b'x');
        over.extend_from_slice(b"\r\n");
        assert_eq!(parse(&over), Err(ProxyError::V1TooLong));
        assert_eq!(parse(&over[..V1_MAX - 1]), Ok(Parsed::Incomplete));
        assert_incremental(&over);
        let endless = vec![b'x'; 4096];
        let mut endless_header = b"PROXY TCP4 ".to_vec();
        endless_header.extend_from_slice(&endless);
        assert_eq!(parse(&endless_header), Err(ProxyError::V1TooLong));
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v2_table() {
        let ipv4 = [192, 0, 2, 7, 127, 0, 0, 1, 0x15, 0xb3, 0, 25];
        let mut ipv6 = Vec::new();
        ipv6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        ipv6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        ipv6.extend_from_slice(&[0xff, 0xff, 0, 0]);
        let mut ipv4_tlvs = ipv4.to_vec();
        ipv4_tlvs.extend_from_slice(&[0x04, 0, 3, b'a', b'b', b'c']);
        let cases: Vec<(Vec<u8>, Result<Parsed, ProxyError>)> = vec![
            (
                v2(0x21, 0x11, &ipv4),
                complete(28, "192.0.2.7:5555", "127.0.0.1:25"),
            ),
            (
                v2(0x21, 0x11, &ipv4_tlvs),
                complete(34, "192.0.2.7:5555", "127.0.0.1:25"),
            ),
            (
                v2(0x21, 0x21, &ipv6),
                complete(52, "[2001:db8::7]:65535", "[::1]:0"),
            ),
            // LOCAL: addresses ignored, whatever the family.
            (v2(0x20, 0x00, &[]), unknown(16)),
            (v2(0x20, 0x11, &ipv4), unknown(28)),
            (v2(0x20, 0x31, &[0; 216]), unknown(232)),
            (v2(0x20, 0x11, &[]), unknown(16)),
            // PROXY with UNSPEC: the socket's addresses stand.
            (v2(0x21, 0x00, &[]), unknown(16)),
            // Unsupported families and protocols.
            (v2(0x21, 0x12, &ipv4), Err(ProxyError::V2Unsupported(0x12))),
            (
                v2(0x21, 0x31, &[0; 216]),
                Err(ProxyError::V2Unsupported(0x31)),
            ),
            (v2(0x21, 0x10, &ipv4), Err(ProxyError::V2Unsupported(0x10))),
            (v2(0x21, 0x41, &ipv4), Err(ProxyError::V2Unsupported(0x41))),
            // Address blocks shorter than their family needs.
            (
                v2(0x21, 0x11, &ipv4[..11]),
                Err(ProxyError::V2ShortAddresses { got: 11, need: 12 }),
            ),
            (
                v2(0x21, 0x21, &ipv4),
                Err(ProxyError::V2ShortAddresses { got: 12, need: 36 }),
            ),
            // Version and command.
            (v2(0x11, 0x11, &ipv4), Err(ProxyError::V2Version(1))),
            (v2(0x31, 0x11, &ipv4), Err(ProxyError::V2Version(3))),
            (v2(0x22, 0x11, &ipv4), Err(ProxyError::V2Command(2))),
            (v2(0x2f, 0x11, &ipv4), Err(ProxyError::V2Command(0xf))),
            // Too long, refused from the length field alone.
            (
                v2(0x21, 0x11, &[0; V2_MAX - 15]),
                Err(ProxyError::V2TooLong(V2_MAX + 1)),
            ),
        ];
        for (input, expected) in &cases {
            assert_eq!(&parse(input), expected, "{input:?}");
            assert_incremental(input);
        }
        let longest = v2(0x21, 0x11, &[0; V2_MAX - 16]);
        assert!(matches!(
            parse(&longest),
            Ok(Parsed::Complete {
                consumed: V2_MAX,
                ..
            })
        ));
        // The length field is read before the block arrives.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyError::V2TooLong(16 + 65535)));
    }

    #[test]
    fn v2_keeps_what_follows() {
        let mut input = v2(0x21, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        input.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(parse(&input), complete(28, "10.0.0.1:1", "10.0.0.2:2"));
    }

    #[test]
    fn encode_v2_round_trips() {
        for (s, d) in [
            ("192.0.2.7:5555", "127.0.0.1:25"),
            ("[2001:db8::1]:1", "[::1]:25"),
        ] {
            let header = encode_v2(addr(s), addr(d), &[]);
            assert_eq!(parse(&header), complete(header.len(), s, d));
        }
        let header = encode_v2(addr("10.1.2.3:4"), addr("10.0.0.1:25"), &[0x05, 0, 1, 7]);
        assert_eq!(parse(&header), complete(32, "10.1.2.3:4", "10.0.0.1:25"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
                if let Ok(Parsed::Complete { consumed, .. }) = parse(&bytes) {
                    prop_assert!(consumed <= bytes.len() && consumed <= MAX_HEADER);
                }
            }

            #[test]
            fn signature_then_arbitrary_bytes_never_panic(
                v2 in any::<bool>(),
                tail in proptest::collection::vec(any::<u8>(), 0..700),
            ) {
                let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { V1_PREFIX.to_vec() };
                bytes.extend_from_slice(&tail);
                match parse(&bytes) {
                    Ok(Parsed::Complete { consumed, .. }) => {
                        prop_assert!(consumed <= bytes.len() && consumed <= MAX_HEADER)
                    }
                    Ok(Parsed::Incomplete) => prop_assert!(bytes.len() < MAX_HEADER),
                    Err(_) => {}
                }
            }

            #[test]
            fn v1_tcp4_round_trips(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in any::<u16>(), q in any::<u16>()) {
                let (s, d) = (SocketAddr::from((a, p)), SocketAddr::from((b, q)));
                let line = format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), p, q);
                prop_assert_eq!(parse(line.as_bytes()), Ok(Parsed::Complete {
                    consumed: line.len(), source: Some(s), destination: Some(d),
                }));
            }
        }
    }
}
