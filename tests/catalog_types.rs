//! Every declared parameter type and every row type of DESIGN §7 against a real PostgreSQL:
//! JSON in, bound in binary form, read back in binary form, JSON out.

mod support;

use std::time::Duration;

use forkpool::catalog::{row_to_json, JobSpec, ParamType};
use postgres::{Client, NoTls};
use serde_json::{json, Value as Json};
use support::Cluster;

fn connect() -> Client {
    Client::connect(&Cluster::shared().socket_url(), NoTls).expect("connect to the test cluster")
}

/// `SELECT :v::<ty> AS v` through a real job spec: bind, prepare_typed, row to JSON.
fn round_trip(client: &mut Client, ty: ParamType, value: Json) -> Json {
    let text = format!("sql = \"SELECT :v::{ty} AS v\"\n[params]\nv = \"{ty}\"");
    let spec = JobSpec::from_toml("round_trip", &text, Duration::from_secs(10)).unwrap();
    let args = json!({ "v": value }).as_object().unwrap().clone();
    let values = spec
        .sql()
        .unwrap()
        .bind(&args)
        .unwrap_or_else(|e| panic!("{ty}: {e}"));
    let statement = &spec.sql().unwrap().statements[0];
    let prepared = client
        .prepare_typed(&statement.sql, &statement.types)
        .unwrap();
    let rows = client.query(&prepared, &statement.args(&values)).unwrap();
    row_to_json(&rows[0]).unwrap_or_else(|e| panic!("{ty}: {e}"))["v"].clone()
}

/// The JSON of the only column of `SELECT <expression> AS v`.
fn select(client: &mut Client, expression: &str) -> Result<Json, String> {
    let rows = client
        .query(&format!("SELECT {expression} AS v"), &[])
        .unwrap();
    row_to_json(&rows[0]).map(|row| row["v"].clone())
}

#[test]
fn every_parameter_type_comes_back_as_sent() {
    let mut client = connect();
    let cases = [
        (ParamType::Bool, json!(true), json!(true)),
        (ParamType::Bool, json!(false), json!(false)),
        (ParamType::Int2, json!(-32768), json!(-32768)),
        (ParamType::Int4, json!(2147483647), json!(2147483647)),
        (
            ParamType::Int8,
            json!(9007199254740993i64),
            json!(9007199254740993i64),
        ),
        (ParamType::Float4, json!(1.5), json!(1.5)),
        (ParamType::Float8, json!(0.1), json!(0.1)),
        (ParamType::Numeric, json!("12.50"), json!("12.50")),
        (ParamType::Numeric, json!(0.1), json!("0.1")),
        (ParamType::Numeric, json!(42), json!("42")),
        (
            ParamType::Text,
            json!("héllo 'x' :y"),
            json!("héllo 'x' :y"),
        ),
        (
            ParamType::Json,
            json!({"a": [1, null, "b"]}),
            json!({"a": [1, null, "b"]}),
        ),
        (
            ParamType::Jsonb,
            json!({"a": [1, null, "b"]}),
            json!({"a": [1, null, "b"]}),
        ),
        (
            ParamType::Jsonb,
            json!("just a string"),
            json!("just a string"),
        ),
        (ParamType::Date, json!("2024-02-29"), json!("2024-02-29")),
        (
            ParamType::Timestamp,
            json!("2024-01-02T03:04:05.123456"),
            json!("2024-01-02T03:04:05.123456"),
        ),
        (
            ParamType::Timestamp,
            json!("2024-01-02 03:04:05"),
            json!("2024-01-02T03:04:05"),
        ),
        (
            ParamType::Timestamptz,
            json!("2024-01-02T03:04:05+02:00"),
            json!("2024-01-02T01:04:05Z"),
        ),
        (
            ParamType::Timestamptz,
            json!("2024-01-02T03:04:05.5Z"),
            json!("2024-01-02T03:04:05.500000Z"),
        ),
        (
            ParamType::Uuid,
            json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
            json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
        ),
        (ParamType::Bytea, json!("AAEC/w=="), json!("AAEC/w==")),
    ];
    for (ty, sent, expected) in cases {
        assert_eq!(
            round_trip(&mut client, ty, sent.clone()),
            expected,
            "{ty} {sent}"
        );
    }
}

#[test]
fn null_round_trips_for_every_type() {
    let mut client = connect();
    for ty in ParamType::ALL {
        assert_eq!(round_trip(&mut client, ty, Json::Null), Json::Null, "{ty}");
    }
}

#[test]
fn numeric_keeps_every_digit_and_its_scale() {
    let mut client = connect();
    for digits in [
        "123456789012345678901234567890.000001",
        "-123456789012345678901234567890.000001",
        "-1.5",
        "0",
        "0.000",
        "0.0001",
        "10000",
        "100000000000000000000",
        "-0.00000000000000000001",
        "NaN",
        "Infinity",
        "-Infinity",
    ] {
        assert_eq!(
            round_trip(&mut client, ParamType::Numeric, json!(digits)),
            json!(digits)
        );
    }
    // What PostgreSQL itself computed, decoded from its binary form.
    assert_eq!(
        select(&mut client, "1.10::numeric * 3").unwrap(),
        json!("3.30")
    );
    assert_eq!(
        select(&mut client, "'1e-20'::numeric").unwrap(),
        json!("0.00000000000000000001")
    );
    assert_eq!(
        select(&mut client, "2::numeric ^ 100").unwrap(),
        json!("1267650600228229401496703205376.0000000000000000")
    );
}

