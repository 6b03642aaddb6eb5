//! Can this process use io_uring? Asked once at start, answered with a cause an operator can
//! act on.
//!
//! Docker's default seccomp profile has blocked `io_uring_setup` since 2023, and kernels can
//! disable it with `kernel.io_uring_disabled` (1: only for a group, 2: for everyone), so the
//! relay must not assume it. The probe creates a tiny ring and checks the opcodes the
//! connection layer submits.

use std::fmt;
use std::io;

use io_uring::{opcode, IoUring, Probe};

/// Why io_uring cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringUnavailable {
    /// `kernel.io_uring_disabled` is set.
    DisabledBySysctl(u8),
    /// `io_uring_setup` returned EPERM without the sysctl: a seccomp filter (container
    /// runtime default profiles) or an LSM policy.
    Denied,
    /// The kernel has no io_uring (ENOSYS): older than 5.1 or built without it.
    NotInKernel,
    /// Ring creation failed for another reason (e.g. ENOMEM from RLIMIT_MEMLOCK).
    SetupFailed(String),
    /// The ring works but lacks an opcode the connection layer needs (kernel too old).
    MissingOpcode(&'static str),
}

impl fmt::Display for UringUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UringUnavailable::DisabledBySysctl(level) => write!(
                f,
                "io_uring is disabled by sysctl kernel.io_uring_disabled={level} \
                 (set it to 0 to enable; see tuning/kernel)"
            ),
            UringUnavailable::Denied => f.write_str(
                "io_uring_setup was denied (EPERM): a seccomp profile (e.g. Docker's default) \
                 or security policy blocks io_uring",
            ),
            UringUnavailable::NotInKernel => {
                f.write_str("this kernel has no io_uring (ENOSYS): Linux 5.6 or newer is needed")
            }
            UringUnavailable::SetupFailed(err) => write!(f, "io_uring setup failed: {err}"),
            UringUnavailable::MissingOpcode(op) => write!(
                f,
                "this kernel's io_uring lacks {op}: Linux 5.6 or newer is needed"
            ),
        }
    }
}

/// The opcodes tokio-uring submits for our sockets (accept, read, write, close).
const NEEDED: [(u8, &str); 4] = [
    (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
    (opcode::Read::CODE, "IORING_OP_READ"),
    (opcode::Write::CODE, "IORING_OP_WRITE"),
    (opcode::Close::CODE, "IORING_OP_CLOSE"),
];

/// Tries io_uring for real and reports the first reason it cannot be used.
pub fn probe() -> Result<(), UringUnavailable> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|text| text.trim().parse::<u8>().ok());
    let ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(err) => return Err(classify(err, sysctl)),
    };
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| UringUnavailable::SetupFailed(format!("IORING_REGISTER_PROBE: {e}")))?;
    for (code, name) in NEEDED {
        if !probe.is_supported(code) {
            return Err(UringUnavailable::MissingOpcode(name));
        }
    }
    Ok(())
}

fn classify(err: io::Error, sysctl: Option<u8>) -> UringUnavailable {
    match (err.raw_os_error(), sysctl) {
        (Some(libc::EPERM), Some(level)) if level > 0 => UringUnavailable::DisabledBySysctl(level),
        (Some(libc::EPERM), _) => UringUnavailable::Denied,
        (Some(libc::ENOSYS), _) => UringUnavailable::NotInKernel,
        _ => UringUnavailable::SetupFailed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_classified() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            classify(eperm(), Some(2)),
            UringUnavailable::DisabledBySysctl(2)
        );
        assert_eq!(classify(eperm(), Some(0)), UringUnavailable::Denied);
        assert_eq!(classify(eperm(), None), UringUnavailable::Denied);
        assert_eq!(
            classify(io::Error::from_raw_os_error(libc::ENOSYS), None),
            UringUnavailable::NotInKernel
        );
        assert!(matches!(
            classify(io::Error::from_raw_os_error(libc::ENOMEM), Some(0)),
            UringUnavailable::SetupFailed(_)
        ));
    }

    #[test]
    fn every_cause_says_what_to_do() {
        for cause in [
            UringUnavailable::DisabledBySysctl(2),
            UringUnavailable::Denied,
            UringUnavailable::NotInKernel,
            UringUnavailable::MissingOpcode("IORING_OP_ACCEPT"),
        ] {
            let text = cause.to_string();
            assert!(text.contains("io_uring"), "{text}");
        }
    }

    /// The development and CI machines run Linux 6.18 with io_uring enabled;
    /// if this fails there, the integration tests' "uring" runs would silently be epoll.
    #[test]
    fn io_uring_works_on_this_machine() {
        if std::env::var_os("RELAY_EXPECT_NO_URING").is_some() {
            return;
        }
        assert_eq!(probe(), Ok(()));
    }
}
