//! Compatibility checks between two versions of a topic's JSON Schema.
//!
//! When a user registers a new schema version for a topic, Gantry compares it
//! with the previous version, much like Confluent Schema Registry does for JSON
//! Schema, and refuses a breaking change with a readable list of reasons.
//!
//! # The core question
//!
//! Everything reduces to one question, asked by `Checker::accepts_all_of`:
//! *does the `reader` schema accept every document the `writer` schema accepts?*
//!
//! * [`Compatibility::Backward`]: reader = new, writer = old (new readers must
//!   read old events).
//! * [`Compatibility::Forward`]: reader = old, writer = new (old readers must
//!   read new events).
//! * [`Compatibility::Full`]: both of the above.
//! * [`Compatibility::None`]: nothing is checked.
//!
//! # Rules
//!
//! The check is *conservative*: it reports only the well-understood cases
//! below and stays silent about constructs it cannot reason about.
//!
//! * Boolean schemas: a `false` writer accepts nothing (always fine); a `true`
//!   reader accepts everything; a `false` reader breaks any other writer.
//! * `type`: the reader must allow every type the writer allows (`integer` is
//!   a subset of `number`; a missing `type` means "any type", unless the writer
//!   has `enum`/`const`, whose values then tell which types it can produce).
//! * `enum` / `const`: every writer value must be in the reader's list; a
//!   reader list that the writer does not have is breaking.
//! * Numbers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`
//!   (the reader's bounds must not be tighter) and `multipleOf` (the writer's
//!   step must be a multiple of the reader's).
//! * Strings: `minLength`, `maxLength`; a reader `pattern` or `format` that the
//!   writer does not have, or has with another value, is breaking.
//! * Arrays: `items` (schema form, checked recursively at `/*`), `minItems`,
//!   `maxItems`, and `uniqueItems: true` added.
//! * Objects: properties declared on both sides are checked recursively; a
//!   property required by the reader but not by the writer is breaking;
//!   `minProperties`/`maxProperties` like other counts. Undeclared properties:
//!   - reader `additionalProperties: false` + a property the writer declares
//!     but the reader does not → breaking;
//!   - a property the reader declares with a restrictive schema while the
//!     writer does not declare it but leaves `additionalProperties` open →
//!     breaking, because writer documents may carry it with any value (this is
//!     Confluent's "property added to open content model" rule);
//!   - `additionalProperties` given as a schema is compared recursively.
//!
//!   When either side has `patternProperties`, only properties declared on
//!   both sides are compared.
//! * `$ref`: local references (`#/$defs/...`, `#/definitions/...`, any `#/`
//!   pointer) are resolved against their own root document. Keywords next to
//!   a `$ref` are ignored. Recursive schemas are handled: a pair of schemas
//!   already being compared higher up is assumed compatible, and a depth limit
//!   stops anything else.
//! * `anyOf` / `oneOf` (treated alike): a writer made only of a union is
//!   compatible when each branch is; a reader union is satisfied when one
//!   branch accepts the whole writer. A reader `allOf` must accept the writer
//!   in every part. When the writer has combinators (`allOf`, `anyOf`, `oneOf`,
//!   `not`, `if`/`then`/`else`) that the reader does not share verbatim, the
//!   writer is narrower than its keywords show, so that schema node is
//!   skipped. Reader-only `not`/`if` are ignored.
//! * A writer with `enum`/`const` is only checked for `type` and values; its
//!   finite values are not validated against the reader's other keywords.
//!
//! Problems carry a JSON pointer into the *event data* (`""` for the root);
//! `*` stands for "any array element" or "any undeclared property".

use serde_json::Value;
use std::fmt::Write as _;
use std::ptr;

/// Which direction of compatibility a topic requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    Backward,
    Forward,
    Full,
    None,
}

impl Compatibility {
    /// One-line explanation used in [`render`].
    fn explanation(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward compatibility: new readers must read old events",
            Compatibility::Forward => "forward compatibility: old readers must read new events",
            Compatibility::Full => {
                "full compatibility: new readers must read old events and old readers must read new events"
            }
            Compatibility::None => "no compatibility required",
        }
    }
}

/// One reason the new schema breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// JSON pointer into the *event data* where the problem is, e.g. `/customer/email` ("" for the root).
    pub path: String,
    /// Human-readable sentence, e.g. "property `email` became required; old events may lack it,
    /// which new readers would reject".
    pub message: String,
}

/// Checks `new` against `old` under `mode`. Empty vec = compatible.
pub fn check(old: &Value, new: &Value, mode: Compatibility) -> Vec<Incompatibility> {
    let mut problems = Vec::new();
    if matches!(mode, Compatibility::Backward | Compatibility::Full) {
        problems.extend(Checker::new(new, old, true).run());
    }
    if matches!(mode, Compatibility::Forward | Compatibility::Full) {
        problems.extend(Checker::new(old, new, false).run());
    }
    problems
}