#[test]
fn timestamptz_is_utc_whatever_the_session_zone() {
    let mut client = connect();
    client
        .batch_execute("SET TimeZone = 'Asia/Kolkata'")
        .unwrap();
    assert_eq!(
        select(&mut client, "'2024-06-01 12:00:00'::timestamptz").unwrap(),
        json!("2024-06-01T06:30:00Z")
    );
    assert_eq!(
        round_trip(
            &mut client,
            ParamType::Timestamptz,
            json!("2024-06-01T12:00:00-07:00")
        ),
        json!("2024-06-01T19:00:00Z")
    );
    // timestamp without time zone is not shifted by the session zone.
    assert_eq!(
        round_trip(
            &mut client,
            ParamType::Timestamp,
            json!("2024-06-01T12:00:00")
        ),
        json!("2024-06-01T12:00:00")
    );
}

#[test]
fn text_like_types_come_back_as_strings() {
    let cluster = Cluster::shared();
    cluster.execute("CREATE EXTENSION IF NOT EXISTS citext");
    let mut client = connect();
    let mut transaction = client.transaction().unwrap();
    transaction
        .batch_execute("CREATE TYPE catalog_mood AS ENUM ('calm', 'busy')")
        .unwrap();
    let rows = transaction
        .query(
            "SELECT 'v'::varchar AS varchar, 'ab'::char(3) AS bpchar, 'n'::name AS name, \
             'c'::\"char\" AS char, 'MiXed'::citext AS citext, 'busy'::catalog_mood AS mood, \
             ARRAY['calm', NULL]::catalog_mood[] AS moods",
            &[],
        )
        .unwrap();
    let row = row_to_json(&rows[0]).unwrap();
    assert_eq!(
        Json::Object(row),
        json!({"varchar": "v", "bpchar": "ab ", "name": "n", "char": "c", "citext": "MiXed",
               "mood": "busy", "moods": ["calm", null]})
    );
    transaction.rollback().unwrap();
}

#[test]
fn numbers_times_and_special_values_follow_design_section_7() {
    let mut client = connect();
    let cases = [
        ("12::oid", json!(12)),
        ("'NaN'::float8", json!("NaN")),
        ("'Infinity'::float4", json!("Infinity")),
        ("'-Infinity'::float8", json!("-Infinity")),
        ("'13:14:15.25'::time", json!("13:14:15.250000")),
        ("'13:14:15'::time", json!("13:14:15")),
        ("'infinity'::date", json!("infinity")),
        ("'-infinity'::timestamp", json!("-infinity")),
        ("'infinity'::timestamptz", json!("infinity")),
        ("'\\x00ff'::bytea", json!("AP8=")),
        ("'{\"k\": 1}'::jsonb", json!({"k": 1})),
        ("NULL::int4", Json::Null),
    ];
    for (expression, expected) in cases {
        assert_eq!(
            select(&mut client, expression).unwrap(),
            expected,
            "{expression}"
        );
    }
}

#[test]
fn one_dimensional_arrays_become_json_arrays() {
    let mut client = connect();
    let cases = [
        ("ARRAY[1, NULL, 3]::int4[]", json!([1, null, 3])),
        ("ARRAY['a', NULL]::text[]", json!(["a", null])),
        ("ARRAY[1.50, -2]::numeric[]", json!(["1.50", "-2"])),
        ("ARRAY[true]", json!([true])),
        ("ARRAY['2024-01-02'::date]", json!(["2024-01-02"])),
        ("'{}'::int8[]", json!([])),
        ("NULL::text[]", Json::Null),
    ];
    for (expression, expected) in cases {
        assert_eq!(
            select(&mut client, expression).unwrap(),
            expected,
            "{expression}"
        );
    }
}

#[test]
fn other_types_are_refused_with_the_column_and_a_cast_to_text() {
    let mut client = connect();
    let error = select(&mut client, "interval '1 day'").unwrap_err();
    assert!(error.starts_with("column `v` (interval): "), "{error}");
    assert!(error.contains("`v::text AS v`"), "{error}");
    let error = select(&mut client, "ARRAY[point(1, 2)]").unwrap_err();
    assert!(error.starts_with("column `v` (_point): "), "{error}");
    // The cast the message suggests works.
    assert_eq!(
        select(&mut client, "(interval '1 day')::text").unwrap(),
        json!("1 day")
    );
}

#[test]
fn multidimensional_arrays_are_an_error_not_a_wrong_answer() {
    let mut client = connect();
    let error = select(&mut client, "ARRAY[[1, 2], [3, 4]]").unwrap_err();
    assert!(error.starts_with("column `v` (_int4): "), "{error}");
}

#[test]
fn a_job_with_several_statements_binds_each_its_own_parameters() {
    let mut client = connect();
    let text = r#"
        sql = ["SELECT :a::int8 AS a", "SELECT :b::text || ':' || :a::text AS ab"]
        [params]
        a = "int8"
        b = { type = "text", default = "x" }
    "#;
    let spec = JobSpec::from_toml("multi", text, Duration::from_secs(10)).unwrap();
    let values = spec
        .sql()
        .unwrap()
        .bind(json!({"a": 7}).as_object().unwrap())
        .unwrap();
    let mut answers = Vec::new();
    for statement in &spec.sql().unwrap().statements {
        let prepared = client
            .prepare_typed(&statement.sql, &statement.types)
            .unwrap();
        let rows = client.query(&prepared, &statement.args(&values)).unwrap();
        answers.push(Json::Object(row_to_json(&rows[0]).unwrap()));
    }
    assert_eq!(answers, [json!({"a": 7}), json!({"ab": "x:7"})]);
}
