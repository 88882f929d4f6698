//! Autoscaling keys put where ebb does not read them: on the pod template instead of the Deployment. A common
//! slip for Knative users (a Knative Service takes them on its revision template); `ebb check` warns about it
//! and the autoscaler reports it as an Event.

use std::collections::BTreeMap;

use crate::names::{EBB_PREFIX, KNATIVE_PREFIX};

/// The autoscaling keys set on the pod template but not on the Deployment, each with a sentence saying so.
pub fn template_only_keys(
    deployment: &BTreeMap<String, String>,
    template: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    template
        .keys()
        .filter(|key| key.starts_with(KNATIVE_PREFIX) || key.starts_with(EBB_PREFIX))
        .filter(|key| !deployment.contains_key(*key))
        .map(|key| {
            let message = format!(
                "{key} is set on the pod template only, where it has no effect: ebb reads the Deployment's \
                 metadata.annotations; move it there"
            );
            (key.clone(), message)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn only_our_keys_missing_from_the_deployment_are_reported() {
        let deployment = map(&[("autoscaling.knative.dev/target", "5")]);
        let template = map(&[
            ("autoscaling.knative.dev/target", "5"),
            ("autoscaling.knative.dev/window", "30s"),
            ("ebb.dev/max-queued", "10"),
            ("prometheus.io/scrape", "true"),
            ("status.ebb.dev/desired", "1"),
        ]);
        let keys: Vec<String> =
            template_only_keys(&deployment, &template).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["autoscaling.knative.dev/window", "ebb.dev/max-queued"]);
        let (_, message) = &template_only_keys(&deployment, &template)[0];
        assert!(message.contains("move it there"), "{message}");
    }
}
