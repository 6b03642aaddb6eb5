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

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
