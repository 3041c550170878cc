use super::*;

#[test]
fn key_value_string_with_quotes_and_spaces() {
    let info = ConnInfo::parse(
        "host=db.example port = 6543 user=app password='it''s \\'secret\\'' dbname=main sslmode=verify-full",
    );
    // libpq has no '' escape: the quoted value ends at the second quote.
    assert!(info.is_err());
    let info = ConnInfo::parse(
        "host=db.example port = 6543 user=app password='s p\\'c' dbname=main sslmode=verify-full",
    )
    .unwrap();
    assert_eq!(info.host.as_deref(), Some("db.example"));
    assert_eq!(info.port.as_deref(), Some("6543"));
    assert_eq!(info.password.as_deref(), Some("s p'c"));
    assert_eq!(info.sslmode, Some(SslMode::VerifyFull));
}

#[test]
fn url_with_everything() {
    let info = ConnInfo::parse(
        "postgresql://app:p%40ss@[::1]:5433/main?sslmode=require&application_name=x&connect_timeout=3",
    )
    .unwrap();
    assert_eq!(info.user.as_deref(), Some("app"));
    assert_eq!(info.password.as_deref(), Some("p@ss"));
    assert_eq!(info.host.as_deref(), Some("::1"));
    assert_eq!(info.port.as_deref(), Some("5433"));
    assert_eq!(info.dbname.as_deref(), Some("main"));
    assert_eq!(info.sslmode, Some(SslMode::Require));
    assert_eq!(info.application_name.as_deref(), Some("x"));
    assert_eq!(info.connect_timeout, Some(Duration::from_secs(3)));
}

#[test]
fn url_with_socket_directory_host() {
    let info = ConnInfo::parse("postgres://%2Fvar%2Frun%2Fpostgresql/app").unwrap();
    assert_eq!(info.host.as_deref(), Some("/var/run/postgresql"));
    assert!(info.is_unix_socket());
    let info = ConnInfo::parse("postgres:///app?host=/tmp&port=5499").unwrap();
    assert_eq!(info.host.as_deref(), Some("/tmp"));
    assert_eq!(info.port.as_deref(), Some("5499"));
}

#[test]
fn errors_name_the_bad_key() {
    let error = ConnInfo::parse("host=x sslcompression=1").unwrap_err();
    assert!(error.to_string().contains("\"sslcompression\""), "{error}");
    let error = ConnInfo::parse("port=abc").unwrap_err();
    assert!(error.to_string().contains("port"), "{error}");
    let error = ConnInfo::parse("postgres://h/db?sslmode=sometimes").unwrap_err();
    assert!(error.to_string().contains("sslmode"), "{error}");
    let error = ConnInfo::parse("host").unwrap_err();
    assert!(error.to_string().contains("\"host\""), "{error}");
}

#[test]
fn env_fills_only_what_the_string_left_out_then_defaults() {
    let env = |name: &str| match name {
        "PGHOST" => Some("envhost".to_string()),
        "PGPORT" => Some("7000".to_string()),
        "PGUSER" => Some("envuser".to_string()),
        "PGPASSWORD" => Some("envpass".to_string()),
        "PGSSLMODE" => Some("verify-ca".to_string()),
        "PGCONNECT_TIMEOUT" => Some("9".to_string()),
        _ => None,
    };
    let info = ConnInfo::parse("host=given").unwrap().with_env(env);
    assert_eq!(info.host.as_deref(), Some("given"));
    assert_eq!(info.port.as_deref(), Some("7000"));
    assert_eq!(info.user.as_deref(), Some("envuser"));
    assert_eq!(
        info.dbname.as_deref(),
        Some("envuser"),
        "dbname defaults to the user"
    );
    assert_eq!(info.password.as_deref(), Some("envpass"));
    assert_eq!(info.sslmode, Some(SslMode::VerifyCa));
    assert_eq!(info.connect_timeout, Some(Duration::from_secs(9)));

    let info = ConnInfo::default().with_env(|_| None);
    assert!(info.is_unix_socket());
    assert_eq!(info.hosts().unwrap()[0].port, 5432);
    assert_eq!(info.sslmode, Some(SslMode::Prefer));
    assert!(info.user.is_some());
}

#[test]
fn password_file_first_line_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "  s3cret \nsecond line\n").unwrap();
    let info = ConnInfo::parse("host=h password=old")
        .unwrap()
        .with_password_file(&path)
        .unwrap();
    assert_eq!(info.password.as_deref(), Some("s3cret"));
    let missing = ConnInfo::default().with_password_file(&dir.path().join("none"));
    assert!(missing.unwrap_err().to_string().contains("password_file"));
}

#[test]
fn debug_and_display_never_show_the_password() {
    let info = ConnInfo::parse("postgres://app:hunter2-xyz@db/main").unwrap();
    for text in [format!("{info}"), format!("{info:?}"), format!("{info:#?}")] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("password=********"), "{text}");
    }
    let reparsed = ConnInfo::parse(&info.to_string()).unwrap();
    assert_eq!(reparsed.host, info.host);
}

