use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::*;
use crate::config::{DeliverySection, RouteEntry, RoutesSection};
use crate::net::io::epoll::EpollConnector;
use crate::queue::TlsMode;
use crate::spool::SpoolConfig;

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// A core routed to a closed local port (refused at once), with a real spool that holds none
/// of the queued messages.
struct Rig {
    _dir: tempfile::TempDir,
    spool: Arc<Spool>,
    shared: Arc<DeliveryShared>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(SpoolConfig::new(dir.path()), 1).unwrap();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let routes = RoutesSection(vec![RouteEntry {
        domain: "*".into(),
        to: closed.to_string(),
        tls: TlsMode::Off,
    }])
    .compile()
    .unwrap();
    let d = DeliverySection::default();
    let shared = DeliveryShared {
        mesh: Mesh::new(1, QueueGauge::new(1000, 1 << 30)),
        routes,
        schedule: d.schedule(),
        dsn_policy: d.dsn_policy(),
        dsn_return_max: d.dsn_return_max(),
        resolve_limits: d.resolve_limits(),
        destination_limits: d.destination_limits(),
        destination_spread: d.destination_spread,
        destinations_max: d.destinations_max,
        client: Arc::new(ClientConfig::default()),
        connect_timeout: Duration::from_secs(5),
        client_tls: crate::net::tls::ClientTls::load(None).unwrap(),
        tls_handshake_timeout: Duration::from_secs(5),
        tls_failure_hold: Duration::from_secs(60),
        dns_servers: Vec::new(),
        hostname: "relay.test".into(),
        own_addresses: Default::default(),
        local_domains: Vec::new(),
        mailboxes: None,
        keys: None,
        metrics: None,
        // Short waits, so the retries and the reconciliation show within a test.
        cluster: None,
        limits: Default::default(),
        upkeep: Upkeep {
            handoff_patience: Duration::from_millis(50),
            notice_retry: Duration::from_millis(20),
            notice_attempts_max: 50,
            reconcile_every: Duration::from_millis(100),
        },
    };
    Rig {
        _dir: dir,
        spool: Arc::new(spool),
        shared: Arc::new(shared),
    }
}

fn job(shared: &DeliveryShared, id: QueueId, size: u64) -> Job {
    shared.mesh.gauge.admit(size);
    Job {
        id,
        key: shared.destination("someone@far.test"),
        recipients: RcptSet::from_indices(&[0]).unwrap(),
        due: SystemTime::now(),
        attempts: 0,
        delay_noticed: false,
        size,
    }
}

/// Entries whose message left the spool, one found past `max_age` by the sweep and one met
/// by a worker after its destination refused the connection, hand their whole share back to
/// the ingest gauge: entries and bytes return to zero.
#[test]
fn expired_and_gone_entries_release_their_gauge_share() {
    let rig = rig();
    let shared = Arc::clone(&rig.shared);
    let now = SystemTime::now();
    let max_age = shared.schedule.max_age;
    let expired = QueueId::new(micros(now - max_age - Duration::from_secs(60)), 0);
    let fresh = QueueId::new(micros(now), 0);
    let startup = vec![job(&shared, expired, 1000), job(&shared, fresh, 2000)];
    assert_eq!(
        (shared.mesh.gauge.entries(), shared.mesh.gauge.bytes()),
        (2, 3000)
    );

    let gauge = run_until_drained(&shared, &rig.spool, startup, Rc::new(SystemClock));
    assert_eq!(
        gauge,
        (0, 0),
        "gauge (entries, bytes) after the queue drained"
    );
}

/// A clock moved by hand.
struct ManualClock {
    mono: std::cell::Cell<std::time::Instant>,
    wall: std::cell::Cell<SystemTime>,
}

impl crate::runtime::clock::Clock for ManualClock {
    fn now(&self) -> std::time::Instant {
        self.mono.get()
    }

    fn wall(&self) -> SystemTime {
        self.wall.get()
    }
}

