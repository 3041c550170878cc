//! Finds the `:name` parameters in a job's SQL and rewrites them to PostgreSQL's `$1..$n`.
//!
//! A `:name` is a parameter only where PostgreSQL would read SQL tokens: never inside string
//! literals (`'..'`, `E'..'`), quoted identifiers, comments (nested `/* */`, `--`) or
//! dollar-quoted bodies, and never right after another `:` (a `::type` cast). Everything
//! else is copied byte for byte, so the server sees exactly what the job file says.
//!
//! The scanner is total: any input yields `Ok` or `Err`, never a panic, because job files are
//! written by people and the function will be fuzzed.

/// A statement with its parameters replaced by `$1..$n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub sql: String,
    /// `names[k]` is the parameter written `$k+1`; each name appears once, in first-use order.
    pub names: Vec<String>,
}

/// Rewrites `:name` to `$n` (the same name always gets the same `$n`).
///
/// Errors: an unterminated literal, identifier, comment or dollar-quoted body (PostgreSQL
/// would refuse it anyway, and reading on would misplace parameters), and a `$1`-style
/// positional parameter (mixing the two styles would make `$n` ambiguous).
pub fn rewrite(source: &str) -> Result<Rewritten, String> {
    let bytes = source.as_bytes();
    let mut sql = String::with_capacity(source.len());
    let mut names: Vec<String> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let next = bytes.get(i + 1).copied();
        i = match byte {
            b'\'' => skip_quoted(bytes, i, b'\'', false)?,
            b'"' => skip_quoted(bytes, i, b'"', false)?,
            b'-' if next == Some(b'-') => skip_line_comment(bytes, i),
            b'/' if next == Some(b'*') => skip_block_comment(bytes, i)?,
            b'$' if next.is_some_and(|b| b.is_ascii_digit()) => {
                return Err(format!(
                    "positional parameter `${}` at line {}: write named parameters like `:id` \
                     (declared in [params]) instead of `$n`",
                    digits_at(bytes, i + 1),
                    line_of(bytes, i)
                ));
            }
            b'$' => match dollar_tag(bytes, i) {
                Some(tag) => skip_dollar_quoted(bytes, i, tag)?,
                None => i + 1,
            },
            b':' if i > 0 && bytes[i - 1] == b':' => i + 1,
            b':' if next.is_some_and(is_name_start) => {
                let end = name_end(bytes, i + 1);
                let name = &source[i + 1..end];
                let position = match names.iter().position(|known| known == name) {
                    Some(position) => position,
                    None => {
                        names.push(name.to_string());
                        names.len() - 1
                    }
                };
                sql.push_str(&source[copied..i]);
                sql.push('$');
                sql.push_str(&(position + 1).to_string());
                copied = end;
                end
            }
            // An identifier is consumed whole below, so a lone `E` here starts an E'..' string.
            b'e' | b'E' if next == Some(b'\'') => skip_quoted(bytes, i + 1, b'\'', true)?,
            byte if is_identifier_start(byte) => identifier_end(bytes, i),
            _ => i + 1,
        };
    }
    sql.push_str(&source[copied..]);
    Ok(Rewritten { sql, names })
}

/// Index just past a literal or quoted identifier opened by `bytes[start] == quote`; a doubled
/// quote is an escaped quote, and so is a backslash-escaped one in `E'..'` strings.
fn skip_quoted(
    bytes: &[u8],
    start: usize,
    quote: u8,
    backslash_escapes: bool,
) -> Result<usize, String> {
    let mut i = start + 1;
    while let Some(&byte) = bytes.get(i) {
        if backslash_escapes && byte == b'\\' {
            i += 2;
        } else if byte == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Ok(i + 1);
            }
        } else {
            i += 1;
        }
    }
    let what = if quote == b'"' {
        "quoted identifier"
    } else {
        "string literal"
    };
    Err(format!(
        "unterminated {what} starting at line {}",
        line_of(bytes, start)
    ))
}

