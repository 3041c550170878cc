//! Where and how to connect: the socket (TCP with short keepalives, or Unix), TLS as
//! `sslmode` says, and the startup packet, built once per pool from its conninfo.

use super::connection::bounded;
use super::conninfo::{ConnInfo, HostPort, TargetSessionAttrs};
use super::error::{describe, Error};
use super::notifications::{drive, Inbox};
use super::passfile;
use super::settings::PoolSettings;
use super::tls::TlsPolicy;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, NoTls, TlsConnect};
use tokio_postgres::{CancelToken, Client};

/// Where and how to connect: built once per pool from its conninfo and settings.
pub(crate) struct Endpoint {
    /// The hosts, tried in this order at each connect.
    pub(crate) hosts: Vec<Host>,
    /// user, dbname, options, application_name, sslmode for the startup packet; the
    /// password is each host's.
    startup: tokio_postgres::Config,
    tls: TlsPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) target_session_attrs: TargetSessionAttrs,
    /// `host:port[,host:port…]/dbname as user`, for logs and errors; never the password.
    pub(crate) description: String,
    pub(crate) database: String,
}

/// One host of the conninfo: where to connect, and the password for it (given, or found
/// in the password file for this host and port).
pub(crate) struct Host {
    target: Target,
    password: Option<String>,
    /// `host:port`, for logs and errors.
    pub(crate) name: String,
}

enum Target {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf },
}

/// The socket before it is handed to tokio; its fd is recorded first.
pub(super) enum RawSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Endpoint {
    pub(crate) fn new(info: &ConnInfo, settings: &PoolSettings) -> Result<Endpoint, Error> {
        let mut info = info.clone();
        info.fill_defaults();
        let tls = TlsPolicy::for_conninfo(&info)?;
        let user = info.user.clone().unwrap_or_default();
        let database = info.dbname.clone().unwrap_or_default();
        let passfile = passfile::path(info.passfile.as_deref());
        let given_password = info.password.clone().filter(|p| !p.is_empty());
        let hosts: Vec<Host> = info
            .hosts()?
            .into_iter()
            .map(|HostPort { host, port }| {
                let password = given_password.clone().or_else(|| {
                    let lookup = passfile::Lookup {
                        host: &host,
                        port,
                        dbname: &database,
                        user: &user,
                    };
                    passfile::password(passfile.as_deref()?, &lookup)
                });
                let target = if host.starts_with('/') {
                    Target::Unix {
                        path: PathBuf::from(&host).join(format!(".s.PGSQL.{port}")),
                    }
                } else {
                    Target::Tcp {
                        host: host.clone(),
                        port,
                    }
                };
                Host {
                    target,
                    password,
                    name: format!("{host}:{port}"),
                }
            })
            .collect();
        let mut startup = tokio_postgres::Config::new();
        startup.user(&user).dbname(&database).ssl_mode(tls.mode);
        startup.application_name(
            info.application_name
                .clone()
                .unwrap_or_else(|| settings.application_name.clone()),
        );
        let mut options = info.options.clone().unwrap_or_default();
        if let Some(timeout) = settings.statement_timeout {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c statement_timeout={}", timeout.as_millis()));
        }
        if !options.is_empty() {
            startup.options(options);
        }
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        Ok(Endpoint {
            description: format!("{}/{database} as {user}", names.join(",")),
            hosts,
            startup,
            tls,
            connect_timeout: info.connect_timeout.unwrap_or(settings.connect_timeout),
            target_session_attrs: info.target_session_attrs.unwrap_or(TargetSessionAttrs::Any),
            database,
        })
    }

