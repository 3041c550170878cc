//! The service's listening socket: created with `socket_mode`, refused when a live service
//! holds the path, a stale file from a dead one removed, the file removed on exit. A socket
//! systemd passed is used as it is and left in place: systemd owns its file.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub struct Listener {
    pub socket: UnixListener,
    path: PathBuf,
    /// Whether this process created the file and so removes it on exit.
    owns_file: bool,
}

impl Listener {
    pub fn bind(path: &Path, mode: u32) -> Result<Listener, String> {
        let shown = path.display();
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(format!(
                    "{shown} exists and is not a socket; remove it or set service.socket"
                ))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(format!("another forkpool is already serving at {shown}")),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("removing stale socket {shown} left by a service that is gone");
                    fs::remove_file(path).map_err(|e| format!("removing stale {shown}: {e}"))?;
                }
                Err(e) => return Err(format!("checking {shown}: {e}")),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("checking {shown}: {e}")),
        }
        let socket = UnixListener::bind(path).map_err(|e| format!("binding {shown}: {e}"))?;
        let listener = Listener {
            socket,
            path: path.to_path_buf(),
            owns_file: true,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("setting mode {mode:o} on {shown}: {e}"))?;
        listener
            .socket
            .set_nonblocking(true)
            .map_err(|e| format!("{shown}: {e}"))?;
        Ok(listener)
    }

    /// A listening socket systemd passed (socket activation): its file belongs to the
    /// `.socket` unit, which keeps it across restarts of the service, so it is not removed.
    pub fn inherited(socket: UnixListener) -> Result<Listener, String> {
        let path = socket
            .local_addr()
            .ok()
            .and_then(|addr| addr.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("(unnamed socket from systemd)"));
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("the socket systemd passed ({}): {e}", path.display()))?;
        Ok(Listener {
            socket,
            path,
            owns_file: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.owns_file {
            let _ = fs::remove_file(&self.path);
        }
    }
}
