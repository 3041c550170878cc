//! PostgreSQL's binary `numeric` format, written and read here so that decimal values keep
//! their exact digits: going through `f64` would turn "0.1" into 0.1000000000000000055…
//! and "123456789012345678901234567890" into something else entirely.
//!
//! The wire format (`numeric_send` in PostgreSQL's `numeric.c`): four big-endian 16-bit
//! header fields — the number of base-10000 digits, the weight of the first digit (its power
//! of 10000), the sign (or NaN / ±Infinity marker) and the display scale (digits after the
//! decimal point) — followed by the base-10000 digits themselves.

use std::error::Error;
use std::fmt;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

const SIGN_POSITIVE: u16 = 0x0000;
const SIGN_NEGATIVE: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_INFINITY: u16 = 0xD000;
const SIGN_NEGATIVE_INFINITY: u16 = 0xF000;
/// PostgreSQL's NUMERIC_DSCALE_MAX: the largest display scale the server accepts.
const MAX_DSCALE: i64 = 0x3FFF;
/// Decimal digits per base-10000 digit.
const GROUP: i64 = 4;

/// An exact PostgreSQL `numeric` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numeric {
    NaN,
    /// PostgreSQL 14 and later.
    Infinity,
    /// PostgreSQL 14 and later.
    NegativeInfinity,
    Finite {
        negative: bool,
        /// The power of 10000 of `digits[0]`.
        weight: i16,
        /// Digits shown after the decimal point.
        dscale: u16,
        /// Base-10000 digits, without leading or trailing zero digits; empty for zero.
        digits: Vec<i16>,
    },
}

impl Numeric {
    /// Parses PostgreSQL's decimal input syntax: an optional sign, digits with an optional
    /// decimal point, an optional exponent (`1.5e-3`), or `NaN` / `Infinity` / `-Infinity`
    /// (any case). The scale is kept: "12.50" stays "12.50", as in PostgreSQL.
    pub fn parse(text: &str) -> Result<Numeric, String> {
        match text.to_ascii_lowercase().as_str() {
            "nan" => return Ok(Numeric::NaN),
            "infinity" | "+infinity" => return Ok(Numeric::Infinity),
            "-infinity" => return Ok(Numeric::NegativeInfinity),
            _ => {}
        }
        let not_decimal = || format!("{text:?} is not a decimal number");
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => {
                let exponent: i64 = unsigned[at + 1..].parse().map_err(|_| not_decimal())?;
                (&unsigned[..at], exponent)
            }
            None => (unsigned, 0),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if integer.len() + fraction.len() == 0 || !all_digits(integer) || !all_digits(fraction) {
            return Err(not_decimal());
        }
        let too_large = || format!("{text:?} is out of the range of numeric");
        // Bounding the exponent first keeps every later computation small and overflow-free.
        if exponent.abs() > 1_000_000 {
            return Err(too_large());
        }
        let dscale = (fraction.len() as i64 - exponent).max(0);
        if dscale > MAX_DSCALE {
            return Err(too_large());
        }
        let digits: String = [integer, fraction].concat();
        // The decimal point sits `point` digits into `digits` (may be negative or past the end).
        let mut point = integer.len() as i64 + exponent;
        let significant = digits.trim_start_matches('0');
        point -= (digits.len() - significant.len()) as i64;
        let significant = significant.trim_end_matches('0');
        if significant.is_empty() {
            return Ok(Numeric::zero(dscale as u16));
        }
        let weight = (point - 1).div_euclid(GROUP);
        if weight > i16::MAX as i64 || weight < i16::MIN as i64 {
            return Err(too_large());
        }
        // Left-pad so that the decimal point falls on a group boundary.
        let pad = ((weight + 1) * GROUP - point) as usize;
        let padded: Vec<u8> = std::iter::repeat_n(0, pad)
            .chain(significant.bytes().map(|b| b - b'0'))
            .collect();
        let digits = padded
            .chunks(GROUP as usize)
            .map(|chunk| {
                // A short last chunk holds the most significant places of its group.
                (0..GROUP as usize)
                    .fold(0i16, |acc, i| acc * 10 + *chunk.get(i).unwrap_or(&0) as i16)
            })
            .collect();
        Ok(Numeric::Finite {
            negative,
            weight: weight as i16,
            dscale: dscale as u16,
            digits,
        })
    }

