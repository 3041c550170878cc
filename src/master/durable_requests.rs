//! The durable ops of the socket (DESIGN §12) — `enqueue`, `result`, `cancel` — checked here,
//! run by the keeper, each answered once: by the keeper's answer, by a `result` wait's end,
//! or `db_unavailable` if the keeper dies first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::clients::ClientId;
use super::Master;
use crate::ipc::{EnqueueOptions, ToKeeper};
use crate::protocol::{self, Args, ErrorBody, ErrorKind};

/// A request the keeper has not answered yet.
pub struct Pending {
    client: ClientId,
    request_id: Box<RawValue>,
    what: Asked,
}

enum Asked {
    Enqueue,
    /// `cancel`, or queue control: answered as the keeper answers.
    Cancel,
    /// A `result` read; with `until`, it waits for a final state until then. `stale`: the
    /// job was settled here while the read was on its way, so a read that found it still
    /// running is repeated at once instead of waiting for the next poll.
    Result {
        job_id: i64,
        until: Option<Instant>,
        stale: bool,
    },
}

/// A `result` wait between reads: re-read when its job is settled here, every poll, and
/// once more at its end.
pub struct Parked {
    client: ClientId,
    request_id: Box<RawValue>,
    job_id: i64,
    until: Instant,
}

/// The durable requests in flight.
#[derive(Default)]
pub struct DurableRequests {
    next: u64,
    pending: HashMap<u64, Pending>,
    parked: Vec<Parked>,
}

impl DurableRequests {
    /// Whether `client` is owed an answer to a durable request.
    pub fn awaits(&self, client: ClientId) -> bool {
        self.pending.values().any(|p| p.client == client)
            || self.parked.iter().any(|p| p.client == client)
    }

    /// When the earliest `result` wait ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.until).min()
    }
}

impl Master {
    /// Refuses a durable op when durable jobs are off or the service stops; `true` if refused.
    fn refuse_durable(&mut self, client: ClientId, id: &RawValue, op: &str) -> bool {
        let body = if !self.durable_enabled() {
            ErrorBody::new(
                ErrorKind::BadRequest,
                format!("`{op}`: durable jobs are off (queue.database is \"\")"),
            )
        } else if self.control.stopping() && op == "enqueue" {
            ErrorBody::new(ErrorKind::ShuttingDown, "the service is stopping")
        } else {
            return false;
        };
        self.answer_error(client, id, &body);
        true
    }

    /// `enqueue`: checked against the catalog exactly like `run`, then stored by the keeper.
    pub(super) fn accept_enqueue(
        &mut self,
        client: ClientId,
        id: Box<RawValue>,
        job: String,
        args: Args,
        options: EnqueueOptions,
    ) {
        if self.refuse_durable(client, &id, "enqueue") {
            return;
        }
        if let Err(body) = self.checked_job(&job, &args) {
            return self.answer_error(client, &id, &body);
        }
        if let Some(run_at) = &options.run_at {
            if let Err(e) = chrono::DateTime::parse_from_rfc3339(run_at) {
                let body = ErrorBody::new(
                    ErrorKind::BadRequest,
                    format!("run_at {run_at:?} is not an RFC 3339 time: {e}"),
                );
                return self.answer_error(client, &id, &body);
            }
        }
        let request = self.ask_keeper(client, id, Asked::Enqueue);
        if let Some(request) = request {
            self.durable.keeper.send(&ToKeeper::Enqueue {
                request,
                job,
                args: args.raw,
                options,
            });
        }
    }

    /// `result`: the job as it is now, or — with `wait_ms` — once it is final.
    pub(super) fn accept_result(
        &mut self,
        client: ClientId,
        id: Box<RawValue>,
        job_id: i64,
        wait_ms: Option<u64>,
    ) {
        if self.refuse_durable(client, &id, "result") {
            return;
        }
        let until = wait_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let asked = Asked::Result {
            job_id,
            until,
            stale: false,
        };
        if let Some(request) = self.ask_keeper(client, id, asked) {
            self.durable
                .keeper
                .send(&ToKeeper::Read { request, job_id });
        }
    }

    /// `queues` (`None`), or `pause` / `resume` of a queue: run by the keeper.
    pub(super) fn accept_queue_control(
        &mut self,
        client: ClientId,
        id: Box<RawValue>,
        pause: Option<(String, bool)>,
    ) {
        if self.refuse_durable(client, &id, "queues") {
            return;
        }
        if let Some(request) = self.ask_keeper(client, id, Asked::Cancel) {
            self.durable.keeper.send(&match pause {
                None => ToKeeper::Queues { request },
                Some((queue, true)) => ToKeeper::Pause { request, queue },
                Some((queue, false)) => ToKeeper::Resume { request, queue },
            });
        }
    }