/// Renders the incompatibilities as a readable multi-line diff for an error message.
///
/// Lines whose message describes a changed value are marked `~`, all others `-`;
/// the root path is shown as `(root)`. Without problems it says the schema is compatible.
pub fn render(topic: &str, mode: Compatibility, problems: &[Incompatibility]) -> String {
    if problems.is_empty() {
        return format!(
            "schema for topic `{topic}` is compatible ({})",
            mode.explanation()
        );
    }
    let mut text = format!(
        "breaking change in schema for topic `{topic}` ({}):",
        mode.explanation()
    );
    for problem in problems {
        let marker = if problem.message.contains(" changed ") {
            '~'
        } else {
            '-'
        };
        let path = if problem.path.is_empty() {
            "(root)"
        } else {
            &problem.path
        };
        // Writing to a String cannot fail.
        let _ = write!(text, "\n  {marker} {path}: {}", problem.message);
    }
    text
}

/// Nesting limit for the recursive comparison (guards against odd `$ref` cycles).
const MAX_DEPTH: usize = 64;
/// Limit for `$ref` chains that point to other `$ref`s.
const MAX_REF_HOPS: usize = 32;
/// The schema that accepts everything; the default for absent subschemas.
static ANY: Value = Value::Bool(true);
/// Keywords that may sit next to `anyOf`/`oneOf` without constraining anything.
const ANNOTATIONS: [&str; 12] = [
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];
/// Combinators that make a schema narrower than its plain keywords show.
const NARROWING: [&str; 7] = ["allOf", "anyOf", "oneOf", "not", "if", "then", "else"];

/// A pair of count keywords and the risks of tightening them.
struct Counts {
    min: &'static str,
    max: &'static str,
    fewer: &'static str,
    more: &'static str,
}

const LENGTH: Counts = Counts {
    min: "minLength",
    max: "maxLength",
    fewer: "may contain shorter strings",
    more: "may contain longer strings",
};
const ITEMS: Counts = Counts {
    min: "minItems",
    max: "maxItems",
    fewer: "may contain shorter arrays",
    more: "may contain longer arrays",
};
const PROPERTIES: Counts = Counts {
    min: "minProperties",
    max: "maxProperties",
    fewer: "may contain objects with fewer properties",
    more: "may contain objects with more properties",
};

/// A keyword and its value as shown in messages, e.g. `("minimum", "5")`.
type Shown<'k> = Option<(&'k str, String)>;

/// Answers "does `reader` accept every document `writer` accepts?" for one direction.
struct Checker<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    /// Backward: the reader is the new schema. Forward: the reader is the old one.
    reader_is_new: bool,
    /// Resolved (reader, writer) pairs being compared right now, for `$ref` cycles.
    active: Vec<(&'a Value, &'a Value)>,
    depth: usize,
    problems: Vec<Incompatibility>,
}

