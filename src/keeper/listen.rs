//! The host's one `LISTEN` session: a job enqueued by SQL from any client (or by another
//! host) wakes this host's idle slots at once instead of at the next poll.
//!
//! One session per host, never the master's: it lives in the keeper's listener thread and
//! turns each batch of notifications into one `Wake` frame. It reconnects with backoff when
//! the session breaks, and sends a `Wake` after each (re)connect, since notifications sent
//! while nobody listened are lost; the poll (`queue.poll_interval`) covers the rest.

use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use log::{debug, warn};

use crate::databases::DatabaseSpec;
use crate::ipc::FromKeeper;
use crate::pool::Pool;

/// The channel `forkpool.jobs`' insert trigger notifies, with the queue as payload.
pub const JOBS_CHANNEL: &str = "forkpool_jobs";

/// How long one wait lasts before the session is checked again.
const WAIT: Duration = Duration::from_secs(5);

/// Reconnect backoff after the session broke: from 0.5 s, doubling, to 10 s.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The listener thread's body; returns only when the master is gone.
pub fn wake_master_on_notify(database: &str, spec: DatabaseSpec, writer: &Mutex<UnixStream>) {
    // Named apart from the pools' sessions, so a DBA sees which session is the listener.
    let settings = spec
        .settings
        .clone()
        .pool_size(1)
        .min_idle(0)
        .application_name("forkpool-listen");
    let pool = match Pool::new(database, spec.conninfo.clone(), settings) {
        Ok(pool) => pool,
        Err(e) => {
            warn!(target: "forkpool::queue", "listener: database `{database}`: {e}");
            return;
        }
    };
    let mut retry = RETRY_MIN;
    loop {
        let session = pool.checkout("listen").and_then(|mut conn| {
            conn.batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))?;
            Ok(conn)
        });
        let mut conn = match session {
            Ok(conn) => conn,
            Err(e) => {
                debug!(target: "forkpool::queue", "listener: {e}; retrying in {retry:?}");
                std::thread::sleep(retry);
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = RETRY_MIN;
        if !wake(writer) {
            return;
        }
        loop {
            match conn.wait_for_notifications(WAIT) {
                Ok(received) if received.is_empty() => {}
                Ok(received) => {
                    debug!(target: "forkpool::queue", "listener: {} notifications", received.len());
                    if !wake(writer) {
                        return;
                    }
                }
                Err(e) => {
                    debug!(target: "forkpool::queue", "listener: {e}; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Tells the master work may be waiting; false once the master is gone.
fn wake(writer: &Mutex<UnixStream>) -> bool {
    let frame = crate::ipc::encode(&FromKeeper::Wake);
    let mut channel = writer.lock().unwrap_or_else(|e| e.into_inner());
    std::io::Write::write_all(&mut *channel, &frame).is_ok()
}
