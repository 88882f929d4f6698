//! Per-service configuration from annotations: every key's valid and invalid forms, every default, aliases,
//! unknown keys, cross-key rules, and that no input makes the parser panic.

use std::collections::BTreeMap;
use std::time::Duration;

use ebb_config::keys::{ANNOTATION_KEYS, DefaultDoc, annotation as key};
use ebb_config::{
    Aggregation, GlobalConfig, Invalid, Metric, Protocol, ScalerClass, ServiceConfig, resolve_service,
};
use proptest::prelude::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn resolve(pairs: &[(&str, &str)]) -> Result<ServiceConfig, Invalid> {
    resolve_service(&map(pairs), &GlobalConfig::default()).map(|d| d.value)
}

fn effective(config: &ServiceConfig, key: &str) -> String {
    config.effective_values().into_iter().find(|(k, _)| *k == key).map(|(_, v)| v).unwrap()
}

fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
    resolve(pairs).unwrap_err().errors.iter().map(ToString::to_string).collect()
}

#[test]
fn documented_defaults_are_the_effective_defaults() {
    let config = ServiceConfig::default();
    for doc in ANNOTATION_KEYS {
        if let DefaultDoc::Value(default) = doc.default {
            assert_eq!(effective(&config, doc.key), default, "{}", doc.key);
        }
    }
    assert_eq!(config.effective_values().len(), ANNOTATION_KEYS.len(), "every key has an effective value");
}

#[test]
fn defaults_match_knative_and_design_md() {
    let c = ServiceConfig::default();
    let s = &c.scaling;
    assert_eq!(
        (s.class, s.metric, s.aggregation),
        (ScalerClass::Kpa, Metric::Concurrency, Aggregation::Linear)
    );
    // CC = 0, so total = container-concurrency-target-default 100, times 70 % = 70.
    assert_eq!((s.total_target, s.target_utilization), (100.0, 0.7));
    assert!((s.target() - 70.0).abs() < 1e-9);
    assert_eq!(s.target_burst_capacity, 211.0);
    assert_eq!(s.stable_window, Duration::from_secs(60));
    assert_eq!(s.panic_window(), Duration::from_secs(6));
    assert_eq!((s.panic_threshold, s.max_scale_up_rate, s.max_scale_down_rate), (2.0, 1000.0, 2.0));
    assert_eq!((s.min_scale, s.max_scale, s.initial_scale, s.activation_scale), (0, 0, 1, 1));
    assert_eq!((s.scale_down_delay, s.scale_to_zero_pod_retention_period), (Duration::ZERO, Duration::ZERO));
    assert_eq!((s.enable_scale_to_zero, s.scale_to_zero_grace_period), (true, Duration::from_secs(30)));
    assert_eq!(s.activator_capacity, 100.0);
    let d = &c.data_plane;
    assert_eq!((d.container_concurrency, d.queue_depth, d.max_queued), (0, 0, 1000));
    assert_eq!((d.timeout, d.response_start_timeout), (Duration::from_secs(300), Duration::from_secs(300)));
    assert_eq!((d.idle_timeout, d.activation_timeout), (None, Duration::from_secs(600)));
    assert_eq!(d.request_body_timeout, Some(Duration::from_secs(60)));
    assert_eq!((d.hosts.len(), d.protocol, c.paused), (0, None, false));
    assert!(c.is_autoscaled());
}

