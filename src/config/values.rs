//! Reading one configuration value as the type its key needs.
//!
//! Each reader returns the reason a value is wrong, worded for the person editing the file;
//! the caller adds which key and where. Numbers and booleans are also accepted as strings,
//! because environment variables only carry strings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::Value;

use crate::pool::ResetOnReturn;

const DURATION_HINT: &str = r#"not a duration (write "250ms", "30s", "5m")"#;
const SIZE_HINT: &str = r#"not a size (write "0", "64MiB", "2GiB")"#;

/// A non-negative integer that fits `T` (`usize`, `u64`, `u32`).
pub fn whole_number<T: TryFrom<u128>>(value: &Value) -> Result<T, String> {
    let number: u128 = match value {
        Value::Num(_, num) => match (num.to_u128(), num.to_i128()) {
            (Some(n), _) => n,
            (None, Some(n)) if n < 0 => return Err("must not be negative".to_string()),
            (None, Some(n)) => n as u128,
            (None, None) => return Err("not a whole number".to_string()),
        },
        Value::String(_, text) => {
            let text = text.trim();
            if text.starts_with('-') {
                return Err("must not be negative".to_string());
            }
            text.parse().map_err(|_| "not a whole number".to_string())?
        }
        _ => return Err("not a whole number".to_string()),
    };
    T::try_from(number).map_err(|_| "too large".to_string())
}

/// A humantime duration (`"250ms"`, `"30s"`, `"5m"`); `"0"` and `0` mean zero.
pub fn duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(_, text) => humantime::parse_duration(text.trim())
            .map_err(|_| DURATION_HINT.to_string())
            .and_then(crate::durations::bounded),
        // A bare number has no unit, so only zero is unambiguous.
        Value::Num(_, num) if num.to_u128_lossy() == Some(0) => Ok(Duration::ZERO),
        _ => Err(DURATION_HINT.to_string()),
    }
}

/// A duration where zero means "off" or "never".
pub fn optional_duration(value: &Value) -> Result<Option<Duration>, String> {
    duration(value).map(|d| (!d.is_zero()).then_some(d))
}

/// A size in bytes (`"512MiB"`, `"0"`, or a number of bytes).
pub fn size(value: &Value) -> Result<u64, String> {
    match value {
        Value::String(_, text) => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|_| SIZE_HINT.to_string()),
        Value::Num(..) => whole_number(value).map_err(|_| SIZE_HINT.to_string()),
        _ => Err(SIZE_HINT.to_string()),
    }
}

/// `true` or `false` (any case, when it comes as a string).
pub fn boolean(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(_, b) => Ok(*b),
        Value::String(_, text) if text.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(_, text) if text.trim().eq_ignore_ascii_case("false") => Ok(false),
        _ => Err("not true or false".to_string()),
    }
}

/// A string, taken as it is.
pub fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(_, text) => Ok(text.clone()),
        _ => Err("not a string (put it in quotes)".to_string()),
    }
}

/// A path that must be given, with environment variables expanded ([`expand_env`]).
pub fn path(value: &Value) -> Result<PathBuf, String> {
    match text(value)? {
        p if p.is_empty() => Err("must not be empty".to_string()),
        p => expand_env(&p, process_env).map(PathBuf::from),
    }
}

/// A path where the empty string means "none", with environment variables expanded.
pub fn optional_path(value: &Value) -> Result<Option<PathBuf>, String> {
    let p = text(value)?;
    if p.is_empty() {
        return Ok(None);
    }
    expand_env(&p, process_env).map(|p| Some(PathBuf::from(p)))
}

/// A path-valued key's `$VAR`, `${VAR}` and `${VAR:-default}` expanded as a shell would,
/// with `lookup` giving a variable's value. Made for systemd's credentials:
/// `password_file = "${CREDENTIALS_DIRECTORY}/db-password"` names the file systemd wrote for
/// `LoadCredential=`, whose directory changes with each start. A variable unset or empty
/// without a default is an error naming it: a path with a hole in it would name some other
/// file. A `$` that starts no variable name stays as it is.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let value_of = |name: &str| match lookup(name) {
        Some(value) if !value.is_empty() => Ok(Some(value)),
        Some(_) => Err("is empty"),
        None => Err("is not set"),
    };
    match shellexpand::env_with_context(text, value_of) {
        Ok(expanded) => Ok(expanded.into_owned()),
        Err(error) => {
            let name = error.var_name;
            let hint = if name == "CREDENTIALS_DIRECTORY" {
                " (systemd sets it for a service with LoadCredential=; elsewhere set it yourself)"
            } else {
                ""
            };
            Err(format!(
                "the environment variable {name} {}{hint}: set it, or give a default as \
                 ${{{name}:-VALUE}}",
                error.cause
            ))
        }
    }
}

/// The process's environment, for [`expand_env`]; a value that is not UTF-8 counts as unset.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A TCP address to listen on (`"127.0.0.1:9187"`, `"[::1]:9187"`), or `""` for none. A
/// host name is refused: which address it resolves to would change under the service.
pub fn optional_socket_address(value: &Value) -> Result<Option<SocketAddr>, String> {
    let text = text(value)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("`{text}` is not an IP address with a port (e.g. \"127.0.0.1:9187\")"))
}

/// File permission bits as an octal string (`"0660"`). A TOML integer is refused: `660`
/// would silently mean octal 1224.
pub fn octal_mode(value: &Value) -> Result<u32, String> {
    const HINT: &str = r#"not an octal file mode (write it as a string, e.g. "0660")"#;
    let Value::String(_, text) = value else {
        return Err(HINT.to_string());
    };
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        Ok(_) => Err("only permission bits are allowed (at most \"0777\")".to_string()),
        Err(_) => Err(HINT.to_string()),
    }
}

