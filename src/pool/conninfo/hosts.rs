//! The host list of a conninfo and what picks among its hosts: libpq's pairing of `host`
//! and `port` lists, and `target_session_attrs`.

use super::super::error::Error;
use super::ConnInfo;
use std::path::Path;

/// libpq's `target_session_attrs`: with several hosts, the first (in order) whose session
/// has these properties is used; the others are closed and the next host is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// Any server that accepts the connection (the default).
    Any,
    /// `SHOW transaction_read_only` is off: a primary not in default read-only mode.
    ReadWrite,
    /// `SHOW transaction_read_only` is on.
    ReadOnly,
    /// `pg_is_in_recovery()` is false.
    Primary,
    /// `pg_is_in_recovery()` is true.
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    pub(super) fn parse(value: &str) -> Result<TargetSessionAttrs, Error> {
        match value {
            "any" => Ok(TargetSessionAttrs::Any),
            "read-write" => Ok(TargetSessionAttrs::ReadWrite),
            "read-only" => Ok(TargetSessionAttrs::ReadOnly),
            "primary" => Ok(TargetSessionAttrs::Primary),
            "standby" => Ok(TargetSessionAttrs::Standby),
            "prefer-standby" => Ok(TargetSessionAttrs::PreferStandby),
            other => Err(Error::Config(format!(
                "invalid target_session_attrs {other:?}: use any, read-write, read-only, \
                 primary, standby or prefer-standby"
            ))),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// One host to try: where, and the port. Unix-socket directories start with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl ConnInfo {
    /// The hosts to try, in order, each with its port: libpq's pairing of the `host` and
    /// `port` lists (one port for every host, or one per host). An empty host is the default
    /// socket directory, an empty port 5432.
    pub(crate) fn hosts(&self) -> Result<Vec<HostPort>, Error> {
        let hosts: Vec<&str> = self.host.as_deref().unwrap_or("").split(',').collect();
        let ports: Vec<&str> = self.port.as_deref().unwrap_or("").split(',').collect();
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(Error::Config(format!(
                "could not match {} port numbers to {} hosts: give one port for all hosts or \
                 one per host",
                ports.len(),
                hosts.len()
            )));
        }
        let mut list = Vec::with_capacity(hosts.len());
        for (i, host) in hosts.iter().enumerate() {
            let port = ports[if ports.len() == 1 { 0 } else { i }].trim();
            let port = if port.is_empty() {
                5432
            } else {
                parse_port(port)?
            };
            let host = match host.trim() {
                "" => default_socket_dir().to_string(),
                host => host.to_string(),
            };
            list.push(HostPort { host, port });
        }
        Ok(list)
    }
}

/// One `host[:port]` of a URL's host list; an IPv6 address is bracketed.
pub(super) fn split_host_port(spec: &str) -> Result<(&str, Option<&str>), Error> {
    if let Some(bracketed) = spec.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| {
            Error::Config("invalid host in URL: an IPv6 address needs a closing ']'".into())
        })?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => {
                return Err(Error::Config(format!(
                    "invalid host in URL: {after:?} after the IPv6 address \
                     (expected `:port`, `,`, `/dbname` or `?`)"
                )))
            }
        };
        Ok((host, port))
    } else {
        Ok(match spec.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (spec, None),
        })
    }
}

pub(super) fn parse_port(port: &str) -> Result<u16, Error> {
    port.parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::Config(format!("invalid port {port:?}: expected a number 1-65535")))
}

/// libpq's default socket directory: `/var/run/postgresql` where it exists (Debian's build),
/// else `/tmp` (the upstream default).
pub(crate) fn default_socket_dir() -> &'static str {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql"
    } else {
        "/tmp"
    }
}
