//! The JSON Schema subset a DIF Presentation Exchange field `filter` may use, enforced: every
//! keyword here restricts the value, annotations are ignored, and any other keyword makes the
//! filter refused at session creation (and unsatisfiable if one reaches evaluation) — a relying
//! party's condition is never silently dropped.
//!
//! Evaluation is three-valued (Kleene): a keyword that does not apply to the value's type
//! (`minimum` on a string, `format` on a value that is not a date) is *unknown*, not *satisfied*
//! as plain JSON Schema would have it, and `not` keeps unknown unknown. Only a filter that is
//! definitely satisfied answers the field, so a mistyped value never passes, with or without `not`.

use chrono::{DateTime, FixedOffset, NaiveDate};
use regex::Regex;
use serde_json::{Map, Value};

use crate::crypto::mdoc::clip;

/// Nesting of `not`, `contains` and `items`: real definitions use one or two levels.
const MAX_DEPTH: usize = 8;
/// A filter's serialized size: room for an `enum` of a few hundred short values.
const MAX_FILTER_BYTES: usize = 8 * 1024;
/// A `pattern`'s length in characters, and the compiled program's size: the regex crate matches
/// in linear time, but a long pattern can still compile into a large automaton.
const MAX_PATTERN_CHARS: usize = 256;
const MAX_REGEX_BYTES: usize = 1 << 20;

/// Keywords that describe and never restrict.
const ANNOTATIONS: [&str; 4] = ["title", "description", "$comment", "$schema"];

/// The filter keywords evaluated, as named in the refusal of any other.
pub const SUPPORTED: &str = "type, const, enum, pattern, minimum, maximum, exclusiveMinimum, \
     exclusiveMaximum, minLength, maxLength, minItems, maxItems, contains, items, not, format \
     (date, date-time) with formatMinimum, formatMaximum, formatExclusiveMinimum, \
     formatExclusiveMaximum";

/// A compiled filter.
#[derive(Debug, Default)]
pub struct Filter {
    types: Option<Vec<String>>,
    constant: Option<Value>,
    choices: Option<Vec<Value>>,
    pattern: Option<Regex>,
    numbers: Vec<(Cmp, f64)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    contains: Option<Box<Filter>>,
    items: Option<Box<Filter>>,
    not: Option<Box<Filter>>,
    format: Option<DateFormat>,
    dates: Vec<(Cmp, Instant)>,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Min,
    Max,
    ExclusiveMin,
    ExclusiveMax,
}

