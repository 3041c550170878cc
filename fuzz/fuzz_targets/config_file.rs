//! The configuration file and `FORKPOOL_*` variables (DESIGN §4) as `Config::load` reads
//! them, from text (`Config::from_text`, the loader's own code minus the file read). The
//! input is the file, then optionally a NUL byte and `KEY=value` lines for the environment.
//! Never a panic; a configuration that loads has durations the master can add to `now`.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant};

use forkpool::config::Config;
use libfuzzer_sys::fuzz_target;

fn fits_a_deadline(what: &str, duration: Duration) {
    assert!(
        Instant::now().checked_add(duration).is_some(),
        "{what} = {duration:?} overflows a deadline"
    );
}

fuzz_target!(|input: &str| {
    let (text, env_text) = input.split_once('\0').unwrap_or((input, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("FORKPOOL_{k}"), v.to_string()))
        .collect();
    let file = Path::new("/nonexistent/forkpool-fuzz/forkpool.toml");
    let config = match Config::from_text(file, text, &env) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.problems.is_empty());
            let _ = errors.to_string();
            let _ = format!("{:?}", errors.best_effort);
            return;
        }
    };
    let _ = format!("{config:?}");
    let (s, w, q) = (&config.service, &config.workers, &config.queue);
    let mut durations = vec![
        ("service.shutdown_timeout", Some(s.shutdown_timeout)),
        ("service.client_idle_timeout", s.client_idle_timeout),
        ("workers.job_timeout", Some(w.job_timeout)),
        ("workers.idle_timeout", w.idle_timeout),
        ("workers.heartbeat_timeout", w.heartbeat_timeout),
        ("workers.min_lifetime", Some(w.min_lifetime)),
        ("workers.boot_timeout", Some(w.boot_timeout)),
        ("workers.restart_backoff_max", Some(w.restart_backoff_max)),
        ("queue.poll_interval", Some(q.poll_interval)),
        ("queue.retention", Some(q.retention)),
        ("queue.discarded_retention", Some(q.discarded_retention)),
        ("queue.lease", Some(q.lease)),
    ];
    for db in config.databases.values() {
        durations.extend([
            ("databases.*.checkout_timeout", Some(db.checkout_timeout)),
            ("databases.*.connect_timeout", Some(db.connect_timeout)),
            ("databases.*.ping_after", Some(db.ping_after)),
            ("databases.*.max_lifetime", db.max_lifetime),
            ("databases.*.lifetime_jitter", Some(db.lifetime_jitter)),
            ("databases.*.idle_timeout", db.idle_timeout),
            ("databases.*.leak_threshold", db.leak_threshold),
            ("databases.*.statement_timeout", db.statement_timeout),
        ]);
    }
    for (what, duration) in durations {
        if let Some(duration) = duration {
            fits_a_deadline(what, duration);
        }
    }
});
