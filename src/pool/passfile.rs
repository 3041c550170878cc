//! libpq's password file (`passfile`, `PGPASSFILE`, default `~/.pgpass`): lines of
//! `hostname:port:database:username:password`, `*` matching anything, `\` escaping `:` and
//! `\`, `#` starting a comment line. Consulted for each host only when no password was given;
//! the first matching line wins.

use super::conninfo::default_socket_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a password is looked up for: one host of the connection.
pub(crate) struct Lookup<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) dbname: &'a str,
    pub(crate) user: &'a str,
}

/// `passfile` if given, else `$HOME/.pgpass`.
pub(crate) fn path(passfile: Option<&str>) -> Option<PathBuf> {
    match passfile {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")),
    }
}

/// The password of the first line of `file` that matches `lookup`. A missing file is no
/// password; one that is not a plain file, or that group or others may read, is ignored with
/// a warning, as libpq does (a password file others can read is not a secret).
pub(crate) fn password(file: &Path, lookup: &Lookup<'_>) -> Option<String> {
    let metadata = std::fs::metadata(file).ok()?;
    if !metadata.is_file() {
        log::warn!(target: "forkpool::pool", "password file {} is not a plain file; ignored", file.display());
        return None;
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        log::warn!(
            target: "forkpool::pool",
            "password file {} has group or world access; permissions should be u=rw (0600) or \
             less; ignored",
            file.display()
        );
        return None;
    }
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            log::warn!(target: "forkpool::pool", "cannot read password file {}: {e}", file.display());
            return None;
        }
    };
    matching_password(&text, lookup)
}

/// The password of the first line of `text` matching `lookup`. A Unix-socket connection in
/// the default socket directory matches `localhost` (libpq's rule); any other directory
/// matches only itself.
fn matching_password(text: &str, lookup: &Lookup<'_>) -> Option<String> {
    let host = if lookup.host.is_empty() || lookup.host == default_socket_dir() {
        "localhost"
    } else {
        lookup.host
    };
    let port = lookup.port.to_string();
    let wanted = [host, port.as_str(), lookup.dbname, lookup.user];
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split_fields(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|((field, escaped), value)| (field == "*" && !escaped) || field == value);
            matches.then(|| {
                fields[4..]
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .collect::<Vec<_>>()
                    .join(":")
            })
        })
}

/// A line's `:`-separated fields, unescaped, each with whether it held an escape (an escaped
/// `\*` is a literal star, not a wildcard). The password is the fifth field; an unescaped
/// `:` after it is kept by rejoining the rest.
fn split_fields(line: &str) -> Vec<(String, bool)> {
    let mut fields = vec![(String::new(), false)];
    let mut chars = line.trim_end_matches(['\r']).chars();
    while let Some(c) = chars.next() {
        if c == ':' && fields.len() < 5 {
            fields.push((String::new(), false));
            continue;
        }
        let current = fields.last_mut().expect("never empty");
        if c == '\\' {
            if let Some(next) = chars.next() {
                current.0.push(next);
                current.1 = true;
            }
        } else {
            current.0.push(c);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(host: &'a str, port: u16, dbname: &'a str, user: &'a str) -> Lookup<'a> {
        Lookup {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5432:*:*:nope\n\
                    db:5432:app:me:first\n\
                    *:*:*:me:fallback\n\
                    a\\:b:*:*:*:esc\\:aped\\\\\n\
                    x:1:*:*:with:colon\n";
        let get = |l: Lookup<'_>| matching_password(text, &l);
        assert_eq!(
            get(lookup("db", 5432, "app", "me")).as_deref(),
            Some("first")
        );
        assert_eq!(
            get(lookup("db", 5433, "app", "me")).as_deref(),
            Some("fallback")
        );
        assert_eq!(get(lookup("db", 5432, "app", "you")), None);
        assert_eq!(
            get(lookup("a:b", 1, "d", "u")).as_deref(),
            Some("esc:aped\\")
        );
        assert_eq!(get(lookup("x", 1, "d", "u")).as_deref(), Some("with:colon"));
    }

    #[test]
    fn the_default_socket_directory_matches_localhost() {
        let text = "localhost:5432:*:*:local\n/sockets:5432:*:*:dir\n";
        let l = lookup(default_socket_dir(), 5432, "d", "u");
        assert_eq!(matching_password(text, &l).as_deref(), Some("local"));
        let l = lookup("/sockets", 5432, "d", "u");
        assert_eq!(matching_password(text, &l).as_deref(), Some("dir"));
    }

    #[test]
    fn a_file_others_can_read_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        let l = lookup("h", 1, "d", "u");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(password(&file, &l).as_deref(), Some("secret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(password(&file, &l), None);
        assert_eq!(password(&dir.path().join("missing"), &l), None);
        assert_eq!(password(dir.path(), &l), None);
    }
}
