//! Property tests for the two parsers that read what people and programs write: the request
//! parser (every line a client sends) and the `:name` tokenizer (every job file's SQL).
//!
//! cargo-fuzz needs a nightly toolchain; proptest runs in `cargo test` instead. Case counts
//! are kept small enough that a debug build runs this file in a few seconds.

use std::collections::BTreeMap;

use forkpool::catalog::rewrite;
use forkpool::protocol::{error_line, parse_request, ErrorKind, Op};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const CASES: u32 = 512;

/// Fragments of requests, so random lines often get past the JSON syntax into the checks on
/// fields, ids, args and timeouts.
const REQUEST_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\"id\"",
    "\"op\"",
    "\"job\"",
    "\"args\"",
    "\"timeout_ms\"",
    "\"run\"",
    "\"ping\"",
    "\"status\"",
    "\"jobs\"",
    "\"add\"",
    "\"a\"",
    "1",
    "-1",
    "0",
    "1e400",
    "18446744073709551616",
    "1.5",
    "null",
    "true",
    "false",
    "\\",
    "\\u0000",
    "\\ud800",
    " ",
    "\u{e9}",
    "\u{0}",
    "\"x\"",
];

fn request_like() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(REQUEST_TOKENS), 0..40)
        .prop_map(|tokens| tokens.concat().into_bytes())
}

/// Whatever the parser says about a line, it says it in a way the master can answer.
fn assert_answerable(line: &[u8]) {
    match parse_request(line) {
        Ok(request) => {
            let id: Value = serde_json::from_str(request.id.get()).expect("the id is JSON");
            assert!(!id.is_object() && !id.is_array(), "id {id} is not a scalar");
        }
        Err(rejection) => {
            assert!(
                matches!(
                    rejection.body.kind,
                    ErrorKind::BadRequest | ErrorKind::UnknownOp
                ),
                "{:?} for {:?}",
                rejection.body.kind,
                String::from_utf8_lossy(line)
            );
            let answer = error_line(&rejection.id, &rejection.body.to_json());
            let answer: Value = serde_json::from_slice(&answer).expect("the answer is JSON");
            assert_eq!(answer["ok"], false);
        }
    }
}

/// A JSON value of the kinds arguments take (no floats: their text form need not survive a
/// round trip exactly, and that is serde_json's business, not the parser's).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn scalar_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// A well-formed request of any op, as a client library would build it.
fn valid_request() -> impl Strategy<Value = Value> {
    let run = (
        any::<String>(),
        prop::option::of(prop::collection::btree_map("\\PC{1,8}", json_value(), 0..5)),
        prop::option::of(1..=u64::MAX),
    )
        .prop_map(|(job, args, timeout_ms)| {
            let mut request = Map::new();
            request.insert("op".into(), json!("run"));
            request.insert("job".into(), json!(job));
            if let Some(args) = args {
                let args: Map<String, Value> = args.into_iter().collect();
                request.insert("args".into(), Value::Object(args));
            }
            if let Some(ms) = timeout_ms {
                request.insert("timeout_ms".into(), json!(ms));
            }
            request
        });
    let other = prop::sample::select(&["ping", "status", "jobs"][..]).prop_map(|op| {
        let mut request = Map::new();
        request.insert("op".into(), json!(op));
        request
    });
    (prop_oneof![run, other], prop::option::of(scalar_id())).prop_map(|(mut request, id)| {
        if let Some(id) = id {
            request.insert("id".into(), id);
        }
        Value::Object(request)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_are_a_request_or_a_bad_request(line in prop::collection::vec(any::<u8>(), 0..512)) {
        assert_answerable(&line);
    }

    #[test]
    fn request_like_lines_are_a_request_or_a_bad_request(line in request_like()) {
        assert_answerable(&line);
    }

    /// Every well-formed request parses back to what was sent: id verbatim, op, job, args
    /// (raw, but the same JSON) and timeout.
    #[test]
    fn well_formed_requests_round_trip(request in valid_request()) {
        let line = serde_json::to_vec(&request).unwrap();
        let parsed = parse_request(&line).unwrap_or_else(|r| panic!("{request}: {:?}", r.body));
        let id: Value = serde_json::from_str(parsed.id.get()).unwrap();
        prop_assert_eq!(&id, request.get("id").unwrap_or(&Value::Null));
        match parsed.op {
            Op::Run { job, args, timeout_ms } => {
                prop_assert_eq!(request["op"].as_str(), Some("run"));
                prop_assert_eq!(Some(job.as_str()), request["job"].as_str());
                let args: Value = serde_json::from_str(args.get()).unwrap();
                let sent = request.get("args").cloned().unwrap_or(json!({}));
                prop_assert_eq!(args, sent);
                prop_assert_eq!(timeout_ms, request["timeout_ms"].as_u64());
            }
            Op::Ping => prop_assert_eq!(request["op"].as_str(), Some("ping")),
            Op::Status => prop_assert_eq!(request["op"].as_str(), Some("status")),
            Op::Jobs => prop_assert_eq!(request["op"].as_str(), Some("jobs")),
            other => prop_assert!(false, "the generator makes no durable op: {other:?}"),
        }
    }

    /// A field the protocol does not know is refused by name, never ignored.
    #[test]
    fn unknown_fields_are_refused_by_name(request in valid_request(), field in "\\PC{1,10}") {
        let known = ["id", "op", "job", "args", "timeout_ms", "queue", "priority", "run_at",
            "delay_ms", "max_attempts", "unique_key", "job_id", "wait_ms"];
        prop_assume!(!known.contains(&field.as_str()));
        let mut request = request;
        request.as_object_mut().unwrap().insert(field.clone(), json!(1));
        let rejection = parse_request(&serde_json::to_vec(&request).unwrap()).unwrap_err();
        prop_assert_eq!(rejection.body.kind, ErrorKind::BadRequest);
        let shown = format!("unknown field `{field}`");
        prop_assert!(rejection.body.message.contains(&shown), "{}", rejection.body.message);
    }
}

// ---- the `:name` tokenizer ---------------------------------------------------------------

/// Fragments of SQL that change the tokenizer's state: quotes, comments, dollar quotes,
/// casts, escapes.
const SQL_TOKENS: &[&str] = &[
    "'", "\"", "$", "$$", "$a$", "$1", ":", "::", ":a", ":b", "a", "E", "e'", "\\", "/*", "*/",
    "-", "--", "\n", " ", "1", "\u{e9}", "\u{0}", "''", "price$1",
];

fn sql_like() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(SQL_TOKENS), 0..30).prop_map(|t| t.concat())
}