/// The core decides by its clock alone: with the clock set past `max_age`, a message that
/// arrived just now is expired instead of sent (no connection is made to its next hop, a
/// real listener that would take it), without waiting for a deadline.
#[test]
fn expiry_follows_the_cores_clock() {
    let rig = rig();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let routes = RoutesSection(vec![RouteEntry {
        domain: "*".into(),
        to: listener.local_addr().unwrap().to_string(),
        tls: TlsMode::Off,
    }])
    .compile()
    .unwrap();
    let mut shared = Arc::try_unwrap(rig.shared).ok().unwrap();
    shared.routes = routes;
    let shared = Arc::new(shared);
    let now = SystemTime::now();
    let id = QueueId::new(micros(now), 0);
    let startup = vec![job(&shared, id, 500)];
    let clock = Rc::new(ManualClock {
        mono: std::cell::Cell::new(std::time::Instant::now()),
        wall: std::cell::Cell::new(now + shared.schedule.max_age + Duration::from_secs(1)),
    });

    let gauge = run_until_drained(&shared, &rig.spool, startup, clock);
    assert_eq!(gauge, (0, 0), "the expired entry left the queue");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no connection to the next hop"
    );
}

/// Runs a real core (epoll, no metrics) over `startup` until the ingest gauge settles at zero
/// (bounded: 10 s), stops it, and returns the gauge as it was then: (entries, bytes).
fn run_until_drained(
    shared: &Arc<DeliveryShared>,
    spool: &Arc<Spool>,
    startup: Vec<Job>,
    clock: Rc<dyn Clock>,
) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (phase, phase_rx) = watch::channel(Phase::Running);
    local.block_on(&runtime, async {
        let core = Core::new(CoreParts {
            index: 0,
            shared: Arc::clone(shared),
            connector: EpollConnector,
            spool: spool.shard(0),
            store: Arc::clone(spool),
            // The epoll engine's reads: the reader pool.
            reads: crate::spool::FileReads::for_engine(crate::runtime::Engine::Epoll),
            mail_store: crate::mailbox::MailStore::new(),
            phase: phase_rx,
            metrics: None,
            clock,
        });
        let task = tokio::task::spawn_local(run(core, startup));
        let gauge = &shared.mesh.gauge;
        // Entries end within moments (no attempt waits on a timer): wait for the gauge to
        // settle, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while gauge.entries() > 0 || gauge.bytes() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let seen = (gauge.entries(), gauge.bytes());
        let _ = phase.send(Phase::Stopping);
        let _ = task.await;
        seen
    })
}

/// A clock that runs like the system's, with the wall clock set ahead by a fixed offset
/// (monotonic time keeps flowing, so the core's timers work).
struct AheadClock(Duration);

impl crate::runtime::clock::Clock for AheadClock {
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now() + self.0
    }
}

/// A spool on the simulated disk (write errors and crashes on demand).
fn sim_spool(disk: &crate::spool::sim::SimDisk) -> Arc<Spool> {
    let (spool, _) =
        Spool::open_with_io(SpoolConfig::new("/unused"), 1, Arc::new(disk.clone())).unwrap();
    Arc::new(spool)
}

/// Stores a message from a remote sender to one remote recipient; returns its id.
fn store_remote(spool: &Spool) -> QueueId {
    use crate::envelope::{Envelope, Origin, Recipient};
    let handle = spool.shard(0);
    let id = handle.next_id(SystemTime::now());
    let new = crate::spool::NewMessage {
        id,
        arrival_unix_micros: micros(SystemTime::now()),
        origin: Origin::default(),
        envelope: Envelope {
            reverse_path: "sender@origin.test".into(),
            params: Default::default(),
            recipients: vec![Recipient {
                address: "someone@far.test".into(),
                notify: None,
                orcpt: None,
            }],
        },
        received_header: b"Received: test\r\n".to_vec(),
        body: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
        mailboxes: Vec::new(),
        remote: vec!["someone@far.test".into()],
        placements: Vec::new(),
    };
    let rx = handle.append_message(new).unwrap();
    futures_block(rx).unwrap().unwrap();
    id
}