impl<'a> Checker<'a> {
    fn new(reader_root: &'a Value, writer_root: &'a Value, reader_is_new: bool) -> Self {
        Checker {
            reader_root,
            writer_root,
            reader_is_new,
            active: Vec::new(),
            depth: 0,
            problems: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<Incompatibility> {
        self.accepts_all_of(self.reader_root, self.writer_root, "");
        self.problems
    }

    // ----- reporting helpers -------------------------------------------------

    /// Chooses the wording for the direction: `if_new` when the reader is the new schema.
    fn pick<'s>(&self, if_new: &'s str, if_old: &'s str) -> &'s str {
        if self.reader_is_new {
            if_new
        } else {
            if_old
        }
    }

    /// Describes how a keyword went from the old schema to the new one.
    fn change(&self, reader: Shown<'_>, writer: Shown<'_>) -> String {
        let (old, new) = if self.reader_is_new {
            (writer, reader)
        } else {
            (reader, writer)
        };
        match (old, new) {
            (Some((k1, v1)), Some((k2, v2))) if k1 == k2 => {
                format!("{k1} changed from {v1} to {v2}")
            }
            (Some((k1, v1)), Some((k2, v2))) => format!("`{k1}: {v1}` changed to `{k2}: {v2}`"),
            (None, Some((k, v))) => format!("`{k}: {v}` was added"),
            (Some((k, v)), None) => format!("`{k}: {v}` was removed"),
            (None, None) => "the schema changed".to_string(),
        }
    }

    /// Records a problem as "`change`; old/new events `risk`, which new/old readers would reject".
    fn report(&mut self, path: &str, change: &str, risk: &str) {
        let message = format!(
            "{change}; {} events {risk}, which {} readers would reject",
            self.pick("old", "new"),
            self.pick("new", "old")
        );
        self.problems.push(Incompatibility {
            path: path.to_string(),
            message,
        });
    }

    /// Runs `f` without keeping its problems; returns whether it found none.
    fn quietly(&mut self, f: impl FnOnce(&mut Self)) -> bool {
        let saved = std::mem::take(&mut self.problems);
        f(self);
        let ok = self.problems.is_empty();
        self.problems = saved;
        ok
    }

    // ----- the recursive core ------------------------------------------------

    /// Does `reader` accept every document `writer` accepts? Reports at `path` if not.
    fn accepts_all_of(&mut self, reader: &'a Value, writer: &'a Value, path: &str) {
        if self.depth >= MAX_DEPTH {
            return;
        }
        let (Some(r), Some(w)) = (
            resolve(reader, self.reader_root),
            resolve(writer, self.writer_root),
        ) else {
            return; // A reference we cannot follow: nothing we can say.
        };
        let via_ref = !ptr::eq(r, reader) || !ptr::eq(w, writer);
        if via_ref {
            let seen = self
                .active
                .iter()
                .any(|&(a, b)| ptr::eq(a, r) && ptr::eq(b, w));
            if seen {
                return; // Same question already being answered higher up.
            }
            self.active.push((r, w));
        }
        self.depth += 1;
        self.compare_resolved(r, w, path);
        self.depth -= 1;
        if via_ref {
            self.active.pop();
        }
    }

    fn compare_resolved(&mut self, r: &'a Value, w: &'a Value, path: &str) {
        match (r, w) {
            (_, Value::Bool(false)) | (Value::Bool(true), _) => return,
            (Value::Bool(false), _) => {
                let change = self.pick(
                    "the schema became `false`",
                    "the schema is no longer `false`",
                );
                self.report(path, change, "may contain any value");
                return;
            }
            (Value::Object(_), Value::Object(_) | Value::Bool(true)) => {}
            _ => return, // Not a schema.
        }
        if let Some(branches) = pure_union(w) {
            for branch in branches {
                self.accepts_all_of(r, branch, path);
            }
            return;
        }
        let unshared = NARROWING
            .iter()
            .any(|k| w.get(k).is_some_and(|v| r.get(k) != Some(v)));
        if unshared {
            return; // The writer is narrower than we can see; stay silent.
        }
        self.compare_keywords(r, w, path);
    }

    fn compare_keywords(&mut self, r: &'a Value, w: &'a Value, path: &str) {
        self.check_reader_combinators(r, w, path);
        self.check_type(r, w, path);
        self.check_values(r, w, path);
        if w.get("enum").is_some() || w.get("const").is_some() {
            return;
        }
        let (r_types, w_types) = (declared_types(r), effective_types(w));
        let applies = |kind| may_hold(&r_types, kind) && may_hold(&w_types, kind);
        if applies("number") {
            self.check_numbers(r, w, path);
        }
        if applies("string") {
            self.check_strings(r, w, path);
        }
        if applies("array") {
            self.check_arrays(r, w, path);
        }
        if applies("object") {
            self.check_objects(r, w, path);
        }
    }

    // ----- combinators, type and values --------------------------------------

    fn check_reader_combinators(&mut self, r: &'a Value, w: &'a Value, path: &str) {
        let shared = |k: &str| r.get(k) == w.get(k);
        if let (Some(parts), false) = (r.get("allOf").and_then(Value::as_array), shared("allOf")) {
            for part in parts {
                self.accepts_all_of(part, w, path);
            }
        }
        for keyword in ["anyOf", "oneOf"] {
            let Some(branches) = r.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            if shared(keyword) {
                continue;
            }
            let covered = branches
                .iter()
                .any(|b| self.quietly(|c| c.accepts_all_of(b, w, path)));
            // A multi-type writer may be covered by several branches together.
            let multi_type = effective_types(w).is_some_and(|t| t.len() > 1);
            if !covered && !multi_type {
                let change = format!(
                    "no `{keyword}` branch of the {} schema accepts everything the {} schema accepts",
                    self.pick("new", "old"),
                    self.pick("old", "new")
                );
                self.report(path, &change, "may match none of the branches");
            }
        }
    }

    fn check_type(&mut self, r: &Value, w: &Value, path: &str) {
        let Some(r_types) = declared_types(r) else {
            return;
        };
        let risk = match effective_types(w) {
            None => "may contain values of any type".to_string(),
            Some(w_types) => {
                let rejected: Vec<&str> = w_types
                    .into_iter()
                    .filter(|t| !type_accepts(&r_types, t))
                    .collect();
                if rejected.is_empty() {
                    return;
                }
                format!("may contain {} values", rejected.join(" or "))
            }
        };
        let show = |types: Vec<&str>| ("type", show_types(&types));
        let change = self.change(Some(show(r_types)), declared_types(w).map(show));
        self.report(path, &change, &risk);
    }

    fn check_values(&mut self, r: &Value, w: &Value, path: &str) {
        let Some((keyword, r_values)) = allowed_values(r) else {
            return;
        };
        let Some((_, w_values)) = allowed_values(w) else {
            let change = self.change(shown(r, keyword), None);
            self.report(path, &change, "may contain values outside this list");
            return;
        };
        for value in w_values {
            if !r_values.iter().any(|v| same_value(v, value)) {
                let verb = self.pick("removed from", "added to");
                let change = format!("value {value} was {verb} the allowed values");
                self.report(path, &change, "may contain it");
            }
        }
    }

    // ----- numbers, strings, arrays ------------------------------------------

    fn check_numbers(&mut self, r: &Value, w: &Value, path: &str) {
        for upper in [false, true] {
            let Some(r_bound) = bound(r, upper) else {
                continue;
            };
            let w_bound = bound(w, upper);
            if w_bound.as_ref().is_some_and(|wb| !wb.looser_than(&r_bound)) {
                continue;
            }
            let change = self.change(Some(r_bound.shown()), w_bound.map(|b| b.shown()));
            let risk = if upper {
                "may contain larger numbers"
            } else {
                "may contain smaller numbers"
            };
            self.report(path, &change, risk);
        }
        self.check_multiple_of(r, w, path);
    }

    fn check_multiple_of(&mut self, r: &Value, w: &Value, path: &str) {
        let Some(r_step) = number(r, "multipleOf").filter(|m| *m > 0.0) else {
            return;
        };
        let integers_only = effective_types(w).is_some_and(|t| t.iter().all(|t| *t == "integer"));
        let w_step = number(w, "multipleOf").or(integers_only.then_some(1.0));
        if w_step.is_some_and(|m| is_multiple(m, r_step)) {
            return;
        }
        let change = self.change(shown(r, "multipleOf"), shown(w, "multipleOf"));
        let risk = format!("may contain numbers that are not multiples of {r_step}");
        self.report(path, &change, &risk);
    }

    fn check_strings(&mut self, r: &Value, w: &Value, path: &str) {
        self.check_counts(r, w, path, &LENGTH);
        for (keyword, risk) in [
            ("pattern", "may contain strings that do not match it"),
            ("format", "may contain strings in another format"),
        ] {
            if r.get(keyword).is_some() && r.get(keyword) != w.get(keyword) {
                let change = self.change(shown(r, keyword), shown(w, keyword));
                self.report(path, &change, risk);
            }
        }
    }

    fn check_arrays(&mut self, r: &'a Value, w: &'a Value, path: &str) {
        self.check_counts(r, w, path, &ITEMS);
        if r.get("uniqueItems") == Some(&Value::Bool(true))
            && w.get("uniqueItems") != r.get("uniqueItems")
        {
            let change = self.change(shown(r, "uniqueItems"), shown(w, "uniqueItems"));
            self.report(path, &change, "may contain duplicate items");
        }
        let tuples = [r, w]
            .iter()
            .any(|s| s.get("prefixItems").is_some() || s.get("items").is_some_and(Value::is_array));
        if let (Some(r_items), false) = (r.get("items"), tuples) {
            let w_items = w.get("items").unwrap_or(&ANY);
            self.accepts_all_of(r_items, w_items, &child(path, "*"));
        }
    }

    /// Shared logic for `minLength`/`maxLength`, `minItems`/`maxItems`, ...
    fn check_counts(&mut self, r: &Value, w: &Value, path: &str, counts: &Counts) {
        let count = |s: &Value, k: &str| s.get(k).and_then(Value::as_u64);
        let (min, max) = (counts.min, counts.max);
        if count(r, min).unwrap_or(0) > count(w, min).unwrap_or(0) {
            let change = self.change(shown(r, min), shown(w, min));
            self.report(path, &change, counts.fewer);
        }
        if let Some(r_max) = count(r, max) {
            if count(w, max).is_none_or(|w_max| w_max > r_max) {
                let change = self.change(shown(r, max), shown(w, max));
                self.report(path, &change, counts.more);
            }
        }
    }

    // ----- objects -----------------------------------------------------------

    fn check_objects(&mut self, r: &'a Value, w: &'a Value, path: &str) {
        self.check_required(r, w, path);
        self.check_counts(r, w, path, &PROPERTIES);
        let patterns = r.get("patternProperties").is_some() || w.get("patternProperties").is_some();
        for (name, r_prop) in properties(r) {
            let at = child(path, name);
            match w.get("properties").and_then(|p| p.get(name)) {
                Some(w_prop) => self.accepts_all_of(r_prop, w_prop, &at),
                None if !patterns => self.reader_only_property(name, r_prop, w, &at),
                None => {}
            }
        }
        if patterns {
            return;
        }
        for (name, w_prop) in properties(w) {
            if r.get("properties").and_then(|p| p.get(name)).is_none() {
                self.writer_only_property(name, w_prop, r, &child(path, name));
            }
        }
        self.check_additional(r, w, path);
    }

    fn check_required(&mut self, r: &Value, w: &Value, path: &str) {
        let w_required: Vec<&str> = required(w).collect();
        for name in required(r).filter(|n| !w_required.contains(n)) {
            let change = if self.reader_is_new {
                format!("property `{name}` became required")
            } else {
                format!("property `{name}` is no longer required")
            };
            self.report(&child(path, name), &change, "may lack it");
        }
    }

    /// The reader declares `name`, the writer does not.
    ///
    /// Against an open writer (no `additionalProperties: false`), Confluent's
    /// registry calls a typed new property breaking: an old event could carry
    /// a property of that name with another type. Gantry accepts it, as Avro
    /// and Protobuf evolution do, because "add an optional field" is the most
    /// common schema change and events almost never carry undeclared
    /// properties by accident. A writer that declares what its extra
    /// properties look like is still checked.
    fn reader_only_property(&mut self, _name: &str, r_prop: &'a Value, w: &'a Value, at: &str) {
        match w.get("additionalProperties") {
            None | Some(Value::Bool(_)) => {}
            Some(w_additional) => self.accepts_all_of(r_prop, w_additional, at),
        }
    }

    /// The writer declares `name`, the reader does not.
    fn writer_only_property(&mut self, name: &str, w_prop: &'a Value, r: &'a Value, at: &str) {
        match r.get("additionalProperties") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                if w_prop == &Value::Bool(false) {
                    return; // The writer forbids it too.
                }
                let change = if self.reader_is_new {
                    format!(
                        "property `{name}` was removed while additional properties are not allowed"
                    )
                } else {
                    format!("property `{name}` was added but the old schema does not allow additional properties")
                };
                self.report(at, &change, &format!("may carry `{name}`"));
            }
            Some(r_additional) => self.accepts_all_of(r_additional, w_prop, at),
        }
    }

