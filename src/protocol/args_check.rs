//! A request's `args` object, read once: its members become the values the master checks
//! against the job's params, and its text is kept raw to go to the worker as it came. No key
//! may be given twice at its top, and every value must be one `serde_json::Value` reads
//! (nesting within serde_json's depth limit; a raw value is skipped without one). When the
//! one pass finds a fault, the two passes it replaced run again to name the fault as they did.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::members::duplicate;
use super::Args;

/// Reads `raw` (an object's text); the error is the rejection's message.
pub(super) fn read(raw: &RawValue) -> Result<Args, String> {
    match serde_json::from_str::<Members>(raw.get()) {
        Ok(Members(values)) => Ok(Args {
            raw: raw.to_owned(),
            values,
        }),
        Err(_) => Err(first_fault(raw.get())),
    }
}

/// The fault the two-pass check named: a repeated key first (values skipped raw), then
/// whatever stops `serde_json::Value` from reading the object.
fn first_fault(args: &str) -> String {
    let fault = serde_json::from_str::<UniqueKeys>(args)
        .and_then(|_| serde_json::from_str::<Value>(args).map(drop));
    match fault {
        Err(e) => format!("args: {e}"),
        // Not reached (both checks passing is the one pass passing); kept an answer rather
        // than a panic in the master.
        Ok(()) => "args: not a readable JSON object".to_string(),
    }
}

/// An object's members with unique keys, as the values the master checks.
struct Members(Map<String, Value>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
        let mut values = Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if values.contains_key(&key) {
                return Err(duplicate(&key));
            }
            values.insert(key, value);
        }
        Ok(Members(values))
    }
}

/// An object whose keys are all different, its values skipped raw.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut keys = BTreeSet::new();
        while let Some((key, _)) = map.next_entry::<String, &RawValue>()? {
            if keys.contains(&key) {
                return Err(duplicate(&key));
            }
            keys.insert(key);
        }
        Ok(UniqueKeys)
    }
}
