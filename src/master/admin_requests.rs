//! The operator's requests over the socket (DESIGN §5 "Administration"): `reload`, `stop`
//! and `scale`, the same actions as SIGHUP, SIGTERM/SIGINT and SIGTTIN/SIGTTOU (the same
//! functions of `control` and `scaling`), each answered once it has been taken.
//!
//! Who may send them is decided per request, not per connection: a peer allowed to submit
//! jobs (`allowed_uids`, `allowed_gids`) is not thereby allowed to stop the service. Only
//! the service's own uid and `service.admin_uids` are; the decision is [`may_administer`],
//! a pure function.

use log::{info, warn};
use nix::unistd::geteuid;
use serde_json::json;
use serde_json::value::RawValue;

use super::admission::Peer;
use super::clients::ClientId;
use super::control::Reload;
use super::Master;
use crate::config::ServiceConfig;
use crate::protocol::{self, Admin, ErrorBody, ErrorKind, Scale};

/// The superuser's uid.
const ROOT: u32 = 0;

/// `Ok` when `peer` may reload, stop or scale the service run by `own_uid`; else the
/// `forbidden` answer naming the uid and the key that would allow it. Root always may: it
/// can send the master SIGHUP or SIGTERM anyway, so refusing `sudo forkpool reload` would
/// protect nothing and only surprise the operator.
pub fn may_administer(
    service: &ServiceConfig,
    own_uid: u32,
    peer: Option<Peer>,
    op: &str,
) -> Result<(), ErrorBody> {
    match peer {
        Some(peer)
            if peer.uid == own_uid
                || peer.uid == ROOT
                || service.admin_uids.contains(&peer.uid) =>
        {
            Ok(())
        }
        Some(peer) => Err(ErrorBody::new(
            ErrorKind::Forbidden,
            format!(
                "uid {} may not {op} the service: only its own uid ({own_uid}), root and the \
                 uids in service.admin_uids may (add {} there and reload)",
                peer.uid, peer.uid
            ),
        )),
        None => Err(ErrorBody::new(
            ErrorKind::Forbidden,
            format!("{op} needs the peer's uid, and the kernel did not tell it"),
        )),
    }
}

impl Master {
    /// `reload`, `stop` or `scale` from `client`: refused `forbidden` unless its uid may
    /// administer the service, `shutting_down` (but `stop`) once the service is stopping.
    pub(super) fn accept_admin(&mut self, client: ClientId, id: Box<RawValue>, op: Admin) {
        let name = op.name();
        let Some(peer) = self.clients.get_mut(client).map(|c| c.peer) else {
            return;
        };
        let asked_by = match peer {
            Some(p) => format!("{name} asked by uid {} (pid {})", p.uid, p.pid),
            None => format!("{name} asked by a client"),
        };
        if let Err(body) = may_administer(&self.config.service, geteuid().as_raw(), peer, name) {
            warn!("refused: {}", body.message);
            return self.answer_error(client, &id, &body);
        }
        if self.control.stopping() && !matches!(op, Admin::Stop { .. }) {
            let body = ErrorBody::new(ErrorKind::ShuttingDown, "the service is stopping");
            return self.answer_error(client, &id, &body);
        }
        match op {
            Admin::Reload => match self.reload(&asked_by) {
                Reload::Accepted => self.await_reload(client, id),
                Reload::Refused(problems) => {
                    let body = ErrorBody::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "reload refused, the running configuration is kept: {}",
                            problems.join("; ")
                        ),
                    )
                    .with("problems", problems);
                    self.answer_error(client, &id, &body);
                }
                Reload::Stopping => {
                    let body = ErrorBody::new(ErrorKind::ShuttingDown, "the service is stopping");
                    self.answer_error(client, &id, &body);
                }
            },
            Admin::Stop { fast } => {
                if fast {
                    self.fast_stop_asked(&asked_by);
                } else {
                    self.begin_graceful_stop(&asked_by);
                }
                let mode = self.control.stop_mode().unwrap_or("graceful");
                let result = json!({"stopping": mode, "pid": std::process::id()});
                self.answer(client, &protocol::ok_line(&id, &result.to_string()));
            }
            Admin::Scale(scale) => {
                let was = self.size.target();
                let wanted = match scale {
                    Scale::To(n) => n as i64,
                    Scale::By(step) => was as i64 + step,
                };
                match self.scale_to(wanted) {
                    Ok(target) => {
                        info!("{asked_by}: {target} workers (was {was})");
                        let result = json!({"target_workers": target, "was": was});
                        self.answer(client, &protocol::ok_line(&id, &result.to_string()));
                    }
                    Err(refusal) => {
                        let body = ErrorBody::new(ErrorKind::BadRequest, refusal);
                        self.answer_error(client, &id, &body);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: u32 = 999;

    fn peer(uid: u32) -> Option<Peer> {
        Some(Peer {
            pid: 1,
            uid,
            gid: uid,
        })
    }

    #[test]
    fn only_the_own_uid_and_admin_uids_may_administer() {
        let service = ServiceConfig {
            admin_uids: vec![1000],
            // Allowed to connect is not allowed to administer.
            allowed_uids: vec![2000],
            ..ServiceConfig::default()
        };
        assert!(may_administer(&service, OWN, peer(OWN), "stop").is_ok());
        assert!(may_administer(&service, OWN, peer(1000), "stop").is_ok());
        let refused = may_administer(&service, OWN, peer(2000), "stop").unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Forbidden);
        assert!(
            refused.message.contains("uid 2000 may not stop")
                && refused.message.contains("service.admin_uids"),
            "{}",
            refused.message
        );
        assert!(may_administer(&service, OWN, None, "reload").is_err());
        let default = ServiceConfig::default();
        assert!(
            may_administer(&default, OWN, peer(0), "scale").is_ok(),
            "root may signal the master anyway"
        );
    }
}
