//! libpq connection settings: one type, parsed from a URL or a `key=value` string, filled from
//! the PG* environment variables and then libpq's defaults, as `psql` would.

use super::error::Error;
use std::fmt;
use std::path::Path;
use std::time::Duration;

mod hosts;

pub use hosts::TargetSessionAttrs;
pub(crate) use hosts::{default_socket_dir, HostPort};
use hosts::{parse_port, split_host_port};

/// libpq's `sslmode`. Unix-socket connections never use TLS, whatever the mode (libpq too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, else plain. Not verified unless a root certificate is
    /// available (`sslrootcert` or `~/.postgresql/root.crt`): then the chain is verified.
    Prefer,
    /// TLS or fail. Verification as for `Prefer`.
    Require,
    /// TLS, certificate chain verified against `sslrootcert`; the host name is not checked.
    VerifyCa,
    /// TLS, chain verified and the certificate must name the host (DNS or IP SAN).
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, Error> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(Error::Config(format!(
                "invalid sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
            ))),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The connection settings of one database, with libpq's key names. A field left `None` is
/// filled by [`ConnInfo::with_env`]; the pool fills any gap left then with libpq's defaults.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// `host`: a host name, an IP address, or a Unix-socket directory (starts with `/`); or
    /// several, comma-separated, tried in order as libpq does (see `target_session_attrs`).
    pub host: Option<String>,
    /// `port`: also names the Unix socket file `<host>/.s.PGSQL.<port>`. With several hosts,
    /// one port for all or one per host (comma-separated; an empty one is 5432).
    pub port: Option<String>,
    pub user: Option<String>,
    /// Never shown by `Debug`, `Display` or any error.
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub sslmode: Option<SslMode>,
    /// `sslrootcert`: PEM file of the CA(s) that may sign the server's certificate.
    pub sslrootcert: Option<String>,
    /// `sslcert`: PEM client certificate, sent when the server asks for one (default
    /// `~/.postgresql/postgresql.crt`, if that file exists).
    pub sslcert: Option<String>,
    /// `sslkey`: the client certificate's private key (default `~/.postgresql/postgresql.key`).
    pub sslkey: Option<String>,
    /// `passfile`: where to look up a password not given otherwise (default `~/.pgpass`).
    pub passfile: Option<String>,
    /// `service`: a section of the service file whose keys fill what the string left out.
    pub service: Option<String>,
    /// `target_session_attrs`: which of several hosts is acceptable.
    pub target_session_attrs: Option<TargetSessionAttrs>,
    pub application_name: Option<String>,
    /// `connect_timeout` in seconds, as libpq; the pool's own `connect_timeout` applies when absent.
    pub connect_timeout: Option<Duration>,
    /// `options`: command-line options sent to the server at startup (`-c name=value`).
    pub options: Option<String>,
}

const ENV_KEYS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGDATABASE", "dbname"),
    ("PGPASSWORD", "password"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGPASSFILE", "passfile"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGAPPNAME", "application_name"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
];

impl ConnInfo {
    /// Parses a libpq URL (`postgres://` or `postgresql://`) or a `key=value` string.
    /// Errors name the bad key (and never repeat a password).
    pub fn parse(s: &str) -> Result<ConnInfo, Error> {
        let trimmed = s.trim();
        let mut info = ConnInfo::default();
        if let Some(rest) = trimmed
            .strip_prefix("postgresql://")
            .or_else(|| trimmed.strip_prefix("postgres://"))
        {
            info.parse_url(rest)?;
        } else {
            for (key, value) in parse_key_values(trimmed)? {
                info.set(&key, value)?;
            }
        }
        Ok(info)
    }

