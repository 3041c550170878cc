//! Turns result rows into JSON objects (DESIGN §7).
//!
//! Rows arrive in PostgreSQL's binary format, so only types decoded here can be shown; for
//! any other type the error tells the job's author to cast the column with `::text`.

use std::error::Error;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde_json::{Map, Value as Json};
use tokio_postgres::types::{Date, FromSql, Kind, Timestamp, Type};
use tokio_postgres::Row;

use super::numeric::Numeric;

/// One row as a JSON object, keyed by column name (a later column wins over an earlier one
/// of the same name, as in most JSON producers).
pub fn row_to_json(row: &Row) -> Result<Map<String, Json>, String> {
    let mut object = Map::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let value = column_to_json(row, index, column.name(), column.type_()).map_err(|e| {
            format!(
                "column `{}` ({}): {e}",
                column.name(),
                column.type_().name()
            )
        })?;
        object.insert(column.name().to_string(), value);
    }
    Ok(object)
}

/// How a column's values (or its array's elements) become JSON.
#[derive(Debug, Clone, Copy)]
enum Decoder {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    Uuid,
    Bytea,
}

fn decoder_for(ty: &Type) -> Option<Decoder> {
    Some(match *ty {
        Type::BOOL => Decoder::Bool,
        Type::INT2 => Decoder::Int2,
        Type::INT4 => Decoder::Int4,
        Type::INT8 => Decoder::Int8,
        Type::OID => Decoder::Oid,
        Type::FLOAT4 => Decoder::Float4,
        Type::FLOAT8 => Decoder::Float8,
        Type::NUMERIC => Decoder::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::CHAR | Type::UNKNOWN => {
            Decoder::Text
        }
        Type::JSON | Type::JSONB => Decoder::Json,
        Type::DATE => Decoder::Date,
        Type::TIMESTAMP => Decoder::Timestamp,
        Type::TIMESTAMPTZ => Decoder::Timestamptz,
        Type::TIME => Decoder::Time,
        Type::UUID => Decoder::Uuid,
        Type::BYTEA => Decoder::Bytea,
        // Enums and citext (an extension, so its oid varies) are sent as their text.
        _ if matches!(ty.kind(), Kind::Enum(_)) || ty.name() == "citext" => Decoder::Text,
        _ => return None,
    })
}

fn column_to_json(row: &Row, index: usize, name: &str, ty: &Type) -> Result<Json, String> {
    let unsupported = || {
        format!(
            "forkpool cannot turn this type into JSON (rows arrive in binary form); cast the \
             column to text in the job's SQL, e.g. `{name}::text AS {name}`"
        )
    };
    let (decoder, array) = match decoder_for(ty) {
        Some(decoder) => (decoder, false),
        None => match ty.kind() {
            Kind::Array(element) => (decoder_for(element).ok_or_else(unsupported)?, true),
            _ => return Err(unsupported()),
        },
    };
    match decoder {
        Decoder::Bool => read(row, index, array, |v: bool| Json::Bool(v)),
        Decoder::Int2 => read(row, index, array, |v: i16| Json::from(v)),
        Decoder::Int4 => read(row, index, array, |v: i32| Json::from(v)),
        Decoder::Int8 => read(row, index, array, |v: i64| Json::from(v)),
        Decoder::Oid => read(row, index, array, |v: u32| Json::from(v)),
        Decoder::Float4 => read(row, index, array, |v: f32| float(v as f64)),
        Decoder::Float8 => read(row, index, array, float),
        Decoder::Numeric => read(row, index, array, |v: Numeric| Json::String(v.to_string())),
        Decoder::Text => read(row, index, array, |v: RawText| Json::String(v.0)),
        Decoder::Json => read(row, index, array, |v: Json| v),
        Decoder::Date => read(row, index, array, |v: Date<NaiveDate>| match v {
            Date::Value(date) => Json::String(date.format("%Y-%m-%d").to_string()),
            Date::PosInfinity => Json::String("infinity".into()),
            Date::NegInfinity => Json::String("-infinity".into()),
        }),
        Decoder::Timestamp => read(row, index, array, |v: Timestamp<NaiveDateTime>| {
            infinite_or(v, |t| {
                format!("{}{}", t.format("%Y-%m-%dT%H:%M:%S"), micros(t.time()))
            })
        }),
        Decoder::Timestamptz => read(row, index, array, |v: Timestamp<DateTime<Utc>>| {
            infinite_or(v, |t| {
                format!("{}{}Z", t.format("%Y-%m-%dT%H:%M:%S"), micros(t.time()))
            })
        }),
        Decoder::Time => read(row, index, array, |v: NaiveTime| {
            Json::String(format!("{}{}", v.format("%H:%M:%S"), micros(v)))
        }),
        Decoder::Uuid => read(row, index, array, |v: uuid::Uuid| {
            Json::String(v.to_string())
        }),
        Decoder::Bytea => read(row, index, array, |v: Vec<u8>| {
            Json::String(base64::engine::general_purpose::STANDARD.encode(v))
        }),
    }
}

