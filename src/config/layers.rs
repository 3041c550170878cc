//! The file and the environment, each turned into a flat list of settings (a key path, a
//! value, where it came from) so both are checked by the same code.

use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};
use figment::{Profile, Provider};

/// Environment variables with this prefix are configuration (`FORKPOOL_WORKERS__COUNT`).
pub const ENV_PREFIX: &str = "FORKPOOL_";

/// Variables that share the prefix but are not configuration keys (see DESIGN §4).
const NOT_CONFIG_KEYS: [&str; 5] = [
    "FORKPOOL_CONFIG",
    "FORKPOOL_SOCKET",
    "FORKPOOL_SYSTEM_CONFIG_DIR",
    "FORKPOOL_LOG_FORMAT",
    "FORKPOOL_LOG_LEVEL",
];

/// Where a setting came from, so a message points at what the person has to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File,
    /// The environment variable's name.
    Env(String),
}

/// One value at one key path (`["workers", "count"]`), not yet checked against the keys.
#[derive(Debug)]
pub struct Setting {
    pub path: Vec<String>,
    pub value: Value,
    pub origin: Origin,
}

/// The settings of a TOML document. `depth` gives, for a top-level key, how deep its keys
/// go (2 for `workers.count`, 3 for `databases.main.url`): tables are flattened down to that
/// depth, so an empty `[databases.main]` still arrives as a setting and a table where a value
/// belongs arrives as that value.
pub fn from_toml(text: &str, depth: impl Fn(&str) -> usize) -> Result<Vec<Setting>, String> {
    let mut profiles = Toml::string(text)
        .data()
        .map_err(|e| one_line(&e.to_string()))?;
    let dict = profiles.remove(&Profile::Default).unwrap_or_default();
    let mut settings = Vec::new();
    flatten(&mut settings, Vec::new(), dict, &depth);
    Ok(settings)
}

/// The TOML parser's message without its source excerpt, on one line: "at line 1, column
/// 9: invalid table header; expected `.`, `]`" (every problem takes exactly one line).
fn one_line(message: &str) -> String {
    let mut lines = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !is_source_excerpt(line));
    let first = lines.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        first
    } else {
        format!("{first}: {}", rest.join("; "))
    }
}

/// The parser's `  |` and `1 | [workers` lines, which quote the file rather than explain.
fn is_source_excerpt(line: &str) -> bool {
    line.trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start()
        .starts_with('|')
}

fn flatten(out: &mut Vec<Setting>, prefix: Vec<String>, dict: Dict, depth: &dyn Fn(&str) -> usize) {
    for (key, value) in dict {
        let mut path = prefix.clone();
        path.push(key);
        let max_depth = depth(&path[0]);
        match value {
            Value::Dict(_, inner) if path.len() < max_depth && !inner.is_empty() => {
                flatten(out, path, inner, depth)
            }
            value => out.push(Setting {
                path,
                value,
                origin: Origin::File,
            }),
        }
    }
}

/// The settings given as `FORKPOOL_SECTION__KEY=value` (`__` separates the levels; names
/// are lower-cased, so `FORKPOOL_DATABASES__MAIN__URL` sets `databases.main.url`). Values
/// stay strings; the readers accept strings wherever a number or boolean is expected.
pub fn from_env(env: &[(String, String)]) -> Vec<Setting> {
    env.iter()
        .filter(|(name, _)| !NOT_CONFIG_KEYS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?;
            Some(Setting {
                path: key.split("__").map(str::to_lowercase).collect(),
                value: Value::from(value.as_str()),
                origin: Origin::Env(name.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(settings: &[Setting]) -> Vec<String> {
        settings.iter().map(|s| s.path.join(".")).collect()
    }

    #[test]
    fn toml_is_flattened_to_each_sections_depth() {
        let text = "[workers]\ncount = 2\n[databases.main]\n[databases.other]\nurl = \"x\"\n";
        let settings = from_toml(text, |s| if s == "databases" { 3 } else { 2 }).unwrap();
        assert_eq!(
            paths(&settings),
            ["databases.main", "databases.other.url", "workers.count"]
        );
    }

    #[test]
    fn a_syntax_error_is_one_line_without_the_excerpt() {
        let error = from_toml("[workers\ncount = 1\n", |_| 2).unwrap_err();
        assert_eq!(
            error,
            "TOML parse error at line 1, column 9: invalid table header; expected `.`, `]`"
        );
    }

    #[test]
    fn env_keys_split_on_double_underscore_and_skip_non_keys() {
        let env = [
            ("FORKPOOL_DATABASES__MAIN__URL".to_string(), "x".to_string()),
            ("FORKPOOL_CONFIG".to_string(), "c.toml".to_string()),
            ("FORKPOOL_SOCKET".to_string(), "s.sock".to_string()),
            ("FORKPOOL_LOG_FORMAT".to_string(), "json".to_string()),
            ("FORKPOOL_LOG_LEVEL".to_string(), "debug".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let settings = from_env(&env);
        assert_eq!(paths(&settings), ["databases.main.url"]);
        assert_eq!(
            settings[0].origin,
            Origin::Env("FORKPOOL_DATABASES__MAIN__URL".to_string())
        );
    }
}
