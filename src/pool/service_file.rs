//! libpq's connection service file: `service=NAME` (or `PGSERVICE`) names an INI section
//! whose `key=value` lines fill in the connection parameters the string left out, before the
//! PG* variables do. Read at start-up, in the master, so a missing service stops the service
//! with its name.

use super::conninfo::ConnInfo;
use super::error::Error;
use std::path::{Path, PathBuf};

/// Where libpq looks for the system-wide file when `PGSYSCONFDIR` is unset: Debian's and
/// Ubuntu's libpq are built with this `sysconfdir`.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

impl ConnInfo {
    /// Fills what the string left out from the service it names (`service`, else the
    /// `PGSERVICE` variable), as libpq does: the user's file (`PGSERVICEFILE`, else
    /// `~/.pg_service.conf`) is searched first, then `PGSYSCONFDIR/pg_service.conf`; the
    /// first file holding the section is the only one used. Without a service name this does
    /// nothing. Variables are looked up through `lookup`, like [`ConnInfo::with_env`], which
    /// is to run after this (a service's keys win over the PG* variables).
    pub fn with_service(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, Error> {
        let name = match self.service.clone() {
            Some(name) => name,
            None => match lookup("PGSERVICE").filter(|v| !v.is_empty()) {
                Some(name) => name,
                None => return Ok(self),
            },
        };
        self.service = Some(name.clone());
        let user_file = match lookup("PGSERVICEFILE").filter(|v| !v.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(Error::Config(format!(
                        "service file {} (PGSERVICEFILE) not found",
                        path.display()
                    )));
                }
                Some(path)
            }
            None => lookup("HOME").map(|home| Path::new(&home).join(".pg_service.conf")),
        };
        let sysconfdir = lookup("PGSYSCONFDIR").unwrap_or_else(|| DEFAULT_SYSCONFDIR.into());
        let system_file = Path::new(&sysconfdir).join("pg_service.conf");
        for file in user_file.iter().chain([&system_file]) {
            if !file.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::Config(format!("cannot read service file {}: {e}", file.display()))
            })?;
            if let Some(pairs) = section(&text, &name, file)? {
                for (key, value) in pairs {
                    if key == "service" {
                        return Err(Error::Config(format!(
                            "nested service specifications not supported in service file {}",
                            file.display()
                        )));
                    }
                    if !self.is_set(&key) {
                        self.set(&key, value).map_err(|e| {
                            Error::Config(format!(
                                "service file {}, service {name:?}: {e}",
                                file.display()
                            ))
                        })?;
                    }
                }
                return Ok(self);
            }
        }
        let searched: Vec<String> = user_file
            .iter()
            .chain([&system_file])
            .map(|p| p.display().to_string())
            .collect();
        Err(Error::Config(format!(
            "definition of service {name:?} not found (searched {})",
            searched.join(" and ")
        )))
    }
}

/// The `key=value` lines of section `[name]`, or `None` if the file has no such section.
/// Blank lines and lines starting with `#` are skipped; whitespace around keys and values
/// is ignored.
fn section(text: &str, name: &str, file: &Path) -> Result<Option<Vec<(String, String)>>, Error> {
    let mut pairs: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if inside {
                break;
            }
            inside = header.strip_suffix(']').map(str::trim) == Some(name);
            if inside {
                pairs = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "syntax error in service file {}, line {}: expected key=value",
                file.display(),
                number + 1
            ))
        })?;
        if let Some(pairs) = pairs.as_mut() {
            pairs.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn a_service_fills_only_what_the_string_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(
            &file,
            "# comment\n[other]\nhost=nowhere\n\n[main]\nhost = db.example\nport=6000\n\
             dbname=maindb\n[later]\nuser=x\n",
        )
        .unwrap();
        let vars = [("PGSERVICEFILE", file.display().to_string())];
        let info = ConnInfo::parse("service=main dbname=given")
            .unwrap()
            .with_service(lookup(&vars))
            .unwrap();
        assert_eq!(info.host.as_deref(), Some("db.example"));
        assert_eq!(info.port.as_deref(), Some("6000"));
        assert_eq!(info.dbname.as_deref(), Some("given"));
        assert_eq!(info.user, None, "a later section does not leak in");
    }

    #[test]
    fn pgservice_and_the_system_file_are_used_when_the_user_file_lacks_the_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".pg_service.conf"), "[mine]\nhost=a\n").unwrap();
        std::fs::write(dir.path().join("pg_service.conf"), "[shared]\nhost=b\n").unwrap();
        let vars = [
            ("PGSERVICE", "shared".to_string()),
            ("HOME", dir.path().display().to_string()),
            ("PGSYSCONFDIR", dir.path().display().to_string()),
        ];
        let info = ConnInfo::default().with_service(lookup(&vars)).unwrap();
        assert_eq!(info.host.as_deref(), Some("b"));
    }

    #[test]
    fn an_unknown_service_or_bad_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(
            &file,
            "[main]\nhost=a\nnonsense\n[bad]\nsslmode=sometimes\n",
        )
        .unwrap();
        let vars = [
            ("PGSERVICEFILE", file.display().to_string()),
            ("PGSYSCONFDIR", dir.path().display().to_string()),
        ];
        let run = |s: &str| {
            ConnInfo::parse(s)
                .unwrap()
                .with_service(lookup(&vars))
                .unwrap_err()
                .to_string()
        };
        assert!(run("service=absent").contains("service \"absent\" not found"));
        assert!(run("service=main").contains("line 3"));
        assert!(run("service=bad").contains("sslmode"));
        let vars = [("PGSERVICEFILE", "/nonexistent/x".to_string())];
        let error = ConnInfo::parse("service=main")
            .unwrap()
            .with_service(lookup(&vars))
            .unwrap_err();
        assert!(error.to_string().contains("PGSERVICEFILE"), "{error}");
        assert!(ConnInfo::default().with_service(|_| None).is_ok());
    }
}