    /// Opens the socket (each resolved address in turn), bounded by `deadline`. DNS runs
    /// here, on the caller's thread, never inside tokio (it would start a blocking pool).
    pub(super) fn open_socket(&self, host: &Host, deadline: Instant) -> Result<RawSocket, String> {
        match &host.target {
            Target::Unix { path } => UnixStream::connect(path)
                .map(RawSocket::Unix)
                .map_err(|e| format!("cannot connect to socket {}: {e}", path.display())),
            Target::Tcp { host, port } => {
                let addresses = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?;
                let mut last_error = format!("host {host:?} resolved to no address");
                for address in addresses {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(format!(
                            "connecting to {address} timed out; last error: {last_error}"
                        ));
                    }
                    match TcpStream::connect_timeout(&address, remaining) {
                        Ok(stream) => {
                            set_tcp_options(&stream);
                            return Ok(RawSocket::Tcp(stream));
                        }
                        Err(e) => last_error = format!("cannot connect to {address}: {e}"),
                    }
                }
                Err(last_error)
            }
        }
    }

    fn tls_host(host: &Host) -> &str {
        match &host.target {
            Target::Tcp { host, .. } => host,
            Target::Unix { .. } => "",
        }
    }

    /// Runs `startup` (TLS + authentication) over `socket`, opened to `host`, and spawns
    /// the connection task.
    pub(super) async fn start_session(
        &self,
        host: &Host,
        socket: RawSocket,
        inbox: &Arc<Inbox>,
    ) -> Result<(Client, JoinHandle<()>), String> {
        let mut startup = self.startup.clone();
        if let Some(password) = &host.password {
            startup.password(password.as_bytes());
        }
        let startup = &mut startup;
        match socket {
            RawSocket::Unix(stream) => {
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
                // Unix sockets never use TLS, whatever sslmode says (libpq too).
                startup.ssl_mode(tokio_postgres::config::SslMode::Disable);
                spawn_session(startup, stream, NoTls, inbox).await
            }
            RawSocket::Tcp(stream) => {
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                let stream = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
                match &self.tls.connector {
                    None => spawn_session(startup, stream, NoTls, inbox).await,
                    Some(make) => {
                        let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                            &mut make.clone(),
                            Endpoint::tls_host(host),
                        )
                        .map_err(|e| format!("cannot set up TLS: {e}"))?;
                        spawn_session(startup, stream, tls, inbox).await
                    }
                }
            }
        }
    }

    /// Sends a cancel request for `token` to `host` (the session's) over a fresh socket
    /// with the same TLS mode, bounded by connect_timeout. Best effort: the caller discards
    /// or resets anyway.
    pub(crate) fn cancel(&self, host: &Host, runtime: &Runtime, token: &CancelToken) {
        let deadline = Instant::now() + self.connect_timeout;
        let socket = match self.open_socket(host, deadline) {
            Ok(socket) => socket,
            Err(e) => {
                log::debug!(target: "forkpool::pool", "cancel request to {} failed: {e}", self.description);
                return;
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = bounded(runtime, remaining, async {
            match socket {
                RawSocket::Unix(stream) => {
                    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let stream =
                        tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
                    token
                        .cancel_query_raw(stream, NoTls)
                        .await
                        .map_err(|e| describe(&e))
                }
                RawSocket::Tcp(stream) => {
                    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let stream =
                        tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
                    match &self.tls.connector {
                        None => token
                            .cancel_query_raw(stream, NoTls)
                            .await
                            .map_err(|e| describe(&e)),
                        Some(make) => {
                            let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                                &mut make.clone(),
                                Endpoint::tls_host(host),
                            )
                            .map_err(|e| e.to_string())?;
                            token
                                .cancel_query_raw(stream, tls)
                                .await
                                .map_err(|e| describe(&e))
                        }
                    }
                }
            }
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!(target: "forkpool::pool", "cancel request failed: {e}"),
            Err(_) => log::debug!(target: "forkpool::pool", "cancel request timed out"),
        }
    }
}

async fn spawn_session<S, T>(
    startup: &tokio_postgres::Config,
    stream: S,
    tls: T,
    inbox: &Arc<Inbox>,
) -> Result<(Client, JoinHandle<()>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: TlsConnect<S> + Send,
    T::Stream: Send + 'static,
{
    let (client, connection) = startup
        .connect_raw(stream, tls)
        .await
        .map_err(|e| connect_error_text(&e))?;
    let task = tokio::spawn(drive(connection, Arc::clone(inbox)));
    Ok((client, task))
}

/// A connect error with its SQLSTATE when the server sent one (e.g. 28P01 for a bad
/// password, 57P03 while the server starts up), else the OS or TLS error.
pub(super) fn connect_error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let text = describe(error);
            if text.contains("password missing") {
                return format!("{NO_PASSWORD}: none was given (password, PGPASSWORD, password_file) nor found in the password file (passfile, PGPASSFILE, ~/.pgpass; one others may read is ignored)");
            }
            text
        }
    }
}

/// The start of the error for a server that asks for a password we do not have (libpq:
/// "fe_sendauth: no password supplied"); it will not fix itself within a checkout.
pub(super) const NO_PASSWORD: &str = "the server asks for a password";

/// Short keepalive timings and a user timeout so a peer that vanished (network cut, host
/// down) is noticed within about 30 s instead of the kernel's two hours. Best effort.
fn set_tcp_options(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let options: [(libc::c_int, libc::c_int, libc::c_int); 5] = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 30_000),
    ];
    for (level, name, value) in options {
        // SAFETY: fd is a live socket we own; the option value is a c_int as the kernel expects.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
