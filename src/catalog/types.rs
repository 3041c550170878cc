//! The parameter types a job file may declare, and the checked conversion of a request's JSON
//! arguments into values PostgreSQL receives in its binary format.
//!
//! Every conversion error names the argument and says what was expected, because the message
//! goes back to whoever sent the request (as `invalid_args`).

use std::error::Error;
use std::fmt;

use base64::Engine as _;
use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value as Json;
use tokio_postgres::types::{IsNull, ToSql, Type, WrongType};

use super::numeric::Numeric;

/// A parameter type as written in a job file's `[params]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Jsonb,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Bytea,
}

impl ParamType {
    pub const ALL: [ParamType; 15] = [
        ParamType::Bool,
        ParamType::Int2,
        ParamType::Int4,
        ParamType::Int8,
        ParamType::Float4,
        ParamType::Float8,
        ParamType::Numeric,
        ParamType::Text,
        ParamType::Json,
        ParamType::Jsonb,
        ParamType::Date,
        ParamType::Timestamp,
        ParamType::Timestamptz,
        ParamType::Uuid,
        ParamType::Bytea,
    ];

    /// The name used in job files, which is also PostgreSQL's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::Bool => "bool",
            ParamType::Int2 => "int2",
            ParamType::Int4 => "int4",
            ParamType::Int8 => "int8",
            ParamType::Float4 => "float4",
            ParamType::Float8 => "float8",
            ParamType::Numeric => "numeric",
            ParamType::Text => "text",
            ParamType::Json => "json",
            ParamType::Jsonb => "jsonb",
            ParamType::Date => "date",
            ParamType::Timestamp => "timestamp",
            ParamType::Timestamptz => "timestamptz",
            ParamType::Uuid => "uuid",
            ParamType::Bytea => "bytea",
        }
    }

    /// Parses a job file's type name; the error lists the names that are accepted.
    pub fn from_name(name: &str) -> Result<ParamType, String> {
        ParamType::ALL
            .into_iter()
            .find(|ty| ty.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = ParamType::ALL.iter().map(|ty| ty.name()).collect();
                format!(
                    "unknown type `{name}` (expected one of {})",
                    names.join(", ")
                )
            })
    }

    /// The type the statement is prepared with, so the server never has to guess.
    pub fn pg_type(self) -> Type {
        match self {
            ParamType::Bool => Type::BOOL,
            ParamType::Int2 => Type::INT2,
            ParamType::Int4 => Type::INT4,
            ParamType::Int8 => Type::INT8,
            ParamType::Float4 => Type::FLOAT4,
            ParamType::Float8 => Type::FLOAT8,
            ParamType::Numeric => Type::NUMERIC,
            ParamType::Text => Type::TEXT,
            ParamType::Json => Type::JSON,
            ParamType::Jsonb => Type::JSONB,
            ParamType::Date => Type::DATE,
            ParamType::Timestamp => Type::TIMESTAMP,
            ParamType::Timestamptz => Type::TIMESTAMPTZ,
            ParamType::Uuid => Type::UUID,
            ParamType::Bytea => Type::BYTEA,
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One bound argument: a value (or SQL NULL) of its declared type, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlValue {
    ty: ParamType,
    value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    Numeric(Numeric),
    Text(String),
    Json(Json),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
    Timestamptz(DateTime<Utc>),
    Uuid(uuid::Uuid),
    Bytea(Vec<u8>),
}

impl SqlValue {
    pub fn param_type(&self) -> ParamType {
        self.ty
    }

    pub fn is_null(&self) -> bool {
        self.value.is_none()
    }

    /// Converts the JSON argument `name` to `ty`; JSON null is SQL NULL for every type.
    pub fn from_json(name: &str, ty: ParamType, json: &Json) -> Result<SqlValue, String> {
        let value = if json.is_null() {
            None
        } else {
            Some(convert(name, ty, json)?)
        };
        Ok(SqlValue { ty, value })
    }
}

fn convert(name: &str, ty: ParamType, json: &Json) -> Result<Value, String> {
    let wrong = |expected: &str| {
        format!(
            "argument `{name}` must be {expected}, got {}",
            describe(json)
        )
    };
    let text = || json.as_str().ok_or_else(|| wrong(ty.name()));
    Ok(match ty {
        ParamType::Bool => Value::Bool(json.as_bool().ok_or_else(|| wrong("bool"))?),
        ParamType::Int2 => {
            Value::Int2(integer(name, ty, json, i16::MIN as i64, i16::MAX as i64)? as i16)
        }
        ParamType::Int4 => {
            Value::Int4(integer(name, ty, json, i32::MIN as i64, i32::MAX as i64)? as i32)
        }
        ParamType::Int8 => Value::Int8(integer(name, ty, json, i64::MIN, i64::MAX)?),
        ParamType::Float4 => {
            let wide = json.as_f64().ok_or_else(|| wrong("float4"))?;
            let narrow = wide as f32;
            if !narrow.is_finite() {
                return Err(format!("argument `{name}` = {wide} does not fit float4"));
            }
            Value::Float4(narrow)
        }
        ParamType::Float8 => Value::Float8(json.as_f64().ok_or_else(|| wrong("float8"))?),
        ParamType::Numeric => {
            let digits = match json {
                Json::String(s) => s.clone(),
                // serde_json keeps integers exact; other numbers are f64, whose shortest
                // round-trip form is what the sender most likely wrote.
                Json::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => i.to_string(),
                    (None, Some(u)) => u.to_string(),
                    _ => n.as_f64().map(|f| f.to_string()).unwrap_or_default(),
                },
                _ => {
                    return Err(wrong(
                        "numeric (a number or a decimal string like \"12.50\")",
                    ))
                }
            };
            Value::Numeric(
                Numeric::parse(&digits)
                    .map_err(|e| format!("argument `{name}` must be numeric: {e}"))?,
            )
        }
        ParamType::Text => {
            let text = text()?;
            if text.contains('\0') {
                // PostgreSQL's text cannot hold NUL; say so here rather than let the server
                // answer with an encoding error.
                return Err(format!(
                    "argument `{name}` contains a NUL character, which PostgreSQL text cannot store"
                ));
            }
            Value::Text(text.to_string())
        }
        ParamType::Json | ParamType::Jsonb => Value::Json(json.clone()),
        ParamType::Date => Value::Date(
            NaiveDate::parse_from_str(text()?, "%Y-%m-%d")
                .map_err(|_| wrong("a date written YYYY-MM-DD"))?,
        ),
        ParamType::Timestamp => {
            let s = text()?;
            let parsed = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"));
            match parsed {
                Ok(timestamp) => Value::Timestamp(timestamp),
                Err(_) if DateTime::parse_from_rfc3339(s).is_ok() => {
                    return Err(format!(
                        "argument `{name}` is a timestamp without time zone, got {}: leave out the \
                         offset, or declare the parameter timestamptz",
                        describe(json)
                    ))
                }
                Err(_) => return Err(wrong("a timestamp written YYYY-MM-DDTHH:MM:SS[.ffffff]")),
            }
        }
        ParamType::Timestamptz => {
            let s = text()?;
            match DateTime::parse_from_rfc3339(s) {
                Ok(timestamp) => Value::Timestamptz(timestamp.with_timezone(&Utc)),
                Err(_) => {
                    return Err(wrong(
                        "an RFC 3339 timestamp with an offset, like 2024-05-01T12:00:00Z or \
                         2024-05-01T14:00:00+02:00",
                    ))
                }
            }
        }
        ParamType::Uuid => Value::Uuid(
            uuid::Uuid::parse_str(text()?).map_err(|e| format!("{}: {e}", wrong("a uuid")))?,
        ),
        ParamType::Bytea => Value::Bytea(
            base64::engine::general_purpose::STANDARD
                .decode(
                    json.as_str()
                        .ok_or_else(|| wrong("a base64 string (bytea)"))?,
                )
                .map_err(|e| {
                    format!(
                        "{}: not standard base64: {e}",
                        wrong("a base64 string (bytea)")
                    )
                })?,
        ),
    })
}

/// A JSON integer within `min..=max`; a number with a fraction or exponent is refused even
/// when its value is whole, because `3.0` usually means the sender computed a float.
fn integer(name: &str, ty: ParamType, json: &Json, min: i64, max: i64) -> Result<i64, String> {
    let Json::Number(number) = json else {
        return Err(format!(
            "argument `{name}` must be {ty}, got {}",
            describe(json)
        ));
    };
    let Some(value) = number.as_i64() else {
        if number.is_u64() {
            return Err(format!("argument `{name}` = {number} does not fit {ty}"));
        }
        return Err(format!(
            "argument `{name}` must be {ty}, got {number}: write integers without a decimal point \
             or exponent"
        ));
    };
    if value < min || value > max {
        return Err(format!(
            "argument `{name}` = {value} does not fit {ty} ({min}..{max})"
        ));
    }
    Ok(value)
}

/// A short description of a JSON value for error messages (long strings are cut).
fn describe(json: &Json) -> String {
    match json {
        Json::Null => "null".to_string(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.chars().count() > 40 => {
            format!("string {:?}...", s.chars().take(40).collect::<String>())
        }
        Json::String(s) => format!("string {s:?}"),
        Json::Array(_) => "an array".to_string(),
        Json::Object(_) => "an object".to_string(),
    }
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let Some(value) = &self.value else {
            return Ok(IsNull::Yes);
        };
        match value {
            Value::Bool(v) => v.to_sql(ty, out),
            Value::Int2(v) => v.to_sql(ty, out),
            Value::Int4(v) => v.to_sql(ty, out),
            Value::Int8(v) => v.to_sql(ty, out),
            Value::Float4(v) => v.to_sql(ty, out),
            Value::Float8(v) => v.to_sql(ty, out),
            Value::Numeric(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::Json(v) => v.to_sql(ty, out),
            Value::Date(v) => v.to_sql(ty, out),
            Value::Timestamp(v) => v.to_sql(ty, out),
            Value::Timestamptz(v) => v.to_sql(ty, out),
            Value::Uuid(v) => v.to_sql(ty, out),
            Value::Bytea(v) => v.to_sql(ty, out),
        }
    }

    /// Which types a value accepts depends on the value, so the check is in `to_sql_checked`.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty != self.ty.pg_type() {
            return Err(Box::new(WrongType::new::<SqlValue>(ty.clone())));
        }
        self.to_sql(ty, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bind(ty: ParamType, json: Json) -> Result<SqlValue, String> {
        SqlValue::from_json("a", ty, &json)
    }

    fn error(ty: ParamType, json: Json) -> String {
        bind(ty, json).unwrap_err()
    }

    #[test]
    fn type_names_round_trip_and_unknown_names_list_the_choices() {
        for ty in ParamType::ALL {
            assert_eq!(ParamType::from_name(ty.name()), Ok(ty));
        }
        let message = ParamType::from_name("int9").unwrap_err();
        assert!(
            message.starts_with("unknown type `int9` (expected one of bool, int2,"),
            "{message}"
        );
    }

    #[test]
    fn null_binds_sql_null_for_every_type() {
        for ty in ParamType::ALL {
            assert!(bind(ty, Json::Null).unwrap().is_null());
        }
    }

    #[test]
    fn integers_are_range_checked_and_fractions_refused() {
        assert_eq!(
            bind(ParamType::Int2, json!(-32768)).unwrap().value,
            Some(Value::Int2(-32768))
        );
        assert_eq!(
            error(ParamType::Int2, json!(70000)),
            "argument `a` = 70000 does not fit int2 (-32768..32767)"
        );
        assert!(error(ParamType::Int4, json!(2147483648i64)).contains("does not fit int4"));
        assert!(error(ParamType::Int8, json!(u64::MAX)).contains("does not fit int8"));
        let fraction = error(ParamType::Int8, json!(3.0));
        assert!(
            fraction.contains("must be int8, got 3.0: write integers without a decimal point"),
            "{fraction}"
        );
        assert_eq!(
            error(ParamType::Int8, json!("x")),
            "argument `a` must be int8, got string \"x\""
        );
    }

    #[test]
    fn floats_take_numbers_only() {
        assert_eq!(
            bind(ParamType::Float8, json!(2)).unwrap().value,
            Some(Value::Float8(2.0))
        );
        assert!(error(ParamType::Float8, json!("1.5")).contains("must be float8, got string"));
        assert!(error(ParamType::Float4, json!(1e39)).contains("does not fit float4"));
    }

    #[test]
    fn numeric_keeps_the_written_digits() {
        let digits = |json: Json| match bind(ParamType::Numeric, json).unwrap().value {
            Some(Value::Numeric(n)) => n.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(digits(json!("12.50")), "12.50");
        assert_eq!(digits(json!(0.1)), "0.1");
        assert_eq!(digits(json!(-7)), "-7");
        assert_eq!(digits(json!(u64::MAX)), "18446744073709551615");
        assert_eq!(digits(json!("NaN")), "NaN");
        assert!(error(ParamType::Numeric, json!("12,5")).contains("is not a decimal number"));
        assert!(error(ParamType::Numeric, json!(true)).contains("must be numeric"));
    }

    #[test]
    fn text_like_types_explain_the_expected_form() {
        assert!(bind(ParamType::Date, json!("2024-02-29")).is_ok());
        assert!(error(ParamType::Date, json!("2023-02-29")).contains("a date written YYYY-MM-DD"));
        assert!(bind(ParamType::Timestamp, json!("2024-01-02T03:04:05.123456")).is_ok());
        assert!(bind(ParamType::Timestamp, json!("2024-01-02 03:04:05")).is_ok());
        assert!(error(ParamType::Timestamp, json!("2024-01-02T03:04:05Z"))
            .contains("declare the parameter timestamptz"));
        assert!(bind(ParamType::Timestamptz, json!("2024-01-02T03:04:05+02:00")).is_ok());
        assert!(
            error(ParamType::Timestamptz, json!("2024-01-02T03:04:05")).contains("with an offset")
        );
        assert!(bind(
            ParamType::Uuid,
            json!("67e55044-10b1-426f-9247-bb680e5fe0c8")
        )
        .is_ok());
        assert!(error(ParamType::Uuid, json!("nope"))
            .starts_with("argument `a` must be a uuid, got string \"nope\": "));
        assert_eq!(
            bind(ParamType::Bytea, json!("aGk=")).unwrap().value,
            Some(Value::Bytea(b"hi".to_vec()))
        );
        assert!(error(ParamType::Bytea, json!("a-_")).contains("not standard base64"));
        assert!(error(ParamType::Text, json!(1)).contains("must be text, got number 1"));
        assert!(error(ParamType::Text, json!("a\u{0}b")).contains("NUL"));
        assert_eq!(
            bind(ParamType::Jsonb, json!({"k": [1]})).unwrap().value,
            Some(Value::Json(json!({"k": [1]})))
        );
    }

    #[test]
    fn refuses_to_send_as_another_type_than_declared() {
        let value = bind(ParamType::Int4, json!(1)).unwrap();
        assert!(value
            .to_sql_checked(&Type::INT8, &mut BytesMut::new())
            .is_err());
        assert!(value
            .to_sql_checked(&Type::INT4, &mut BytesMut::new())
            .is_ok());
    }
}
