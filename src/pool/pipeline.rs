//! Several prepared queries in flight at once on one session (`workers.pipeline`).
//!
//! tokio-postgres pipelines queries issued concurrently on one client: each goes out as
//! Bind/Execute/Sync, so the server answers them in order and one query's error ends at its
//! own Sync without touching the next. What this adds is each query's own deadline: a query
//! past its deadline is answered `Timeout` at once, but the cancel request — which cancels
//! whatever the session runs *now* — is sent only when every query still pending is past its
//! deadline too, so a cancel never hits a neighbour that still has time. The price, which
//! README "Performance" states: a query waits behind the slower ones sent before it on the
//! same session.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::error::Error;
use super::pool::round_ms;

/// One query of a pipelined batch.
pub struct PipelinedQuery<'a> {
    pub statement: &'a Statement,
    pub params: Vec<&'a (dyn ToSql + Sync)>,
    /// Its own deadline: past it, it is answered `Timeout` whatever its neighbours do.
    pub deadline: Instant,
    /// When its clock started, for the `Timeout`'s "after".
    pub since: Instant,
}

/// What a pipelined statement returned: its rows, or (a statement without result columns)
/// the count of rows it affected.
pub enum Returned {
    Rows(Vec<Row>),
    Affected(u64),
}

/// What [`crate::pool::PooledConnection::query_pipelined`] reports, as it happens.
pub enum PipelineEvent {
    /// Query `index` (in the batch's order) ended: what it returned or its error. Each query
    /// is reported exactly once.
    Done(usize, Result<Returned, Error>),
    /// Nothing more is ready now: a good moment to send what was reported so far.
    Waiting,
}

/// How a batch left its session.
#[derive(Default)]
pub(super) struct Outcome {
    /// A query was abandoned at its deadline: the session needs a reset before reuse.
    pub interrupted: bool,
    /// A non-server error or a fatal server error: the session is not trusted any more.
    pub broken: bool,
    /// A query was abandoned: cancel what the server may still run of it. Sent after every
    /// query of the batch was answered, so it can hit no query that still had time.
    pub cancel: bool,
}

/// One prepared statement on `client`: its rows, or (a statement without result columns)
/// the count of rows it affected.
pub async fn run_prepared(
    client: &Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Returned, tokio_postgres::Error> {
    if statement.columns().is_empty() {
        client
            .execute(statement, params)
            .await
            .map(Returned::Affected)
    } else {
        client.query(statement, params).await.map(Returned::Rows)
    }
}

/// Runs `queries` concurrently on `client`, reporting each through `each` as it ends.
pub(super) fn drive(
    runtime: &Runtime,
    client: &Client,
    queries: &[PipelinedQuery<'_>],
    each: &mut dyn FnMut(PipelineEvent),
) -> Outcome {
    let mut outcome = Outcome::default();
    runtime.block_on(async {
        let mut pending: FuturesUnordered<_> = queries
            .iter()
            .enumerate()
            .map(|(index, query)| async move {
                let deadline = tokio::time::Instant::from_std(query.deadline);
                let run = run_prepared(client, query.statement, &query.params);
                let rows = tokio::time::timeout_at(deadline, run).await;
                (index, rows)
            })
            .collect();
        let mut open: Vec<bool> = vec![true; queries.len()];
        loop {
            // The first poll sends every query; afterwards, report what is ready before
            // sleeping, so answers that arrive together leave together.
            let next = match pending.next().now_or_never() {
                Some(next) => next,
                None => {
                    each(PipelineEvent::Waiting);
                    pending.next().await
                }
            };
            let Some((index, rows)) = next else {
                break;
            };
            open[index] = false;
            let result = match rows {
                Ok(Ok(rows)) => Ok(rows),
                Ok(Err(error)) => {
                    if is_fatal(&error) || client.is_closed() {
                        outcome.broken = true;
                    }
                    Err(Error::from(error))
                }
                Err(_elapsed) => {
                    outcome.interrupted = true;
                    Err(timeout(&queries[index]))
                }
            };
            each(PipelineEvent::Done(index, result));
            if outcome.interrupted && all_past_deadline(queries, &open) {
                // Nothing left has time: answer the rest now; the cancel follows.
                for (index, query) in queries.iter().enumerate().filter(|(i, _)| open[*i]) {
                    each(PipelineEvent::Done(index, Err(timeout(query))));
                }
                break;
            }
        }
    });
    each(PipelineEvent::Waiting);
    // Sent only now, with no query of the batch left waiting for its answer: a query that
    // timed out may still run on the server (the reset at checkin would wait behind it).
    outcome.cancel = outcome.interrupted;
    outcome
}

fn all_past_deadline(queries: &[PipelinedQuery<'_>], open: &[bool]) -> bool {
    let now = Instant::now();
    queries
        .iter()
        .zip(open)
        .all(|(query, open)| !open || query.deadline <= now)
}

fn timeout(query: &PipelinedQuery<'_>) -> Error {
    Error::Timeout {
        after: round_ms(query.since.elapsed().max(Duration::ZERO)),
    }
}

/// 57P: the server is shutting this session down; 08: a protocol-level connection failure;
/// no server error at all: the socket failed. Either way the session is gone.
pub(super) fn is_fatal(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("57P") || code.starts_with("08")
        }
        None => true,
    }
}
