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
        metrics: None,
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
