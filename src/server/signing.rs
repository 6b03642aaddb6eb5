//! DKIM signatures on our own outbound mail, at ingest.
//!
//! Signed: mail from an authenticated client or a relay-network client whose From domain
//! has a key (`sender_auth::sign`). Never mail from outside: an alias that forwards a
//! stranger's message must not lend it our signature.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::shard::ShardContext;
use crate::config::Config;
use crate::sender_auth::sign::Signer;
use crate::smtp::client::Resign;
use crate::smtp::Submission;

/// The signing keys every shard shares.
#[derive(Debug)]
pub struct SigningShared {
    signer: Arc<Signer>,
    /// Where `[dkim]` is read again on SIGHUP (`None`: the embedded default config).
    config_file: Option<PathBuf>,
}

impl Default for SigningShared {
    fn default() -> Self {
        SigningShared {
            signer: Arc::new(Signer::none()),
            config_file: None,
        }
    }
}

impl SigningShared {
    /// Loads every `[[dkim.sign]]` key: a key file that is missing, readable by others or
    /// not a key of its algorithm stops the start, naming the file.
    pub fn new(config: &Config) -> Result<Arc<SigningShared>, super::ServerError> {
        let signer = Signer::load(config.dkim.key_settings())?;
        for (domain, selector) in signer.keys().selectors() {
            tracing::info!(domain, selector, "DKIM signing key loaded");
        }
        Ok(Arc::new(SigningShared {
            signer: Arc::new(signer),
            config_file: config.source.clone(),
        }))
    }

    /// The process's signer (the DMARC report sender signs with it too).
    pub fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.signer)
    }

    /// The delivery side's hook that re-signs a message it down-converted (8BITMIME), with
    /// the keys in use at the time (set even without keys: a SIGHUP may add some).
    pub fn resign(&self) -> Resign {
        let signer = Arc::clone(&self.signer);
        Resign(Some(Arc::new(move |original: &[u8], converted: &[u8]| {
            signer.resign(original, converted, SystemTime::now())
        })))
    }

    /// SIGHUP: the `[dkim]` section of the config file (when the relay was started from
    /// one) and the key files again. A config that no longer loads, or a key that fails,
    /// keeps the current keys. Nothing else of the file is applied.
    pub fn reload(&self) {
        let settings = match &self.config_file {
            None => None,
            Some(path) => match Config::load(path) {
                Ok(config) => Some(config.dkim.key_settings()),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: config not readable; DKIM keys kept as they were");
                    return;
                }
            },
        };
        if settings.as_ref().is_some_and(Vec::is_empty) && self.signer.settings().is_empty() {
            return;
        }
        match self.signer.reload(settings) {
            Ok(()) => {
                let keys = self.signer.keys();
                if keys.is_empty() {
                    tracing::info!("SIGHUP: no DKIM keys configured; signing stopped");
                }
                for (domain, selector) in keys.selectors() {
                    tracing::info!(domain, selector, "SIGHUP: DKIM signing key loaded");
                }
            }
            Err(error) => {
                tracing::error!(%error, "SIGHUP: DKIM keys not reloaded; keeping the current ones")
            }
        }
    }
}

/// A shard's view of the signing keys.
pub struct Signing {
    pub shared: Arc<SigningShared>,
}

impl Signing {
    pub fn for_shard(shared: &Arc<SigningShared>) -> Signing {
        Signing {
            shared: Arc::clone(shared),
        }
    }
}

/// The `DKIM-Signature` fields (CRLF-terminated) for `submission`, empty when it is not
/// ours to sign.
pub fn sign(ctx: &ShardContext, submission: &Submission) -> Vec<u8> {
    if submission.authenticated.is_none() && !submission.relay_client {
        return Vec::new();
    }
    ctx.signing
        .shared
        .signer
        .sign(&submission.body, SystemTime::now())
}
