use super::*;

fn rejected(line: &str) -> (String, ErrorKind, String) {
    let r = parse_request(line.as_bytes()).unwrap_err();
    (r.id.get().to_string(), r.body.kind, r.body.message)
}

#[test]
fn run_request_keeps_args_raw_and_id_verbatim() {
    let r = parse_request(br#"{"id":"a-1","op":"run","job":"add","args":{"a": 1}}"#).unwrap();
    assert_eq!(r.id.get(), r#""a-1""#);
    match r.op {
        Op::Run { job, args, .. } => {
            assert_eq!(job, "add");
            assert_eq!(args.get(), r#"{"a": 1}"#);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_requests_are_bad_request_naming_the_problem() {
    assert_eq!(rejected("not json").1, ErrorKind::BadRequest);
    assert_eq!(rejected("[1,2]").2, "request must be a JSON object");
    let (id, kind, msg) = rejected(r#"{"id":7,"op":"run","job":3}"#);
    assert_eq!((id.as_str(), kind), ("7", ErrorKind::BadRequest));
    assert!(msg.contains("`job` must be a string"), "{msg}");
    assert!(rejected(r#"{"id":1,"op":"run","job":"x","args":[1]}"#)
        .2
        .contains("`args` must be a JSON object"));
    assert!(rejected(r#"{"id":1,"op":"run","job":"x","timeout_ms":-5}"#)
        .2
        .contains("timeout_ms"));
    assert!(rejected(r#"{"id":1,"op":"run","job":"x","arg":{}}"#)
        .2
        .contains("unknown field `arg`"));
    assert!(rejected(r#"{"id":{"a":1},"op":"ping"}"#).2.contains("`id`"));
    assert!(rejected(r#"{"id":1}"#).2.contains("missing field `op`"));
    assert!(rejected(r#"{"id":1,"op":"ping","op":"status"}"#)
        .2
        .contains("duplicate key `op`"));
    assert!(
        rejected(r#"{"id":1,"op":"run","job":"x","args":{"a":1,"a":2}}"#)
            .2
            .contains("args: duplicate key `a`")
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        rejected(&format!(
            r#"{{"id":1,"op":"run","job":"x","args":{{"a":{deep}}}}}"#
        ))
        .1,
        ErrorKind::BadRequest
    );
    assert_eq!(
        rejected("{\"id\":1,\"op\":\"ping\"\u{0}}").1,
        ErrorKind::BadRequest
    );
}

#[test]
fn invalid_utf8_is_bad_request() {
    let r = parse_request(b"{\"id\":1,\"op\":\"\xff\"}").unwrap_err();
    assert_eq!(r.body.kind, ErrorKind::BadRequest);
    assert!(r.body.message.contains("UTF-8"));
}

/// Whatever the bytes, the parser answers (a request or a rejection) and never panics.
#[test]
fn arbitrary_bytes_never_panic_the_parser() {
    let alphabet: &[u8] = b"{}[]\":,0123456789.eE+-truefalsnul \\idoparg\x00\xff\xc3\xa9";
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let len = rng.usize(0..80);
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        let _ = parse_request(&bytes);
    }
    for valid in [
        r#"{"id":1,"op":"run","job":"add","args":{"a":1}}"#,
        r#"{"op":"ping"}"#,
    ] {
        let bytes = valid.as_bytes();
        for cut in 0..bytes.len() {
            let _ = parse_request(&bytes[..cut]);
            let mut flipped = bytes.to_vec();
            flipped[cut] ^= 0x20;
            let _ = parse_request(&flipped);
        }
    }
}

#[test]
fn unknown_op_is_its_own_kind() {
    let (id, kind, msg) = rejected(r#"{"id":"x","op":"explode"}"#);
    assert_eq!((id.as_str(), kind), (r#""x""#, ErrorKind::UnknownOp));
    assert!(msg.contains("explode"));
}

#[test]
fn answer_lines_are_valid_json() {
    let id = RawValue::from_string("42".into()).unwrap();
    let ok: Value = serde_json::from_slice(&ok_line(&id, r#"{"rows":[]}"#)).unwrap();
    assert_eq!(ok["id"], 42);
    assert_eq!(ok["ok"], true);
    let body = ErrorBody::new(ErrorKind::DbError, "boom").with("sqlstate", "22012");
    let err: Value = serde_json::from_slice(&error_line(&id, &body.to_json())).unwrap();
    assert_eq!(err["error"]["kind"], "db_error");
    assert_eq!(err["error"]["sqlstate"], "22012");
}

#[test]
fn durable_ops_parse_their_fields_and_refuse_another_ops_fields_by_name() {
    let r = parse_request(
        br#"{"id":1,"op":"enqueue","job":"add","args":{"a":1},"queue":"q","delay_ms":5,"unique_key":"k"}"#,
    )
    .unwrap();
    match r.op {
        Op::Enqueue { job, options, .. } => {
            assert_eq!(job, "add");
            assert_eq!(options.queue.as_deref(), Some("q"));
            assert_eq!(options.delay_ms, Some(5));
            assert_eq!(options.unique_key.as_deref(), Some("k"));
        }
        other => panic!("{other:?}"),
    }
    let r = parse_request(br#"{"op":"result","job_id":7,"wait_ms":100}"#).unwrap();
    assert!(matches!(
        r.op,
        Op::Result {
            job_id: 7,
            wait_ms: Some(100)
        }
    ));
    let r = parse_request(br#"{"op":"resume","queue":"emails"}"#).unwrap();
    assert!(matches!(r.op, Op::Pause { paused: false, .. }));

    let (_, kind, message) = rejected(r#"{"op":"run","job":"add","queue":"q"}"#);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(
        message.contains("field `queue` does not go with this op"),
        "{message}"
    );
    let (_, _, message) = rejected(r#"{"op":"enqueue","job":"a","run_at":"x","delay_ms":1}"#);
    assert!(message.contains("not both"), "{message}");
    let (_, _, message) = rejected(r#"{"op":"cancel"}"#);
    assert!(message.contains("job_id"), "{message}");
    let (_, _, message) = rejected(r#"{"op":"pause"}"#);
    assert!(message.contains("queue"), "{message}");
    let (_, _, message) = rejected(r#"{"op":"enqueue","job":"a","max_attempts":0}"#);
    assert!(message.contains("max_attempts"), "{message}");
}

#[test]
fn admin_ops_parse_their_fields_and_name_each_mistake() {
    let op = |line: &str| parse_request(line.as_bytes()).map(|r| r.op);
    let admin = |line: &str| match op(line) {
        Ok(Op::Admin(admin)) => Some(admin),
        _ => None,
    };
    assert_eq!(admin(r#"{"op":"reload"}"#), Some(Admin::Reload));
    assert_eq!(admin(r#"{"op":"stop"}"#), Some(Admin::Stop { fast: false }));
    assert_eq!(
        admin(r#"{"op":"stop","fast":true}"#),
        Some(Admin::Stop { fast: true })
    );
    assert_eq!(
        admin(r#"{"op":"scale","workers":3}"#),
        Some(Admin::Scale(Scale::To(3)))
    );
    assert_eq!(
        admin(r#"{"op":"scale","by":-1}"#),
        Some(Admin::Scale(Scale::By(-1)))
    );
    for (line, named) in [
        (
            r#"{"op":"stop","fast":"yes"}"#,
            "`fast` must be true or false",
        ),
        (r#"{"op":"scale"}"#, "needs field `workers`"),
        (
            r#"{"op":"scale","workers":0}"#,
            "`workers` must be a whole number of at least 1",
        ),
        (
            r#"{"op":"scale","by":0}"#,
            "`by` must be a non-zero integer",
        ),
        (r#"{"op":"scale","workers":2,"by":1}"#, "not both"),
        (
            r#"{"op":"reload","fast":true}"#,
            "field `fast` does not go with this op",
        ),
    ] {
        let (_, kind, message) = rejected(line);
        assert_eq!(kind, ErrorKind::BadRequest, "{line}");
        assert!(message.contains(named), "{line}: {message}");
    }
}

#[test]
fn escaped_names_and_strings_read_decoded() {
    let r = parse_request(br#"{"\u006fp":"ru\u006e","job":"a\"b","args":{"\u0061":1}}"#).unwrap();
    match r.op {
        Op::Run { job, args, .. } => {
            assert_eq!(job, "a\"b");
            assert_eq!(args.get(), r#"{"\u0061":1}"#);
            assert_eq!(args.values.get("a"), Some(&Value::from(1)));
        }
        other => panic!("{other:?}"),
    }
    let (_, _, message) = rejected(r#"{"op":"run","job":"x","args":{"\u0061":1,"a":2}}"#);
    assert!(message.contains("args: duplicate key `a`"), "{message}");
}

/// The members of `args` reach the master's check as the object has them; the text goes on
/// untouched.
#[test]
fn args_values_are_the_objects_members() {
    let line = br#"{"op":"enqueue","job":"j","args":{"n":-2,"s":"x","deep":{"l":[1,{"m":null}]}}}"#;
    match parse_request(line).unwrap().op {
        Op::Enqueue { args, .. } => {
            let reread: Map<String, Value> = serde_json::from_str(args.get()).unwrap();
            assert_eq!(args.values, reread);
            assert_eq!(args.values.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    match parse_request(br#"{"op":"run","job":"j"}"#).unwrap().op {
        Op::Run { args, .. } => assert_eq!((args.get(), args.values.len()), ("{}", 0)),
        other => panic!("{other:?}"),
    }
}

/// With several faults in a line, the one named is the one the protocol always named: JSON
/// syntax anywhere first, then a repeated key, then what is wrong inside `args` (a repeated
/// key before a value that does not decode), positions counted as before.
#[test]
fn of_several_faults_the_same_one_is_named() {
    let (_, _, message) = rejected(r#"{"op":"ping","op":"ping","x":}"#);
    assert!(message.starts_with("request is not JSON: "), "{message}");
    let (_, _, message) = rejected(r#"  {"op":"ping","op":"ping"}"#);
    assert_eq!(message, "request: duplicate key `op` at line 1 column 25");
    let (_, _, message) = rejected(r#"{"zz":1,"zz":2,"op":"ping"}"#);
    assert!(message.contains("duplicate key `zz`"), "{message}");
    let (_, _, message) = rejected(r#"{"zz":1,"aa":2,"op":"ping"}"#);
    assert!(message.contains("unknown field `aa`"), "{message}");
    let (_, _, message) = rejected(r#"{"op":"run","job":"x","args":{"b":1e999,"a":1,"a":2}}"#);
    assert_eq!(message, "args: duplicate key `a` at line 1 column 23");
    let (_, _, message) = rejected(r#"{"op":"run","job":"x","args":{"b":"\ud800","a":1}}"#);
    assert!(
        message.starts_with("args: unexpected end of hex escape"),
        "{message}"
    );
    let (_, _, message) = rejected(r#"{"op":"run","job":"x","queue":"q","by":1}"#);
    assert!(message.contains("field `by` does not go"), "{message}");
}