/// Waits for a oneshot outside any runtime.
fn futures_block<T>(
    rx: tokio::sync::oneshot::Receiver<T>,
) -> Result<T, tokio::sync::oneshot::error::RecvError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(rx)
}

/// What the spool says now: (is the message's recipient still pending, the notices from
/// `<>` stored for `sender`).
fn spool_state(spool: &Spool, id: QueueId) -> (bool, usize) {
    let replay = spool.replay().unwrap();
    let pending = replay
        .messages
        .iter()
        .any(|m| m.id == id && !m.pending.is_empty());
    let notices = replay
        .messages
        .iter()
        .filter(|m| m.sender.is_empty() && m.remote == ["sender@origin.test"])
        .count();
    (pending, notices)
}

/// Runs a real core (epoll, no metrics) over `startup` until `done` says so (bounded: 10 s),
/// then stops it. Returns whether `done` was reached.
fn run_core_until(
    shared: &Arc<DeliveryShared>,
    spool: &Arc<Spool>,
    startup: Vec<Job>,
    clock: Rc<dyn Clock>,
    mut done: impl FnMut() -> bool,
) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (phase, phase_rx) = watch::channel(Phase::Running);
    local.block_on(&runtime, async {
        let core = Core::new(CoreParts {
            index: 0,
            shared: Arc::clone(shared),
            connector: EpollConnector,
            spool: spool.shard(0),
            store: Arc::clone(spool),
            // The epoll engine's reads: the reader pool.
            reads: crate::spool::FileReads::for_engine(crate::runtime::Engine::Epoll),
            mail_store: crate::mailbox::MailStore::new(),
            phase: phase_rx,
            metrics: None,
            clock,
        });
        let task = tokio::task::spawn_local(run(core, startup));
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok();
        let _ = phase.send(Phase::Stopping);
        let _ = task.await;
        reached
    })
}

/// The failure notice of an expired recipient cannot be stored the first time (a write
/// error on the spool): the recipient's final result is recorded only once the notice is
/// stored, after a retry, so the sender is told.
#[test]
fn a_notice_that_fails_once_is_stored_before_the_final_result() {
    let rig = rig();
    let disk = crate::spool::sim::SimDisk::new(1, Default::default());
    let spool = sim_spool(&disk);
    let id = store_remote(&spool);
    let shared = Arc::clone(&rig.shared);
    let startup = vec![job(&shared, id, 100)];
    // Past max_age: the entry expires at once, with a failure notice to the sender.
    let clock = Rc::new(AheadClock(
        shared.schedule.max_age + Duration::from_secs(60),
    ));
    disk.fail_next_writes(1);
    let finished = run_core_until(&shared, &spool, startup, clock, || {
        !spool_state(&spool, id).0
    });
    assert!(finished, "the recipient got a final result");
    assert_eq!(
        spool_state(&spool, id),
        (false, 1),
        "(recipient pending, notices stored) once the result is final"
    );
}

/// Fills core 0's own mesh queue with hand-offs of a message that is not in the spool, due
/// in a year (they sit deferred once taken in).
fn fill_mesh(shared: &DeliveryShared) {
    let later = SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    let mut n = 0u64;
    loop {
        let mut filler = job(shared, QueueId::new(1 + n, 0), 1);
        filler.due = later;
        if shared.mesh.send(0, 0, filler).is_err() {
            shared.mesh.gauge.release(1);
            break;
        }
        n += 1;
    }
}

/// With the mesh queue full, handing on a durable message returns at once (its 250 is not
/// held back): the hand-off is left to a retry or the reconciliation.
#[test]
fn a_full_mesh_does_not_hold_back_the_hand_on() {
    let rig = rig();
    let shared = Arc::clone(&rig.shared);
    fill_mesh(&shared);
    let id = store_remote(&rig.spool);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let took = local.block_on(&runtime, async {
        let started = std::time::Instant::now();
        let handed = tokio::time::timeout(Duration::from_secs(1), async {
            hand_on(&shared, 0, id, 100, &["someone@far.test".into()])
        })
        .await;
        (handed.is_ok(), started.elapsed())
    });
    assert!(took.0, "hand_on returned within 1 s (took {:?})", took.1);
}

