//! Our relaxed body canonicalisation (`relay::sender_auth::body_hash`, RFC 6376 §3.4.4)
//! compared with dkimpy's (Debian python3-dkim, `dkim.canonicalization.Relaxed`, through
//! tests/py/dkim_canonical.py), a canonicaliser no one here wrote, on bodies SMTP can carry
//! (CRLF line ends, no bare CR or LF, the last line ended): the RFC's example, bodies
//! ending in whitespace-only lines (where mail-auth 0.13.3 and our code before this test
//! kept CRLFs; seen failing on that code), and random bodies of text, spaces, tabs, empty
//! and whitespace-only lines, control and 8-bit bytes.
//!
//! Known difference, not tested: a last line without CRLF keeps its trailing whitespace in
//! dkimpy and not here (SMTP bodies always end in CRLF, RFC 5321 §4.1.1.4).

use std::io::Write;
use std::process::{Command, Stdio};

use mail_auth::common::headers::Writable;
use relay::sender_auth::body_hash::RelaxedBody;

fn ours(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    RelaxedBody(body).write(&mut out);
    out
}

/// dkimpy's canonical form of each body, in one run of Python.
fn dkimpys(bodies: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut input = Vec::new();
    for body in bodies {
        input.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        input.extend_from_slice(body);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/dkim_canonical.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (Debian python3-dkim)");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write bodies");
    assert!(output.status.success(), "dkim_canonical.py: {output:?}");
    let mut forms = Vec::new();
    let mut rest = &output.stdout[..];
    while rest.len() >= 4 {
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        forms.push(rest[4..4 + length].to_vec());
        rest = &rest[4 + length..];
    }
    assert_eq!(forms.len(), bodies.len(), "one answer per body");
    forms
}

fn shown(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

fn same_as_dkimpy(bodies: &[Vec<u8>]) {
    let theirs = dkimpys(bodies);
    let mut differ = Vec::new();
    for (body, theirs) in bodies.iter().zip(&theirs) {
        let ours = ours(body);
        if &ours != theirs {
            differ.push(format!(
                "body {}: ours {}, dkimpy {}",
                shown(body),
                shown(&ours),
                shown(theirs)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} bodies differ, first ones:\n{}",
        differ.len(),
        bodies.len(),
        differ[..differ.len().min(10)].join("\n")
    );
}

#[test]
fn whitespace_only_lines_at_the_end_as_dkimpy_reads_them() {
    let bodies: Vec<Vec<u8>> = [
        &b" C \r\nD \t E\r\n\r\n\r\n"[..],
        b"text\r\n \r\n",
        b"text\r\n\t\r\n",
        b"text\r\n \r\n\t\r\n  \t \r\n",
        b"text\r\n\r\n \r\n\r\n",
        b"text \t\r\n\t \r\n",
        b"a\r\n\r\nb\r\n   \r\n",
        b" \r\n",
        b"\t\r\n \r\n\r\n",
        b"\r\n",
        b"",
        b"inside\r\n \t \r\nthe body\r\n",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    same_as_dkimpy(&bodies);
}

#[test]
fn random_bodies_as_dkimpy_reads_them() {
    // SplitMix64: deterministic, so a failure repeats.
    let mut state = 0xd1c1_u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let pieces: [&[u8]; 12] = [
        b"a",
        b"word",
        b"The quick brown fox",
        b" ",
        b"  ",
        b"\t",
        b" \t ",
        b"\r\n",
        b"\r\n",
        b" \r\n",
        b"\x0c",
        b"\xc3\xa9",
    ];
    let mut bodies = Vec::new();
    for round in 0..5_000 {
        let count = (next() % if round % 5 == 0 { 120 } else { 16 }) as usize;
        let mut body: Vec<u8> = (0..count)
            .flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].iter())
            .copied()
            .collect();
        // Every line ended, as SMTP carries a body.
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        bodies.push(body);
    }
    same_as_dkimpy(&bodies);
}
