//! DKIM signatures on our own outbound mail, at ingest.

use std::sync::Arc;

use super::shard::ShardContext;
use crate::config::Config;
use crate::smtp::Submission;

/// The signing keys every shard shares.
#[derive(Debug, Default)]
pub struct SigningShared {}

impl SigningShared {
    pub fn new(_config: &Config) -> Result<Arc<SigningShared>, super::ServerError> {
        Ok(Arc::new(SigningShared {}))
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
pub fn sign(_ctx: &ShardContext, _submission: &Submission) -> Vec<u8> {
    Vec::new()
}
