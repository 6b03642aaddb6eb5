//! Fuzz target: `relay::imap::fuzz::session` (the IMAP server session driven as the
//! connection driver drives it, every event answered from an in-memory store; the same
//! function the unit tests run over `fuzz/corpus/imap`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::imap::fuzz::session(data);
});