/// Reads column `index` as `T` (or a one-dimensional array of `T`) and converts it; SQL NULL,
/// as a value or an element, becomes JSON null.
fn read<'a, T: FromSql<'a>>(
    row: &'a Row,
    index: usize,
    array: bool,
    to_json: impl Fn(T) -> Json,
) -> Result<Json, String> {
    let or_null = |value: Option<T>| value.map(&to_json).unwrap_or(Json::Null);
    if array {
        let elements: Option<Vec<Option<T>>> = row.try_get(index).map_err(|e| reason(&e))?;
        Ok(elements.map_or(Json::Null, |v| {
            Json::Array(v.into_iter().map(or_null).collect())
        }))
    } else {
        Ok(or_null(row.try_get(index).map_err(|e| reason(&e))?))
    }
}

/// The innermost cause: tokio-postgres wraps decoding errors in "error deserializing column".
fn reason(error: &tokio_postgres::Error) -> String {
    match error.source() {
        Some(source) => source.to_string(),
        None => error.to_string(),
    }
}

/// JSON has no NaN or infinities, so those become PostgreSQL's spelling of them.
fn float(value: f64) -> Json {
    if value.is_nan() {
        Json::String("NaN".into())
    } else if value.is_infinite() {
        Json::String(if value > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        Json::from(value)
    }
}

fn infinite_or<T>(value: Timestamp<T>, format: impl Fn(T) -> String) -> Json {
    Json::String(match value {
        Timestamp::Value(t) => format(t),
        Timestamp::PosInfinity => "infinity".into(),
        Timestamp::NegInfinity => "-infinity".into(),
    })
}

/// ".ffffff" when there are fractional seconds (PostgreSQL keeps microseconds), else "".
fn micros(time: NaiveTime) -> String {
    match time.nanosecond() / 1000 {
        0 => String::new(),
        micros => format!(".{micros:06}"),
    }
}

/// Any type whose binary form is its text (text, varchar, enums, citext, ...).
struct RawText(String);

impl<'a> FromSql<'a> for RawText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<RawText, Box<dyn Error + Sync + Send>> {
        Ok(RawText(std::str::from_utf8(raw)?.to_string()))
    }

    /// Only called for types `decoder_for` chose `Decoder::Text` for.
    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_that_json_cannot_hold_become_strings() {
        assert_eq!(float(f64::NAN), Json::String("NaN".into()));
        assert_eq!(float(f64::INFINITY), Json::String("Infinity".into()));
        assert_eq!(float(f64::NEG_INFINITY), Json::String("-Infinity".into()));
        assert_eq!(float(1.5), Json::from(1.5));
    }

    #[test]
    fn only_known_types_have_a_decoder() {
        assert!(decoder_for(&Type::POINT).is_none());
        assert!(decoder_for(&Type::INTERVAL).is_none());
        assert!(matches!(decoder_for(&Type::VARCHAR), Some(Decoder::Text)));
    }

    #[test]
    fn fractional_seconds_are_microseconds() {
        assert_eq!(
            micros(NaiveTime::from_hms_micro_opt(1, 2, 3, 4).unwrap()),
            ".000004"
        );
        assert_eq!(micros(NaiveTime::from_hms_opt(1, 2, 3).unwrap()), "");
    }
}