/// A next hop that accepts every message (one connection at a time) and counts them.
fn smtp_sink() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut out) = stream else { return };
            let mut lines = BufReader::new(out.try_clone().unwrap());
            let _ = out.write_all(b"220 sink\r\n");
            let mut line = String::new();
            let mut in_data = false;
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                let upper = line.to_ascii_uppercase();
                let reply: &[u8] = if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        b"250 queued\r\n"
                    } else {
                        b""
                    }
                } else if upper.starts_with("DATA") {
                    in_data = true;
                    b"354 go on\r\n"
                } else if upper.starts_with("QUIT") {
                    let _ = out.write_all(b"221 bye\r\n");
                    break;
                } else {
                    b"250 ok\r\n"
                };
                let _ = out.write_all(reply);
                line.clear();
            }
        }
    });
    (addr, count)
}

/// The rig's settings, routed to `to`.
fn routed_to(rig: Rig, to: std::net::SocketAddr) -> (Rig, Arc<DeliveryShared>) {
    let routes = RoutesSection(vec![RouteEntry {
        domain: "*".into(),
        to: to.to_string(),
        tls: TlsMode::Off,
    }])
    .compile()
    .unwrap();
    let Rig {
        _dir,
        spool,
        shared,
    } = rig;
    let mut shared = Arc::try_unwrap(shared).ok().unwrap();
    shared.routes = routes;
    let shared = Arc::new(shared);
    (
        Rig {
            _dir,
            spool,
            shared: Arc::clone(&shared),
        },
        shared,
    )
}