/// (key, valid forms with their effective values, invalid forms with the expected problem).
type Case = (&'static str, &'static [(&'static str, &'static str)], &'static [(&'static str, &'static str)]);

#[rustfmt::skip]
const CASES: &[Case] = &[
    (key::CLASS, &[("hpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"), ("kpa.autoscaling.knative.dev", "kpa.autoscaling.knative.dev")],
        &[("kpa", "must be one of `kpa.autoscaling.knative.dev`, `hpa.autoscaling.knative.dev`")]),
    (key::METRIC, &[("rps", "rps"), ("concurrency", "concurrency")], &[("cpu", "must be one of `concurrency`, `rps`")]),
    (key::TARGET, &[("50", "50"), ("0.01", "0.01"), (" 25 ", "25")],
        &[("0", "must be at least 0.01"), ("abc", "must be a number at least 0.01"), ("NaN", "must be a number")]),
    (key::TARGET_UTILIZATION_PERCENTAGE, &[("1", "1"), ("100", "100"), ("85.5", "85.5")],
        &[("0", "must be between 1 and 100"), ("101", "must be between 1 and 100"), ("70%", "must be a number")]),
    (key::TARGET_BURST_CAPACITY, &[("-1", "-1"), ("0", "0"), ("500", "500")],
        &[("-2", "must be at least 0, or -1"), ("lots", "must be a number")]),
    (key::WINDOW, &[("6s", "6s"), ("1h", "1h"), ("1m30s", "1m30s"), ("90s", "1m30s")],
        &[("3s", "must be between 6s and 1h"), ("2h", "must be between 6s and 1h"), ("60", "must be a duration such as 60s or 1m30s, between 6s and 1h"),
          ("6.5s", "must be whole seconds, between 6s and 1h")]),
    (key::PANIC_WINDOW_PERCENTAGE, &[("1", "1"), ("100", "100"), ("12.5", "12.5")], &[("0.5", "must be between 1 and 100"), ("200", "must be between 1 and 100")]),
    (key::PANIC_THRESHOLD_PERCENTAGE, &[("110", "110"), ("1000", "1000")], &[("100", "must be between 110 and 1000"), ("1001", "must be between 110 and 1000")]),
    (key::MIN_SCALE, &[("0", "0"), ("3", "3")], &[("-1", "must be at least 0"), ("1.5", "must be a whole number at least 0")]),
    (key::MAX_SCALE, &[("0", "0"), ("10", "10")], &[("-3", "must be at least 0"), ("ten", "must be a whole number")]),
    (key::INITIAL_SCALE, &[("1", "1"), ("4", "4")], &[("0", "must be at least 1 (0 needs allow-zero-initial-scale: true in config-autoscaler)"), ("x", "must be a whole number")]),
    (key::ACTIVATION_SCALE, &[("2", "2"), ("5", "5")], &[("1", "must be at least 2"), ("0", "must be at least 2")]),
    (key::SCALE_DOWN_DELAY, &[("0s", "0s"), ("0", "0s"), ("15m", "15m"), ("1h", "1h")],
        &[("2h", "must be between 0s and 1h"), ("1.5s", "must be whole seconds"), ("-1s", "must be a duration")]),
    (key::SCALE_TO_ZERO_POD_RETENTION_PERIOD, &[("1m5s", "1m5s"), ("1.5s", "1.5s")], &[("61m", "must be between 0s and 1h")]),
    (key::METRIC_AGGREGATION_ALGORITHM, &[("weighted-exponential", "weighted-exponential"), ("weightedExponential", "weighted-exponential"), ("linear", "linear")],
        &[("exponential", "must be one of `linear`, `weighted-exponential`, `weightedExponential`")]),
    (key::CONTAINER_CONCURRENCY, &[("0", "0"), ("1", "1"), ("1000", "1000")], &[("1001", "must be between 0 and 1000"), ("-1", "must be between 0 and 1000")]),
    (key::TIMEOUT, &[("30", "30s"), ("90s", "1m30s"), ("24h", "24h")], &[("0", "must be between 1s and 24h"), ("25h", "must be between 1s and 24h"), ("soon", "must be a duration such as 300s, 5m or 300")]),
    (key::RESPONSE_START_TIMEOUT, &[("10", "10s"), ("5m", "5m")], &[("6m", "must be between 1s and 5m"), ("0", "must be between 1s and 5m")]),
    (key::IDLE_TIMEOUT, &[("0", "0s"), ("30s", "30s")], &[("10m", "must be between 0s and 5m")]),
    (key::REQUEST_BODY_TIMEOUT, &[("0", "0s"), ("10s", "10s"), ("5m", "5m")], &[("6m", "must be between 0s and 5m")]),
    (key::QUEUE_DEPTH, &[("0", "0"), ("100000", "100000")], &[("100001", "must be between 0 and 100000")]),
    (key::ACTIVATION_TIMEOUT, &[("120", "2m"), ("30m", "30m")], &[("0s", "must be between 1s and 24h")]),
    (key::MAX_QUEUED, &[("1", "1"), ("20000", "20000")], &[("0", "must be between 1 and 1000000")]),
    (key::HOSTS, &[("chat.example.com", "chat.example.com"), ("a.example.com, b.example.com,a.example.com", "a.example.com,b.example.com"), ("", "")],
        &[("Chat.Example.com", "\"Chat.Example.com\" is not a lower-case DNS name"), ("a b", "is not a lower-case DNS name")]),
    (key::PROTOCOL, &[("http1", "http1"), ("h2c", "h2c")], &[("h2", "must be one of `http1`, `h2c`"), ("HTTP1", "must be one of")]),
    (key::PAUSED, &[("true", "true"), ("false", "false"), ("1", "true")], &[("yes", "must be `true` or `false`")]),
];

#[test]
fn every_key_is_covered_by_the_cases() {
    for doc in ANNOTATION_KEYS {
        assert!(CASES.iter().any(|(k, ..)| *k == doc.key), "no case for {}", doc.key);
    }
}

#[test]
fn every_key_accepts_its_valid_forms() {
    for (key, valid, _) in CASES {
        for (text, expected) in *valid {
            let config = resolve(&[(key, text)]).unwrap_or_else(|e| panic!("{key}={text:?}: {e}"));
            assert_eq!(effective(&config, key), *expected, "{key}={text:?}");
        }
    }
}

#[test]
fn every_key_rejects_its_invalid_forms_naming_key_value_and_range() {
    for (key, _, invalid) in CASES {
        for (text, problem) in *invalid {
            let errors =
                resolve(&[(key, text)]).expect_err(&format!("{key}={text:?} should be rejected")).errors;
            assert_eq!(errors.len(), 1, "{key}={text:?}: {errors:?}");
            let (error, line) = (&errors[0], errors[0].to_string());
            assert_eq!((error.key.as_str(), error.value.as_str()), (*key, *text));
            assert!(line.starts_with(&format!("{key}: {text:?}: ")), "{line}");
            assert!(error.problem.contains(problem), "{key}={text:?}: {:?} lacks {problem:?}", error.problem);
        }
    }
}

#[test]
fn the_issue_example_reads_as_documented() {
    assert_eq!(
        problems(&[(key::WINDOW, "3s")]),
        ["autoscaling.knative.dev/window: \"3s\": must be between 6s and 1h"]
    );
}

#[test]
fn every_invalid_key_is_reported_not_just_the_first() {
    let got = problems(&[
        (key::WINDOW, "3s"),
        (key::TARGET, "-5"),
        (key::METRIC, "cpu"),
        ("ebb.dev/timeout", "forever"),
        ("autoscaling.knative.dev/windw", "60s"),
        ("unrelated.example.com/anything", "goes"),
    ]);
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(
        got.iter().any(|l| l.contains("windw") && l.contains("did you mean autoscaling.knative.dev/window?"))
    );
    assert!(got.iter().all(|l| !l.contains("unrelated")));
}

#[test]
fn unknown_keys_under_our_prefixes_are_errors() {
    assert_eq!(problems(&[("ebb.dev/concurrency", "4")]).len(), 1);
    assert_eq!(
        problems(&[("ebb.dev/container-concurency", "4")]),
        ["ebb.dev/container-concurency: \"4\": unknown key; did you mean ebb.dev/container-concurrency?"]
    );
    assert_eq!(
        problems(&[("autoscaling.knative.dev/zzzz", "1")]),
        [
            "autoscaling.knative.dev/zzzz: \"1\": unknown key under autoscaling.knative.dev/ (a typo? the keys are \
             listed in the README's configuration tables)"
        ]
    );
    // Status annotations the autoscaler writes and other tools' annotations are not configuration.
    assert!(
        resolve(&[
            ("status.ebb.dev/desired", "3"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}")
        ])
        .is_ok()
    );
}

#[test]
fn aliases_work_alone_and_lose_to_the_kebab_key_with_a_warning() {
    let alone = resolve(&[("autoscaling.knative.dev/minScale", "2")]).unwrap();
    assert_eq!(alone.scaling.min_scale, 2);

    let both = resolve_service(
        &map(&[("autoscaling.knative.dev/minScale", "2"), (key::MIN_SCALE, "3")]),
        &GlobalConfig::default(),
    )
    .unwrap();
    assert_eq!(both.value.scaling.min_scale, 3);
    assert_eq!(both.warnings.len(), 1);
    assert_eq!(
        both.warnings[0].to_string(),
        "autoscaling.knative.dev/minScale: ignored (\"2\"): autoscaling.knative.dev/min-scale is also set and wins"
    );

    // An invalid alias names itself, as the user wrote it.
    assert_eq!(
        problems(&[("autoscaling.knative.dev/maxScale", "-1")]),
        ["autoscaling.knative.dev/maxScale: \"-1\": must be at least 0"]
    );
}

#[test]
fn target_resolution_follows_knative() {
    let t = |pairs: &[(&str, &str)]| {
        let c = resolve(pairs).unwrap();
        (c.scaling.total_target, c.scaling.target())
    };
    // CC > 0 replaces the default total.
    assert_eq!(t(&[(key::CONTAINER_CONCURRENCY, "10")]).0, 10.0);
    // The annotation replaces it, capped at CC.
    assert_eq!(t(&[(key::CONTAINER_CONCURRENCY, "10"), (key::TARGET, "50")]).0, 10.0);
    assert_eq!(t(&[(key::CONTAINER_CONCURRENCY, "10"), (key::TARGET, "4")]).0, 4.0);
    // rps: default 200 at a fixed 70 %, the annotation target 100 means an effective 70.
    let (total, target) = t(&[(key::METRIC, "rps")]);
    assert!((total, (target - 140.0).abs() < 1e-9) == (200.0, true));
    let (_, target) = t(&[(key::METRIC, "rps"), (key::TARGET, "100")]);
    assert!((target - 70.0).abs() < 1e-9);
    // Utilisation applies to rps when given; the target never drops below 0.01.
    let (_, target) =
        t(&[(key::METRIC, "rps"), (key::TARGET, "100"), (key::TARGET_UTILIZATION_PERCENTAGE, "50")]);
    assert!((target - 50.0).abs() < 1e-9);
    let (_, target) = t(&[(key::TARGET, "0.01"), (key::TARGET_UTILIZATION_PERCENTAGE, "1")]);
    assert_eq!(target, 0.01);
}

#[test]
fn cross_key_rules() {
    assert_eq!(
        problems(&[(key::MIN_SCALE, "5"), (key::MAX_SCALE, "3")]),
        ["autoscaling.knative.dev/min-scale: \"5\": must not exceed max-scale (3)"]
    );
    assert_eq!(
        problems(&[(key::ACTIVATION_SCALE, "4"), (key::MAX_SCALE, "3")]),
        ["autoscaling.knative.dev/activation-scale: \"4\": must not exceed max-scale (3)"]
    );
    assert_eq!(
        problems(&[(key::ACTIVATION_SCALE, "2"), (key::MIN_SCALE, "3")]),
        ["autoscaling.knative.dev/activation-scale: \"2\": must be at least min-scale (3)"]
    );
    assert!(resolve(&[(key::ACTIVATION_SCALE, "3"), (key::MIN_SCALE, "3")]).is_ok(), "min..max is inclusive");
    assert!(
        resolve(&[(key::MIN_SCALE, "3")]).is_ok(),
        "an unset activation-scale is no lift, not a conflict"
    );
    assert!(resolve(&[(key::MIN_SCALE, "5"), (key::MAX_SCALE, "0")]).is_ok(), "max 0 is unbounded");
    // The response-start and idle timeouts are bounded by the service's own timeout.
    assert!(resolve(&[(key::TIMEOUT, "20m"), (key::RESPONSE_START_TIMEOUT, "10m")]).is_ok());
    // The request-body timeout's default stays within a short timeout.
    let short = resolve(&[(key::TIMEOUT, "20s")]).unwrap().data_plane;
    assert_eq!(short.request_body_timeout, Some(Duration::from_secs(20)));
    // Queue depth defaults to 10 x CC.
    assert_eq!(resolve(&[(key::CONTAINER_CONCURRENCY, "4")]).unwrap().data_plane.queue_depth, 40);
}

#[test]
fn global_settings_shape_the_annotation_ranges() {
    let limited =
        GlobalConfig { max_scale_limit: 10, allow_zero_initial_scale: true, ..GlobalConfig::default() };
    let r = |pairs: &[(&str, &str)]| resolve_service(&map(pairs), &limited);
    let errors = r(&[(key::MAX_SCALE, "11")]).unwrap_err().errors;
    assert_eq!(errors[0].problem, "must be between 1 and 10 (max-scale-limit is 10)");
    assert!(r(&[(key::MAX_SCALE, "0")]).is_err(), "unbounded is not allowed under a limit");
    assert_eq!(r(&[]).unwrap().value.scaling.max_scale, 10, "the limit stands in for unbounded");
    assert_eq!(r(&[(key::INITIAL_SCALE, "0")]).unwrap().value.scaling.initial_scale, 0);
}

#[test]
fn class_hpa_and_paused_stop_autoscaling() {
    assert!(!resolve(&[(key::CLASS, "hpa.autoscaling.knative.dev")]).unwrap().is_autoscaled());
    assert!(!resolve(&[(key::PAUSED, "true")]).unwrap().is_autoscaled());
    assert_eq!(resolve(&[(key::PROTOCOL, "h2c")]).unwrap().data_plane.protocol, Some(Protocol::H2c));
}

fn known_key() -> impl Strategy<Value = String> {
    let keys: Vec<String> = ANNOTATION_KEYS
        .iter()
        .flat_map(|d| std::iter::once(d.key).chain(d.alias))
        .map(String::from)
        .collect();
    prop_oneof![proptest::sample::select(keys), "(autoscaling.knative.dev/|ebb.dev/)?[a-zA-Z-]{0,20}"]
}

proptest! {
    #[test]
    fn the_parser_never_panics(pairs in proptest::collection::btree_map(known_key(), "\\PC{0,24}", 0..12)) {
        match resolve_service(&pairs, &GlobalConfig::default()) {
            Ok(diagnosed) => prop_assert!(diagnosed.value.scaling.target() >= 0.01),
            Err(invalid) => prop_assert!(!invalid.errors.is_empty()),
        }
    }
}
