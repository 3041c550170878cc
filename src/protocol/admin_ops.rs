//! The operator's ops (DESIGN §5 "Administration"): `reload`, `stop` and `scale`, the
//! socket's versions of SIGHUP, SIGTERM/SIGINT and SIGTTIN/SIGTTOU.

use super::Fields;

/// An operator's op; the master answers each only to the uids allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// Reload the configuration and the catalog, as SIGHUP does.
    Reload,
    /// Stop the service: gracefully as SIGTERM does, or fast as SIGINT.
    Stop { fast: bool },
    /// Move the operator's worker count, as SIGTTIN/SIGTTOU do one at a time.
    Scale(Scale),
}

impl Admin {
    /// The op's name on the wire, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Admin::Reload => "reload",
            Admin::Stop { .. } => "stop",
            Admin::Scale(_) => "scale",
        }
    }

    /// The fields it takes, `id` and `op` included.
    pub(super) fn fields(self) -> &'static [&'static str] {
        match self {
            Admin::Reload => &["id", "op"],
            Admin::Stop { .. } => &["id", "op", "fast"],
            Admin::Scale(_) => &["id", "op", "workers", "by"],
        }
    }
}

/// How `scale` moves the operator's target: to a number, or by a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// `"workers": N`: exactly N workers.
    To(usize),
    /// `"by": ±N`: N more (or fewer) than the target now.
    By(i64),
}

/// Parses the fields of op `op` (one of the ops above).
pub(super) fn parse(op: &str, fields: &Fields) -> Result<Admin, String> {
    match op {
        "reload" => Ok(Admin::Reload),
        "stop" => Ok(Admin::Stop {
            fast: match fields.get("fast") {
                None => false,
                Some(raw) => serde_json::from_str::<bool>(raw.get())
                    .map_err(|_| "field `fast` must be true or false".to_string())?,
            },
        }),
        _ => scale(fields).map(Admin::Scale),
    }
}

/// `workers` (at least 1) or `by` (not 0), exactly one of them: a request that gives both
/// would leave it to the service to guess which was meant.
fn scale(fields: &Fields) -> Result<Scale, String> {
    match (fields.get("workers"), fields.get("by")) {
        (Some(_), Some(_)) => Err("give `workers` (a count) or `by` (a step), not both".into()),
        (Some(raw), None) => serde_json::from_str::<usize>(raw.get())
            .ok()
            .filter(|n| *n >= 1)
            .map(Scale::To)
            .ok_or_else(|| "field `workers` must be a whole number of at least 1".to_string()),
        (None, Some(raw)) => serde_json::from_str::<i64>(raw.get())
            .ok()
            .filter(|n| *n != 0)
            .map(Scale::By)
            .ok_or_else(|| "field `by` must be a non-zero integer (e.g. 2 or -1)".to_string()),
        (None, None) => Err(
            "op scale needs field `workers` (the count wanted) or `by` (a step such as 1 or -1)"
                .to_string(),
        ),
    }
}