    fn zero(dscale: u16) -> Numeric {
        Numeric::Finite {
            negative: false,
            weight: 0,
            dscale,
            digits: Vec::new(),
        }
    }

    /// The binary wire form (`numeric_send`).
    pub fn encode(&self, out: &mut BytesMut) {
        let (sign, weight, dscale, digits): (u16, i16, u16, &[i16]) = match self {
            Numeric::NaN => (SIGN_NAN, 0, 0, &[]),
            Numeric::Infinity => (SIGN_INFINITY, 0, 0, &[]),
            Numeric::NegativeInfinity => (SIGN_NEGATIVE_INFINITY, 0, 0, &[]),
            Numeric::Finite {
                negative,
                weight,
                dscale,
                digits,
            } => {
                let sign = if *negative {
                    SIGN_NEGATIVE
                } else {
                    SIGN_POSITIVE
                };
                (sign, *weight, *dscale, digits)
            }
        };
        out.reserve(8 + 2 * digits.len());
        out.put_u16(digits.len() as u16);
        out.put_i16(weight);
        out.put_u16(sign);
        out.put_u16(dscale);
        for digit in digits {
            out.put_i16(*digit);
        }
    }

    /// Reads the binary wire form (`numeric_recv`), rejecting malformed input.
    pub fn decode(raw: &[u8]) -> Result<Numeric, String> {
        let field = |i: usize| -> Result<[u8; 2], String> {
            raw.get(2 * i..2 * i + 2)
                .map(|b| [b[0], b[1]])
                .ok_or_else(|| "numeric value is truncated".to_string())
        };
        let count = u16::from_be_bytes(field(0)?) as usize;
        let weight = i16::from_be_bytes(field(1)?);
        let sign = u16::from_be_bytes(field(2)?);
        let dscale = u16::from_be_bytes(field(3)?);
        if raw.len() != 8 + 2 * count {
            return Err("numeric value has the wrong length".to_string());
        }
        let negative = match sign {
            SIGN_NAN => return Ok(Numeric::NaN),
            SIGN_INFINITY => return Ok(Numeric::Infinity),
            SIGN_NEGATIVE_INFINITY => return Ok(Numeric::NegativeInfinity),
            SIGN_POSITIVE => false,
            SIGN_NEGATIVE => true,
            other => return Err(format!("numeric value has an invalid sign 0x{other:04x}")),
        };
        let mut digits = (0..count)
            .map(|i| {
                let digit = i16::from_be_bytes(field(4 + i)?);
                if (0..10000).contains(&digit) {
                    Ok(digit)
                } else {
                    Err(format!("numeric value has an invalid digit {digit}"))
                }
            })
            .collect::<Result<Vec<i16>, String>>()?;
        // Normalise as PostgreSQL's make_result does, so equal values compare equal.
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Ok(Numeric::zero(dscale));
        }
        Ok(Numeric::Finite {
            negative,
            weight: weight.saturating_sub(i16::try_from(leading).unwrap_or(i16::MAX)),
            dscale,
            digits,
        })
    }
}

/// PostgreSQL's text form: all `dscale` fraction digits, no exponent ("12.50", "-0.0001").
impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (negative, weight, dscale, digits) = match self {
            Numeric::NaN => return f.write_str("NaN"),
            Numeric::Infinity => return f.write_str("Infinity"),
            Numeric::NegativeInfinity => return f.write_str("-Infinity"),
            Numeric::Finite {
                negative,
                weight,
                dscale,
                digits,
            } => (*negative, *weight as i64, *dscale as usize, digits),
        };
        // Digit i of `digits` is worth 10000^(weight - i).
        let group = |power: i64| -> i16 {
            usize::try_from(weight - power)
                .ok()
                .and_then(|i| digits.get(i).copied())
                .unwrap_or(0)
        };
        let mut text = String::new();
        if negative && !digits.is_empty() {
            text.push('-');
        }
        if weight < 0 {
            text.push('0');
        } else {
            text.push_str(&group(weight).to_string());
            for power in (0..weight).rev() {
                text.push_str(&format!("{:04}", group(power)));
            }
        }
        if dscale > 0 {
            text.push('.');
            let mut fraction = String::with_capacity(dscale + 4);
            let mut power = -1;
            while fraction.len() < dscale {
                fraction.push_str(&format!("{:04}", group(power)));
                power -= 1;
            }
            text.push_str(&fraction[..dscale]);
        }
        f.write_str(&text)
    }
}

