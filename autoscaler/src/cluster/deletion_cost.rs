//! Before replicas are lowered, the pods with the least work in flight are marked cheapest to delete with
//! `controller.kubernetes.io/pod-deletion-cost`, so the ReplicaSet controller removes idle pods rather than
//! busy ones (honoured from Kubernetes 1.22; older servers ignore the annotation).

/// The deletion cost of a pod with `in_flight` average concurrency: in hundredths of a request, so that
/// fractional loads still order; a pod whose load is unknown costs 0 (nothing known to lose).
pub fn cost(in_flight: Option<f64>) -> i32 {
    in_flight.map_or(0, |c| (c.max(0.0) * 100.0).round().min(f64::from(i32::MAX)) as i32)
}

/// The pods whose annotation must change: `(pod, cost)` for each pod whose current annotation differs.
/// Each pod comes with its current annotation's value, if any.
pub fn changes<'a>(
    pods: impl IntoIterator<Item = (&'a str, Option<&'a str>, Option<f64>)>,
) -> Vec<(String, i32)> {
    pods.into_iter()
        .filter_map(|(name, current, in_flight)| {
            let cost = cost(in_flight);
            let current = current.and_then(|v| v.parse::<i32>().ok());
            (current != Some(cost)).then(|| (name.to_owned(), cost))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_pods_are_cheapest_and_unchanged_ones_are_not_rewritten() {
        assert!(cost(Some(0.0)) < cost(Some(0.4)));
        assert!(cost(Some(0.4)) < cost(Some(3.0)));
        assert_eq!(cost(None), 0);
        let out = changes([("busy", Some("300"), Some(3.0)), ("idle", None, Some(0.0))]);
        assert_eq!(out, vec![("idle".to_owned(), 0)]);
    }
}
