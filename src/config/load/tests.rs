use super::*;
use crate::config::database_keys::DATABASE_KEYS;

/// config/forkpool.toml documents every key: none missing, none the loader lacks.
#[test]
fn shipped_file_lists_every_known_key() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/forkpool.toml");
    let text = std::fs::read_to_string(file).unwrap();
    let mut found: Vec<String> = layers::from_toml(&text, key_depth)
        .unwrap()
        .into_iter()
        .map(|s| s.path.join("."))
        .collect();
    found.sort();
    let mut known: Vec<String> = SERVICE_KEYS
        .iter()
        .map(|k| format!("service.{k}"))
        .chain(WORKERS_KEYS.iter().map(|k| format!("workers.{k}")))
        .chain(DATABASE_KEYS.iter().map(|k| format!("databases.main.{k}")))
        .chain(QUEUE_KEYS.iter().map(|k| format!("queue.{k}")))
        .collect();
    known.sort();
    assert_eq!(found, known);
}

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forkpool.toml");
    std::fs::write(&file, text).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_from(&file, &env)
}

#[test]
fn client_limits_have_defaults_and_take_file_and_env_values() {
    let config = load_text("", &[]).unwrap();
    assert_eq!(config.service.max_clients, 1024);
    assert_eq!(
        config.service.client_idle_timeout,
        Some(std::time::Duration::from_secs(300))
    );
    assert!(config.service.allowed_gids.is_empty());
    let config = load_text(
        "[service]\nmax_clients = 5\nclient_idle_timeout = \"0\"\nallowed_gids = [10, 20]\n",
        &[("FORKPOOL_SERVICE__ALLOWED_UIDS", "1000,1001")],
    )
    .unwrap();
    assert_eq!(config.service.max_clients, 5);
    assert_eq!(config.service.client_idle_timeout, None);
    assert_eq!(config.service.allowed_gids, [10, 20]);
    assert_eq!(config.service.allowed_uids, [1000, 1001]);
}

#[test]
fn max_clients_zero_is_refused_naming_the_key() {
    let errors = load_text(
        "[service]\nmax_clients = 0\nallowed_gids = \"staff\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.problems.len(), 2, "{errors}");
    assert!(
        errors.problems[0].contains("service.allowed_gids = \"staff\": not a list of gids"),
        "{errors}"
    );
    assert!(
        errors.problems[1].contains("service.max_clients = 0: at least one client"),
        "{errors}"
    );
}

#[test]
fn passwords_are_found_in_key_value_strings_and_urls_only() {
    let text = r#"
[databases.kv]
url = "host=db user=app password='s e c'"
[databases.url]
url = "postgresql://app:p%40ss@db/app"
[databases.user_only]
url = "postgresql://app@db/app"
[databases.file]
url = "host=db"
password_file = "secret"
"#;
    assert_eq!(
        keys_with_passwords(text),
        ["databases.kv.url", "databases.url.url"]
    );
    assert!(keys_with_passwords("not [toml").is_empty());
}

#[test]
fn check_warns_about_a_password_in_a_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forkpool.toml");
    let set_mode =
        |mode| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::write(
        &file,
        "[databases.main]\nurl = \"host=db password=hunter2\"\n",
    )
    .unwrap();
    set_mode(0o644);
    let config = Config::load_from(&file, &[]).unwrap();
    let warning = config.exposed_password_warning().expect("a warning");
    assert!(warning.contains("mode 0644"), "{warning}");
    assert!(warning.contains("databases.main.url"), "{warning}");
    assert!(warning.contains("chmod 600"), "{warning}");
    assert!(warning.contains("password_file"), "{warning}");
    assert!(!warning.contains("hunter2"), "{warning}");
    // Group-readable is how a service group shares it (README: 0640, group forkpool).
    set_mode(0o640);
    assert_eq!(config.exposed_password_warning(), None);
    std::fs::write(&file, "[databases.main]\nurl = \"host=db\"\n").unwrap();
    set_mode(0o644);
    assert_eq!(config.exposed_password_warning(), None);
}

#[test]
fn a_typo_suggests_the_closest_key() {
    assert_eq!(closest("cuont", WORKERS_KEYS), Some("count"));
    assert_eq!(closest("thread", WORKERS_KEYS), Some("threads"));
    assert_eq!(closest("poolsize", DATABASE_KEYS), Some("pool_size"));
    assert_eq!(closest("colour", WORKERS_KEYS), None);
}

/// Found by the `config_file` fuzz target: `shutdown_timeout = "300000000000y"` loaded, and
/// the master panicked adding it to `now` when asked to stop. Environment values are read by
/// the same reader.
#[test]
fn durations_past_a_century_are_refused_naming_the_key() {
    let errors = load_text(
        "[service]\nshutdown_timeout = \"300000000000y\"\n",
        &[("FORKPOOL_WORKERS__JOB_TIMEOUT", "200y")],
    )
    .unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("service.shutdown_timeout"), "{text}");
    assert!(text.contains("workers.job_timeout"), "{text}");
    assert_eq!(text.matches("at most 100 years").count(), 2, "{text}");
}

#[test]
fn queue_batch_defaults_to_one_and_is_refused_out_of_range_or_with_limits() {
    assert_eq!(load_text("", &[]).unwrap().queue.batch, 1);
    let config = load_text("[queue]\nbatch = 8\n", &[]).unwrap();
    assert_eq!(config.queue.batch, 8);
    let errors = load_text("[queue]\nbatch = 0\n", &[]).unwrap_err();
    assert!(
        errors.problems[0].contains("queue.batch = 0: must be from 1 to 64"),
        "{errors}"
    );
    let errors = load_text("[queue]\nbatch = 4\n[queue.limits]\nemails = 2\n", &[]).unwrap_err();
    assert!(
        errors.problems[0].contains("queue.batch = 4 with [queue.limits]"),
        "{errors}"
    );
}