impl ToSql for Numeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        self.encode(out);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Numeric, Box<dyn Error + Sync + Send>> {
        Ok(Numeric::decode(raw)?)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let value = Numeric::parse(text).unwrap();
        let mut wire = BytesMut::new();
        value.encode(&mut wire);
        let decoded = Numeric::decode(&wire).unwrap();
        assert_eq!(decoded, value, "{text}");
        decoded.to_string()
    }

    #[test]
    fn round_trip_keeps_exact_digits_and_scale() {
        for (input, expected) in [
            ("0", "0"),
            ("0.0", "0.0"),
            ("-0", "0"),
            ("0.0001", "0.0001"),
            ("10000", "10000"),
            ("9999", "9999"),
            ("10001", "10001"),
            ("-1.5", "-1.5"),
            ("12.50", "12.50"),
            ("1e20", "100000000000000000000"),
            ("1.5e-3", "0.0015"),
            ("1.50E1", "15.0"),
            (".5", "0.5"),
            ("5.", "5"),
            ("+7", "7"),
            ("00012.3400", "12.3400"),
            ("0.00000001", "0.00000001"),
            (
                "123456789012345678901234567890.000001",
                "123456789012345678901234567890.000001",
            ),
            ("-98765.4321", "-98765.4321"),
            ("NaN", "NaN"),
            ("nan", "NaN"),
            ("Infinity", "Infinity"),
            ("-infinity", "-Infinity"),
        ] {
            assert_eq!(round_trip(input), expected, "{input}");
        }
    }

    #[test]
    fn encodes_postgresql_wire_layout() {
        // 12.50: digits [12, 5000], weight 0, positive, dscale 2.
        let mut wire = BytesMut::new();
        Numeric::parse("12.50").unwrap().encode(&mut wire);
        assert_eq!(&wire[..], &[0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88]);
        // 0.0001: one digit 1 at weight -1, dscale 4.
        let mut wire = BytesMut::new();
        Numeric::parse("0.0001").unwrap().encode(&mut wire);
        assert_eq!(&wire[..], &[0, 1, 0xFF, 0xFF, 0, 0, 0, 4, 0, 1]);
    }

    #[test]
    fn rejects_what_is_not_a_decimal() {
        for input in [
            "",
            "-",
            ".",
            "1.2.3",
            "abc",
            "1e",
            "1e+",
            " 1",
            "1 ",
            "0x10",
            "1e9999999",
        ] {
            assert!(Numeric::parse(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn decode_rejects_malformed_input_without_panicking() {
        for raw in [
            &[][..],
            &[0, 1, 0, 0, 0, 0, 0, 0][..],
            &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10][..], // digit 10000
            &[0, 0, 0, 0, 0x12, 0x34, 0, 0][..],       // bad sign
        ] {
            assert!(Numeric::decode(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn random_input_never_panics_and_parsed_values_round_trip() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"0123456789.-+eE";
        for _ in 0..20_000 {
            let text: String = (0..rng.usize(0..12))
                .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                .collect();
            if let Ok(value) = Numeric::parse(&text) {
                assert_eq!(
                    Numeric::parse(&value.to_string()),
                    Ok(value.clone()),
                    "{text}"
                );
                let mut wire = BytesMut::new();
                value.encode(&mut wire);
                assert_eq!(Numeric::decode(&wire), Ok(value), "{text}");
            }
            let raw: Vec<u8> = (0..rng.usize(0..16)).map(|_| rng.u8(..)).collect();
            if let Ok(value) = Numeric::decode(&raw) {
                let _ = value.to_string();
            }
        }
    }

    #[test]
    fn decode_normalises_zero_digits() {
        // digits [0, 1, 0] at weight 1 is 1 at weight 0.
        let raw = [0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(Numeric::decode(&raw).unwrap().to_string(), "1");
    }
}
