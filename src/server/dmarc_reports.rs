//! DMARC aggregate reports: the recorder every shard's checks feed, and the daily sending.

use std::sync::Arc;

use crate::config::Config;
use crate::sender_auth::report::Recorder;

/// The process-wide recorder.
pub fn recorder(_config: &Config) -> Result<Arc<Recorder>, super::ServerError> {
    Ok(Arc::new(Recorder::default()))
}
