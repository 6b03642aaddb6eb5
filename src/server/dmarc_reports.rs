//! DMARC aggregate reports: the recorder every shard's checks feed, and the reporter thread
//! that keeps its counts on disk and sends the reports.
//!
//! The reporter runs on its own thread with its own current-thread runtime (never on a
//! shard): every `flush_interval` it writes the counts, and when an interval has ended it
//! builds one report per policy domain, checks each `rua=` destination (RFC 7489 §7.1:
//! another domain must publish `<policy-domain>._report._dmarc.<its-domain>` TXT
//! `v=DMARC1`), signs the message with the signer hook and stores it in the spool like a
//! DSN, from where outbound delivery takes it. A report the spool did not take, or whose
//! destination check failed for a DNS error, is tried again a minute later (at most
//! `RETRY_FOR`); one that can never be sent (no usable URI, not authorised, too large) is
//! logged and dropped. Error reports to the domain owner (§7.2.2) are not sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::config::Config;
use crate::delivery::DeliveryShared;
use crate::envelope::{Envelope, Origin, Recipient};
use crate::logsafe::Safe;
use crate::mailbox::sealing::{self, Message, StoreError, Target};
use crate::mailbox::MailStore;
use crate::net::dns::{classify, LookupFailure, SystemResolver};
use crate::sender_auth::report::feedback::{self, RuaTarget, Submitter};
use crate::sender_auth::report::{DueReport, Recorder, ReportSettings, ReportSigner};
use crate::smtp::Lookup;
use crate::spool::{Spool, SpoolError};

/// How long a report that failed for a passing reason is tried again after its interval.
const RETRY_FOR: Duration = Duration::from_secs(86_400);
/// The pause before trying such a report again.
const RETRY_PAUSE: Duration = Duration::from_secs(60);
/// DNS time for one destination check.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The process-wide recorder, with the counts a previous run left in its storage directory.
/// A counts file that cannot be read is moved aside (`aggregate.json.bad`) and the relay
/// starts with none: lost report counts must not keep mail out.
pub fn recorder(config: &Config) -> Result<Arc<Recorder>, super::ServerError> {
    let settings = settings(config);
    if !settings.enabled {
        return Ok(Arc::new(Recorder::default()));
    }
    create_dir(&settings.dir).map_err(|error| {
        super::ServerError::DmarcReports(format!("{}: {error}", settings.dir.display()))
    })?;
    let recorder = match Recorder::load(&settings) {
        Ok(recorder) => recorder,
        Err(error) => {
            let path = settings.state_file();
            let aside = path.with_extension("json.bad");
            tracing::error!(target: "relay::dmarc", %error, moved_to = %aside.display(), "DMARC report counts not loaded; starting without them");
            let _ = std::fs::rename(&path, &aside);
            Recorder::new(&settings)
        }
    };
    if recorder.rows() > 0 || recorder.dropped() > 0 {
        tracing::info!(target: "relay::dmarc", rows = recorder.rows(), dropped = recorder.dropped(), "DMARC report counts loaded");
    }
    Ok(Arc::new(recorder))
}

fn settings(config: &Config) -> ReportSettings {
    config
        .dmarc
        .report_settings(&config.hostname(), &config.spool.dir)
}

fn create_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Where a report goes once built: the spool, and delivery's hand-off (as for DSNs).
pub struct Outbound {
    pub spool: Arc<Spool>,
    pub delivery: Arc<DeliveryShared>,
    pub mail_store: Arc<MailStore>,
}

