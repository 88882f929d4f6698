//! Label selectors in their string form, as a `scale` subresource reports them in `status.selector`
//! (`app=x,tier in (a,b),!canary`): parsed once, matched against pods' labels in the watch cache.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A parsed label selector; the empty one matches everything, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses the string form; `Err` names what it could not read.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(requirement(part).ok_or_else(|| format!("cannot read {part:?} in {text:?}"))?);
        }
        Ok(Self(requirements))
    }

    /// The structured form (a Deployment's `spec.selector`); an operator Kubernetes does not define
    /// matches nothing.
    pub fn from_label_selector(selector: &LabelSelector) -> Self {
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for e in selector.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            requirements.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::Absent(e.key.clone()),
                _ => Requirement::In(e.key.clone(), Vec::new()),
            });
        }
        Self(requirements)
    }

    /// Whether the labels that `label` looks up satisfy every requirement.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::Absent(k) => label(k).is_none(),
        })
    }
}

/// Splits at the commas that are not inside a set's parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn requirement(part: &str) -> Option<Requirement> {
    let set = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some(key) = part.strip_prefix('!') {
        return Some(Requirement::Absent(key.trim().to_owned()));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Some(Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Some(Requirement::Equals(key.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some((key, rest)) = part.split_once(" notin ") {
        return Some(Requirement::NotIn(key.trim().to_owned(), set(rest)?));
    }
    if let Some((key, rest)) = part.split_once(" in ") {
        return Some(Requirement::In(key.trim().to_owned(), set(rest)?));
    }
    let key = part.trim();
    (!key.contains(char::is_whitespace)).then(|| Requirement::Exists(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn matches(selector: &Selector, pairs: &[(&str, &str)]) -> bool {
        let labels: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        selector.matches(|key| labels.get(key).map(String::as_str))
    }

    #[test]
    fn the_string_forms_a_scale_subresource_reports_are_matched() {
        let s = Selector::parse("app=chat,role in (leader, prefill),!canary,tier!=web,zone").unwrap();
        assert!(matches(&s, &[("app", "chat"), ("role", "leader"), ("zone", "a")]));
        assert!(!matches(&s, &[("app", "chat"), ("role", "worker"), ("zone", "a")]));
        assert!(!matches(&s, &[("app", "chat"), ("role", "leader"), ("zone", "a"), ("canary", "")]));
        assert!(!matches(&s, &[("app", "chat"), ("role", "leader")]));
        let s = Selector::parse("a==1, b notin (x)").unwrap();
        assert!(matches(&s, &[("a", "1")]));
        assert!(!matches(&s, &[("a", "1"), ("b", "x")]));
        assert!(Selector::parse("").unwrap().matches(|_| None));
        assert!(Selector::parse("a in b").is_err());
    }
}