impl Cmp {
    fn holds<T: PartialOrd>(self, value: &T, bound: &T) -> bool {
        match self {
            Cmp::Min => value >= bound,
            Cmp::Max => value <= bound,
            Cmp::ExclusiveMin => value > bound,
            Cmp::ExclusiveMax => value < bound,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DateFormat {
    Date,
    DateTime,
}

/// A `date` or an instant (`date-time`, compared in UTC whatever the offset).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Instant {
    Date(NaiveDate),
    DateTime(DateTime<FixedOffset>),
}

impl DateFormat {
    fn parse(self, s: &str) -> Option<Instant> {
        match self {
            DateFormat::Date => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(Instant::Date),
            DateFormat::DateTime => DateTime::parse_from_rfc3339(s).ok().map(Instant::DateTime),
        }
    }
}

/// Kleene truth values: `Unknown` is a keyword that cannot judge this value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from(b: bool) -> Self {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::Unknown, _) | (_, Truth::Unknown) => Truth::Unknown,
            _ => Truth::True,
        }
    }
    fn or(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::True, _) | (_, Truth::True) => Truth::True,
            (Truth::Unknown, _) | (_, Truth::Unknown) => Truth::Unknown,
            _ => Truth::False,
        }
    }
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Filters compiled on this thread (a test's runtime runs its tasks on its own).
    pub static COMPILED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Filter {
    /// Compiles `filter`, or says why it cannot be enforced (the keyword at fault is named).
    pub fn compile(filter: &Value) -> Result<Filter, String> {
        #[cfg(test)]
        COMPILED.with(|n| n.set(n.get() + 1));
        let size = serde_json::to_vec(filter).map_or(usize::MAX, |b| b.len());
        if size > MAX_FILTER_BYTES {
            return Err(format!(
                "filter is over {MAX_FILTER_BYTES} bytes (serialized)"
            ));
        }
        compile(filter, 0)
    }

    /// Whether `v` definitely satisfies the filter.
    pub fn accepts(&self, v: &Value) -> bool {
        self.eval(v) == Truth::True
    }

    fn eval(&self, v: &Value) -> Truth {
        // a step of matching work ([`crate::dcql::spend`]): one, plus one per `enum` choice
        // compared and per 64 bytes a `pattern` scans; out of work, nothing is accepted
        let pattern_bytes = match (&self.pattern, v.as_str()) {
            (Some(_), Some(s)) => s.len() / 64,
            _ => 0,
        };
        let cost = 1 + self.choices.as_ref().map_or(0, Vec::len) + pattern_bytes;
        if !crate::dcql::spend(cost as u64) {
            return Truth::Unknown;
        }
        let mut t = Truth::True;
        if let Some(types) = &self.types {
            t = t.and(Truth::from(types.iter().any(|ty| is_type(ty, v))));
        }
        if let Some(c) = &self.constant {
            t = t.and(Truth::from(json_eq(c, v)));
        }
        if let Some(choices) = &self.choices {
            t = t.and(Truth::from(choices.iter().any(|c| json_eq(c, v))));
        }
        if let Some(re) = &self.pattern {
            t = t.and(
                v.as_str()
                    .map_or(Truth::Unknown, |s| Truth::from(re.is_match(s))),
            );
        }
        for (cmp, bound) in &self.numbers {
            t = t.and(
                v.as_f64()
                    .map_or(Truth::Unknown, |n| Truth::from(cmp.holds(&n, bound))),
            );
        }
        let chars = v.as_str().map(|s| s.chars().count() as u64);
        for (bound, min) in [(self.min_length, true), (self.max_length, false)] {
            if let Some(b) = bound {
                t = t.and(chars.map_or(Truth::Unknown, |n| {
                    Truth::from(if min { n >= b } else { n <= b })
                }));
            }
        }
        let items = v.as_array();
        for (bound, min) in [(self.min_items, true), (self.max_items, false)] {
            if let Some(b) = bound {
                t = t.and(items.map_or(Truth::Unknown, |a| {
                    let n = a.len() as u64;
                    Truth::from(if min { n >= b } else { n <= b })
                }));
            }
        }
        if let Some(f) = &self.contains {
            t = t.and(items.map_or(Truth::Unknown, |a| {
                a.iter().fold(Truth::False, |acc, x| acc.or(f.eval(x)))
            }));
        }
        if let Some(f) = &self.items {
            t = t.and(items.map_or(Truth::Unknown, |a| {
                a.iter().fold(Truth::True, |acc, x| acc.and(f.eval(x)))
            }));
        }
        if let Some(f) = &self.not {
            t = t.and(f.eval(v).not());
        }
        if let Some(format) = self.format {
            // an unparseable value is unknown for `format` itself and for every bound
            let parsed = v.as_str().and_then(|s| format.parse(s));
            t = t.and(parsed.map_or(Truth::Unknown, |_| Truth::True));
            for (cmp, bound) in &self.dates {
                t = t.and(parsed.map_or(Truth::Unknown, |d| Truth::from(cmp.holds(&d, bound))));
            }
        }
        t
    }
}

/// JSON Schema equality: numbers by value (`18` equals `18.0`), everything else structurally.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => a == b,
    }
}

fn is_type(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "number" => v.is_number(),
        // JSON Schema: any number without a fractional part, `18.0` too
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => false,
    }
}

const TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "array", "object", "null",
];

fn compile(filter: &Value, depth: usize) -> Result<Filter, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "filter nests not/contains/items deeper than {MAX_DEPTH}"
        ));
    }
    let Some(obj) = filter.as_object() else {
        return Err("filter must be a JSON Schema object".into());
    };
    let mut f = Filter::default();
    for (k, v) in obj {
        compile_keyword(&mut f, obj, k, v, depth)?;
    }
    if f.format.is_none() && !f.dates.is_empty() {
        return Err("formatMinimum/formatMaximum need format date or date-time".into());
    }
    Ok(f)
}

