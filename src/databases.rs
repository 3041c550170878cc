//! Turns the `[databases.*]` configuration into what a pool is built from.
//!
//! This runs in the master at start-up, before any fork: a bad URL or an unreadable
//! `password_file` stops the service at once with the key named, instead of failing the first
//! job of every worker. Nothing here connects; the pools are built lazily in the workers.

use std::collections::BTreeMap;

use crate::config::{Config, DatabaseConfig};
use crate::pool::{ConnInfo, PoolSettings};

/// One database's connection settings and pool settings, ready for `Pool::new`.
#[derive(Debug, Clone)]
pub struct DatabaseSpec {
    pub conninfo: ConnInfo,
    pub settings: PoolSettings,
}

/// Every configured database, by name.
pub type Databases = BTreeMap<String, DatabaseSpec>;

/// Builds every database's spec; every problem is reported, each naming its key.
pub fn from_config(config: &Config) -> Result<Databases, Vec<String>> {
    let mut databases = Databases::new();
    let mut problems = Vec::new();
    for (name, database) in &config.databases {
        match spec(database) {
            Ok(spec) => {
                databases.insert(name.clone(), spec);
            }
            Err(problem) => problems.push(format!("databases.{name}: {problem}")),
        }
    }
    if problems.is_empty() {
        Ok(databases)
    } else {
        Err(problems)
    }
}

fn spec(database: &DatabaseConfig) -> Result<DatabaseSpec, String> {
    let mut conninfo = ConnInfo::parse(&database.url)
        .map_err(|e| format!("url: {e}"))?
        .with_service(|name| std::env::var(name).ok())
        .map_err(|e| format!("url: {e}"))?
        .with_env(|name| std::env::var(name).ok());
    if let Some(path) = &database.password_file {
        conninfo = conninfo
            .with_password_file(path)
            .map_err(|e| format!("password_file: {e}"))?;
    }
    let settings = PoolSettings::new()
        .pool_size(database.pool_size)
        .min_idle(database.min_idle)
        .checkout_timeout(database.checkout_timeout)
        .connect_timeout(database.connect_timeout)
        .pre_ping(database.pre_ping)
        .ping_after(database.ping_after)
        .max_lifetime(database.max_lifetime)
        .lifetime_jitter(database.lifetime_jitter)
        .idle_timeout(database.idle_timeout)
        .reset_on_return(database.reset_on_return)
        .leak_threshold(database.leak_threshold)
        .statement_timeout(database.statement_timeout)
        .application_name(database.application_name.clone());
    Ok(DatabaseSpec { conninfo, settings })
}
