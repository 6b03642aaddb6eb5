//! The scripted DNS server of tests/py/dns_server.py (records given on its command line),
//! killed when dropped; it remembers the queries it was asked.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::repo_path;

/// The scripted DNS server, and the queries it has seen.
pub struct DnsServer {
    child: Child,
    pub port: u16,
    queries: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    pub fn start(records: &[&str]) -> DnsServer {
        let mut child = Command::new("python3")
            .arg(repo_path("tests/py/dns_server.py"))
            .args(records)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dns_server.py");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .expect("dns server said nothing")
            .expect("read");
        let port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&queries);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(query) = line.strip_prefix("Q ") {
                    seen.lock().unwrap().push(query.to_string());
                }
            }
        });
        DnsServer {
            child,
            port,
            queries,
        }
    }

    /// The queries seen so far. The server prints each query before it answers, but the
    /// thread reading those lines can lag the relay's use of the answer under load, so this
    /// waits until the list has stopped growing for half a second (at most 5 s).
    pub fn queries(&self) -> Vec<String> {
        let start = std::time::Instant::now();
        let mut seen = self.queries.lock().unwrap().len();
        let mut stable_since = start;
        while stable_since.elapsed() < std::time::Duration::from_millis(500)
            && start.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = self.queries.lock().unwrap().len();
            if now != seen {
                seen = now;
                stable_since = std::time::Instant::now();
            }
        }
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