    /// Fills what the string left out from the PG* variables (looked up through `lookup`, so
    /// tests need not touch the process environment), then from libpq's defaults: a Unix
    /// socket in `/var/run/postgresql` if it exists else `/tmp`, the OS user, a database
    /// named like the user, sslmode prefer (a missing port stays unset: 5432 is applied per
    /// host, see `hosts`). An unparsable variable is ignored (libpq would fail the
    /// connection; a worker should rather use the default). Run [`ConnInfo::with_service`]
    /// first: a service's keys win over the variables.
    pub fn with_env(mut self, lookup: impl Fn(&str) -> Option<String>) -> ConnInfo {
        for (variable, key) in ENV_KEYS {
            if self.is_set(key) {
                continue;
            }
            if let Some(value) = lookup(variable).filter(|v| !v.is_empty()) {
                if self.set(key, value).is_err() {
                    log::warn!(target: "forkpool::pool", "ignoring unusable {variable}");
                }
            }
        }
        self.fill_defaults();
        self
    }

    /// Reads the password from the first line of `path` (trimmed). It replaces any password
    /// given in the string: a password file is the deliberate way to keep it out of config.
    pub fn with_password_file(mut self, path: &Path) -> Result<ConnInfo, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read password_file {}: {e}", path.display()))
        })?;
        let first_line = text.lines().next().unwrap_or("").trim();
        if first_line.is_empty() {
            return Err(Error::Config(format!(
                "password_file {} is empty: put the password on its first line",
                path.display()
            )));
        }
        self.password = Some(first_line.to_string());
        Ok(self)
    }

    /// The host, user, dbname and sslmode defaults (see [`ConnInfo::with_env`]).
    pub(crate) fn fill_defaults(&mut self) {
        if self.host.is_none() {
            self.host = Some(default_socket_dir().to_string());
        }
        if self.user.is_none() {
            self.user = os_user();
        }
        if self.dbname.is_none() {
            self.dbname = self.user.clone();
        }
        self.sslmode.get_or_insert(SslMode::Prefer);
    }

    /// True when `host` names Unix-socket directories only, no TCP host.
    pub(crate) fn is_unix_socket(&self) -> bool {
        self.host
            .as_deref()
            .is_some_and(|h| h.split(',').all(|h| h.trim().starts_with('/')))
    }

    pub(super) fn is_set(&self, key: &str) -> bool {
        match key {
            "host" => self.host.is_some(),
            "port" => self.port.is_some(),
            "user" => self.user.is_some(),
            "password" => self.password.is_some(),
            "dbname" => self.dbname.is_some(),
            "sslmode" => self.sslmode.is_some(),
            "sslrootcert" => self.sslrootcert.is_some(),
            "sslcert" => self.sslcert.is_some(),
            "sslkey" => self.sslkey.is_some(),
            "passfile" => self.passfile.is_some(),
            "service" => self.service.is_some(),
            "target_session_attrs" => self.target_session_attrs.is_some(),
            "application_name" => self.application_name.is_some(),
            "connect_timeout" => self.connect_timeout.is_some(),
            "options" => self.options.is_some(),
            _ => false,
        }
    }

    pub(super) fn set(&mut self, key: &str, value: String) -> Result<(), Error> {
        match key {
            "host" => self.host = Some(value),
            "port" => {
                for port in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    parse_port(port)?;
                }
                self.port = Some(value)
            }
            "user" => self.user = Some(value),
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "sslmode" => self.sslmode = Some(SslMode::parse(&value)?),
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" => self.sslcert = Some(value),
            "sslkey" => self.sslkey = Some(value),
            "passfile" => self.passfile = Some(value),
            "service" => self.service = Some(value),
            "target_session_attrs" => {
                self.target_session_attrs = Some(TargetSessionAttrs::parse(&value)?)
            }
            "application_name" => self.application_name = Some(value),
            "connect_timeout" => {
                let seconds: u64 = value.parse().map_err(|_| {
                    Error::Config(format!(
                        "invalid connect_timeout {value:?}: expected whole seconds"
                    ))
                })?;
                self.connect_timeout = Some(Duration::from_secs(seconds));
            }
            "options" => self.options = Some(value),
            other => {
                return Err(Error::Config(format!(
                    "unsupported connection option {other:?}: use host, port, user, password, \
                     dbname, sslmode, sslrootcert, sslcert, sslkey, passfile, service, \
                     target_session_attrs, application_name, connect_timeout or options"
                )))
            }
        }
        Ok(())
    }

    /// `[user[:password]@][host][:port][/dbname][?key=value&...]`, percent-encoded.
    fn parse_url(&mut self, rest: &str) -> Result<(), Error> {
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (before_query, None),
        };
        let host_port = match authority.rsplit_once('@') {
            Some((credentials, host_port)) => {
                match credentials.split_once(':') {
                    Some((user, password)) => {
                        self.set_nonempty("user", percent_decode(user, "user")?)?;
                        self.password = Some(percent_decode(password, "password")?);
                    }
                    None => self.set_nonempty("user", percent_decode(credentials, "user")?)?,
                }
                host_port
            }
            None => authority,
        };
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in host_port.split(',') {
            let (host, port) = split_host_port(spec)?;
            hosts.push(percent_decode(host, "host")?);
            ports.push(port.unwrap_or("").to_string());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            self.set("host", hosts.join(","))?;
        }
        if ports.iter().any(|p| !p.is_empty()) {
            self.set("port", ports.join(","))?;
        }
        if let Some(dbname) = path {
            self.set_nonempty("dbname", percent_decode(dbname, "dbname")?)?;
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "invalid URL parameter {pair:?}: expected key=value"
                ))
            })?;
            let key = percent_decode(key, "a parameter name")?;
            let value = percent_decode(value, &key)?;
            self.set(&key, value)?;
        }
        Ok(())
    }

    fn set_nonempty(&mut self, key: &str, value: String) -> Result<(), Error> {
        if value.is_empty() {
            return Ok(());
        }
        self.set(key, value)
    }
}

