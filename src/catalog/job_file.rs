//! Reading one job file (DESIGN §7) into a [`JobSpec`]: every key checked, every problem
//! named by its key.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value as Json;

use super::{
    opens_transaction, rewrite, DurablePolicy, JobKind, JobSpec, ParamSpec, ParamType, SqlJob,
    SqlStatement, SqlValue,
};

/// Default for `max_rows`.
const DEFAULT_MAX_ROWS: usize = 10_000;
/// Default for `database`.
const DEFAULT_DATABASE: &str = "main";

/// A job file as written; checked into a [`JobSpec`] by [`JobSpec::from_toml`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    #[serde(default)]
    description: String,
    database: Option<String>,
    timeout: Option<String>,
    transaction: Option<bool>,
    max_rows: Option<usize>,
    retry_on_worker_lost: Option<bool>,
    queue: Option<String>,
    priority: Option<i32>,
    max_attempts: Option<i32>,
    retry_backoff: Option<String>,
    retry_backoff_max: Option<String>,
    sql: Option<toml::Value>,
    #[serde(default)]
    params: ParamsInFileOrder,
}

/// `[params]` in the order written: `toml::Table` would sort the keys.
#[derive(Default)]
struct ParamsInFileOrder(Vec<(String, toml::Value)>);

impl<'de> Deserialize<'de> for ParamsInFileOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = ParamsInFileOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of parameter names to types")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut params = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    params.push(entry);
                }
                Ok(ParamsInFileOrder(params))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

