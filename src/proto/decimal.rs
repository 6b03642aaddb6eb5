//! Numbers in decimal straight into an output buffer: replies carry several per message
//! (SMTP status codes, IMAP sequence numbers, UIDs and literal lengths), and `format!` would
//! allocate a string for each.

/// Appends `n` in decimal.
pub fn push(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_written_as_format_would() {
        let mut out = Vec::new();
        for n in [0, 1, 9, 10, 99, 100, 4_294_967_295, 1 << 53, u64::MAX] {
            out.clear();
            super::push(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