/// A list of uids or gids (`what`): a TOML array, or (from the environment) `"1000,1001"`
/// or `"[1000, 1001]"`.
pub fn id_list(value: &Value, what: &str) -> Result<Vec<u32>, String> {
    let hint = || format!("not a list of {what} (write [1000, 1001])");
    match value {
        Value::Array(_, items) => items
            .iter()
            .map(|item| whole_number(item).map_err(|_| hint()))
            .collect(),
        Value::String(_, text) => text
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(|id| id.parse().map_err(|_| hint()))
            .collect(),
        _ => Err(hint()),
    }
}

/// One of the pool's reset modes, spelled as its serde name so the two never disagree.
pub fn reset_on_return(value: &Value) -> Result<ResetOnReturn, String> {
    value
        .deserialize()
        .map_err(|_| "not one of rollback, discard, none".to_string())
}

/// A value as it would be written in TOML, for messages that quote what was found.
pub fn show(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) => f.to_string(),
            _ => "a number".to_string(),
        },
        Value::Empty(..) => "nothing".to_string(),
        Value::Dict(..) => "a table".to_string(),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    #[test]
    fn zero_duration_is_none_for_optional_keys() {
        assert_eq!(optional_duration(&s("0")), Ok(None));
        assert_eq!(optional_duration(&s("0s")), Ok(None));
        assert_eq!(optional_duration(&Value::from(0i64)), Ok(None));
        assert_eq!(
            optional_duration(&s("10m")),
            Ok(Some(Duration::from_secs(600)))
        );
    }

    #[test]
    fn a_bare_nonzero_number_is_not_a_duration() {
        assert!(duration(&Value::from(30i64)).is_err());
        assert!(duration(&s("10 parsecs")).is_err());
        assert_eq!(duration(&s("250ms")), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn sizes_take_units_strings_and_numbers() {
        assert_eq!(size(&s("512MiB")), Ok(512 * 1024 * 1024));
        assert_eq!(size(&s("0")), Ok(0));
        assert_eq!(size(&Value::from(4096i64)), Ok(4096));
        assert!(size(&s("lots")).is_err());
    }

    #[test]
    fn numbers_come_as_numbers_or_strings() {
        assert_eq!(whole_number::<usize>(&Value::from(8i64)), Ok(8));
        assert_eq!(whole_number::<usize>(&s(" 8 ")), Ok(8));
        assert!(whole_number::<usize>(&Value::from(-1i64)).is_err());
        assert!(whole_number::<u32>(&Value::from(i64::MAX)).is_err());
        assert!(whole_number::<usize>(&s("eight")).is_err());
    }

    #[test]
    fn socket_mode_is_an_octal_string() {
        assert_eq!(octal_mode(&s("0660")), Ok(0o660));
        assert_eq!(octal_mode(&s("600")), Ok(0o600));
        assert!(octal_mode(&Value::from(660i64)).is_err());
        assert!(octal_mode(&s("0999")).is_err());
        assert!(octal_mode(&s("04777")).is_err());
    }

    #[test]
    fn ids_come_as_an_array_or_a_comma_list() {
        let array = Value::from(vec![Value::from(1000i64), Value::from(1001i64)]);
        assert_eq!(id_list(&array, "uids"), Ok(vec![1000, 1001]));
        assert_eq!(id_list(&s("1000, 1001"), "uids"), Ok(vec![1000, 1001]));
        assert_eq!(id_list(&s("[1000]"), "gids"), Ok(vec![1000]));
        assert_eq!(id_list(&s(""), "gids"), Ok(vec![]));
        assert_eq!(
            id_list(&s("wheel"), "gids"),
            Err("not a list of gids (write [1000, 1001])".to_string())
        );
    }

    #[test]
    fn paths_expand_environment_variables_and_name_the_one_missing() {
        let env = |name: &str| match name {
            "CREDENTIALS_DIRECTORY" => Some("/run/credentials/forkpool.service".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_env("${CREDENTIALS_DIRECTORY}/db-password", env),
            Ok("/run/credentials/forkpool.service/db-password".to_string())
        );
        assert_eq!(
            expand_env("$CREDENTIALS_DIRECTORY/pw", env),
            Ok("/run/credentials/forkpool.service/pw".to_string())
        );
        assert_eq!(
            expand_env("${STATE:-/var/lib/forkpool}/x", env),
            Ok("/var/lib/forkpool/x".to_string())
        );
        assert_eq!(expand_env("secrets/pw", env), Ok("secrets/pw".to_string()));
        assert_eq!(expand_env("a$/b", env), Ok("a$/b".to_string()));
        let unset = expand_env("${CREDENTIALS_DIRECTORY_X}/pw", env).unwrap_err();
        assert!(
            unset.starts_with("the environment variable CREDENTIALS_DIRECTORY_X is not set"),
            "{unset}"
        );
        let empty = expand_env("${EMPTY}/pw", env).unwrap_err();
        assert!(
            empty.contains("EMPTY") && empty.contains("is empty"),
            "{empty}"
        );
        let credentials = expand_env("${CREDENTIALS_DIRECTORY}/pw", |_| None).unwrap_err();
        assert!(credentials.contains("LoadCredential="), "{credentials}");
    }

    #[test]
    fn reset_on_return_uses_the_pool_names() {
        assert_eq!(reset_on_return(&s("discard")), Ok(ResetOnReturn::Discard));
        assert_eq!(reset_on_return(&s("none")), Ok(ResetOnReturn::None));
        assert!(reset_on_return(&s("commit")).is_err());
    }
}