// Over 80 lines: one match arm per keyword, each a few lines; split up it would only scatter
// the list of what is supported.
fn compile_keyword(
    f: &mut Filter,
    obj: &Map<String, Value>,
    k: &str,
    v: &Value,
    depth: usize,
) -> Result<(), String> {
    let bad = |what: &str| format!("filter keyword `{k}` must be {what}");
    let count = || v.as_u64().ok_or_else(|| bad("a non-negative integer"));
    let sub = || compile(v, depth + 1).map(Box::new);
    match k {
        "type" => {
            let names: Vec<String> = match v {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) if !a.is_empty() => a
                    .iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("a type name or an array of them"))?,
                _ => return Err(bad("a type name or an array of them")),
            };
            if let Some(unknown) = names.iter().find(|n| !TYPES.contains(&n.as_str())) {
                return Err(format!(
                    "filter type `{}` is not a JSON Schema type",
                    clip(unknown)
                ));
            }
            f.types = Some(names);
        }
        "const" => f.constant = Some(v.clone()),
        "enum" => f.choices = Some(v.as_array().cloned().ok_or_else(|| bad("an array"))?),
        "pattern" => {
            let p = v.as_str().ok_or_else(|| bad("a string"))?;
            if p.chars().count() > MAX_PATTERN_CHARS {
                return Err(format!(
                    "filter pattern is over {MAX_PATTERN_CHARS} characters"
                ));
            }
            let re = regex::RegexBuilder::new(p)
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|e| {
                    format!(
                        "filter pattern does not compile (the regex crate's syntax: no look-around or backreferences): {}",
                        clip(&e.to_string())
                    )
                })?;
            f.pattern = Some(re);
        }
        "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
            let n = v.as_f64().ok_or_else(|| bad("a number"))?;
            f.numbers.push((cmp_of(k), n));
        }
        "minLength" => f.min_length = Some(count()?),
        "maxLength" => f.max_length = Some(count()?),
        "minItems" => f.min_items = Some(count()?),
        "maxItems" => f.max_items = Some(count()?),
        "contains" => f.contains = Some(sub()?),
        "items" => f.items = Some(sub()?),
        "not" => f.not = Some(sub()?),
        "format" => {
            f.format = Some(match v.as_str() {
                Some("date") => DateFormat::Date,
                Some("date-time") => DateFormat::DateTime,
                _ => {
                    return Err(format!(
                        "filter format {} is not supported (date, date-time)",
                        clip(&v.to_string())
                    ))
                }
            })
        }
        "formatMinimum" | "formatMaximum" | "formatExclusiveMinimum" | "formatExclusiveMaximum" => {
            let format = match obj.get("format").and_then(Value::as_str) {
                Some("date") => DateFormat::Date,
                Some("date-time") => DateFormat::DateTime,
                _ => {
                    return Err(format!(
                        "filter keyword `{k}` needs format date or date-time"
                    ))
                }
            };
            let bound = v
                .as_str()
                .and_then(|s| format.parse(s))
                .ok_or_else(|| bad("a date in the filter's format"))?;
            f.dates.push((cmp_of(k), bound));
        }
        a if ANNOTATIONS.contains(&a) => {}
        other => {
            return Err(format!(
                "filter keyword `{}` is not supported (supported: {SUPPORTED})",
                clip(other)
            ))
        }
    }
    Ok(())
}

