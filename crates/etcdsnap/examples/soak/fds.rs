//! What an agent's open files are (Linux /proc): each TCP socket named by the server at its
//! other end (etcd, the API server, S3) and its state, other files by what they point at. A
//! count alone shows that open files grew; this shows which kind, and logged after each fault
//! (`soak: open files ...` lines), after which fault.

use std::collections::{BTreeMap, HashMap};

/// The servers an agent talks to, by port (all on loopback).
#[derive(Debug, Clone, Default)]
pub struct Peers {
    by_port: HashMap<u16, &'static str>,
}

impl Peers {
    /// `etcd` are the members' client URLs, `api` the API server's URL, `s3` the address the
    /// agents reach S3 at.
    pub fn new(etcd: &[String], api: &str, s3: &str) -> Peers {
        let mut by_port = HashMap::new();
        for e in etcd {
            if let Some(p) = port_of(e) {
                by_port.insert(p, "etcd");
            }
        }
        if let Some(p) = port_of(api) {
            by_port.insert(p, "api");
        }
        if let Some(p) = port_of(s3) {
            by_port.insert(p, "s3");
        }
        Peers { by_port }
    }

    fn name(&self, port: u16) -> Option<&'static str> {
        self.by_port.get(&port).copied()
    }
}

/// The port at the end of a URL or address (`http://127.0.0.1:2379`, `127.0.0.1:9000`).
fn port_of(addr: &str) -> Option<u16> {
    addr.trim_end_matches('/').rsplit_once(':')?.1.parse().ok()
}

/// Open files by kind, e.g. `tcp api ESTABLISHED` → 3, `file /dev/null` → 2.
pub type Kinds = BTreeMap<String, u64>;

/// The open files of process `pid` by kind; empty when it is gone.
pub fn classify(pid: u32, peers: &Peers) -> Kinds {
    let sockets = tcp_sockets(pid);
    let mut kinds = Kinds::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return kinds };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        let kind = match target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            Some(inode) => match sockets.get(inode) {
                Some(s) if s.state == "LISTEN" => "tcp listening".to_string(),
                Some(s) => {
                    let peer =
                        peers.name(s.remote_port).map_or_else(|| format!("port {}", s.remote_port), String::from);
                    format!("tcp {peer} {}", s.state)
                }
                None => "socket (not TCP)".to_string(),
            },
            None if target.starts_with("pipe:") => "pipe".to_string(),
            None if target.starts_with("anon_inode:") => target.into_owned(),
            None => format!("file {}", generic_path(&target)),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// One line: `14 (tcp api ESTABLISHED 2, tcp etcd ESTABLISHED 1, ...)`.
pub fn summary(kinds: &Kinds) -> String {
    let total: u64 = kinds.values().sum();
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// A path with its work directory's random part and its snapshots' timestamps folded, so that
/// files of one kind count together.
fn generic_path(path: &str) -> String {
    path.split('/')
        .map(|part| if part.starts_with(".tmp") { ".tmp*" } else { part })
        .collect::<Vec<_>>()
        .join("/")
        .split('-')
        .map(|part| if part.len() >= 9 && part.chars().all(|c| c.is_ascii_digit()) { "N" } else { part })
        .collect::<Vec<_>>()
        .join("-")
}

struct TcpSocket {
    remote_port: u16,
    state: &'static str,
}

/// The TCP sockets of `pid`'s network namespace by inode, from /proc/PID/net/tcp and tcp6.
fn tcp_sockets(pid: u32) -> HashMap<String, TcpSocket> {
    let mut sockets = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (fields.get(2), fields.get(3), fields.get(9)) else {
                continue;
            };
            let Some(remote_port) = remote.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) else {
                continue;
            };
            sockets.insert(inode.to_string(), TcpSocket { remote_port, state: tcp_state(state) });
        }
    }
    sockets
}

/// The kernel's TCP states (include/net/tcp_states.h) by their hex code in /proc/net/tcp.
fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "other",
    }
}
