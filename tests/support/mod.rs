//! Shared helpers for the integration tests: a private PostgreSQL cluster per test binary
//! (or per test), test certificates, a TCP listener that never answers, the `forkpool` binary
//! as a service, and child processes that die with the test process.
//!
//! Each test file does `mod support;` and compiles this module into its own binary, using
//! only the helpers it needs; without the allows below every binary would warn about the
//! helpers (and their re-exports) that only *other* binaries use.
#![allow(dead_code, unused_imports)]

mod certs;
mod client_certs;
mod cluster;
mod frozen;
mod installation;
mod own_database;
mod poll;
pub mod procfs;
mod server_files;
mod service;
mod silent;
mod standby;
mod tied;

// Moved to the library, where `forkpool dev` uses them too (src/devcluster/).
use forkpool::devcluster::{binaries, postmaster};

pub use binaries::{default_search_path, find_server_bindir};
pub use certs::{certificate_authority, client_certificate, server_certificate, CertifiedKey};
pub use cluster::{
    describe, Cluster, ClusterOptions, APP_DATABASE, APP_PASSWORD, APP_USER,
    HARNESS_APPLICATION_NAME,
};
pub use frozen::Frozen;
pub use poll::{forkpool_command, poll_until, wait_until, wait_until_within};
pub use procfs::tcp_socket_count;
pub use service::{Client, Service, ServiceOptions, EVENT_TIMEOUT};
pub use silent::{silent_listener, SilentListener};
pub use standby::Standby;
pub use tied::spawn_tied;
