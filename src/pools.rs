//! A worker's pools: one per database, built on the first job that needs it; and how a pool
//! error reads on the wire. Below both the worker and the public handler API, which share it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::databases::Databases;
use crate::pool::{self, Pool};
use crate::protocol::{ErrorBody, ErrorKind};

/// The pools of this worker process. Building a pool opens nothing (the first checkout
/// connects), so holding the lock while building is cheap.
pub struct Pools {
    databases: Arc<Databases>,
    built: Mutex<HashMap<String, Arc<Pool>>>,
}

impl Pools {
    pub fn new(databases: Arc<Databases>) -> Pools {
        Pools {
            databases,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `database`, built now if this is its first use.
    pub fn get(&self, database: &str) -> Result<Arc<Pool>, ErrorBody> {
        let mut built = self.built.lock().expect("pool table lock");
        if let Some(pool) = built.get(database) {
            return Ok(Arc::clone(pool));
        }
        let spec = self.databases.get(database).ok_or_else(|| {
            ErrorBody::new(
                ErrorKind::Internal,
                format!("no database `{database}` is configured ([databases.{database}])"),
            )
        })?;
        let pool = Pool::new(database, spec.conninfo.clone(), spec.settings.clone())
            .map(Arc::new)
            .map_err(|e| {
                ErrorBody::new(
                    ErrorKind::DbUnavailable,
                    format!("database `{database}`: {e}"),
                )
            })?;
        built.insert(database.to_string(), Arc::clone(&pool));
        Ok(pool)
    }

    fn all(&self) -> Vec<Arc<Pool>> {
        self.built
            .lock()
            .expect("pool table lock")
            .values()
            .cloned()
            .collect()
    }

    /// The worker's tick: idle timeouts, lifetimes, `min_idle`, leak warnings. Only for pools
    /// already built: pools are lazy by contract, so a database no job has used yet gets no
    /// connection, whatever its `min_idle`.
    pub fn maintain(&self) {
        for pool in self.all() {
            pool.maintain();
        }
    }

    /// Every built pool's statistics, by database, for the heartbeat.
    pub fn stats(&self) -> Value {
        let stats: Map<String, Value> = self
            .all()
            .iter()
            .map(|pool| {
                let stats = serde_json::to_value(pool.stats()).unwrap_or(Value::Null);
                (pool.name().to_string(), stats)
            })
            .collect();
        Value::Object(stats)
    }

    /// Fast stop: the server is asked to cancel every query still running (see
    /// [`Pool::cancel_running`]).
    pub fn cancel_running(&self) {
        for pool in self.all() {
            pool.cancel_running();
        }
    }

    /// Graceful stop: each idle connection is closed with a Terminate message.
    pub fn close(&self) {
        for pool in self.all() {
            pool.close();
        }
    }
}

/// Maps a pool error to the protocol's closed set of kinds; `database` is the configured
/// name (`[databases.<name>]`) the connection was for.
pub fn pool_error_body(error: pool::Error, database: &str) -> ErrorBody {
    match error {
        pool::Error::Db(db) => {
            let mut body = ErrorBody::new(ErrorKind::DbError, db.message.clone())
                .with("sqlstate", db.sqlstate.clone());
            if let Some(detail) = &db.detail {
                body = body.with("detail", detail.clone());
            }
            if let Some(hint) = &db.hint {
                body = body.with("hint", hint.clone());
            }
            body
        }
        pool::Error::Timeout { .. } => ErrorBody::new(
            ErrorKind::Timeout,
            "the job ran past its timeout; its query was cancelled and its transaction rolled back",
        ),
        pool::Error::Unavailable { .. } | pool::Error::Connection(_) => ErrorBody::new(
            ErrorKind::DbUnavailable,
            format!("[databases.{database}]: {error}"),
        ),
        pool::Error::Config(_) => ErrorBody::new(ErrorKind::Internal, error.to_string()),
    }
}