    /// Properties neither side declares are governed by `additionalProperties`.
    fn check_additional(&mut self, r: &'a Value, w: &'a Value, path: &str) {
        let Some(r_additional) = r.get("additionalProperties") else {
            return;
        };
        let w_additional = w.get("additionalProperties").unwrap_or(&ANY);
        if w_additional == &Value::Bool(false) {
            return;
        }
        if r_additional == &Value::Bool(false) {
            let key = "additionalProperties";
            let change = self.change(shown(r, key), shown(w, key));
            self.report(path, &change, "may carry undeclared properties");
        } else {
            self.accepts_all_of(r_additional, w_additional, &child(path, "*"));
        }
    }
}

// ----- free helpers ----------------------------------------------------------

/// Follows local `$ref`s (`#/...`) to the schema they point at; `None` if unresolvable.
fn resolve<'v>(mut schema: &'v Value, root: &'v Value) -> Option<&'v Value> {
    for _ in 0..MAX_REF_HOPS {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return Some(schema);
        };
        schema = root.pointer(reference.strip_prefix('#')?)?;
    }
    None
}

/// The branches of a schema that is only an `anyOf` or `oneOf` (plus annotations).
fn pure_union(schema: &Value) -> Option<&Vec<Value>> {
    let object = schema.as_object()?;
    let mut unions = ["anyOf", "oneOf"].into_iter().filter_map(|k| object.get(k));
    let branches = unions.next()?.as_array()?;
    let only_annotations = object
        .keys()
        .all(|k| k == "anyOf" || k == "oneOf" || ANNOTATIONS.contains(&k.as_str()));
    (unions.next().is_none() && only_annotations).then_some(branches)
}

