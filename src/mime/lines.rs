//! Counting lines: BODYSTRUCTURE gives every text part's line count, so each message stored
//! for a mailbox is counted at delivery. A byte-at-a-time `filter().count()` (and a 32-lane
//! byte loop, which the compiler gathered byte by byte) was an eighth of the CPU of local
//! delivery; this counts eight octets per step in a `u64` (SWAR), which needs no CPU feature
//! beyond the x86-64 baseline: 0.7 µs for 10 KiB against 5–6 µs.

const ONES: u64 = 0x0101_0101_0101_0101;
const LF: u64 = ONES * b'\n' as u64;
const LOW7: u64 = ONES * 0x7f;
const EVEN_BYTES: u64 = 0x00ff_00ff_00ff_00ff;
/// Words summed into byte lanes before the lanes (each at most 255) are added up.
const WORDS_PER_SUM: usize = 255;

/// The number of LF octets in `bytes` (CRLF and bare LF both end a line).
pub fn count(bytes: &[u8]) -> usize {
    let (words, rest) = bytes.as_chunks::<8>();
    let mut total = 0;
    for block in words.chunks(WORDS_PER_SUM) {
        let mut lanes = 0u64;
        for word in block {
            let x = u64::from_ne_bytes(*word) ^ LF;
            // 0x80 in every byte of `x` that is zero (an LF in the input), 0 elsewhere; no
            // carry crosses a byte because the high bits are masked off before the add.
            let zero = !(((x & LOW7) + LOW7) | x | LOW7);
            lanes += zero >> 7;
        }
        let pairs = (lanes & EVEN_BYTES) + ((lanes >> 8) & EVEN_BYTES);
        total += (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as usize;
    }
    total + rest.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(bytes: &[u8]) -> usize {
        bytes.iter().filter(|&&b| b == b'\n').count()
    }

    #[test]
    fn counts_like_the_obvious_loop_at_every_length_and_alignment() {
        // Around the 8-octet words and the 2,040-octet sums, every alignment.
        let mut text = Vec::new();
        for i in 0..20_000u32 {
            text.push(if i % 7 == 0 || i % 31 == 3 {
                b'\n'
            } else {
                b'a'
            });
        }
        for len in (0..70).chain(2_000..2_100).chain([4_080, 4_081, 19_960]) {
            for start in [0, 1, 5, 31] {
                let s = &text[start..start + len];
                assert_eq!(count(s), slow(s), "len {len} start {start}");
            }
        }
        let all = vec![b'\n'; 3 * 8 * WORDS_PER_SUM + 17];
        assert_eq!(
            count(&all),
            all.len(),
            "255 per lane per sum never overflows"
        );
        // Bytes that differ from LF only in the high bit, or are 0x0A plus a carry, are not LF.
        let near: Vec<u8> = [0x8a, 0x0b, 0x09, 0x00, 0xff, 0x1a].repeat(100);
        assert_eq!(count(&near), 0);
        assert_eq!(count(&vec![b'\r'; 1000]), 0);
        assert_eq!(count(b""), 0);
    }
}