impl JobSpec {
    /// Checks one job file's text; the errors name the key (not the file: see
    /// [`Catalog::load`], which adds it).
    pub fn from_toml(
        name: &str,
        text: &str,
        default_timeout: Duration,
    ) -> Result<JobSpec, Vec<String>> {
        let file: JobFile = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
        let mut errors = Vec::new();

        let timeout = match &file.timeout {
            None => default_timeout,
            Some(written) => match duration(written, "10s") {
                Ok(timeout) if !timeout.is_zero() => timeout,
                Ok(_) => {
                    errors.push("timeout: must be more than 0".to_string());
                    default_timeout
                }
                Err(e) => {
                    errors.push(format!("timeout: {e}"));
                    default_timeout
                }
            },
        };
        let durable = durable_policy(&file, &mut errors);
        let max_rows = file.max_rows.unwrap_or(DEFAULT_MAX_ROWS);
        if max_rows == 0 {
            errors.push("max_rows: must be at least 1".to_string());
        }
        let database = file
            .database
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        if database.is_empty() {
            errors.push(
                "database: must name a database of the configuration's [databases]".to_string(),
            );
        }

        let (params, broken) = check_params(file.params, &mut errors);
        let sources = statement_sources(file.sql, &mut errors);
        let mut used = BTreeSet::new();
        let mut statements = Vec::new();
        for (key, source) in &sources {
            match statement(source, &params, &broken) {
                Ok(statement) => {
                    used.extend(statement.params.iter().copied());
                    statements.push(statement);
                }
                Err(problems) => errors.extend(problems.into_iter().map(|p| format!("{key}: {p}"))),
            }
        }
        if errors.is_empty() {
            for (index, param) in params.iter().enumerate() {
                if !used.contains(&index) {
                    errors.push(format!(
                        "params.{}: declared but used by no statement (a typo?)",
                        param.name
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(JobSpec {
            name: name.to_string(),
            description: file.description,
            timeout,
            retry_on_worker_lost: file.retry_on_worker_lost.unwrap_or(false),
            durable,
            kind: JobKind::Sql(SqlJob {
                database,
                transaction: file.transaction.unwrap_or(true),
                max_rows,
                params,
                statements,
            }),
        })
    }
}

/// The valid params, and the names of the declared ones already reported as broken (so a
/// statement using them does not add a misleading "not declared").
fn check_params(
    written: ParamsInFileOrder,
    errors: &mut Vec<String>,
) -> (Vec<ParamSpec>, BTreeSet<String>) {
    let mut params = Vec::new();
    let mut broken = BTreeSet::new();
    for (name, value) in written.0 {
        match check_param(&name, value) {
            Ok(param) => params.push(param),
            Err(e) => {
                errors.push(format!("params.{name}: {e}"));
                broken.insert(name);
            }
        }
    }
    (params, broken)
}

fn check_param(name: &str, value: toml::Value) -> Result<ParamSpec, String> {
    if !is_param_name(name) {
        return Err(
            "a parameter name is a letter or `_` followed by letters, digits or `_`".into(),
        );
    }
    let (type_name, default) = match value {
        toml::Value::String(type_name) => (type_name, None),
        toml::Value::Table(mut table) => {
            let Some(toml::Value::String(type_name)) = table.remove("type") else {
                return Err("needs `type = \"...\"` (a type name string)".into());
            };
            let default = table.remove("default");
            if let Some(unknown) = table.keys().next() {
                return Err(format!("unknown key `{unknown}` (expected type, default)"));
            }
            (type_name, default)
        }
        _ => {
            return Err(
                "write a type name like \"int8\" or { type = \"int8\", default = 1 }".into(),
            )
        }
    };
    let ty = ParamType::from_name(&type_name)?;
    let default = default
        .map(|d| toml_to_json(&d))
        .transpose()
        .map_err(|e| format!("default: {e}"))?;
    if let Some(json) = &default {
        SqlValue::from_json(name, ty, json)
            .map_err(|e| format!("default does not fit the type: {e}"))?;
    }
    Ok(ParamSpec {
        name: name.to_string(),
        ty,
        default,
    })
}

fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The statements with the key to name in errors: "sql" for one, "sql[i]" for a list.
fn statement_sources(sql: Option<toml::Value>, errors: &mut Vec<String>) -> Vec<(String, String)> {
    let sources = match sql {
        None => {
            errors.push("sql: missing; a job needs at least one statement".to_string());
            return Vec::new();
        }
        Some(toml::Value::String(one)) => vec![("sql".to_string(), one)],
        Some(toml::Value::Array(list)) => {
            if list.is_empty() {
                errors.push("sql: empty list; a job needs at least one statement".to_string());
            }
            let mut sources = Vec::new();
            for (i, item) in list.into_iter().enumerate() {
                match item {
                    toml::Value::String(statement) => {
                        sources.push((format!("sql[{i}]"), statement))
                    }
                    _ => errors.push(format!("sql[{i}]: must be a string")),
                }
            }
            sources
        }
        Some(_) => {
            errors.push("sql: must be a string or a list of strings".to_string());
            return Vec::new();
        }
    };
    sources
        .into_iter()
        .filter(|(key, source)| {
            let blank = source.trim().is_empty();
            if blank {
                errors.push(format!("{key}: empty statement"));
            }
            !blank
        })
        .collect()
}

fn statement(
    source: &str,
    params: &[ParamSpec],
    broken: &BTreeSet<String>,
) -> Result<SqlStatement, Vec<String>> {
    let rewritten = rewrite(source).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut uses_broken_param = false;
    let mut indexes = Vec::new();
    for name in &rewritten.names {
        match params.iter().position(|param| &param.name == name) {
            Some(index) => indexes.push(index),
            None if broken.contains(name) => uses_broken_param = true,
            None => errors.push(format!(
                "`:{name}` is not declared in [params] (if it is not meant as a parameter, e.g. \
                 an array slice `a[lo:hi]`, put a space after the colon)"
            )),
        }
    }
    if !errors.is_empty() || uses_broken_param {
        return Err(errors);
    }
    Ok(SqlStatement {
        source: source.to_string(),
        sql: rewritten.sql,
        types: indexes.iter().map(|&i| params[i].ty.pg_type()).collect(),
        params: indexes,
        opens_transaction: opens_transaction(source),
    })
}

/// TOML values as the JSON a request would carry; dates become their RFC 3339 text.
fn toml_to_json(value: &toml::Value) -> Result<Json, String> {
    Ok(match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} cannot be sent as JSON"))?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// "line N: message", without toml's multi-line source excerpt (the file is named by the
/// caller, and one line per problem keeps the list readable).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            format!("line {line}: {}", error.message())
        }
        None => error.message().to_string(),
    }
}

/// A humantime duration of at most [`crate::durations::LONGEST`]; the error says what is
/// wrong, with `example` as the hint when it is not a duration at all.
fn duration(written: &str, example: &str) -> Result<Duration, String> {
    humantime::parse_duration(written)
        .map_err(|e| format!("{written:?} is not a duration ({e}); write e.g. \"{example}\""))
        .and_then(crate::durations::bounded)
}

/// The durable-run keys, each checked; defaults from [`DurablePolicy::default`].
fn durable_policy(file: &JobFile, errors: &mut Vec<String>) -> DurablePolicy {
    let mut policy = DurablePolicy::default();
    if let Some(queue) = &file.queue {
        if queue.is_empty() {
            errors.push("queue: must name a queue (the default is \"default\")".to_string());
        } else {
            policy.queue = queue.clone();
        }
    }
    if let Some(priority) = file.priority {
        policy.priority = priority;
    }
    if let Some(max_attempts) = file.max_attempts {
        if max_attempts < 1 {
            errors.push("max_attempts: must be at least 1".to_string());
        } else {
            policy.max_attempts = max_attempts;
        }
    }
    let mut backoff = |key: &str, written: &Option<String>, into: &mut Duration| {
        if let Some(written) = written {
            match duration(written, "1s") {
                Ok(delay) => *into = delay,
                Err(e) => errors.push(format!("{key}: {e}")),
            }
        }
    };
    backoff(
        "retry_backoff",
        &file.retry_backoff,
        &mut policy.retry_backoff,
    );
    backoff(
        "retry_backoff_max",
        &file.retry_backoff_max,
        &mut policy.retry_backoff_max,
    );
    if policy.retry_backoff > policy.retry_backoff_max {
        errors.push(format!(
            "retry_backoff ({}) is above retry_backoff_max ({})",
            humantime::format_duration(policy.retry_backoff),
            humantime::format_duration(policy.retry_backoff_max)
        ));
    }
    policy
}
