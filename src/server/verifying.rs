//! The sender checks of arriving mail at the end of DATA: who is checked, on which
//! resolver, and what the result does to the transaction (see `sender_auth::verify` for
//! the checks and `sender_auth::policy` for the decision).

use std::cell::{Cell, OnceCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use super::shard::ShardContext;
use crate::config::Config;
use crate::logsafe::Safe;
use crate::mailbox::Filing;
use crate::sender_auth::cache::{self, Caches};
use crate::sender_auth::policy::{self, Action, Refusal};
use crate::sender_auth::report::Recorder;
use crate::sender_auth::verify::{self, Peer, Results, VerifySettings};
use crate::sender_auth::{authres, junk_mark};
use crate::smtp::{Submission, SubmitError};

/// What every shard's checks share: the settings and the DMARC report recorder.
pub struct VerifyingShared {
    pub reports: Arc<Recorder>,
    pub settings: VerifySettings,
    dns_servers: Vec<SocketAddr>,
}

impl VerifyingShared {
    pub fn new(config: &Config, reports: Arc<Recorder>) -> Arc<VerifyingShared> {
        Arc::new(VerifyingShared {
            reports,
            settings: config.verify.settings(),
            dns_servers: config.server.dns_servers.clone(),
        })
    }
}

/// How long a core waits before building its resolver again after a failure.
const RESOLVER_RETRY: Duration = Duration::from_secs(60);

/// A shard's checks (its resolver is built on the shard's runtime).
pub struct Verifying {
    pub shared: Arc<VerifyingShared>,
    /// Built on first use, on the core's runtime (hickory spawns its tasks there); one
    /// hickory cache for every check of this core.
    authenticator: OnceCell<mail_auth::MessageAuthenticator>,
    retry_at: Cell<Option<Instant>>,
    /// Parsed SPF, DKIM key and DMARC records of this core, kept for their DNS TTL.
    caches: Caches,
    /// The `pct` sample's state: a per-core generator seeded once, because the sample needs
    /// no secrecy and a getrandom call per message showed in the profile.
    sample: Cell<u64>,
}

impl Verifying {
    pub fn for_shard(shared: &Arc<VerifyingShared>) -> Verifying {
        Verifying {
            shared: Arc::clone(shared),
            authenticator: OnceCell::new(),
            retry_at: Cell::new(None),
            caches: Caches::system(cache::DEFAULT_CAPACITY),
            sample: Cell::new(rand_core::OsRng.next_u64()),
        }
    }

    /// Uniform in 0..100 (the `pct` roll).
    fn roll(&self) -> u8 {
        let (next, value) = splitmix64(self.sample.get());
        self.sample.set(next);
        percent(value)
    }

    fn authenticator(&self) -> Option<&mail_auth::MessageAuthenticator> {
        if let Some(auth) = self.authenticator.get() {
            return Some(auth);
        }
        let now = Instant::now();
        if self.retry_at.get().is_some_and(|at| now < at) {
            return None;
        }
        match crate::net::dns::SystemResolver::new(&self.shared.dns_servers) {
            Ok(resolver) => Some(
                self.authenticator
                    .get_or_init(|| mail_auth::MessageAuthenticator(resolver.hickory().clone())),
            ),
            Err(error) => {
                tracing::warn!(%error, retry = ?RESOLVER_RETRY, "no DNS resolver for the sender checks; they fail temporarily until it can be built");
                self.retry_at.set(Some(now + RESOLVER_RETRY));
                None
            }
        }
    }
}

/// What the checks let through: the header fields to add above our Received field, and
/// where the local copies are filed.
#[derive(Debug, Default)]
pub struct Checked {
    pub headers: Vec<u8>,
    pub filing: Filing,
}

/// Checks `submission`: what to add and where to file it, or the reply that refuses it.
/// Removes forged `Authentication-Results` fields from its body.
pub async fn check(
    ctx: &ShardContext,
    submission: &mut Submission,
    peer: SocketAddr,
) -> Result<Checked, SubmitError> {
    let verifying = &ctx.verifying;
    let settings = &verifying.shared.settings;
    // Our own clients' mail is signed, not checked.
    if !settings.enabled || submission.authenticated.is_some() || submission.relay_client {
        return Ok(Checked::default());
    }
    let authserv_id = settings.authserv_id.as_deref().unwrap_or(&ctx.hostname);
    let who = Peer {
        ip: peer.ip().to_canonical(),
        helo: &submission.origin.helo,
        mail_from: &submission.envelope.reverse_path,
        host: &ctx.hostname,
    };
    let results = match verifying.authenticator() {
        Some(auth) => {
            verify::check(auth, &verifying.caches, settings, &who, &submission.body).await
        }
        None => Results::unavailable(&who, settings.arc, false),
    };
    let roll = verifying.roll();
    let action = policy::decide(&settings.policy, &results.verdicts(roll));
    let header = results.header(authserv_id);
    // A deferred message comes back and is counted then. Only a record that asks for
    // reports (`rua=`) is counted, so the observation is built only for one.
    let reported = results
        .published
        .as_ref()
        .is_some_and(|published| !published.rua.is_empty());
    if reported && action != Action::Defer {
        if let Some(observation) = results.observation(&who, action) {
            verifying.shared.reports.record(observation);
        }
    }
    // An accepted message's outcome is in its transaction line and stored header, so its
    // line is debug (one info line per message cost measurable ingest); a refusal or a
    // deferral stays info.
    macro_rules! checked {
        ($level:ident) => {
            tracing::$level!(
                target: "relay::verify",
                client = %who.ip,
                sender = %Safe(who.mail_from),
                helo = %Safe(who.helo),
                spf = authres::keyword(results.spf()),
                dmarc = ?results.dmarc,
                header_from = %Safe(&results.header_from),
                action = ?action,
                "sender checked"
            )
        };
    }
    if action == Action::Accept {
        checked!(debug);
    } else {
        checked!(info);
    }
    let mut headers = header.into_bytes();
    let filing = match action {
        Action::Accept => Filing::Inbox,
        Action::Junk(why) => {
            headers.extend_from_slice(junk_mark::field(why).as_bytes());
            Filing::Junk
        }
        Action::Defer => return Err(SubmitError::SenderCheckUnavailable),
        Action::Refuse(Refusal::Dmarc) => return Err(SubmitError::DmarcRejected),
        Action::Refuse(Refusal::Spf) => return Err(SubmitError::SpfRejected),
    };
    if let Some(kept) = authres::remove_ours(&submission.body, authserv_id) {
        submission.body = kept;
    }
    Ok(Checked { headers, filing })
}

/// 0..100 from a random word: the top 32 bits times 100, shifted down (multiply-shift,
/// no modulo bias worth speaking of for a percentage sample).
fn percent(value: u64) -> u8 {
    (((value >> 32) * 100) >> 32) as u8
}

/// SplitMix64 (Steele, Lea, Flood 2014): (next state, output).
fn splitmix64(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (next, z ^ (z >> 31))
}

#[cfg(test)]
mod tests {
    use super::{percent, splitmix64};

    #[test]
    fn the_sample_roll_covers_0_to_99_evenly() {
        let mut state = 42;
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            let (next, value) = splitmix64(state);
            state = next;
            let roll = usize::from(percent(value));
            counts[roll] += 1;
        }
        // 1,000 expected per bucket; a broken mapping leaves buckets empty or doubled.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
