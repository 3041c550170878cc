//! The `:name` placeholder scanner of SQL job files (`catalog::rewrite`) and the
//! transaction-opener check run on the same statements: total (never a panic), each name
//! declared once and spelled as a name, and nothing but the placeholders changed.
#![no_main]

use forkpool::catalog::{opens_transaction, rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|source: &str| {
    let _ = opens_transaction(source);
    let Ok(rewritten) = rewrite(source) else {
        return;
    };
    for (i, name) in rewritten.names.iter().enumerate() {
        let mut bytes = name.bytes();
        assert!(bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_'));
        assert!(bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert!(!rewritten.names[..i].contains(name), "{name} listed twice");
        assert!(source.contains(&format!(":{name}")));
    }
    if rewritten.names.is_empty() {
        assert_eq!(rewritten.sql, source, "no placeholder, nothing rewritten");
    }
    // Putting each `$n` back as `:name` gives the source again: the scanner copies the rest
    // byte for byte. Only `$n` the rewrite wrote can be found this way when the source had
    // no `$` followed by a digit (it refuses those) and no `$` next to a name.
    if !source.contains('$') {
        let mut restored = String::new();
        let mut rest = rewritten.sql.as_str();
        while let Some(at) = rest.find('$') {
            restored.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let n: usize = rest[at + 1..at + 1 + digits].parse().expect("a $n");
            restored.push(':');
            restored.push_str(&rewritten.names[n - 1]);
            rest = &rest[at + 1 + digits..];
        }
        restored.push_str(rest);
        assert_eq!(restored, source);
    }
});
