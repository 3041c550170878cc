//! What a process of the service holds, read from /proc: its threads, its sockets, which of
//! them are TCP connections, and which process is the client of a database backend.

use std::collections::HashSet;

/// `(fd, link target)` for every open descriptor of `pid`, e.g. `(5, "socket:[1234]")`.
/// A descriptor closed while the directory is read is skipped.
pub fn descriptors(pid: i32) -> Vec<(i32, String)> {
    descriptors_if_alive(pid).unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
}

/// [`descriptors`], or the error when the process is gone.
fn descriptors_if_alive(pid: i32) -> std::io::Result<Vec<(i32, String)>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect())
}

/// The inode of a `socket:[N]` descriptor target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The socket inodes `pid` holds.
pub fn socket_inodes(pid: i32) -> HashSet<u64> {
    inodes_of(&descriptors(pid))
}

fn inodes_of(descriptors: &[(i32, String)]) -> HashSet<u64> {
    descriptors
        .iter()
        .filter_map(|(_, target)| socket_inode(target))
        .collect()
}

/// One line of /proc/net/tcp or tcp6: the local and remote ports and the socket's inode.
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    inode: u64,
}

/// Every TCP socket in this network namespace (IPv4 and IPv6).
fn tcp_sockets() -> Vec<TcpSocket> {
    let port = |address: &str| {
        let hex = address.rsplit(':').next().expect("address:port");
        u16::from_str_radix(hex, 16).expect("a hexadecimal port")
    };
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue; // no IPv6 in this kernel
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 {
                sockets.push(TcpSocket {
                    local_port: port(fields[1]),
                    remote_port: port(fields[2]),
                    inode: fields[9].parse().expect("an inode number"),
                });
            }
        }
    }
    sockets
}

/// Every TCP socket inode in this network namespace.
pub fn tcp_inodes() -> HashSet<u64> {
    tcp_sockets().into_iter().map(|s| s.inode).collect()
}

/// The TCP sockets `pid` holds (their inodes).
pub fn tcp_sockets_of(pid: i32) -> Vec<u64> {
    let tcp = tcp_inodes();
    socket_inodes(pid).intersection(&tcp).copied().collect()
}

/// The pids of `pid`'s children (those its main thread forked: all of them, for a process
/// of one thread).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|child| child.parse().expect("a pid"))
        .collect()
}

pub fn thread_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Which of `candidates` holds the client end of the TCP connection from local port
/// `client_port` to `server_port` (a backend's `pg_stat_activity.client_port` and the
/// server's port): the process whose session that backend serves. A candidate that is gone
/// is passed over.
pub fn client_of_connection(client_port: u16, server_port: u16, candidates: &[i32]) -> Option<i32> {
    let inodes: HashSet<u64> = tcp_sockets()
        .into_iter()
        .filter(|s| s.local_port == client_port && s.remote_port == server_port)
        .map(|s| s.inode)
        .collect();
    candidates.iter().copied().find(|pid| {
        descriptors_if_alive(*pid).is_ok_and(|held| !inodes_of(&held).is_disjoint(&inodes))
    })
}

/// How many TCP sockets (IPv4 or IPv6) process `pid` holds.
pub fn tcp_socket_count(pid: i32) -> usize {
    tcp_sockets_of(pid).len()
}
