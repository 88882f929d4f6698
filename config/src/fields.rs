//! Reading one key-value object (annotations or ConfigMap data) key by key, collecting every problem instead of
//! stopping at the first, and the validation rules the keys share.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::{FieldError, Invalid, Warning};
use crate::keys::{self, KeyDoc};
use crate::value::{self, format_duration, format_number};

/// A cursor over one object's keys that records every error and warning it meets.
pub(crate) struct Fields<'a> {
    map: &'a BTreeMap<String, String>,
    table: &'static [KeyDoc],
    errors: Vec<FieldError>,
    warnings: Vec<Warning>,
}

impl<'a> Fields<'a> {
    /// Starts reading `map`, whose known keys are `table`. `is_ours` picks the keys that must be known: a key it
    /// accepts that is not in `table` is an error (a typo must not be silently ignored).
    pub(crate) fn new(
        map: &'a BTreeMap<String, String>,
        table: &'static [KeyDoc],
        is_ours: impl Fn(&str) -> bool,
    ) -> Self {
        let mut fields = Self { map, table, errors: Vec::new(), warnings: Vec::new() };
        for (key, value) in map {
            if is_ours(key) && keys::lookup(table, key).is_none() {
                let problem = match keys::suggest(table, key) {
                    Some(near) => format!("unknown key; did you mean {near}?"),
                    None => unknown_key(key),
                };
                fields.error(key, value, problem);
            }
        }
        fields
    }

    /// The key as written and its value, following the alias when only the alias is present.
    fn raw(&mut self, doc: &KeyDoc) -> Option<(&'a str, &'a str)> {
        let main = self.map.get_key_value(doc.key);
        let alias = doc.alias.and_then(|alias| self.map.get_key_value(alias));
        if let (Some(_), Some((alias_key, alias_value))) = (main, alias) {
            self.warnings.push(Warning {
                key: alias_key.clone(),
                message: format!("ignored ({alias_value:?}): {} is also set and wins", doc.key),
            });
        }
        main.or(alias).map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// Reads and checks one key; `None` when it is absent or invalid (the error is recorded).
    pub(crate) fn get<T>(&mut self, key: &str, check: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let doc = keys::lookup(self.table, key).unwrap_or_else(|| panic!("{key} is not a documented key"));
        let (written, text) = self.raw(doc)?;
        match check(text.trim()) {
            Ok(value) => Some(value),
            Err(problem) => {
                self.error(written, text, problem);
                None
            }
        }
    }

    /// Whether the key (or its alias) is present, valid or not.
    pub(crate) fn has(&self, key: &str) -> bool {
        keys::lookup(self.table, key).is_some_and(|doc| {
            self.map.contains_key(doc.key) || doc.alias.is_some_and(|a| self.map.contains_key(a))
        })
    }

    /// Records an error about a key that passed its own check but conflicts with another.
    pub(crate) fn conflict(&mut self, key: &str, problem: String) {
        let doc = keys::lookup(self.table, key).unwrap_or_else(|| panic!("{key} is not a documented key"));
        let written = if self.map.contains_key(doc.key) { doc.key } else { doc.alias.unwrap_or(doc.key) };
        let value = self.map.get(written).cloned().unwrap_or_default();
        self.error(written, &value, problem);
    }

    fn error(&mut self, key: &str, value: &str, problem: String) {
        self.errors.push(FieldError { key: key.to_owned(), value: value.to_owned(), problem });
    }

    /// Ends reading: the value when nothing was wrong, else every error (both with the warnings).
    pub(crate) fn finish<T>(mut self, value: T) -> Result<crate::Diagnosed<T>, Invalid> {
        // Unknown keys were found first; report everything in key order, as the user sees the object.
        self.errors.sort_by(|a, b| a.key.cmp(&b.key));
        if self.errors.is_empty() {
            Ok(crate::Diagnosed { value, warnings: self.warnings })
        } else {
            Err(Invalid { errors: self.errors, warnings: self.warnings })
        }
    }
}

/// The problem for an unknown key with no close match: where it was looked for and where the known keys are.
fn unknown_key(key: &str) -> String {
    // Annotation keys carry a prefix; ConfigMap keys cannot contain `/`.
    let place = match key.split_once('/') {
        Some((prefix, _)) => format!("unknown key under {prefix}/"),
        None => "unknown config-autoscaler key".to_owned(),
    };
    format!("{place} (a typo? the keys are listed in the README's configuration tables)")
}

/// A number's accepted range: bounds are inclusive unless marked exclusive.
#[derive(Clone, Copy)]
pub(crate) struct NumberRule {
    pub min: f64,
    pub min_exclusive: bool,
    pub max: Option<f64>,
    /// `-1` is accepted as a special value (target burst capacity).
    pub allow_minus_one: bool,
}

impl NumberRule {
    pub(crate) const fn at_least(min: f64) -> Self {
        Self { min, min_exclusive: false, max: None, allow_minus_one: false }
    }
    pub(crate) const fn above(min: f64) -> Self {
        Self { min, min_exclusive: true, max: None, allow_minus_one: false }
    }
    pub(crate) const fn between(min: f64, max: f64) -> Self {
        Self { min, min_exclusive: false, max: Some(max), allow_minus_one: false }
    }
    pub(crate) const fn above_up_to(min: f64, max: f64) -> Self {
        Self { min, min_exclusive: true, max: Some(max), allow_minus_one: false }
    }
    pub(crate) const fn burst_capacity() -> Self {
        Self { min: 0.0, min_exclusive: false, max: None, allow_minus_one: true }
    }

