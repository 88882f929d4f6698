//! The global `config-autoscaler` ConfigMap: defaults, every key's forms, relations, and merging under
//! annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use ebb_config::keys::{DefaultDoc, GLOBAL_KEYS, annotation, global as key};
use ebb_config::{GlobalConfig, Invalid, resolve_service};
use proptest::prelude::*;

fn parse(pairs: &[(&str, &str)]) -> Result<GlobalConfig, Invalid> {
    let data: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    GlobalConfig::from_data(&data).map(|d| d.value)
}

fn effective(config: &GlobalConfig, key: &str) -> String {
    config.effective_values().into_iter().find(|(k, _)| *k == key).map(|(_, v)| v).unwrap()
}

#[test]
fn empty_data_gives_the_documented_knative_defaults() {
    let config = parse(&[]).unwrap();
    assert_eq!(config, GlobalConfig::default());
    for doc in GLOBAL_KEYS {
        let DefaultDoc::Value(default) = doc.default else { panic!("{} has no literal default", doc.key) };
        assert_eq!(effective(&config, doc.key), default, "{}", doc.key);
    }
    assert_eq!(config.effective_values().len(), GLOBAL_KEYS.len());
}

type Case = (&'static str, &'static [(&'static str, &'static str)], &'static [(&'static str, &'static str)]);

#[rustfmt::skip]
const CASES: &[Case] = &[
    (key::POD_AUTOSCALER_CLASS, &[("hpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev")], &[("kpa", "must be one of")]),
    (key::ENABLE_SCALE_TO_ZERO, &[("false", "false"), ("TRUE", "true")], &[("no", "must be `true` or `false`")]),
    (key::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE, &[("100", "100"), ("0.5", "0.5")], &[("0", "must be greater than 0 and at most 100"), ("100.1", "at most 100")]),
    (key::CONTAINER_CONCURRENCY_TARGET_DEFAULT, &[("0.01", "0.01"), ("250", "250")], &[("0", "must be at least 0.01")]),
    (key::REQUESTS_PER_SECOND_TARGET_DEFAULT, &[("1", "1")], &[("0.001", "must be at least 0.01")]),
    (key::TARGET_BURST_CAPACITY, &[("-1", "-1"), ("0", "0")], &[("-5", "must be at least 0, or -1")]),
    (key::STABLE_WINDOW, &[("6s", "6s"), ("10m", "10m")], &[("5s", "must be between 6s and 1h"), ("60", "must be a duration")]),
    (key::PANIC_WINDOW_PERCENTAGE, &[("50", "50")], &[("0", "must be between 1 and 100")]),
    (key::PANIC_THRESHOLD_PERCENTAGE, &[("150", "150")], &[("50", "must be between 110 and 1000")]),
    (key::MAX_SCALE_UP_RATE, &[("1.5", "1.5")], &[("1", "must be greater than 1")]),
    (key::MAX_SCALE_DOWN_RATE, &[("4", "4")], &[("0.5", "must be greater than 1")]),
    (key::SCALE_TO_ZERO_GRACE_PERIOD, &[("1s", "1s"), ("2m", "2m")], &[("0s", "must be greater than 0s"), ("soon", "must be a duration")]),
    (key::SCALE_TO_ZERO_POD_RETENTION_PERIOD, &[("0s", "0s"), ("5m", "5m")], &[("5", "must be a duration")]),
    (key::SCALE_DOWN_DELAY, &[("30s", "30s")], &[("1.5s", "must be whole seconds")]),
    (key::ACTIVATOR_CAPACITY, &[("1", "1"), ("500", "500")], &[("0.5", "must be at least 1")]),
    (key::INITIAL_SCALE, &[("3", "3")], &[("0", "may be 0 only when allow-zero-initial-scale is true"), ("-1", "must be at least 0")]),
    (key::ALLOW_ZERO_INITIAL_SCALE, &[("true", "true")], &[("maybe", "must be `true` or `false`")]),
    (key::MIN_SCALE, &[("1", "1")], &[("x", "must be a whole number")]),
    (key::MAX_SCALE, &[("5", "5")], &[("-5", "must be at least 0")]),
    (key::MAX_SCALE_LIMIT, &[("100", "100")], &[("1e3", "must be a whole number")]),
    (key::SCALE_TARGET_KINDS, &[("statefulsets.apps,deployments.apps", "statefulsets.apps, deployments.apps")], &[("pods", "is not RESOURCE.GROUP"), (" , ", "names no kind")]),
    (key::SCALE_TARGET_INSTANCES, &[("", "")], &[("things.example.com", "is not RESOURCE.GROUP:"), ("deployments.apps: name-label=a, instance-label=b", "role groups")]),
];

#[test]
fn every_key_has_valid_and_invalid_cases_that_behave() {
    for doc in GLOBAL_KEYS {
        assert!(CASES.iter().any(|(k, ..)| *k == doc.key), "no case for {}", doc.key);
    }
    for (key, valid, invalid) in CASES {
        for (text, expected) in *valid {
            let config = parse(&[(key, text)]).unwrap_or_else(|e| panic!("{key}={text:?}: {e}"));
            assert_eq!(effective(&config, key), *expected, "{key}={text:?}");
        }
        for (text, problem) in *invalid {
            let errors = parse(&[(key, text)]).expect_err(&format!("{key}={text:?}")).errors;
            assert_eq!(errors.len(), 1, "{key}={text:?}: {errors:?}");
            assert_eq!(errors[0].key, *key);
            assert!(errors[0].problem.contains(problem), "{key}={text:?}: {:?}", errors[0].problem);
        }
    }
}

#[test]
fn instances_are_set_for_listed_kinds_only_and_leaderworkersets_have_them_built_in() {
    let kind = "things.example.com";
    let shape = format!("{kind}: name-label=example.com/name, instance-label=example.com/instance");
    let errors = parse(&[(key::SCALE_TARGET_INSTANCES, &shape)]).unwrap_err().errors;
    assert_eq!(errors[0].key, key::SCALE_TARGET_INSTANCES);
    assert!(errors[0].problem.contains("not in scale-target-kinds"), "{:?}", errors[0].problem);
    let kinds = format!("deployments.apps, {kind}, leaderworkersets.leaderworkerset.x-k8s.io");
    let config = parse(&[(key::SCALE_TARGET_KINDS, &kinds), (key::SCALE_TARGET_INSTANCES, &shape)]).unwrap();
    let instance_label =
        |k: &ebb_config::targets::TargetKind| config.instance_shape(k).map(|s| s.instance_label);
    assert_eq!(instance_label(&config.scale_target_kinds[0]), None);
    assert_eq!(instance_label(&config.scale_target_kinds[1]).as_deref(), Some("example.com/instance"));
    assert_eq!(
        instance_label(&config.scale_target_kinds[2]).as_deref(),
        Some("leaderworkerset.sigs.k8s.io/group-index")
    );
}

#[test]
fn relations_between_keys() {
    assert!(parse(&[(key::INITIAL_SCALE, "0"), (key::ALLOW_ZERO_INITIAL_SCALE, "true")]).is_ok());
    let errors = parse(&[(key::MIN_SCALE, "4"), (key::MAX_SCALE, "2")]).unwrap_err().errors;
    assert_eq!(errors[0].to_string(), "min-scale: \"4\": must not exceed max-scale (2)");
    let errors = parse(&[(key::MAX_SCALE, "20"), (key::MAX_SCALE_LIMIT, "10")]).unwrap_err().errors;
    assert_eq!(errors[0].to_string(), "max-scale: \"20\": must not exceed max-scale-limit (10)");
}

#[test]
fn unknown_keys_are_errors_but_underscore_keys_are_ignored() {
    let errors =
        parse(&[("stable-windows", "60s"), ("_example", "# a long comment block")]).unwrap_err().errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].to_string(), "stable-windows: \"60s\": unknown key; did you mean stable-window?");
}