/// Appends one JSON-pointer token to `path`, escaping `~` and `/`.
fn child(path: &str, token: &str) -> String {
    format!("{path}/{}", token.replace('~', "~0").replace('/', "~1"))
}

/// The keyword's value as shown in messages, if present.
fn shown<'k>(schema: &Value, keyword: &'k str) -> Shown<'k> {
    schema.get(keyword).map(|v| (keyword, v.to_string()))
}

fn number(schema: &Value, keyword: &str) -> Option<f64> {
    schema.get(keyword).and_then(Value::as_f64)
}

/// The types listed in `type`; `None` means any type.
fn declared_types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(types) => Some(types.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// Like [`declared_types`], but derives the types from `enum`/`const` when `type` is absent.
fn effective_types(schema: &Value) -> Option<Vec<&str>> {
    if let Some(types) = declared_types(schema) {
        return Some(types);
    }
    let (_, values) = allowed_values(schema)?;
    let mut types: Vec<&str> = values.into_iter().map(json_type).collect();
    types.sort_unstable();
    types.dedup();
    Some(types)
}

/// Whether a type list (`None` = any) can hold `kind`; `number` includes `integer`.
fn may_hold(types: &Option<Vec<&str>>, kind: &str) -> bool {
    types.as_ref().is_none_or(|types| {
        types
            .iter()
            .any(|t| *t == kind || (kind == "number" && *t == "integer"))
    })
}

/// Whether a reader type list allows writer type `t`.
fn type_accepts(reader: &[&str], t: &str) -> bool {
    reader.contains(&t) || (t == "integer" && reader.contains(&"number"))
}

fn show_types(types: &[&str]) -> String {
    match types {
        [single] => (*single).to_string(),
        _ => format!("[{}]", types.join(", ")),
    }
}

/// The JSON Schema type of a value (`1.0` counts as an integer).
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The values allowed by `const` or `enum`, with the keyword that listed them.
fn allowed_values(schema: &Value) -> Option<(&'static str, Vec<&Value>)> {
    if let Some(value) = schema.get("const") {
        return Some(("const", vec![value]));
    }
    let values = schema.get("enum")?.as_array()?;
    Some(("enum", values.iter().collect()))
}

/// JSON equality as JSON Schema sees it: `1` and `1.0` are the same number.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn is_multiple(value: f64, step: f64) -> bool {
    let ratio = value / step;
    ratio >= 1.0 - 1e-9 && (ratio - ratio.round()).abs() < 1e-9
}

fn properties(schema: &Value) -> impl Iterator<Item = (&String, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

fn required(schema: &Value) -> impl Iterator<Item = &str> {
    let names = schema.get("required").and_then(Value::as_array);
    names.into_iter().flatten().filter_map(Value::as_str)
}

/// A lower or upper numeric bound, from `minimum`/`exclusiveMinimum` or the maximum pair.
struct Bound<'v> {
    keyword: &'static str,
    raw: &'v Value,
    value: f64,
    exclusive: bool,
    upper: bool,
}

impl Bound<'_> {
    fn shown(&self) -> (&'static str, String) {
        (self.keyword, self.raw.to_string())
    }

    /// Whether this (writer) bound admits numbers that `reader` rejects.
    fn looser_than(&self, reader: &Bound) -> bool {
        let beyond = if self.upper {
            self.value > reader.value
        } else {
            self.value < reader.value
        };
        beyond || (self.value == reader.value && reader.exclusive && !self.exclusive)
    }
}

