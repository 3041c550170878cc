//! What /proc says about a process: its TCP sockets (a database connection is one).

use std::collections::HashSet;

/// How many TCP sockets (IPv4 or IPv6) process `pid` holds.
pub fn tcp_socket_count(pid: i32) -> usize {
    let mut tcp = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue; // no IPv6 in this kernel
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if let Some(inode) = line.split_whitespace().nth(9) {
                tcp.insert(inode.to_string());
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .filter(|inode| tcp.contains(inode))
        .count()
}
