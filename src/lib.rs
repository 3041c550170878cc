//! forkpool: a prefork job runner for PostgreSQL work.
//!
//! A master process loads its configuration once and forks worker processes; each worker
//! builds its own connection pools after the fork. See `DESIGN.md` for the contract.

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod databases;
pub mod handler;
pub mod ipc;
pub mod master;
pub mod pool;
mod probe;
pub mod protocol;
pub mod service;
mod status_prometheus;
mod status_table;
pub mod systemd;
pub mod worker;

pub use service::Service;