    pub(super) fn accept_cancel(&mut self, client: ClientId, id: Box<RawValue>, job_id: i64) {
        if self.refuse_durable(client, &id, "cancel") {
            return;
        }
        if let Some(request) = self.ask_keeper(client, id, Asked::Cancel) {
            self.durable
                .keeper
                .send(&ToKeeper::Cancel { request, job_id });
        }
    }

    /// Records a request for the keeper; answers `db_unavailable` now when no keeper runs.
    fn ask_keeper(&mut self, client: ClientId, id: Box<RawValue>, what: Asked) -> Option<u64> {
        if self.durable.keeper.is_gone() {
            let why = self
                .durable
                .unready_why
                .clone()
                .unwrap_or_else(|| "the queue keeper is not running".to_string());
            let body = ErrorBody::new(ErrorKind::DbUnavailable, why);
            self.answer_error(client, &id, &body);
            return None;
        }
        let requests = &mut self.durable_requests;
        let request = requests.next;
        requests.next += 1;
        requests.pending.insert(
            request,
            Pending {
                client,
                request_id: id,
                what,
            },
        );
        Some(request)
    }

    /// The keeper's answer to request `request`.
    pub(super) fn on_keeper_answer(&mut self, request: u64, ok: bool, body: &str, finished: bool) {
        let Some(pending) = self.durable_requests.pending.remove(&request) else {
            return;
        };
        if let Asked::Result {
            job_id,
            until: Some(until),
            stale,
        } = pending.what
        {
            if ok && !finished && Instant::now() < until {
                self.durable_requests.parked.push(Parked {
                    client: pending.client,
                    request_id: pending.request_id,
                    job_id,
                    until,
                });
                if stale {
                    self.reread_results_of(job_id);
                }
                return;
            }
        }
        if ok && matches!(pending.what, Asked::Enqueue) {
            self.durable.totals.enqueued += 1;
            // A worker may be idle right now: no waiting for the poll. One seeker per job.
            self.durable.wake(1);
        }
        let line = if ok {
            protocol::ok_line(&pending.request_id, body)
        } else {
            protocol::error_line(&pending.request_id, body)
        };
        self.answer(pending.client, &line);
    }

    /// Re-reads the `result` waits on `job_id`: it was settled on this host.
    pub(super) fn reread_results_of(&mut self, job_id: i64) {
        for pending in self.durable_requests.pending.values_mut() {
            if let Asked::Result {
                job_id: read,
                stale,
                ..
            } = &mut pending.what
            {
                *stale |= *read == job_id;
            }
        }
        self.reread_parked(|parked| parked.job_id == job_id);
    }

    /// Re-reads every `result` wait (each poll: a job settled by another host is seen), and
    /// those whose time is up a last time, answered whatever the state.
    pub(super) fn reread_parked_results(&mut self) {
        self.reread_parked(|_| true);
    }

    fn reread_parked(&mut self, which: impl Fn(&Parked) -> bool) {
        let now = Instant::now();
        let (due, kept): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut self.durable_requests.parked)
                .into_iter()
                .partition(|parked| which(parked) || now >= parked.until);
        self.durable_requests.parked = kept;
        for parked in due {
            let until = (now < parked.until).then_some(parked.until);
            let asked = Asked::Result {
                job_id: parked.job_id,
                until,
                stale: false,
            };
            if let Some(request) = self.ask_keeper(parked.client, parked.request_id, asked) {
                self.durable.keeper.send(&ToKeeper::Read {
                    request,
                    job_id: parked.job_id,
                });
            }
        }
    }

    /// The `result` waits whose time is up get their last read now.
    pub(super) fn end_due_result_waits(&mut self) {
        let now = Instant::now();
        if self.durable_requests.parked.iter().any(|p| now >= p.until) {
            self.reread_parked(|_| false);
        }
    }

    /// The keeper died or stops: every request it holds is answered, and the waits too.
    pub(super) fn answer_keeper_requests_unavailable(&mut self) {
        let pending: Vec<Pending> = self
            .durable_requests
            .pending
            .drain()
            .map(|(_, p)| p)
            .collect();
        let parked = std::mem::take(&mut self.durable_requests.parked);
        let body = ErrorBody::new(
            ErrorKind::DbUnavailable,
            "the queue keeper stopped before it answered; ask again",
        );
        for pending in pending {
            self.answer_error(pending.client, &pending.request_id, &body);
        }
        for parked in parked {
            self.answer_error(parked.client, &parked.request_id, &body);
        }
    }
}