/// One piece of a statement whose rewrite is known in advance.
#[derive(Debug, Clone)]
enum Piece {
    Param(String),
    Literal(String),
    EscapedLiteral(String),
    QuotedIdentifier(String),
    LineComment(String),
    BlockComment(String, String),
    DollarQuoted(String, String),
    Cast(String),
    Word(String),
    Punctuation(&'static str),
}

impl Piece {
    /// The piece as written in a job file.
    fn source(&self) -> String {
        match self {
            Piece::Param(name) => format!(":{name}"),
            Piece::Literal(text) => format!("'{}'", text.replace('\'', "''")),
            Piece::EscapedLiteral(text) => {
                format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
            }
            Piece::QuotedIdentifier(text) => format!("\"{}\"", text.replace('"', "\"\"")),
            Piece::LineComment(text) => format!("--{text}\n"),
            // Nested, as PostgreSQL allows; `*` and `/` are kept out of the text so that it
            // neither opens nor closes a comment itself.
            Piece::BlockComment(outer, inner) => format!("/*{outer}/*{inner}*/{outer}*/"),
            Piece::DollarQuoted(tag, body) => format!("${tag}${body}${tag}$"),
            Piece::Cast(ty) => format!("::{ty}"),
            Piece::Word(word) => word.clone(),
            Piece::Punctuation(p) => p.to_string(),
        }
    }
}

fn piece() -> impl Strategy<Value = Piece> {
    // Text that may hold anything a parameter could be mistaken in, `:names` included.
    let text = || {
        prop_oneof![
            "(?s).{0,12}",
            prop::collection::vec(prop::sample::select(SQL_TOKENS), 0..6).prop_map(|t| t.concat()),
        ]
    };
    prop_oneof![
        4 => "[a-z_][a-z0-9_]{0,5}".prop_map(Piece::Param),
        1 => text().prop_map(Piece::Literal),
        1 => text().prop_map(Piece::EscapedLiteral),
        1 => text().prop_map(Piece::QuotedIdentifier),
        1 => text().prop_map(|t| Piece::LineComment(t.replace('\n', " "))),
        1 => (text(), text()).prop_map(|(a, b)| Piece::BlockComment(no_comment_marks(&a), no_comment_marks(&b))),
        1 => ("[a-z_]{0,3}", text()).prop_map(|(tag, body)| Piece::DollarQuoted(tag, body.replace('$', "x"))),
        1 => "[a-z][a-z0-9]{0,5}".prop_map(Piece::Cast),
        2 => "[A-Za-z_][A-Za-z0-9_$]{0,6}".prop_map(Piece::Word),
        2 => prop::sample::select(&[",", "+", "(", ")", "=", ";", "[", "]", "1", "42"][..]).prop_map(Piece::Punctuation),
    ]
}

fn no_comment_marks(text: &str) -> String {
    text.replace(['*', '/'], "x")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_tokenizer_never_panics_on_any_text(source in any::<String>()) {
        let _ = rewrite(&source);
    }

    /// On SQL-shaped text the tokenizer either refuses it or returns a statement with a
    /// `$n` for each distinct name, each name an identifier written `:name` in the source.
    #[test]
    fn sql_like_text_is_refused_or_rewritten_consistently(source in sql_like()) {
        if let Ok(rewritten) = rewrite(&source) {
            for (k, name) in rewritten.names.iter().enumerate() {
                prop_assert!(name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
                prop_assert!(source.contains(&format!(":{name}")), "{:?}", rewritten);
                prop_assert!(rewritten.sql.contains(&format!("${}", k + 1)), "{:?}", rewritten);
                prop_assert_eq!(rewritten.names.iter().filter(|n| *n == name).count(), 1);
            }
        }
    }

    /// Statements built from known pieces: every `:name` outside literals, identifiers,
    /// comments, dollar quotes and casts becomes `$n` (the same name the same `$n`, in order
    /// of first use), and every byte of the rest is kept.
    #[test]
    fn parameters_are_found_exactly_outside_quotes_and_comments(
        pieces in prop::collection::vec(piece(), 0..12)
    ) {
        let mut source = String::new();
        let mut expected = String::new();
        let mut names: Vec<String> = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for piece in &pieces {
            source += &piece.source();
            source.push(' ');
            match piece {
                Piece::Param(name) => {
                    let n = *seen.entry(name.clone()).or_insert_with(|| {
                        names.push(name.clone());
                        names.len()
                    });
                    expected += &format!("${n}");
                }
                other => expected += &other.source(),
            }
            expected.push(' ');
        }
        let rewritten = rewrite(&source).unwrap_or_else(|e| panic!("{source:?}: {e}"));
        prop_assert_eq!(rewritten.sql, expected, "{:?}", source);
        prop_assert_eq!(rewritten.names, names);
    }
}