#[test]
fn all_errors_are_listed_in_key_order() {
    let invalid =
        parse(&[(key::STABLE_WINDOW, "1s"), (key::MAX_SCALE_UP_RATE, "0"), ("bogus", "1")]).unwrap_err();
    let keys: Vec<&str> = invalid.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["bogus", "max-scale-up-rate", "stable-window"]);
    assert_eq!(
        invalid.errors[0].problem,
        "unknown config-autoscaler key (a typo? the keys are listed in the README's configuration tables)"
    );
    assert_eq!(invalid.to_string().lines().count(), 3);
}

#[test]
fn global_values_reach_services_and_annotations_override_them() {
    let global = parse(&[
        (key::STABLE_WINDOW, "2m"),
        (key::CONTAINER_CONCURRENCY_TARGET_DEFAULT, "10"),
        (key::ENABLE_SCALE_TO_ZERO, "false"),
        (key::SCALE_TO_ZERO_GRACE_PERIOD, "45s"),
        (key::MAX_SCALE_UP_RATE, "3"),
    ])
    .unwrap();
    let inherit = resolve_service(&BTreeMap::new(), &global).unwrap().value.scaling;
    assert_eq!(inherit.stable_window, Duration::from_secs(120));
    assert_eq!(inherit.total_target, 10.0);
    assert_eq!((inherit.enable_scale_to_zero, inherit.max_scale_up_rate), (false, 3.0));
    assert_eq!(inherit.scale_to_zero_grace_period, Duration::from_secs(45));

    let annotations = BTreeMap::from([(annotation::WINDOW.to_string(), "30s".to_string())]);
    let overridden = resolve_service(&annotations, &global).unwrap().value.scaling;
    assert_eq!(overridden.stable_window, Duration::from_secs(30));
    assert_eq!(overridden.panic_window(), Duration::from_secs(3));
}