/// The reporter thread; [`Reporter::stop`] writes the counts a last time and joins it.
pub struct Reporter {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// Starts the reporter when `[dmarc] reports` is on. `signer` signs each report
    /// (`None`: reports go out unsigned, which is logged once here).
    pub fn start(
        config: &Config,
        recorder: Arc<Recorder>,
        outbound: Outbound,
        signer: Option<ReportSigner>,
    ) -> Result<Option<Reporter>, super::ServerError> {
        let settings = settings(config);
        if !settings.enabled || !recorder.enabled() {
            return Ok(None);
        }
        if signer.is_none() {
            tracing::warn!(target: "relay::dmarc", "DMARC reports are sent without a DKIM signature (no signing key for them)");
        }
        let job = Job {
            settings,
            recorder,
            outbound,
            signer,
            dns_servers: config.server.dns_servers.clone(),
            resolver: None,
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("dmarc-reports".into())
            .spawn(move || job.run(stopped))
            .map_err(super::ServerError::Thread)?;
        Ok(Some(Reporter {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(target: "relay::dmarc", "the DMARC report thread panicked");
            }
        }
    }
}

struct Job {
    settings: ReportSettings,
    recorder: Arc<Recorder>,
    outbound: Outbound,
    signer: Option<ReportSigner>,
    dns_servers: Vec<SocketAddr>,
    /// Built on first use, on this thread's runtime (hickory spawns its tasks there).
    resolver: Option<SystemResolver>,
}

/// What became of one report.
enum Outcome {
    Sent,
    /// Never sendable: forget it.
    Dropped(String),
    /// Try again later.
    Later(String),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Job {
    fn run(mut self, stopped: oneshot::Receiver<()>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(target: "relay::dmarc", %error, "DMARC reports: no runtime; counts are kept but no report is sent");
                return;
            }
        };
        // A LocalSet: a hand-off to a full delivery queue is retried by a local task.
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            self.serve(stopped).await;
        });
    }

    async fn serve(&mut self, mut stopped: oneshot::Receiver<()>) {
        let mut next_flush = Instant::now() + self.settings.flush_interval;
        let mut retry_at: Option<Instant> = None;
        loop {
            if retry_at.is_none_or(|at| Instant::now() >= at) {
                retry_at = self
                    .send_due()
                    .await
                    .then(|| Instant::now() + self.retry_pause());
            }
            if Instant::now() >= next_flush {
                self.flush();
                next_flush = Instant::now() + self.settings.flush_interval;
            }
            let mut wake = next_flush;
            if let Some(at) = retry_at {
                wake = wake.min(at);
            } else if let Some(end) = self.recorder.next_end() {
                let due_in = Duration::from_secs(end.saturating_sub(unix_now()));
                wake = wake.min(Instant::now() + due_in);
            }
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        if let Err(error) = self.recorder.flush_all(&self.settings) {
            tracing::error!(target: "relay::dmarc", %error, "DMARC report counts not written at shutdown");
        }
    }

    fn retry_pause(&self) -> Duration {
        RETRY_PAUSE.min(self.settings.interval)
    }

    fn flush(&self) {
        if let Err(error) = self.recorder.flush(&self.settings) {
            tracing::error!(target: "relay::dmarc", %error, "DMARC report counts not written");
        }
    }

    /// Sends every report due; true when one is left to try again.
    async fn send_due(&mut self) -> bool {
        let now = unix_now();
        let mut again = false;
        for report in self.recorder.due(now) {
            let outcome = self.send(&report).await;
            let domain = Safe(&report.domain);
            match outcome {
                Outcome::Sent => self.recorder.settle(&report),
                Outcome::Dropped(why) => {
                    tracing::warn!(target: "relay::dmarc", %domain, begin = report.begin, "DMARC report not sent: {why}");
                    self.recorder.settle(&report);
                }
                Outcome::Later(why) if now >= report.end.saturating_add(RETRY_FOR.as_secs()) => {
                    tracing::warn!(target: "relay::dmarc", %domain, begin = report.begin, "DMARC report given up after {}: {why}", humantime::format_duration(RETRY_FOR));
                    self.recorder.settle(&report);
                }
                Outcome::Later(why) => {
                    tracing::info!(target: "relay::dmarc", %domain, begin = report.begin, "DMARC report deferred: {why}");
                    again = true;
                }
            }
        }
        self.flush();
        again
    }

    async fn send(&mut self, report: &DueReport) -> Outcome {
        if !feedback::is_domain_name(&report.domain) {
            return Outcome::Dropped("the policy domain is not a host name".into());
        }
        let mut targets: Vec<RuaTarget> = Vec::new();
        for uri in &report.policy.rua {
            match feedback::parse_rua(uri) {
                Some(target) if !targets.iter().any(|t| t.address == target.address) => {
                    targets.push(target)
                }
                Some(_) => {}
                None => {
                    tracing::info!(target: "relay::dmarc", domain = %Safe(&report.domain), uri = %Safe(uri), "rua URI skipped (only plain mailto: addresses are used)")
                }
            }
        }
        let mut authorised = Vec::new();
        for target in targets {
            match self.authorised(&report.domain, &target).await {
                Ok(true) => authorised.push(target),
                Ok(false) => {
                    tracing::warn!(target: "relay::dmarc", domain = %Safe(&report.domain), to = %Safe(&target.address), "rua destination not authorised (RFC 7489 §7.1: no {} TXT v=DMARC1)", Safe(&feedback::authorization_name(&report.domain, &target)))
                }
                Err(why) => return Outcome::Later(why),
            }
        }
        if authorised.is_empty() {
            return Outcome::Dropped("no usable rua= destination".into());
        }
        let submitter = Submitter {
            org_name: &self.settings.org_name,
            email: &self.settings.report_from,
            receiver: &self.settings.receiver,
        };
        let xml = feedback::xml(&submitter, report);
        let compressed = feedback::gzip(xml.as_bytes());
        let to: Vec<&str> = authorised.iter().map(|t| t.address.as_str()).collect();
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let message = feedback::message(&submitter, report, &to, &compressed, now);
        let size = message.len() as u64;
        if size > self.settings.max_report_size {
            return Outcome::Dropped(format!("{size} bytes, larger than dmarc.max_report_size"));
        }
        let fits: Vec<String> = authorised
            .iter()
            .filter(|t| {
                let fits = t.max_size.is_none_or(|max| size <= max);
                if !fits {
                    tracing::warn!(target: "relay::dmarc", domain = %Safe(&report.domain), to = %Safe(&t.address), size, "DMARC report larger than the destination's !size limit; not sent there");
                }
                fits
            })
            .map(|t| t.address.clone())
            .collect();
        if fits.is_empty() {
            return Outcome::Dropped("larger than every destination's size limit".into());
        }
        let signature = self
            .signer
            .as_ref()
            .map(|sign| sign(&message))
            .unwrap_or_default();
        match self.store(signature, message, &fits).await {
            Ok(id) => {
                tracing::info!(target: "relay::dmarc", queue_id = %id, domain = %Safe(&report.domain), rows = report.rows.len(), begin = report.begin, end = report.end, to = %Safe(&fits.join(",")), size, "DMARC aggregate report queued");
                Outcome::Sent
            }
            Err(outcome) => outcome,
        }
    }

    /// RFC 7489 §7.1: may reports about `domain` go to `target`? An error for DNS
    /// failures (asked again later).
    async fn authorised(&mut self, domain: &str, target: &RuaTarget) -> Result<bool, String> {
        if !feedback::needs_authorization(domain, target) {
            return Ok(true);
        }
        let name = feedback::authorization_name(domain, target);
        let resolver = match &self.resolver {
            Some(resolver) => resolver,
            None => match SystemResolver::new(&self.dns_servers) {
                Ok(resolver) => self.resolver.insert(resolver),
                Err(error) => return Err(error.to_string()),
            },
        };
        let lookup = resolver.hickory().txt_lookup(name.as_str());
        match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Err(_) => Err(format!("{name} TXT: timed out")),
            Ok(Ok(answer)) => Ok(answer.answers().iter().any(|record| match &record.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => {
                    let text: Vec<u8> = txt
                        .txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect();
                    feedback::authorizes(&String::from_utf8_lossy(&text))
                }
                _ => false,
            })),
            Ok(Err(error)) => match classify(&error) {
                LookupFailure::NxDomain | LookupFailure::NoRecords => Ok(false),
                LookupFailure::Temporary(why) => Err(format!("{name} TXT: {why}")),
            },
        }
    }

    /// Stores the report as a new message from `report_from` and hands it on; the queue id
    /// once durable.
    async fn store(
        &self,
        signature: Vec<u8>,
        message: Vec<u8>,
        to: &[String],
    ) -> Result<crate::envelope::QueueId, Outcome> {
        let delivery = &self.outbound.delivery;
        let (mut mailboxes, mut remote) = (Vec::new(), Vec::new());
        for address in to {
            if !delivery.is_local_domain(address) {
                remote.push(address.clone());
                continue;
            }
            let lookup = delivery
                .mailboxes
                .as_ref()
                .map(|m| m.0.lookup(address, message.len() as u64));
            match lookup {
                Some(Lookup::Deliver {
                    mailboxes: m,
                    forward,
                }) => {
                    mailboxes.extend(m);
                    remote.extend(forward);
                }
                _ => {
                    tracing::warn!(target: "relay::dmarc", to = %Safe(address), "rua destination is a local address that takes no mail")
                }
            }
        }
        if mailboxes.is_empty() && remote.is_empty() {
            return Err(Outcome::Dropped("no destination takes mail".into()));
        }
        // Shard 0's log: any shard may hold any message, and this thread is none of them.
        let shard = self.outbound.spool.shard(0);
        let now = SystemTime::now();
        let id = shard.next_id(now);
        let counter = delivery.metrics.as_ref().map(|m| m.messages_sealed());
        let target = Target {
            spool: &shard,
            mail_store: &self.outbound.mail_store,
            keys: delivery.keys.as_deref(),
            sealed: counter.as_ref(),
        };
        let queued_remote = remote.clone();
        let report = Message {
            id,
            arrival: now,
            origin: Origin {
                client_ip: "127.0.0.1".into(),
                client_port: 0,
                helo: self.settings.receiver.clone(),
                protocol: "LOCAL".into(),
            },
            envelope: Envelope {
                reverse_path: self.settings.report_from.clone(),
                params: Default::default(),
                recipients: to
                    .iter()
                    .map(|address| Recipient {
                        address: address.clone(),
                        notify: None,
                        orcpt: None,
                    })
                    .collect(),
            },
            received_header: signature,
            body: message,
            mailboxes,
            remote,
            filing: Default::default(),
        };
        let stored = sealing::store(&target, report).await;
        let plain_len = match &stored {
            Ok(stored) => stored.plain_len,
            Err(failed) => failed.plain_len,
        };
        // Handed on as from core 0: this thread then shares core 0's mesh queues, which are
        // multi-producer (`ArrayQueue`); a few reports a day cost its producer nothing.
        if let Some(len) = plain_len {
            crate::delivery::hand_on(delivery, 0, id, len, &queued_remote);
        }
        match stored {
            Ok(_) => {}
            Err(failed) => {
                return Err(match failed.error {
                    StoreError::Spool(error @ SpoolError::TooLarge { .. }) => {
                        Outcome::Dropped(error.to_string())
                    }
                    error => Outcome::Later(error.to_string()),
                })
            }
        }
        Ok(id)
    }
}
