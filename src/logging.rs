//! Where log lines go and how they look: stderr, one line per event, as text (journald-aware)
//! or as JSON objects for log shippers (`forkpool run --log-format json`).

use std::io::Write;

/// How `run`'s log lines look.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// A line of text per event; under journald prefixed with its priority (`<3>`...).
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `message`.
    Json,
}

/// The logging options of `forkpool run`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogOptions {
    /// How log lines look: text (journald-aware) or json (one object per line).
    #[arg(long, value_enum, env = "FORKPOOL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The level logged (error, warn, info, debug, trace; default info). RUST_LOG still
    /// sets levels per module (`forkpool::access=off`).
    #[arg(long, env = "FORKPOOL_LOG_LEVEL")]
    pub log_level: Option<log::LevelFilter>,
}

/// Logs go to stderr, one line per event. Under journald (`JOURNAL_STREAM` set, as systemd
/// does for a service whose stderr is the journal) each text line starts with its syslog
/// priority `<N>` and carries no timestamp: journald parses the one and adds the other.
/// JSON lines are the same everywhere: what reads them parses their `level`. Colour only when
/// stderr is a terminal, so files and pipes get plain text.
pub fn init(options: &LogOptions) {
    use std::io::IsTerminal;
    // tokio-postgres logs every server notice at info (a reset's "there is no transaction in
    // progress" among them); the pool reports what matters under `forkpool::pool`.
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tokio_postgres=warn"),
    );
    // After RUST_LOG: the flag replaces its overall level, its per-module levels stay.
    if let Some(level) = options.log_level {
        builder.filter_level(level);
    }
    // tokio_postgres logs every query's bind parameters (job arguments) at debug: unless
    // RUST_LOG names it, it stays at warn whatever the level, so `RUST_LOG=debug` does not
    // put arguments in the journal.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("tokio_postgres")) {
        builder.filter_module("tokio_postgres", log::LevelFilter::Warn);
    }
    builder.format_target(false);
    builder.write_style(if std::io::stderr().is_terminal() {
        env_logger::WriteStyle::Auto
    } else {
        env_logger::WriteStyle::Never
    });
    if options.log_format == LogFormat::Json {
        builder.format(|out, record| writeln!(out, "{}", json_line(record)));
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|out, record| {
            let message = record.args().to_string().replace('\n', " ");
            writeln!(out, "<{}>{message}", syslog_priority(record.level()))
        });
    }
    builder.init();
}

/// One record as a JSON object on one line (newlines in the message are escaped).
fn json_line(record: &log::Record<'_>) -> serde_json::Value {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({
        "ts": ts,
        "level": record.level().as_str(),
        "target": record.target(),
        "message": record.args().to_string(),
    })
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_holds_level_target_and_the_message_on_one_line() {
        let line = json_line(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("forkpool::access")
                .args(format_args!("two\nlines \"quoted\""))
                .build(),
        )
        .to_string();
        assert!(!line.contains('\n'), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["level"], "WARN");
        assert_eq!(parsed["target"], "forkpool::access");
        assert_eq!(parsed["message"], "two\nlines \"quoted\"");
        assert!(parsed["ts"].as_str().unwrap().ends_with('Z'), "{line}");
    }
}