#[test]
fn a_services_effective_configuration_includes_the_config_map_only_inputs() {
    let global = parse(&[
        (key::MAX_SCALE_UP_RATE, "3"),
        (key::MAX_SCALE_DOWN_RATE, "4"),
        (key::ENABLE_SCALE_TO_ZERO, "false"),
        (key::SCALE_TO_ZERO_GRACE_PERIOD, "45s"),
        (key::ACTIVATOR_CAPACITY, "250"),
    ])
    .unwrap();
    let config = resolve_service(&BTreeMap::new(), &global).unwrap().value;
    let values = config.config_map_values();
    assert_eq!(
        values.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
        [
            (key::MAX_SCALE_UP_RATE, "3"),
            (key::MAX_SCALE_DOWN_RATE, "4"),
            (key::ENABLE_SCALE_TO_ZERO, "false"),
            (key::SCALE_TO_ZERO_GRACE_PERIOD, "45s"),
            (key::ACTIVATOR_CAPACITY, "250"),
        ]
    );
    // Every ConfigMap key reaches a service somehow: as an annotation's fallback, as a ConfigMap-only input, or
    // by shaping another value (a target's default, a range), or as the controller's own setting (which
    // objects are services at all). A new key must pick one.
    let shapes_others = [
        key::CONTAINER_CONCURRENCY_TARGET_DEFAULT,
        key::REQUESTS_PER_SECOND_TARGET_DEFAULT,
        key::ALLOW_ZERO_INITIAL_SCALE,
        key::MAX_SCALE_LIMIT,
    ];
    let controller_wide = [key::SCALE_TARGET_KINDS, key::SCALE_TARGET_INSTANCES];
    for doc in GLOBAL_KEYS {
        let fallback = ebb_config::keys::ANNOTATION_KEYS.iter().any(|a| a.global == Some(doc.key));
        let listed = values.iter().any(|(k, _)| *k == doc.key);
        let kinds = [fallback, listed, shapes_others.contains(&doc.key), controller_wide.contains(&doc.key)];
        assert!(
            kinds.iter().filter(|b| **b).count() == 1,
            "{} must be exactly one of: an annotation's fallback, a config_map_values entry, shaping others, \
             the controller's own",
            doc.key
        );
    }
}

proptest! {
    #[test]
    fn the_parser_never_panics(data in proptest::collection::btree_map(
        prop_oneof![proptest::sample::select(GLOBAL_KEYS.iter().map(|d| d.key.to_string()).collect::<Vec<_>>()), "[a-z_-]{0,16}"],
        "\\PC{0,16}", 0..10,
    )) {
        let _ = GlobalConfig::from_data(&data);
    }
}