/// Whether `sql` is a statement that opens a transaction block (`BEGIN`, `START
/// TRANSACTION`): its first keyword, after white space and comments. Worked out once, when
/// the job file is loaded, with the same comment scanners as [`rewrite`].
pub fn opens_transaction(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    let mut i = 0;
    loop {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if bytes[i..].starts_with(b"--") {
            i = skip_line_comment(bytes, i);
        } else if bytes[i..].starts_with(b"/*") {
            match skip_block_comment(bytes, i) {
                Ok(end) => i = end,
                Err(_) => return false,
            }
        } else {
            break;
        }
    }
    let keyword = &bytes[i..i + bytes[i..]
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .count()];
    keyword.eq_ignore_ascii_case(b"begin") || keyword.eq_ignore_ascii_case(b"start")
}

fn skip_line_comment(bytes: &[u8], start: usize) -> usize {
    match bytes[start..].iter().position(|&b| b == b'\n') {
        Some(offset) => start + offset + 1,
        None => bytes.len(),
    }
}

/// `/* */` comments nest in PostgreSQL (unlike the SQL standard's reading in many tools).
fn skip_block_comment(bytes: &[u8], start: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(format!(
        "unterminated /* comment starting at line {}",
        line_of(bytes, start)
    ))
}

/// The opening `$tag$` (or `$$`) at `start`, if there is one.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<&[u8]> {
    let mut i = start + 1;
    if bytes.get(i).is_some_and(|&b| is_identifier_start(b)) {
        while bytes
            .get(i)
            .is_some_and(|&b| is_identifier_start(b) || b.is_ascii_digit())
        {
            i += 1;
        }
    }
    (bytes.get(i) == Some(&b'$')).then(|| &bytes[start..=i])
}

fn skip_dollar_quoted(bytes: &[u8], start: usize, tag: &[u8]) -> Result<usize, String> {
    let body = start + tag.len();
    bytes[body..]
        .windows(tag.len())
        .position(|window| window == tag)
        .map(|offset| body + offset + tag.len())
        .ok_or_else(|| {
            format!(
                "unterminated dollar-quoted string {} starting at line {}",
                String::from_utf8_lossy(tag),
                line_of(bytes, start)
            )
        })
}

/// Identifiers and key words may contain `$` and digits after the first character, so
/// `price$1` and `a$b$` are identifiers, not a positional parameter or a dollar quote.
fn identifier_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while bytes.get(i).is_some_and(|&b| is_identifier_byte(b)) {
        i += 1;
    }
    i
}

fn name_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while bytes
        .get(i)
        .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
    {
        i += 1;
    }
    i
}

fn is_name_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_'
}

/// PostgreSQL counts every non-ASCII byte as a letter in identifiers.
fn is_identifier_start(byte: u8) -> bool {
    is_name_start(byte) || byte >= 0x80
}

fn is_identifier_byte(byte: u8) -> bool {
    is_identifier_start(byte) || byte.is_ascii_digit() || byte == b'$'
}

fn digits_at(bytes: &[u8], start: usize) -> String {
    let end = start
        + bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    String::from_utf8_lossy(&bytes[start..end]).into_owned()
}

fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(source: &str) -> (String, Vec<String>) {
        let rewritten = rewrite(source).unwrap_or_else(|e| panic!("{source:?}: {e}"));
        (rewritten.sql, rewritten.names)
    }

    #[test]
    fn rewrites_parameters_outside_literals_comments_and_casts() {
        let table: &[(&str, &str, &[&str])] = &[
            (
                "SELECT :a + :b AS sum",
                "SELECT $1 + $2 AS sum",
                &["a", "b"],
            ),
            ("SELECT :a, :b, :a", "SELECT $1, $2, $1", &["a", "b"]),
            ("SELECT :_x1", "SELECT $1", &["_x1"]),
            ("SELECT ':a'", "SELECT ':a'", &[]),
            ("SELECT 'it''s :a', :b", "SELECT 'it''s :a', $1", &["b"]),
            ("SELECT E'it\\'s :a', :b", "SELECT E'it\\'s :a', $1", &["b"]),
            ("SELECT e'\\\\', :b", "SELECT e'\\\\', $1", &["b"]),
            ("SELECT 'a\\', :b", "SELECT 'a\\', $1", &["b"]),
            ("SELECT \"col:a\" FROM t", "SELECT \"col:a\" FROM t", &[]),
            ("SELECT \"a\"\":b\"", "SELECT \"a\"\":b\"", &[]),
            ("SELECT 1 -- :a\n, :b", "SELECT 1 -- :a\n, $1", &["b"]),
            ("SELECT /* :a */ :b", "SELECT /* :a */ $1", &["b"]),
            (
                "SELECT /* /* :a */ :c */ :b",
                "SELECT /* /* :a */ :c */ $1",
                &["b"],
            ),
            ("SELECT $$ :a $$, :b", "SELECT $$ :a $$, $1", &["b"]),
            (
                "SELECT $fn$ :a $$ :c $fn$, :b",
                "SELECT $fn$ :a $$ :c $fn$, $1",
                &["b"],
            ),
            ("SELECT :a::int8", "SELECT $1::int8", &["a"]),
            ("SELECT x::text", "SELECT x::text", &[]),
            (
                "DO $$ BEGIN x := 1; END $$",
                "DO $$ BEGIN x := 1; END $$",
                &[],
            ),
            ("SELECT a[1:2]", "SELECT a[1:2]", &[]),
            ("SELECT a[:lo:3]", "SELECT a[$1:3]", &["lo"]),
            ("SELECT x:y", "SELECT x$1", &["y"]),
            (
                "SELECT price$1, a$b$ FROM t",
                "SELECT price$1, a$b$ FROM t",
                &[],
            ),
            ("SELECT type'x:a'", "SELECT type'x:a'", &[]),
            ("SELECT :a:b", "SELECT $1$2", &["a", "b"]),
            ("SELECT :é", "SELECT :é", &[]),
            ("SELECT 'é', :b", "SELECT 'é', $1", &["b"]),
            ("", "", &[]),
            (":", ":", &[]),
        ];
        for (source, sql, names) in table {
            let (got_sql, got_names) = ok(source);
            assert_eq!(&got_sql, sql, "{source:?}");
            assert_eq!(got_names, names.to_vec(), "{source:?}");
        }
    }

    #[test]
    fn refuses_positional_parameters_and_unterminated_tokens() {
        for (source, expected) in [
            ("SELECT $1", "positional parameter `$1`"),
            ("SELECT :a, $12", "positional parameter `$12`"),
            (
                "SELECT 'abc",
                "unterminated string literal starting at line 1",
            ),
            (
                "SELECT\n\"abc",
                "unterminated quoted identifier starting at line 2",
            ),
            ("SELECT E'abc\\'", "unterminated string literal"),
            ("SELECT /* /* */", "unterminated /* comment"),
            (
                "SELECT $x$ abc $y$",
                "unterminated dollar-quoted string $x$",
            ),
        ] {
            let error = rewrite(source).unwrap_err();
            assert!(error.contains(expected), "{source:?}: {error}");
        }
    }

    #[test]
    fn never_panics_on_awkward_input() {
        let pieces = [
            "'", "\"", "$", "$$", "$a", ":", "::", "a", "E", "\\", "/*", "*/", "-", "--", "\n",
            "1", "é", "\u{0}",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let text: String = (0..rng.usize(0..10))
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            if let Ok(rewritten) = rewrite(&text) {
                assert!(rewritten.names.len() <= text.len(), "{text:?}");
            }
        }
        // Every sequence of up to three pieces.
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let _ = rewrite(&[a, b, c].concat());
                }
            }
        }
    }

    #[test]
    fn statements_that_open_a_transaction_are_recognised_past_comments() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable",
            "  START TRANSACTION",
            "-- note\nBEGIN",
            "/* a /* nested */ one */ begin",
        ] {
            assert!(opens_transaction(sql), "{sql:?}");
        }
        for sql in [
            "SELECT 1",
            "DO $$BEGIN END$$",
            "COMMIT",
            "-- BEGIN\nSELECT 1",
            "/* begin */ SELECT 1",
            "",
            "/* unterminated",
        ] {
            assert!(!opens_transaction(sql), "{sql:?}");
        }
    }
}
