//! The sender checks of arriving mail at the end of DATA.

use std::net::SocketAddr;
use std::sync::Arc;

use super::shard::ShardContext;
use crate::config::Config;
use crate::sender_auth::report::Recorder;
use crate::smtp::{Submission, SubmitError};

/// What every shard's checks share: the settings and the DMARC report recorder.
pub struct VerifyingShared {
    pub reports: Arc<Recorder>,
}

impl VerifyingShared {
    pub fn new(_config: &Config, reports: Arc<Recorder>) -> Arc<VerifyingShared> {
        Arc::new(VerifyingShared { reports })
    }
}

/// A shard's checks (its resolver is built on the shard's runtime).
pub struct Verifying {
    pub shared: Arc<VerifyingShared>,
}

impl Verifying {
    pub fn for_shard(shared: &Arc<VerifyingShared>) -> Verifying {
        Verifying {
            shared: Arc::clone(shared),
        }
    }
}

/// Checks `submission`; the header fields to add above our Received field, or the reply
/// that refuses it. May remove forged `Authentication-Results` fields from its body.
pub async fn check(
    _ctx: &ShardContext,
    _submission: &mut Submission,
    _peer: SocketAddr,
) -> Result<Vec<u8>, SubmitError> {
    Ok(Vec::new())
}
