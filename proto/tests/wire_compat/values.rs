//! Distinct non-default field values, and the check that a fixture really
//! sets every field.
//!
//! A field holding its default value is not on the wire at all, so it would
//! prove nothing about the field's number or type; two fields of one type
//! holding the same value could be swapped unnoticed. [`Distinct`] hands out
//! values that are never default and never repeat; [`unset_fields`] walks a
//! fixture (through `k8s-cri`'s serde derive) and names every field still at
//! its default, and [`repeated_values`] names every value used twice.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as theirs;
use serde_json::Value;

/// Numbers from [`Distinct`] start here, above every enum value and every
/// byte, so only they take part in the uniqueness check.
const FIRST_NUMBER: u32 = 1001;

/// Source of distinct, non-default field values for one fixture.
pub struct Distinct {
    next: u32,
}

impl Distinct {
    pub fn new() -> Self {
        Self { next: FIRST_NUMBER }
    }

    fn bump(&mut self) -> u32 {
        let n = self.next;
        self.next += 1;
        n
    }

    /// A string naming the field it fills, e.g. `hostname-1004`.
    pub fn text(&mut self, field: &str) -> String {
        format!("{field}-{}", self.bump())
    }

    /// `count` distinct strings for a repeated field.
    pub fn texts(&mut self, field: &str, count: usize) -> Vec<String> {
        (0..count).map(|_| self.text(field)).collect()
    }

    /// A positive number of any integer field type.
    pub fn num<T: TryFrom<u32>>(&mut self) -> T
    where
        T::Error: std::fmt::Debug,
    {
        T::try_from(self.bump()).expect("fixture number fits its field")
    }

    /// A negative number, so that ten-byte varints are on the wire too.
    pub fn negative(&mut self) -> i64 {
        -i64::from(self.bump())
    }

    /// A plausible Unix timestamp in nanoseconds.
    pub fn timestamp(&mut self) -> i64 {
        1_700_000_000_000_000_000 + i64::from(self.bump())
    }

    /// A `map<string, string>` with exactly one entry. Maps are `HashMap`s on
    /// both sides and encode in iteration order, which differs between two
    /// maps; with one entry the encoding and the `Debug` output are
    /// deterministic, so the byte-for-byte comparison stays meaningful.
    /// Multi-entry maps have their own test.
    pub fn map(&mut self, field: &str) -> HashMap<String, String> {
        HashMap::from([(self.text(&format!("{field}-key")), self.text(field))])
    }

    pub fn u64_value(&mut self) -> Option<theirs::UInt64Value> {
        Some(theirs::UInt64Value { value: self.num() })
    }

    pub fn i64_value(&mut self) -> Option<theirs::Int64Value> {
        Some(theirs::Int64Value { value: self.num() })
    }
}

/// Paths (`linux.security_context.seccomp.localhost_ref`) of every field of
/// `fixture` that holds its default value: unset messages, zero numbers and
/// enums, `false`, empty strings, lists and maps.
pub fn unset_fields(fixture: &Value) -> Vec<String> {
    let mut unset = Vec::new();
    walk(fixture, String::new(), &mut |path, value| {
        let is_default = match value {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_i64() == Some(0),
            Value::String(s) => s.is_empty(),
            Value::Array(items) => items.is_empty(),
            Value::Object(fields) => fields.is_empty(),
        };
        if is_default {
            unset.push(path.to_owned());
        }
    });
    unset.sort();
    unset
}

/// Every non-empty string (map keys included) and every number handed out
/// by [`Distinct`] that occurs more than once in `fixture`, with its paths.
pub fn repeated_values(fixture: &Value) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    walk(fixture, String::new(), &mut |path, value| {
        let key = match value {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) if n.as_i64().is_none_or(|n| n.abs() >= FIRST_NUMBER.into()) => {
                n.to_string()
            }
            _ => return,
        };
        seen.entry(key).or_default().push(path.to_owned());
        if let Some((_, key)) = path.rsplit_once("[key ") {
            let key = key.trim_end_matches(']').to_owned();
            seen.entry(key).or_default().push(format!("{path} (key)"));
        }
    });
    seen.retain(|_, paths| paths.len() > 1);
    seen
}

/// Calls `visit` on every leaf, and on every empty list or map, of `value`.
fn walk(value: &Value, path: String, visit: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), visit);
            }
        }
        Value::Object(fields) if !fields.is_empty() => {
            let is_struct = fields.keys().all(|k| is_field_name(k));
            for (name, field) in fields {
                let path = match (is_struct, path.is_empty()) {
                    (true, true) => name.clone(),
                    (true, false) => format!("{path}.{name}"),
                    (false, _) => format!("{path}[key {name}]"),
                };
                walk(field, path, visit);
            }
        }
        leaf => visit(&path, leaf),
    }
}

/// Struct fields serialize as their Rust names; map keys from [`Distinct`]
/// always contain a `-`, so the two cannot be confused.
fn is_field_name(key: &str) -> bool {
    key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}