    fn describe(&self) -> String {
        let min = format_number(self.min);
        let range = match (self.max, self.min_exclusive) {
            (Some(max), false) => format!("between {min} and {}", format_number(max)),
            (Some(max), true) => format!("greater than {min} and at most {}", format_number(max)),
            (None, false) => format!("at least {min}"),
            (None, true) => format!("greater than {min}"),
        };
        if self.allow_minus_one { format!("{range}, or -1") } else { range }
    }

    pub(crate) fn check(&self, text: &str) -> Result<f64, String> {
        let value =
            value::parse_number(text).ok_or_else(|| format!("must be a number {}", self.describe()))?;
        let low_ok = if self.min_exclusive { value > self.min } else { value >= self.min };
        let in_range = low_ok && self.max.is_none_or(|max| value <= max);
        if in_range || (self.allow_minus_one && value == -1.0) {
            Ok(value)
        } else {
            Err(format!("must be {}", self.describe()))
        }
    }
}

/// A whole number in `range`.
pub(crate) fn whole_number(text: &str, range: RangeInclusive<u32>) -> Result<u32, String> {
    let describe = || match *range.end() {
        end if end >= MAX_INT32 => format!("at least {}", range.start()),
        end => format!("between {} and {end}", range.start()),
    };
    let value = value::parse_int(text).ok_or_else(|| format!("must be a whole number {}", describe()))?;
    u32::try_from(value).ok().filter(|v| range.contains(v)).ok_or_else(|| format!("must be {}", describe()))
}

/// Largest whole number Knative's int32 fields hold.
pub(crate) const MAX_INT32: u32 = i32::MAX as u32;

/// A duration's accepted form and range.
#[derive(Clone, Copy)]
pub(crate) struct DurationRule {
    pub min: Duration,
    pub min_exclusive: bool,
    pub max: Option<Duration>,
    pub whole_seconds: bool,
    /// Plain integers count as seconds (ebb's keys); Knative's keys take Go durations only.
    pub plain_seconds: bool,
}

impl DurationRule {
    /// A Knative duration key in whole seconds between `min` and `max`.
    pub(crate) const fn knative_whole(min: Duration, max: Option<Duration>) -> Self {
        Self { min, min_exclusive: false, max, whole_seconds: true, plain_seconds: false }
    }
    /// A Knative duration key between `min` and `max`.
    pub(crate) const fn knative(min: Duration, max: Option<Duration>) -> Self {
        Self { min, min_exclusive: false, max, whole_seconds: false, plain_seconds: false }
    }
    /// An ebb duration key between `min` and `max`.
    pub(crate) const fn ebb(min: Duration, max: Duration) -> Self {
        Self { min, min_exclusive: false, max: Some(max), whole_seconds: false, plain_seconds: true }
    }

    fn describe(&self) -> String {
        let min = format_duration(self.min);
        match (self.max, self.min_exclusive) {
            (Some(max), _) => format!("between {min} and {}", format_duration(max)),
            (None, false) => format!("at least {min}"),
            (None, true) => format!("greater than {min}"),
        }
    }

    pub(crate) fn check(&self, text: &str) -> Result<Duration, String> {
        let parse = if self.plain_seconds { value::parse_duration } else { value::parse_go_duration };
        let forms = if self.plain_seconds {
            "a duration such as 300s, 5m or 300"
        } else {
            "a duration such as 60s or 1m30s"
        };
        let value = parse(text).ok_or_else(|| format!("must be {forms}, {}", self.describe()))?;
        let low_ok = if self.min_exclusive { value > self.min } else { value >= self.min };
        if !low_ok || self.max.is_some_and(|max| value > max) {
            return Err(format!("must be {}", self.describe()));
        }
        if self.whole_seconds && value.subsec_nanos() != 0 {
            return Err(format!("must be whole seconds, {}", self.describe()));
        }
        Ok(value)
    }
}

/// One of a fixed set of spellings.
pub(crate) fn one_of<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices.iter().find(|(name, _)| *name == text).map(|(_, value)| *value).ok_or_else(|| {
        let names: Vec<String> = choices.iter().map(|(name, _)| format!("`{name}`")).collect();
        format!("must be one of {}", names.join(", "))
    })
}

/// A boolean in Go's forms.
pub(crate) fn boolean(text: &str) -> Result<bool, String> {
    value::parse_bool(text).ok_or_else(|| "must be `true` or `false`".to_owned())
}

/// The canonical spelling of `value` in a table of spellings (the first that maps to it).
pub(crate) fn spelling<T: PartialEq>(choices: &[(&'static str, T)], value: T) -> &'static str {
    choices.iter().find(|(_, v)| *v == value).map_or("", |(name, _)| name)
}
