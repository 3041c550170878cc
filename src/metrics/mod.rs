//! Prometheus metrics, shared by `forkpool status --prometheus` (the client renders the
//! `status` answer it asked for) and the master's scrape endpoint (`service.metrics_listen`,
//! which renders the same answer built in place, then adds its own series): one rendering,
//! one set of names.
//!
//! Nothing here opens a connection or knows the master's tables: [`exposition`] writes the
//! text format, [`status_text`] turns a `status` answer into it, and [`http_request`] reads
//! a scraper's request head (a pure function, so a fuzz target can call it).

pub mod exposition;
pub mod http_request;
pub mod status_text;

/// The states `status` and `queues` count jobs in per queue, in the order a job goes through
/// them (`scheduled`: `available` with a `run_at` in the future).
pub const QUEUE_STATES: [&str; 6] = [
    "available",
    "scheduled",
    "running",
    "completed",
    "discarded",
    "cancelled",
];

/// The durable totals of `status`, in the order of a job's life.
pub const DURABLE_OUTCOMES: [&str; 9] = [
    "enqueued",
    "claimed",
    "completed",
    "retried",
    "discarded",
    "cancelled",
    "released",
    "lost",
    "rescued",
];