#[test]
fn masked_hides_the_password_of_any_connection_string() {
    assert_eq!(
        ConnInfo::masked("postgresql://app:hunter2-xyz@db:5433/main"),
        "host=db port=5433 user=app password=******** dbname=main"
    );
    assert_eq!(
        ConnInfo::masked("host=db password=hunter2-xyz"),
        "host=db password=********"
    );
    assert_eq!(ConnInfo::masked("host=db"), "host=db");
    // Unparsable: maybe a password in a form we do not know, so nothing of it is shown.
    let text = ConnInfo::masked("host=db password=hunter2-xyz sslcompression=1");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("sslcompression"), "{text}");
}

#[test]
fn several_hosts_pair_with_their_ports() {
    let info = ConnInfo::parse("host=a,b,/sock port=1,,3 target_session_attrs=read-write").unwrap();
    let hosts = info.hosts().unwrap();
    let pairs: Vec<(&str, u16)> = hosts.iter().map(|h| (h.host.as_str(), h.port)).collect();
    assert_eq!(pairs, [("a", 1), ("b", 5432), ("/sock", 3)]);
    assert_eq!(
        info.target_session_attrs,
        Some(TargetSessionAttrs::ReadWrite)
    );
    let info = ConnInfo::parse("host=a,b port=7").unwrap();
    assert!(info.hosts().unwrap().iter().all(|h| h.port == 7));
    let error = ConnInfo::parse("host=a,b,c port=1,2")
        .unwrap()
        .hosts()
        .unwrap_err();
    assert!(
        error.to_string().contains("2 port numbers to 3 hosts"),
        "{error}"
    );
    let error = ConnInfo::parse("target_session_attrs=sometimes").unwrap_err();
    assert!(
        error.to_string().contains("target_session_attrs"),
        "{error}"
    );
}

#[test]
fn url_with_several_hosts() {
    let info = ConnInfo::parse("postgresql://u@h1:5001,[::1]:5002,h3/db?target_session_attrs=any")
        .unwrap();
    let hosts = info.hosts().unwrap();
    let pairs: Vec<(&str, u16)> = hosts.iter().map(|h| (h.host.as_str(), h.port)).collect();
    assert_eq!(pairs, [("h1", 5001), ("::1", 5002), ("h3", 5432)]);
    assert_eq!(info.dbname.as_deref(), Some("db"));
    let reparsed = ConnInfo::parse(&info.to_string()).unwrap();
    assert_eq!(reparsed.hosts().unwrap(), hosts);
}

#[test]
fn client_certificate_and_passfile_keys_and_variables() {
    let info = ConnInfo::parse("sslcert=/c.crt passfile=/p")
        .unwrap()
        .with_env(|name| match name {
            "PGSSLCERT" => Some("/env.crt".into()),
            "PGSSLKEY" => Some("/env.key".into()),
            "PGPASSFILE" => Some("/env-pass".into()),
            "PGTARGETSESSIONATTRS" => Some("primary".into()),
            _ => None,
        });
    assert_eq!(info.sslcert.as_deref(), Some("/c.crt"));
    assert_eq!(info.sslkey.as_deref(), Some("/env.key"));
    assert_eq!(info.passfile.as_deref(), Some("/p"));
    assert_eq!(info.target_session_attrs, Some(TargetSessionAttrs::Primary));
}

/// Found by the `conninfo` fuzz target: a value holding white space other than a space, tab
/// or newline (a form feed from a percent-escaped URL) was shown unquoted, and the text
/// shown read back as other settings.
#[test]
fn display_quotes_every_white_space_so_it_parses_back() {
    for host in ["/var\u{c}x", "a\rb", "a\u{b}b", "a\u{a0}b", "a\u{2003}b"] {
        let info = ConnInfo {
            host: Some(host.to_string()),
            dbname: Some("main".to_string()),
            ..ConnInfo::default()
        };
        let shown = info.to_string();
        let again = ConnInfo::parse(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(again, info, "{shown:?}");
    }
}

/// Found by the `conninfo` fuzz target: what followed an IPv6 address's `]` was dropped
/// unless it was `:port`, so a mistyped URL connected somewhere else without a word.
#[test]
fn url_refuses_text_after_an_ipv6_address() {
    for url in [
        "postgresql://[::1]x/db",
        "postgresql://[::1]5432/db",
        "postgres://[::1]]",
    ] {
        let error = ConnInfo::parse(url).unwrap_err().to_string();
        assert!(error.contains("after the IPv6 address"), "{url}: {error}");
    }
    let info = ConnInfo::parse("postgresql://[::1]/db").unwrap();
    assert_eq!((info.host.as_deref(), info.port), (Some("::1"), None));
    let info = ConnInfo::parse("postgresql://[::1]:6000").unwrap();
    assert_eq!(
        (info.host.as_deref(), info.port),
        (Some("::1"), Some("6000".to_string()))
    );
}

/// `%` takes two hex digits, as in libpq: `%+1` is not byte 1 (`u8::from_str_radix` reads a
/// sign), it is a bad escape.
#[test]
fn url_percent_escapes_take_two_hex_digits() {
    for url in [
        "postgresql://db/ma%+1in",
        "postgresql://u%-1@db",
        "postgresql://db/%4",
    ] {
        let error = ConnInfo::parse(url).unwrap_err().to_string();
        assert!(error.contains("percent-encoding"), "{url}: {error}");
    }
    let info = ConnInfo::parse("postgresql://db/m%61%2Fin").unwrap();
    assert_eq!(info.dbname.as_deref(), Some("ma/in"));
}