/// A hand-off that gives up on a full mesh leaves its recipient pending in the spool with no
/// core holding it; the owner's reconciliation finds it and it is delivered.
#[test]
fn a_hand_off_given_up_is_delivered_by_the_reconciliation() {
    let (sink, delivered) = smtp_sink();
    let (rig, shared) = routed_to(rig(), sink);
    fill_mesh(&shared);
    let id = store_remote(&rig.spool);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let gave_up = local.block_on(&runtime, async {
        hand_on(&shared, 0, id, 100, &["someone@far.test".into()]);
        tokio::time::timeout(Duration::from_secs(5), async {
            while shared.mesh.dropped() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    });
    assert!(gave_up, "the hand-off gave up and counted a drop");
    // A second on: the message is past the reconciliation's grace.
    let clock = Rc::new(AheadClock(Duration::from_secs(1)));
    let spool = Arc::clone(&rig.spool);
    let done = run_core_until(&shared, &rig.spool, Vec::new(), clock, || {
        delivered.load(std::sync::atomic::Ordering::SeqCst) == 1 && !spool_state(&spool, id).0
    });
    assert!(done, "the reconciled recipient was delivered and recorded");
}

/// Expiry meets a read error (a damaged body): the entry leaves memory while its recipient
/// stays pending. Once the spool reads again, the reconciliation queues it and it expires
/// with its failure notice.
#[test]
fn an_expiry_read_error_is_taken_up_by_the_reconciliation() {
    let rig = rig();
    let disk = crate::spool::sim::SimDisk::new(2, Default::default());
    let spool = sim_spool(&disk);
    let id = store_remote(&spool);
    let at = spool.locate(id).unwrap();
    let original = disk.contents(0, at.segment).unwrap()
        [at.body_offset as usize..at.body_offset as usize + 4]
        .to_vec();
    disk.corrupt(0, at.segment, at.body_offset, b"XXXX");
    let shared = Arc::clone(&rig.shared);
    let startup = vec![job(&shared, id, 100)];
    let clock = Rc::new(AheadClock(
        shared.schedule.max_age + Duration::from_secs(60),
    ));
    let mut repaired = false;
    let done = run_core_until(&shared, &spool, startup, clock, || {
        if !repaired && shared.mesh.dropped() > 0 {
            disk.corrupt(0, at.segment, at.body_offset, &original);
            repaired = true;
        }
        repaired && spool_state(&spool, id) == (false, 1)
    });
    assert!(repaired, "the read error dropped the entry");
    assert!(
        done,
        "the recipient expired with its notice after the reconciliation"
    );
}

/// The notice cannot be stored; the power goes while it waits to be tried again. After the
/// restart the recipient is still pending (no result was recorded without its notice), and
/// the notice is sent then.
#[test]
fn a_notice_pending_at_a_crash_is_sent_after_the_restart() {
    let rig = rig();
    let disk = crate::spool::sim::SimDisk::new(3, Default::default());
    let spool = sim_spool(&disk);
    let id = store_remote(&spool);
    let mut shared = Arc::try_unwrap(rig.shared).ok().unwrap();
    shared.upkeep.notice_retry = Duration::from_secs(3600);
    let shared = Arc::new(shared);
    let clock = Rc::new(AheadClock(
        shared.schedule.max_age + Duration::from_secs(60),
    ));
    disk.fail_next_writes(1);
    let mut after = None;
    let failed = run_core_until(
        &shared,
        &spool,
        vec![job(&shared, id, 100)],
        clock.clone(),
        || {
            if disk.stats().write_errors >= 1 {
                after = Some(disk.crash());
            }
            after.is_some()
        },
    );
    assert!(failed, "the notice failed");
    drop(spool);
    let spool = sim_spool(&after.unwrap());
    assert_eq!(
        spool_state(&spool, id),
        (true, 0),
        "(recipient pending, notices) after the crash"
    );
    let mut startup = vec![Vec::new()];
    spool.startup_view(|m| jobs_from_live(&shared, m, &mut startup));
    let startup = startup.pop().unwrap();
    assert_eq!(startup.len(), 1, "the recipient is queued again at start");
    let done = run_core_until(&shared, &spool, startup, clock, || {
        spool_state(&spool, id) == (false, 1)
    });
    assert!(
        done,
        "the notice was stored and the recipient expired after the restart"
    );
}

/// A core whose destination table is full spills a new entry (its recipient stays pending in
/// the spool); once the table has room again, the reconciliation queues it and it is
/// delivered.
#[test]
fn an_entry_spilled_by_a_full_destination_table_is_delivered_later() {
    let (sink, delivered) = smtp_sink();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let rig = rig();
    let mut shared = Arc::try_unwrap(rig.shared).ok().unwrap();
    shared.routes = RoutesSection(vec![
        RouteEntry {
            domain: "other.test".into(),
            to: closed.to_string(),
            tls: TlsMode::Off,
        },
        RouteEntry {
            domain: "*".into(),
            to: sink.to_string(),
            tls: TlsMode::Off,
        },
    ])
    .compile()
    .unwrap();
    shared.destinations_max = 1;
    let shared = Arc::new(shared);
    let id = store_remote(&rig.spool);
    // The one slot is taken by a message no longer in the spool: it leaves the queue at its
    // first attempt, and its destination is forgotten at the next collection.
    let mut filler = job(&shared, QueueId::new(1, 0), 10);
    filler.key = shared.destination("x@other.test");
    let real = job(&shared, id, 100);
    let clock = Rc::new(AheadClock(Duration::from_secs(1)));
    let spool = Arc::clone(&rig.spool);
    let done = run_core_until(&shared, &rig.spool, vec![filler, real], clock, || {
        delivered.load(std::sync::atomic::Ordering::SeqCst) == 1 && !spool_state(&spool, id).0
    });
    assert!(shared.mesh.dropped() > 0, "the entry was spilled");
    assert!(
        done,
        "the spilled recipient was delivered after the reconciliation"
    );
}
