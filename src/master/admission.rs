//! Who may hold a connection: the peer's credentials against `service.allowed_uids` and
//! `service.allowed_gids`, and the connection count against `service.max_clients`.
//!
//! A pure decision, apart from the socket, so every case is a unit test. The caller answers
//! a refusal with its error line and closes the connection.

use crate::config::ServiceConfig;
use crate::protocol::{ErrorBody, ErrorKind};

/// The peer process as the kernel saw it at `connect` (`SO_PEERCRED`): its pid, effective
/// uid and effective (primary) gid. Supplementary groups are not part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Decides on a connection just accepted, while `open` others are held: `Ok` to serve it,
/// or the error to answer before closing it.
///
/// Access is checked first, so a peer that may not use the service is told so whatever the
/// load. `peer` is `None` when the credentials could not be read: such a peer gets in only
/// when no list restricts access.
pub fn admit(
    service: &ServiceConfig,
    own_uid: u32,
    peer: Option<Peer>,
    open: usize,
) -> Result<(), ErrorBody> {
    if !allowed(service, own_uid, peer) {
        let who = match peer {
            Some(peer) => format!("uid {} (gid {})", peer.uid, peer.gid),
            None => "a peer whose credentials could not be read".to_string(),
        };
        // The lists themselves are not shown: a refused peer learns only which keys to ask
        // the operator about.
        return Err(ErrorBody::new(
            ErrorKind::Forbidden,
            format!(
                "{who} may not use this service: neither is listed in service.allowed_uids \
                 or service.allowed_gids"
            ),
        ));
    }
    if open >= service.max_clients {
        return Err(ErrorBody::new(
            ErrorKind::TooManyClients,
            format!(
                "the service already holds service.max_clients = {} connections; \
                 try again later",
                service.max_clients
            ),
        ));
    }
    Ok(())
}

/// With both lists empty, whoever can open the socket file (its mode and directory are the
/// access control). Otherwise a peer whose uid or primary gid is listed, and always the
/// service's own uid: its operator runs `status` as that user.
fn allowed(service: &ServiceConfig, own_uid: u32, peer: Option<Peer>) -> bool {
    let (uids, gids) = (&service.allowed_uids, &service.allowed_gids);
    if uids.is_empty() && gids.is_empty() {
        return true;
    }
    peer.is_some_and(|p| p.uid == own_uid || uids.contains(&p.uid) || gids.contains(&p.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: u32 = 999;

    fn service(uids: &[u32], gids: &[u32], max_clients: usize) -> ServiceConfig {
        ServiceConfig {
            allowed_uids: uids.to_vec(),
            allowed_gids: gids.to_vec(),
            max_clients,
            ..ServiceConfig::default()
        }
    }

    fn peer(uid: u32, gid: u32) -> Option<Peer> {
        Some(Peer { pid: 1, uid, gid })
    }

    fn kind(result: Result<(), ErrorBody>) -> Option<ErrorKind> {
        result.err().map(|body| body.kind)
    }

    #[test]
    fn empty_lists_let_in_whoever_reaches_the_socket() {
        let open = service(&[], &[], 10);
        assert_eq!(kind(admit(&open, OWN, peer(1000, 1000), 0)), None);
        assert_eq!(kind(admit(&open, OWN, None, 0)), None);
    }

    #[test]
    fn a_listed_uid_or_primary_gid_is_enough() {
        let both = service(&[1000], &[50], 10);
        assert_eq!(kind(admit(&both, OWN, peer(1000, 1), 0)), None);
        assert_eq!(kind(admit(&both, OWN, peer(2000, 50), 0)), None);
        assert_eq!(
            kind(admit(&both, OWN, peer(2000, 51), 0)),
            Some(ErrorKind::Forbidden)
        );
        let gids_only = service(&[], &[50], 10);
        assert_eq!(kind(admit(&gids_only, OWN, peer(2000, 50), 0)), None);
        assert_eq!(
            kind(admit(&gids_only, OWN, peer(2000, 1), 0)),
            Some(ErrorKind::Forbidden)
        );
        let uids_only = service(&[1000], &[], 10);
        assert_eq!(
            kind(admit(&uids_only, OWN, peer(2000, 1000), 0)),
            Some(ErrorKind::Forbidden),
            "a gid is not matched against allowed_uids"
        );
    }

    #[test]
    fn the_service_own_uid_is_always_allowed_and_unknown_peers_never_when_restricted() {
        let restricted = service(&[1000], &[50], 10);
        assert_eq!(kind(admit(&restricted, OWN, peer(OWN, 7), 0)), None);
        assert_eq!(
            kind(admit(&restricted, OWN, None, 0)),
            Some(ErrorKind::Forbidden)
        );
    }

    #[test]
    fn a_refusal_names_the_peer_and_both_keys_but_not_the_lists() {
        let body = admit(&service(&[1000], &[50], 10), OWN, peer(2000, 60), 0).unwrap_err();
        assert!(
            body.message.contains("uid 2000 (gid 60)"),
            "{}",
            body.message
        );
        assert!(
            body.message.contains("service.allowed_uids")
                && body.message.contains("service.allowed_gids"),
            "{}",
            body.message
        );
        assert!(!body.message.contains("1000"), "the list is not shown");
    }

    #[test]
    fn connections_past_max_clients_are_refused_naming_the_cap() {
        let capped = service(&[], &[], 5);
        assert_eq!(kind(admit(&capped, OWN, peer(1000, 1000), 4)), None);
        let body = admit(&capped, OWN, peer(1000, 1000), 5).unwrap_err();
        assert_eq!(body.kind, ErrorKind::TooManyClients);
        assert!(
            body.message.contains("service.max_clients = 5"),
            "{}",
            body.message
        );
        // The service's own uid counts against the cap too: the cap protects descriptors.
        assert_eq!(
            kind(admit(&capped, OWN, peer(OWN, OWN), 5)),
            Some(ErrorKind::TooManyClients)
        );
        // Access comes first: a forbidden peer is told so, whatever the load.
        assert_eq!(
            kind(admit(&service(&[1], &[], 5), OWN, peer(2, 2), 5)),
            Some(ErrorKind::Forbidden)
        );
    }
}
