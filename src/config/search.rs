//! Where the configuration file is looked for: `--config`, else `$FORKPOOL_CONFIG`, else
//! `config/forkpool.toml` under the current directory, else `/etc/forkpool/forkpool.toml`,
//! so that `forkpool status` works from any directory of a machine the service is
//! installed on, and a checkout keeps its own file first.

use std::path::{Path, PathBuf};

/// The file looked for in the current directory (the repository's layout).
pub const DEFAULT_CONFIG_PATH: &str = "config/forkpool.toml";

/// The environment variable that names the configuration file (after `--config`).
pub const CONFIG_PATH_VAR: &str = "FORKPOOL_CONFIG";

/// The installed service's directory (the packaged unit reads its file from there).
pub const SYSTEM_CONFIG_DIR: &str = "/etc/forkpool";

/// Replaces [`SYSTEM_CONFIG_DIR`] in the search: for tests and unusual installations
/// (a prefix other than `/`); unset, `/etc/forkpool`.
pub const SYSTEM_CONFIG_DIR_VAR: &str = "FORKPOOL_SYSTEM_CONFIG_DIR";

/// How the file path was chosen, so "no config file" can say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundBy {
    Flag,
    EnvVar,
    /// Neither was given: the first of `looked` that exists, or, when none does, `looked`
    /// is every place tried (for the message).
    Searched {
        looked: Vec<PathBuf>,
    },
    Caller,
}

/// The file to load and how it was chosen. `explicit` is `--config`; `env` holds the
/// process's `FORKPOOL_` variables. A `--config` equal to `$FORKPOOL_CONFIG` is taken as
/// named by the variable: the command line reads it through clap's `env`, which cannot
/// tell the two apart, and the variable is the thing to fix.
pub fn find(explicit: Option<&Path>, env: &[(String, String)]) -> (PathBuf, FoundBy) {
    let var = |name: &str| {
        env.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v))
    };
    let from_var = var(CONFIG_PATH_VAR);
    match (explicit, from_var) {
        (Some(path), Some(named)) if path == named => (named, FoundBy::EnvVar),
        (Some(path), _) => (path.to_path_buf(), FoundBy::Flag),
        (None, Some(path)) => (path, FoundBy::EnvVar),
        (None, None) => {
            let system = var(SYSTEM_CONFIG_DIR_VAR).unwrap_or_else(|| SYSTEM_CONFIG_DIR.into());
            let looked = vec![
                PathBuf::from(DEFAULT_CONFIG_PATH),
                system.join("forkpool.toml"),
            ];
            let file = looked
                .iter()
                .find(|path| path.exists())
                .unwrap_or(&looked[0])
                .clone();
            (file, FoundBy::Searched { looked })
        }
    }
}

/// Why no file was loaded, saying what to change: the flag or the variable that named it,
/// or every place the search looked at.
pub fn missing(file: &Path, found_by: &FoundBy) -> String {
    let at = |hint: &str| format!("no config file at {}{hint}", file.display());
    match found_by {
        FoundBy::Flag => at(" (given by --config)"),
        FoundBy::EnvVar => at(&format!(" (named by {CONFIG_PATH_VAR})")),
        FoundBy::Searched { looked } => {
            let places: Vec<String> = looked.iter().map(|p| shown(p)).collect();
            format!(
                "no config file at {}: give one with -c/--config or {CONFIG_PATH_VAR}",
                places.join(" or ")
            )
        }
        FoundBy::Caller => at(""),
    }
}

/// A path as the person can find it: a relative one with the directory it was taken in.
fn shown(path: &Path) -> String {
    match std::env::current_dir() {
        Ok(dir) if path.is_relative() => {
            format!("{} (in {})", path.display(), dir.display())
        }
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_flag_wins_then_the_variable_and_an_empty_variable_is_unset() {
        let flag = Path::new("/a/flag.toml");
        let named = env(&[(CONFIG_PATH_VAR, "/b/var.toml")]);
        assert_eq!(find(Some(flag), &named), (flag.into(), FoundBy::Flag));
        assert_eq!(find(None, &named), ("/b/var.toml".into(), FoundBy::EnvVar));
        assert_eq!(
            find(Some(Path::new("/b/var.toml")), &named).1,
            FoundBy::EnvVar,
            "clap's env gives the variable's value as the flag's"
        );
        let empty = env(&[(CONFIG_PATH_VAR, ""), (SYSTEM_CONFIG_DIR_VAR, "/nowhere")]);
        assert!(matches!(find(None, &empty).1, FoundBy::Searched { .. }));
    }

    #[test]
    fn without_either_the_current_directory_then_the_system_directory_is_searched() {
        let system = tempfile::tempdir().unwrap();
        let vars = env(&[(SYSTEM_CONFIG_DIR_VAR, system.path().to_str().unwrap())]);
        let in_system = system.path().join("forkpool.toml");
        let looked = vec![PathBuf::from(DEFAULT_CONFIG_PATH), in_system.clone()];
        // The crate's own directory holds config/forkpool.toml: it comes first.
        let (file, found_by) = find(None, &vars);
        assert_eq!(file, PathBuf::from(DEFAULT_CONFIG_PATH));
        assert_eq!(
            found_by,
            FoundBy::Searched {
                looked: looked.clone()
            }
        );
        let message = missing(&file, &found_by);
        let expected = format!(
            "no config file at config/forkpool.toml (in {}) or {}: give one with -c/--config \
             or FORKPOOL_CONFIG",
            std::env::current_dir().unwrap().display(),
            in_system.display()
        );
        assert_eq!(message, expected);
    }
}
