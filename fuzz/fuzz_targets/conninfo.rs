//! A database's `url` from the configuration (src/pool/conninfo.rs): a libpq URL or a
//! `key=value` string. Parsing never panics; what parses is shown (key=value, password
//! masked) in a form that parses back to the same settings; a percent sign in a URL is
//! followed by two hex digits, as libpq requires.
#![no_main]

use forkpool::pool::ConnInfo;
use libfuzzer_sys::fuzz_target;

/// Whether every `%` in `text` starts a `%XX` escape.
fn percent_escapes_are_strict(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fuzz_target!(|text: &str| {
    let masked = ConnInfo::masked(text);
    let Ok(info) = ConnInfo::parse(text) else {
        assert!(masked.starts_with("(not shown: "), "{masked}");
        return;
    };
    let trimmed = text.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        assert!(
            percent_escapes_are_strict(trimmed),
            "a URL with a bad %-escape parsed: {text:?} -> {info:?}"
        );
    }
    let shown = info.to_string();
    assert_eq!(shown, masked);
    let _ = format!("{info:?}");
    let again = ConnInfo::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} is shown as {shown:?}, which does not parse: {e}"));
    let mut expected = info.clone();
    if expected.password.is_some() {
        expected.password = Some("********".to_string());
    }
    assert!(
        again == expected,
        "{text:?} is shown as {shown:?}, which parses as {again:?}"
    );
});
