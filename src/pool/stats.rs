//! Counters a worker sends with its heartbeat.

use serde::Serialize;
use std::collections::BTreeMap;

/// A snapshot of one pool. Counters are totals since the pool was built (or since a fork
/// emptied it in this process).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Connections open now (idle + in use).
    pub size: usize,
    pub idle: usize,
    pub in_use: usize,
    /// Checkouts waiting for a connection right now.
    pub waiting: usize,
    /// Connections opened.
    pub created: u64,
    /// Connections closed, by reason: lifetime, idle, broken, invalidated, ping, reset,
    /// close. Connections a forked child inherits are not counted: the child forgets them
    /// (they are the parent's sessions) and starts its counters from zero.
    pub closed_by_reason: BTreeMap<String, u64>,
    /// Pre-use pings sent, a round trip each: checkouts of connections idle past
    /// `ping_after`, or whose socket showed the server had closed them.
    pub pings: u64,
    pub ping_failures: u64,
    pub checkout_timeouts: u64,
    pub checkout_wait_ms_total: u64,
    pub checkouts: u64,
}