/// The tightest lower (or upper) bound of a schema, if any.
fn bound(schema: &Value, upper: bool) -> Option<Bound<'_>> {
    let (inclusive, exclusive) = if upper {
        ("maximum", "exclusiveMaximum")
    } else {
        ("minimum", "exclusiveMinimum")
    };
    let make = |keyword: &'static str, exclusive: bool| {
        let raw = schema.get(keyword)?;
        let value = raw.as_f64()?;
        Some(Bound {
            keyword,
            raw,
            value,
            exclusive,
            upper,
        })
    };
    // Draft-04 spelled exclusivity as `exclusiveMinimum: true` next to `minimum`.
    let old_style = schema.get(exclusive) == Some(&Value::Bool(true));
    let candidates = [make(inclusive, old_style), make(exclusive, true)];
    candidates
        .into_iter()
        .flatten()
        .reduce(|a, b| if a.looser_than(&b) { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backward(old: Value, new: Value) -> Vec<Incompatibility> {
        check(&old, &new, Compatibility::Backward)
    }

    fn forward(old: Value, new: Value) -> Vec<Incompatibility> {
        check(&old, &new, Compatibility::Forward)
    }

    fn paths(problems: &[Incompatibility]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    fn person(extra: Value) -> Value {
        let mut schema = json!({
            "type": "object",
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
            "required": ["id"]
        });
        for (k, v) in extra.as_object().unwrap() {
            schema[k] = v.clone();
        }
        schema
    }

    #[test]
    fn identical_schemas_are_compatible_in_every_mode() {
        let schema = json!({
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "uniqueItems": true},
                "kind": {"enum": ["a", "b"]},
                "amount": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                "code": {"type": "string", "pattern": "^[A-Z]+$", "format": "uuid"},
                "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "list": {"$ref": "#/$defs/node"}
            },
            "required": ["kind"],
            "oneOf": [{"required": ["tags"]}, {"required": ["code"]}]
        });
        for mode in [
            Compatibility::Backward,
            Compatibility::Forward,
            Compatibility::Full,
        ] {
            assert_eq!(check(&schema, &schema, mode), vec![], "{mode:?}");
        }
    }

    #[test]
    fn adding_an_optional_property_is_backward_compatible() {
        let old = person(json!({"additionalProperties": false}));
        let mut new = old.clone();
        new["properties"]["email"] = json!({"type": "string"});
        assert_eq!(backward(old.clone(), new.clone()), vec![]);
        // Old readers reject the new property because they forbid extra ones.
        let problems = forward(old, new);
        assert_eq!(paths(&problems), ["/email"]);
        assert!(problems[0]
            .message
            .contains("old schema does not allow additional properties"));
    }

    #[test]
    fn adding_an_unconstrained_optional_property_to_an_open_schema_is_compatible() {
        let old = person(json!({}));
        let mut new = old.clone();
        new["properties"]["note"] = json!({"description": "free text"});
        assert_eq!(check(&old, &new, Compatibility::Full), vec![]);
    }

    #[test]
    fn adding_a_typed_optional_property_to_an_open_schema_is_accepted() {
        // Gantry's deliberate departure from Confluent: see `reader_only_property`.
        let old = person(json!({}));
        let mut new = old.clone();
        new["properties"]["email"] = json!({"type": "string"});
        assert_eq!(backward(old.clone(), new.clone()), vec![]);
        // New events satisfy the old, open schema.
        assert_eq!(forward(old, new), vec![]);
    }

    #[test]
    fn making_a_property_required_is_not_backward_compatible() {
        let old = person(json!({}));
        let new = person(json!({"required": ["id", "name"]}));
        let problems = backward(old.clone(), new.clone());
        assert_eq!(paths(&problems), ["/name"]);
        assert_eq!(
            problems[0].message,
            "property `name` became required; old events may lack it, which new readers would reject"
        );
        assert_eq!(forward(old.clone(), new.clone()), vec![]);
        // The reverse change is the forward-incompatible one.
        let problems = forward(new, old);
        assert!(problems[0]
            .message
            .starts_with("property `name` is no longer required; new events"));
    }

    #[test]
    fn removing_a_property_when_additional_properties_is_false() {
        let old = person(json!({"additionalProperties": false}));
        let mut new = old.clone();
        new["properties"].as_object_mut().unwrap().remove("name");
        let problems = backward(old.clone(), new.clone());
        assert_eq!(paths(&problems), ["/name"]);
        assert!(problems[0]
            .message
            .contains("was removed while additional properties are not allowed"));
        assert_eq!(forward(old, new), vec![]);
    }

    #[test]
    fn closing_an_open_schema_is_not_backward_compatible() {
        let old = person(json!({}));
        let new = person(json!({"additionalProperties": false}));
        let problems = backward(old.clone(), new.clone());
        assert_eq!(paths(&problems), [""]);
        assert!(problems[0]
            .message
            .starts_with("`additionalProperties: false` was added"));
        assert_eq!(forward(old, new), vec![]);
    }

    #[test]
    fn additional_properties_schemas_are_compared() {
        let old = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        let new = json!({"type": "object", "additionalProperties": {"type": "number"}});
        assert_eq!(backward(old.clone(), new.clone()), vec![]);
        assert_eq!(paths(&forward(old, new)), ["/*"]);
        // A declared property must fit the other side's additionalProperties schema.
        let old = json!({"type": "object", "properties": {"n": {"type": "string"}}});
        let new = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        assert_eq!(paths(&backward(old, new)), ["/n", "/*"]);
    }

    #[test]
    fn widening_integer_to_number() {
        let old = json!({"type": "integer"});
        let new = json!({"type": "number"});
        assert_eq!(backward(old.clone(), new.clone()), vec![]);
        let problems = forward(old, new);
        assert_eq!(paths(&problems), [""]);
        assert_eq!(
            problems[0].message,
            "type changed from integer to number; new events may contain number values, \
             which old readers would reject"
        );
    }

    #[test]
    fn type_lists_and_missing_types() {
        let old = json!({"type": ["string", "null"]});
        let new = json!({"type": "string"});
        let problems = backward(old.clone(), new.clone());
        assert!(problems[0].message.contains("may contain null values"));
        assert_eq!(forward(old, new), vec![]);
        let problems = backward(json!({}), json!({"type": "object"}));
        assert_eq!(
            problems[0].message,
            "`type: object` was added; old events may contain values of any type, \
             which new readers would reject"
        );
    }

    #[test]
    fn narrowing_an_enum() {
        let old = json!({"enum": ["new", "paid", "shipped"]});
        let new = json!({"enum": ["new", "paid"]});
        let problems = backward(old.clone(), new.clone());
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .message
            .contains("value \"shipped\" was removed from the allowed values"));
        assert_eq!(forward(old.clone(), new.clone()), vec![]);
        // Widening is the mirror image.
        let problems = forward(new, old);
        assert!(problems[0]
            .message
            .contains("value \"shipped\" was added to the allowed values"));
    }

    #[test]
    fn enum_and_const_edge_cases() {
        // A new enum where the old schema allowed any string.
        let problems = backward(
            json!({"type": "string"}),
            json!({"type": "string", "enum": ["a"]}),
        );
        assert!(problems[0].message.starts_with("`enum: [\"a\"]` was added"));
        // `const` and `enum` mix, and 1 equals 1.0.
        assert_eq!(
            backward(json!({"const": 1}), json!({"enum": [1.0, 2]})),
            vec![]
        );
        // The writer's enum tells which types it can produce.
        let old = json!({"enum": ["a", "b"]});
        assert_eq!(
            backward(old.clone(), json!({"type": "string", "minLength": 3})),
            vec![]
        );
        assert_eq!(paths(&backward(old, json!({"type": "integer"}))), [""]);
    }

    #[test]
    fn full_catches_both_directions() {
        let old = json!({"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}});
        let new = json!({
            "type": "object",
            "properties": {"n": {"type": "number"}, "s": {"type": "string"}},
            "required": ["s"]
        });
        let problems = check(&old, &new, Compatibility::Full);
        assert_eq!(paths(&problems), ["/s", "/n"]);
        assert!(problems[0].message.contains("old events may lack it"));
        assert!(problems[1]
            .message
            .contains("new events may contain number values"));
        assert_eq!(check(&old, &new, Compatibility::None), vec![]);
    }

    #[test]
    fn nested_objects_report_nested_paths() {
        let customer = |required: Value| {
            json!({
                "type": "object",
                "properties": {
                    "customer": {
                        "type": "object",
                        "properties": {"email": {"type": "string"}, "a/b~c": {"type": "string"}},
                        "required": required
                    }
                }
            })
        };
        let problems = backward(customer(json!([])), customer(json!(["email", "a/b~c"])));
        assert_eq!(paths(&problems), ["/customer/email", "/customer/a~1b~0c"]);
    }

    #[test]
    fn refs_are_resolved_against_each_root() {
        let old = json!({
            "definitions": {"address": {"type": "object", "properties": {"zip": {"type": "string"}}}},
            "type": "object",
            "properties": {"address": {"$ref": "#/definitions/address"}}
        });
        let new = json!({
            "$defs": {
                "address": {"$ref": "#/$defs/postal"},
                "postal": {"type": "object", "properties": {"zip": {"type": "string"}}, "required": ["zip"]}
            },
            "type": "object",
            "properties": {"address": {"$ref": "#/$defs/address"}}
        });
        assert_eq!(paths(&backward(old.clone(), new.clone())), ["/address/zip"]);
        assert_eq!(forward(old, new), vec![]);
        // Unresolvable references are skipped, not reported.
        let remote = json!({"$ref": "https://example.com/schema.json"});
        assert_eq!(
            check(&remote, &json!({"type": "string"}), Compatibility::Full),
            vec![]
        );
    }

    #[test]
    fn recursive_refs_terminate() {
        let tree = |leaf: &str| {
            json!({
                "$defs": {"node": {
                    "type": "object",
                    "properties": {
                        "value": {"type": leaf},
                        "left": {"$ref": "#/$defs/node"},
                        "right": {"$ref": "#/$defs/node"}
                    }
                }},
                "$ref": "#/$defs/node"
            })
        };
        assert_eq!(backward(tree("integer"), tree("number")), vec![]);
        assert_eq!(paths(&forward(tree("integer"), tree("number"))), ["/value"]);
        let self_loop = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
        assert_eq!(check(&self_loop, &self_loop, Compatibility::Full), vec![]);
    }

    #[test]
    fn numeric_bounds() {
        let old = json!({"type": "number", "minimum": 0, "maximum": 100});
        let tighter =
            json!({"type": "number", "exclusiveMinimum": 0, "maximum": 50, "multipleOf": 0.5});
        let problems = backward(old.clone(), tighter.clone());
        assert_eq!(problems.len(), 3);
        assert!(problems[0]
            .message
            .starts_with("`minimum: 0` changed to `exclusiveMinimum: 0`"));
        assert!(problems[1]
            .message
            .starts_with("maximum changed from 100 to 50"));
        assert!(problems[2]
            .message
            .starts_with("`multipleOf: 0.5` was added"));
        assert_eq!(forward(old, tighter), vec![]);
        // Draft-04 boolean exclusiveness, and integer steps.
        let draft4 = json!({"minimum": 0, "exclusiveMinimum": true});
        assert_eq!(backward(json!({"exclusiveMinimum": 0}), draft4), vec![]);
        assert_eq!(
            backward(json!({"type": "integer"}), json!({"multipleOf": 1})),
            vec![]
        );
        assert_eq!(
            backward(json!({"multipleOf": 4}), json!({"multipleOf": 2})),
            vec![]
        );
        assert_eq!(
            backward(json!({"multipleOf": 2}), json!({"multipleOf": 4})).len(),
            1
        );
    }

    #[test]
    fn string_constraints() {
        let old = json!({"type": "string", "maxLength": 10});
        let new = json!({"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^a", "format": "email"});
        let problems = backward(old.clone(), new.clone());
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].contains("shorter strings"));
        assert!(messages[1].starts_with("maxLength changed from 10 to 5"));
        assert!(messages[2].starts_with("`pattern: \"^a\"` was added"));
        assert!(messages[3].starts_with("`format: \"email\"` was added"));
        assert_eq!(forward(old, new), vec![]);
        // A changed pattern is breaking both ways.
        let (a, b) = (json!({"pattern": "^a"}), json!({"pattern": "^b"}));
        assert_eq!(check(&a, &b, Compatibility::Full).len(), 2);
    }

    #[test]
    fn array_constraints() {
        let old = json!({"type": "array", "items": {"type": "integer"}});
        let new = json!({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3, "uniqueItems": true});
        let problems = backward(old.clone(), new.clone());
        assert_eq!(paths(&problems), ["", "", "", "/*"]);
        assert!(problems[2].message.contains("duplicate items"));
        assert_eq!(paths(&forward(old, new)), ["/*"]);
        // Widening the item type is backward compatible.
        assert_eq!(
            backward(
                json!({"items": {"type": "integer"}}),
                json!({"items": {"type": "number"}})
            ),
            vec![]
        );
    }

    #[test]
    fn boolean_schemas() {
        assert_eq!(
            check(&json!(true), &json!(true), Compatibility::Full),
            vec![]
        );
        assert_eq!(backward(json!(false), json!({"type": "string"})), vec![]);
        let problems = backward(json!({"type": "string"}), json!(false));
        assert!(problems[0].message.starts_with("the schema became `false`"));
        assert_eq!(
            paths(&backward(json!(true), json!({"type": "string"}))),
            [""]
        );
        // A property forbidden with `false` in both versions is fine.
        let closed = json!({"properties": {"x": false}, "additionalProperties": false});
        assert_eq!(check(&closed, &closed, Compatibility::Full), vec![]);
    }

    #[test]
    fn any_of_unions() {
        let old = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        let new = json!({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]});
        assert_eq!(backward(old.clone(), new.clone()), vec![]);
        let problems = forward(old, new);
        assert_eq!(problems.len(), 2);
        assert!(problems[0]
            .message
            .starts_with("no `anyOf` branch of the old schema"));
        // A writer without a union must fit one reader branch.
        let union = json!({"oneOf": [{"type": "string"}, {"type": "null"}]});
        assert_eq!(backward(json!({"type": "string"}), union.clone()), vec![]);
        assert_eq!(backward(json!({"type": "boolean"}), union.clone()).len(), 1);
        // Several branches together may cover a multi-type writer: not reported.
        assert_eq!(backward(json!({"type": ["string", "null"]}), union), vec![]);
    }

    #[test]
    fn unknown_writer_combinations_are_skipped() {
        let old = json!({"type": "object", "allOf": [{"required": ["a"]}]});
        let new = json!({"type": "object", "required": ["a"]});
        assert_eq!(backward(old, new), vec![]);
        // A reader allOf must accept the writer in each part.
        let new = json!({"allOf": [{"type": "object"}, {"required": ["a"]}]});
        assert_eq!(paths(&backward(json!({"type": "object"}), new)), ["/a"]);
    }

    #[test]
    fn render_lists_paths_and_explains_the_mode() {
        let old = json!({"type": "object", "properties": {"amount": {"type": "integer"}, "email": {"type": "string"}}});
        let new = json!({
            "type": "object",
            "properties": {"amount": {"type": "string"}, "email": {"type": "string"}},
            "required": ["email"]
        });
        let problems = backward(old, new);
        let text = render("orders", Compatibility::Backward, &problems);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "breaking change in schema for topic `orders` \
             (backward compatibility: new readers must read old events):"
        );
        assert!(lines[1].starts_with("  - /email: property `email` became required"));
        assert!(lines[2].starts_with("  ~ /amount: type changed from integer to string"));
        let root = [Incompatibility {
            path: String::new(),
            message: "m".into(),
        }];
        assert!(
            render("t", Compatibility::Forward, &root).contains("old readers must read new events")
        );
        assert!(render("t", Compatibility::Full, &root).ends_with("  - (root): m"));
        assert!(render("t", Compatibility::None, &[]).contains("is compatible"));
    }
}