/// libpq's key=value syntax: `key = value` pairs separated by whitespace; a value may be
/// single-quoted, with `\'` and `\\` escapes inside.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::Config(format!(
                "missing \"=\" after {key:?} in connection string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::Config(format!(
                            "unterminated quoted value for {key:?} in connection string"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(text: &str, what: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly: from_str_radix alone would also take a sign (`%+1`).
            let hex = text
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let byte = hex.ok_or_else(|| {
                Error::Config(format!("invalid percent-encoding in the URL's {what}"))
            })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::Config(format!("the URL's {what} is not valid UTF-8")))
}

fn os_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Quotes a value for libpq's key=value syntax when it needs it: empty, or holding what
/// [`parse_key_values`] reads as a separator (any white space, `\r` and `\u{c}` too) or an
/// escape, so the text shown parses back to the same value.
pub(crate) fn quote(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A libpq key=value string with the password masked, so it can go in a log line.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut push = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                parts.push(format!("{key}={}", quote(&value)));
            }
        };
        push("host", self.host.clone());
        push("port", self.port.clone());
        push("user", self.user.clone());
        push(
            "password",
            self.password.as_ref().map(|_| "********".into()),
        );
        push("dbname", self.dbname.clone());
        push("sslmode", self.sslmode.map(|m| m.as_str().into()));
        push("sslrootcert", self.sslrootcert.clone());
        push("sslcert", self.sslcert.clone());
        push("sslkey", self.sslkey.clone());
        push("passfile", self.passfile.clone());
        push("service", self.service.clone());
        push(
            "target_session_attrs",
            self.target_session_attrs.map(|t| t.as_str().into()),
        );
        push("application_name", self.application_name.clone());
        push(
            "connect_timeout",
            self.connect_timeout.map(|d| d.as_secs().to_string()),
        );
        push("options", self.options.clone());
        f.write_str(&parts.join(" "))
    }
}

impl ConnInfo {
    /// A connection string (URL or key=value) fit for a log line or a `Debug` output: as
    /// key=value with the password masked. One that does not parse is not shown at all, as
    /// it may still hold a password; only why it does not parse.
    pub fn masked(conninfo: &str) -> String {
        match ConnInfo::parse(conninfo) {
            Ok(info) => info.to_string(),
            Err(error) => format!("(not shown: {error})"),
        }
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

#[cfg(test)]
mod tests;
