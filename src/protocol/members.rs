//! A request line's members, read in one pass without copying: each known field is kept as
//! the slice of the line that holds its value (a borrowed [`RawValue`]), so the master builds
//! no map and decodes no value it will not use. The rejections keep the words of the
//! two-pass reading this replaced: whatever is wrong, the line is read again, on that path
//! only, in the order that reading checked things, so the message names the same problem.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::REQUEST_FIELDS;

/// The members of a request object: the known fields by their place in [`REQUEST_FIELDS`],
/// the names of unknown ones (for the message that names them).
#[derive(Debug, Default)]
pub(super) struct Fields<'a> {
    known: [Option<&'a RawValue>; REQUEST_FIELDS.len()],
    unknown: BTreeSet<String>,
}

impl<'a> Fields<'a> {
    /// Reads a line's members; the error is the rejection's message.
    pub(super) fn read(text: &'a str) -> Result<Fields<'a>, String> {
        serde_json::from_str::<Fields>(text).map_err(|_| why_not_an_object(text))
    }

    /// The raw value of known field `name`, when the request has it.
    pub(super) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.known[field_index(name)?]
    }

    /// The unknown field named first in byte order (the order in which it was always named).
    pub(super) fn first_unknown(&self) -> Option<&str> {
        self.unknown.first().map(String::as_str)
    }

    /// The names of the known fields present.
    pub(super) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        REQUEST_FIELDS
            .iter()
            .zip(&self.known)
            .filter_map(|(name, value)| value.map(|_| *name))
    }
}

fn field_index(name: &str) -> Option<usize> {
    REQUEST_FIELDS.iter().position(|field| *field == name)
}

/// Why `text` (valid UTF-8) is not a request object with unique keys, in the words the
/// two-pass reading used: JSON syntax anywhere first, then the object's own shape.
fn why_not_an_object(text: &str) -> String {
    let raw = match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => raw,
        Err(e) => return format!("request is not JSON: {e}"),
    };
    if !raw.get().starts_with('{') {
        return "request must be a JSON object".to_string();
    }
    // The positions in the message count from the object's `{`, as they always did.
    match serde_json::from_str::<Fields>(raw.get()) {
        Err(e) => format!("request: {e}"),
        // Not reached (the object is the line but for blanks around it); kept an answer
        // rather than a panic in the master.
        Ok(_) => "request: not a readable JSON object".to_string(),
    }
}

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            // The value is read before a repeated key is refused, so the error's position
            // is the one the old reading reported.
            let value = map.next_value::<&'de RawValue>()?;
            match key {
                Key::Known(index) => {
                    if fields.known[index].replace(value).is_some() {
                        return Err(duplicate(REQUEST_FIELDS[index]));
                    }
                }
                Key::Unknown(name) => {
                    if fields.unknown.contains(&name) {
                        return Err(duplicate(&name));
                    }
                    fields.unknown.insert(name);
                }
            }
        }
        Ok(fields)
    }
}

/// A key given twice: JSON parsers disagree on which one wins, so a request that depends on
/// it is ambiguous.
pub(super) fn duplicate<E: de::Error>(key: &str) -> E {
    E::custom(format!("duplicate key `{key}`"))
}

/// A member's name: a field of [`REQUEST_FIELDS`] (by its place), or any other, kept only to
/// be named.
enum Key {
    Known(usize),
    Unknown(String),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(match field_index(name) {
            Some(index) => Key::Known(index),
            None => Key::Unknown(name.to_string()),
        })
    }
}