fn cmp_of(k: &str) -> Cmp {
    match k {
        "minimum" | "formatMinimum" => Cmp::Min,
        "maximum" | "formatMaximum" => Cmp::Max,
        "exclusiveMinimum" | "formatExclusiveMinimum" => Cmp::ExclusiveMin,
        _ => Cmp::ExclusiveMax,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(filter: Value, v: Value) -> bool {
        Filter::compile(&filter).unwrap().accepts(&v)
    }

    fn refused(filter: Value) -> String {
        Filter::compile(&filter).unwrap_err()
    }

    #[test]
    fn type_names_one_or_several_and_integers_without_a_fraction() {
        assert!(ok(json!({"type": "string"}), json!("x")));
        assert!(!ok(json!({"type": "string"}), json!(1)));
        assert!(ok(json!({"type": ["string", "null"]}), json!(null)));
        assert!(!ok(json!({"type": ["string", "null"]}), json!(true)));
        assert!(ok(json!({"type": "integer"}), json!(18)));
        assert!(ok(json!({"type": "integer"}), json!(18.0)));
        assert!(!ok(json!({"type": "integer"}), json!(18.5)));
        assert!(ok(json!({"type": "number"}), json!(18.5)));
        assert!(ok(json!({"type": "array"}), json!([])));
        assert!(ok(json!({"type": "object"}), json!({})));
        assert!(ok(json!({"type": "boolean"}), json!(false)));
        assert!(refused(json!({"type": "date"})).contains("date"));
        assert!(refused(json!({"type": []})).contains("type"));
    }

    #[test]
    fn const_and_enum() {
        assert!(ok(json!({"const": "Chad"}), json!("Chad")));
        assert!(!ok(json!({"const": "Chad"}), json!("Karen")));
        assert!(ok(json!({"const": 18}), json!(18.0)));
        assert!(ok(json!({"enum": ["red", "blue"]}), json!("blue")));
        assert!(!ok(json!({"enum": ["red", "blue"]}), json!("green")));
        assert!(!ok(json!({"enum": []}), json!("red")));
        assert!(refused(json!({"enum": "red"})).contains("enum"));
    }

    #[test]
    fn pattern_is_a_search_and_a_bad_or_long_one_is_refused() {
        assert!(ok(json!({"pattern": "^Uni"}), json!("University")));
        assert!(ok(json!({"pattern": "sity"}), json!("University")));
        assert!(!ok(json!({"pattern": "^Uni"}), json!("Mini")));
        // a pattern cannot judge a number: unknown, so not satisfied
        assert!(!ok(json!({"pattern": "^1"}), json!(18)));
        assert!(refused(json!({"pattern": "(?<=a)b"})).contains("pattern"));
        assert!(refused(json!({"pattern": "("})).contains("pattern"));
        assert!(refused(json!({"pattern": "a".repeat(300)})).contains("256"));
        assert!(refused(json!({"pattern": 1})).contains("pattern"));
    }

    #[test]
    fn numeric_bounds() {
        assert!(ok(json!({"type": "number", "minimum": 18}), json!(18)));
        assert!(!ok(json!({"type": "number", "minimum": 18}), json!(15)));
        assert!(ok(json!({"maximum": 65536}), json!(65536)));
        assert!(!ok(json!({"maximum": 65536}), json!(65537)));
        assert!(ok(json!({"exclusiveMinimum": 10000}), json!(10000.5)));
        assert!(!ok(json!({"exclusiveMinimum": 10000}), json!(10000)));
        assert!(ok(json!({"exclusiveMaximum": 85}), json!(84)));
        assert!(!ok(json!({"exclusiveMaximum": 85}), json!(85)));
        // JSON Schema would let a string through `minimum`; here it is not satisfied
        assert!(!ok(json!({"minimum": 18}), json!("15")));
        assert!(!ok(json!({"minimum": 18}), json!("25")));
        // draft-4 boolean exclusiveMinimum is not a bound this evaluator knows
        assert!(
            refused(json!({"minimum": 1, "exclusiveMinimum": true})).contains("exclusiveMinimum")
        );
    }

    #[test]
    fn lengths_count_characters() {
        assert!(ok(json!({"minLength": 2, "maxLength": 3}), json!("äöü")));
        assert!(!ok(json!({"maxLength": 2}), json!("äöü")));
        assert!(!ok(json!({"minLength": 4}), json!("äöü")));
        assert!(!ok(json!({"minLength": 1}), json!(12345)));
        assert!(refused(json!({"minLength": -1})).contains("minLength"));
    }

    #[test]
    fn item_counts_contains_and_items() {
        let degree = json!({"type": "array", "contains": {"const": "UniversityDegreeCredential"}});
        assert!(ok(
            degree.clone(),
            json!(["VerifiableCredential", "UniversityDegreeCredential"])
        ));
        assert!(!ok(
            degree.clone(),
            json!(["VerifiableCredential", "IdentityCredential"])
        ));
        assert!(!ok(degree.clone(), json!([])));
        assert!(!ok(degree, json!("UniversityDegreeCredential")));
        assert!(ok(json!({"minItems": 2, "maxItems": 2}), json!([1, 2])));
        assert!(!ok(json!({"minItems": 3}), json!([1, 2])));
        assert!(!ok(json!({"maxItems": 1}), json!([1, 2])));
        assert!(ok(json!({"items": {"type": "string"}}), json!(["a", "b"])));
        assert!(!ok(json!({"items": {"type": "string"}}), json!(["a", 1])));
        assert!(ok(json!({"items": {"type": "string"}}), json!([])));
        assert!(refused(json!({"contains": {"maxContains": 1}})).contains("maxContains"));
    }

    #[test]
    fn not_inverts_a_definite_answer_only() {
        assert!(ok(json!({"not": {"const": "Karen"}}), json!("Chad")));
        assert!(!ok(json!({"not": {"const": "Karen"}}), json!("Karen")));
        assert!(ok(
            json!({"not": {"enum": ["red", "blue"]}}),
            json!("green")
        ));
        assert!(!ok(json!({"not": {"enum": ["red", "blue"]}}), json!("red")));
        // "younger than 18" written as not-minimum is not met by a value that is no number
        assert!(ok(json!({"not": {"minimum": 18}}), json!(15)));
        assert!(!ok(json!({"not": {"minimum": 18}}), json!("25")));
        // but a definite failure inside is a definite success outside
        assert!(ok(
            json!({"not": {"type": "number", "minimum": 18}}),
            json!("25")
        ));
    }

    #[test]
    fn dates_compare_as_dates_and_an_unparseable_value_fails() {
        let adult = json!({"type": "string", "format": "date", "formatMaximum": "2007-06-01"});
        assert!(ok(adult.clone(), json!("1984-01-26")));
        assert!(ok(adult.clone(), json!("2007-06-01")));
        assert!(!ok(adult.clone(), json!("2012-03-04")));
        assert!(!ok(adult.clone(), json!("26.01.1984")));
        assert!(!ok(adult.clone(), json!("2007-13-01")));
        assert!(!ok(adult, json!(19840126)));
        assert!(!ok(json!({"format": "date"}), json!("yesterday")));
        assert!(!ok(
            json!({"not": {"format": "date", "formatMinimum": "2000-01-01"}}),
            json!("nope")
        ));
        let exclusive = json!({"format": "date", "formatExclusiveMinimum": "2000-01-01", "formatExclusiveMaximum": "2000-01-03"});
        assert!(ok(exclusive.clone(), json!("2000-01-02")));
        assert!(!ok(exclusive, json!("2000-01-01")));
        let after = json!({"format": "date-time", "formatMinimum": "2025-01-01T00:00:00Z"});
        // the same instant written with an offset
        assert!(ok(after.clone(), json!("2025-01-01T01:00:00+01:00")));
        assert!(!ok(after.clone(), json!("2025-01-01T00:59:59+01:00")));
        assert!(!ok(after, json!("2025-01-01")));
        assert!(refused(json!({"format": "email"})).contains("email"));
        assert!(refused(json!({"formatMinimum": "2000-01-01"})).contains("format"));
        assert!(
            refused(json!({"format": "date", "formatMinimum": "01.01.2000"}))
                .contains("formatMinimum")
        );
    }

    #[test]
    fn annotations_are_ignored_and_anything_else_is_refused_by_name() {
        assert!(ok(
            json!({"title": "t", "description": "d", "$comment": "c", "$schema": "s", "const": 1}),
            json!(1)
        ));
        for k in [
            "maxContains",
            "if",
            "allOf",
            "anyOf",
            "oneOf",
            "$ref",
            "properties",
            "required",
            "multipleOf",
            "uniqueItems",
            "minContains",
        ] {
            let why = refused(json!({ k: {} }));
            assert!(why.contains(&format!("`{k}`")), "{k}: {why}");
        }
        assert!(refused(json!(true)).contains("object"));
        assert!(refused(json!("string")).contains("object"));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = json!({"const": 1});
        for _ in 0..MAX_DEPTH {
            deep = json!({ "not": {"not": deep} });
        }
        assert!(refused(deep).contains("deeper"));
        let mut fine = json!({"const": 1});
        for _ in 0..MAX_DEPTH {
            fine = json!({ "not": fine });
        }
        assert!(Filter::compile(&fine).is_ok());
        let big: Vec<String> = (0..2000).map(|i| format!("value{i}")).collect();
        assert!(refused(json!({ "enum": big })).contains("bytes"));
    }
}
