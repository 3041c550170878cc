//! `LISTEN`: the notifications a session receives, kept for whoever waits on it.
//!
//! tokio-postgres hands notifications only to the code that drives the connection (its
//! `Future` drops them), so every session is driven here: notices are logged as the crate
//! logs them, notifications go to the session's [`Inbox`]. A session that never listens
//! receives none, and its inbox stays empty.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Connection};

use super::error::describe;

/// A bound on what one session keeps unread: a listener that stops reading must not grow
/// without limit. Past it the oldest are dropped; a wake-up needs only one.
const KEPT: usize = 10_000;

/// One notification: the channel and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// The notifications a session received and not yet taken, and a signal for a waiter.
#[derive(Default)]
pub(crate) struct Inbox {
    received: Mutex<VecDeque<Notification>>,
    /// Stores a permit when nobody waits, so a notification that arrives between a take and
    /// the next wait still wakes it.
    arrived: Notify,
}

impl Inbox {
    pub(crate) fn take(&self) -> Vec<Notification> {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        received.drain(..).collect()
    }

    pub(crate) async fn arrival(&self) {
        self.arrived.notified().await
    }

    fn push(&self, notification: Notification) {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        if received.len() == KEPT {
            received.pop_front();
        }
        received.push_back(notification);
        drop(received);
        self.arrived.notify_one();
    }
}

/// Drives `connection` until it closes: what `connection.await` does, keeping notifications.
pub(crate) async fn drive<S, T>(mut connection: Connection<S, T>, inbox: Arc<Inbox>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => inbox.push(Notification {
                channel: n.channel().to_string(),
                payload: n.payload().to_string(),
            }),
            Some(Ok(AsyncMessage::Notice(notice))) => {
                log::info!(target: "tokio_postgres::connection", "{}: {}", notice.severity(), notice.message())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                log::debug!(target: "forkpool::pool", "connection ended: {}", describe(&e));
                break;
            }
            None => break,
        }
    }
    // Wake a waiter so it sees the session closed instead of sleeping out its timeout.
    inbox.arrived.notify_one();
}
