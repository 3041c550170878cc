//! Client I/O and routing: accepting connections (admitted or refused), reading request
//! lines, answering `ping`, `status` and `jobs` at once, handing `run` to dispatch and the
//! operator's ops to `admin_requests`, writing answers, closing idle clients.

use std::time::Instant;

use log::{info, warn};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::geteuid;
use serde_json::value::RawValue;

use super::admission;
use super::clients::{Client, ClientId};
use super::status;
use super::Master;
use crate::protocol::{self, ErrorBody, ErrorKind, Op, Request};

impl Master {
    pub(super) fn accept_clients(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let stream = match listener.socket.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let peer = getsockopt(&stream, PeerCredentials)
                .ok()
                .map(|creds| admission::Peer {
                    pid: creds.pid(),
                    uid: creds.uid(),
                    gid: creds.gid(),
                });
            let mut client = Client::new(stream, peer);
            let admitted = admission::admit(
                &self.config.service,
                geteuid().as_raw(),
                peer,
                self.clients.len(),
            );
            if let Err(body) = admitted {
                warn!("refused {client}: {}", body.message);
                client.send(&protocol::error_line(&protocol::null_id(), &body.to_json()));
                client.close_after_flush = true;
                if client.flush().is_err() || client.finished() {
                    // Answered in full: dropping it closes it now, so the refused peer sees
                    // EOF right after the answer and holds no slot.
                    continue;
                }
            }
            self.clients.add(client);
        }
    }

    /// Closes clients that sent nothing for `service.client_idle_timeout` and await nothing:
    /// no answer waiting to be written, no job in flight (an accepted job always gets its
    /// answer). A stalled half line counts as nothing sent since its last byte.
    pub(super) fn close_idle_clients(&mut self) {
        let Some(timeout) = self.config.service.client_idle_timeout else {
            return;
        };
        let mut idle = self.clients.idle(timeout, Instant::now());
        if idle.is_empty() {
            return;
        }
        let awaiting = self.jobs.awaiting_clients();
        idle.retain(|id| !awaiting.contains(id) && !self.control.awaits(*id));
        for id in idle {
            if let Some(client) = self.clients.remove(id) {
                info!(
                    "closing {client}: nothing received for {} (service.client_idle_timeout)",
                    humantime::format_duration(timeout)
                );
            }
        }
    }

    pub(super) fn read_requests(&mut self, id: ClientId) {
        let max = self.config.service.max_request_bytes;
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let input = client.read_lines(max, &mut self.scratch);
        for line in input.lines {
            self.handle_request(id, &line);
        }
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        if input.too_large {
            let body = ErrorBody::new(
                ErrorKind::TooLarge,
                format!("request line longer than service.max_request_bytes = {max}; closing"),
            );
            client.send(&protocol::error_line(&protocol::null_id(), &body.to_json()));
            client.close_after_flush = true;
        }
        if input.closed || client.finished() {
            self.clients.remove(id);
            return;
        }
        if input.half_closed {
            self.close_if_answered(id);
        }
    }

    /// Closes a client that closed its sending side once it is owed nothing: every answer
    /// written, no job or durable request of its own in flight.
    pub(super) fn close_if_answered(&mut self, id: ClientId) {
        let owed = self.jobs.awaiting_clients().contains(&id)
            || self.durable_requests.awaits(id)
            || self.control.awaits(id);
        if let Some(client) = self.clients.get_mut(id) {
            if client.read_closed && !client.wants_write() && !owed {
                self.clients.remove(id);
            }
        }
    }

    /// Writes the answers queued this turn: one write per client for all of its answers
    /// (the loop calls it last, before waiting). A client that is finished or owed nothing
    /// more after its half-close is closed here.
    pub(super) fn flush_answers(&mut self) {
        for id in self.clients.flush_due() {
            self.flush_client(id);
        }
    }

    pub(super) fn flush_client(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        if client.flush().is_err() || client.finished() {
            self.clients.remove(id);
            return;
        }
        self.close_if_answered(id);
    }

    pub(super) fn answer(&mut self, client: ClientId, line: &[u8]) {
        // Written by `flush_answers` at the end of the turn, which also closes the client
        // if this was the last answer it was owed.
        if let Some(c) = self.clients.get_mut(client) {
            c.send(line);
        }
    }

    pub(super) fn answer_error(&mut self, client: ClientId, id: &RawValue, body: &ErrorBody) {
        self.answer(client, &protocol::error_line(id, &body.to_json()));
    }

    fn handle_request(&mut self, client: ClientId, line: &[u8]) {
        let Request { id, op } = match protocol::parse_request(line) {
            Ok(request) => request,
            Err(rejection) => {
                return self.answer_error(client, &rejection.id, &rejection.body);
            }
        };
        match op {
            Op::Ping => {
                let pong = format!("{{\"pong\":true,\"pid\":{}}}", std::process::id());
                self.answer(client, &protocol::ok_line(&id, &pong));
            }
            Op::Status => {
                let status = status::build(self).to_string();
                self.answer(client, &protocol::ok_line(&id, &status));
            }
            Op::Jobs => {
                let jobs = status::catalog(&self.catalog).to_string();
                self.answer(client, &protocol::ok_line(&id, &jobs));
            }
            Op::Run {
                job,
                args,
                timeout_ms,
            } => self.accept_job(client, id, &job, args, timeout_ms),
            Op::Enqueue { job, args, options } => {
                self.accept_enqueue(client, id, job, args, options)
            }
            Op::Result { job_id, wait_ms } => self.accept_result(client, id, job_id, wait_ms),
            Op::Cancel { job_id } => self.accept_cancel(client, id, job_id),
            Op::Queues => self.accept_queue_control(client, id, None),
            Op::Pause { queue, paused } => {
                self.accept_queue_control(client, id, Some((queue, paused)))
            }
            Op::Admin(admin) => self.accept_admin(client, id, admin),
        }
    }
}
