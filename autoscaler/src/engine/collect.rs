//! One second of a service's load from its pods' and activators' stats: a sample of the ready pods is scraped
//! (Knative's sample size, pods older than the stable window first), the sum of what answered is scaled up to all
//! ready pods, and the activators' own load is added, without counting twice what went through both. Pure
//! functions: the engine does the I/O.
//!
//! Counting twice: a request the activator forwarded is inside a pod, and the pod counts it. For concurrency an
//! activator therefore adds only what it holds waiting for a slot (its `average_queued`), which no pod counts
//! yet; all of it while no pod is counted. Subtracting the forwarded part from the pods instead (Knative's
//! way, and ebb's before) needs the activator's second and the pods' to be exactly the same stretch: they are
//! the same wall-clock second now, but each process marks its own 100 ms steps, and when a service came up
//! from zero with their seconds a fraction apart, the pod's second already had the requests directly while
//! the activators' second still had them forwarded, and the sum read 18.5 of 10 concurrent.
//!
//! Request rates count arrivals: an activator's arrivals count whole, and the pods' marked arrivals (the
//! requests activators forwarded) come off, as far as the activators account for them: their arrivals in the
//! second, or the requests they forwarded in it (an activator's `proxied_request_count`), whichever is more.
//! Requests held through a cold start arrive at the activator in one second and at the pod in a later one;
//! bounded by that second's arrivals alone, a 5 s cold start at 10 requests a second read 50 the second the
//! pod came up.
//!
//! Trust: a pod reports apart the part of its load marked `Ebb-Proxied: activator`. That mark is a request
//! header, which any client on the pod network can send, so it is not taken on trust (Knative subtracts it
//! whole, and forged marks hide load from its autoscaler). Concurrency does not use it; rates take off at most
//! what the activators account for, so marked load that no activator accounts for is a client's, and counts.
//! A version-1 activator, which does not say what it holds, is counted like rates for concurrency too.

use std::time::Duration;

use ebb_config::Metric;
use ebb_config::wire::PodStat;

/// Knative's sample size: every pod up to 3, then `ceil(N x X / (N + X - 1))` with `X = 1.96^2 x 100 / 25`
/// (95% confidence, 5% error): 10 pods -> 7, 100 -> 14, 1000 -> 16.
pub fn sample_size(ready: usize) -> usize {
    if ready <= 3 {
        return ready;
    }
    const X: f64 = 1.96 * 1.96 * 100.0 / 25.0;
    let n = ready as f64;
    ((n * X / (n + X - 1.0)).ceil() as usize).min(ready)
}

/// A pod the scraper may sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<T> {
    /// What identifies the pod to the caller.
    pub pod: T,
    /// How long the pod has been running.
    pub age: Duration,
}

/// Picks the pods to scrape: pods older than the stable window first (they carry a settled load), oldest
/// first within each group, up to [`sample_size`] of them.
pub fn choose_sample<T>(mut ready: Vec<Candidate<T>>, stable_window: Duration) -> Vec<T> {
    let n = sample_size(ready.len());
    ready.sort_by(|a, b| {
        let old = |c: &Candidate<T>| c.age >= stable_window;
        old(b).cmp(&old(a)).then(b.age.cmp(&a.age))
    });
    ready.into_iter().take(n).map(|c| c.pod).collect()
}

/// The value of one pod's stat for `metric`, and the part of it marked as the activator's.
pub fn pod_values(metric: Metric, stat: &PodStat) -> (f64, f64) {
    let (all, marked) = match metric {
        Metric::Concurrency => (stat.average_concurrency, stat.average_proxied_concurrency),
        Metric::Rps => (stat.request_count, stat.proxied_request_count),
    };
    let all = all.max(0.0);
    (all, marked.clamp(0.0, all))
}

/// The value of an activator's stat for `metric` (all of it is the activator's own load).
pub fn activator_value(metric: Metric, stat: &PodStat) -> f64 {
    match metric {
        Metric::Concurrency => stat.average_concurrency,
        Metric::Rps => stat.request_count,
    }
    .max(0.0)
}

/// The ready pods the answered ones' load is scaled up to: the answered ones and the ready pods the sample
/// left out. A sampled pod that did not answer is left out of the second rather than taken to be as loaded
/// as those that did: one that has just become ready (a new pod, an instance just whole again) and does not
/// answer yet carries next to nothing, and counting it at the others' load read twice the load after a
/// whole-instance restart, which panic turned into an extra instance. With no answer at all, every ready
/// pod is counted (and the second is no data).
pub fn pods_to_count(ready: usize, sampled: usize, answered: usize) -> usize {
    if answered == 0 { ready } else { answered + ready.saturating_sub(sampled) }
}

/// One second's service total, or `None` when there is nothing to go on ("no data": never scale on missing
/// data). `ready` is the number of pods the answers stand for ([`pods_to_count`]), `answered` the stats of
/// the sampled pods that answered (every one of them is used, unlike Knative, which drops the second when a
/// sample falls short), `activators` the activators' stats for the second. How the activators' load is
/// added without counting twice what went through both: see the module's notes.
pub fn service_total(
    metric: Metric,
    ready: usize,
    answered: &[PodStat],
    activators: &[PodStat],
) -> Option<f64> {
    if ready > 0 && answered.is_empty() {
        // Pods are serving but none could be read: the activator's share alone would under-count.
        return None;
    }
    if answered.is_empty() && activators.is_empty() {
        return None;
    }
    let (pods, marked) = if answered.is_empty() {
        (0.0, 0.0)
    } else {
        let (all, marked) = answered
            .iter()
            .map(|s| pod_values(metric, s))
            .fold((0.0, 0.0), |(all, marked), (a, m)| (all + a, marked + m));
        let scale = ready.max(answered.len()) as f64 / answered.len() as f64;
        (all * scale, marked * scale)
    };
    // What the activators add, and how much of the pods' marked load they account for (see the module's notes).
    let (mut added, mut accounted) = (0.0, 0.0);
    for stat in activators {
        let all = activator_value(metric, stat);
        match (metric, stat.average_queued) {
            (Metric::Concurrency, Some(_)) if answered.is_empty() => added += all,
            (Metric::Concurrency, Some(queued)) => added += queued.clamp(0.0, all),
            (Metric::Concurrency, None) => (added, accounted) = (added + all, accounted + all),
            (Metric::Rps, _) => {
                added += all;
                accounted += all.max(stat.proxied_request_count.max(0.0));
            }
        }
    }
    Some(pods - marked.min(accounted) + added)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An activator's stat: `concurrency` inside it, `queued` of them waiting for a slot.
    fn activator(concurrency: f64, queued: f64) -> PodStat {
        PodStat { average_queued: Some(queued), ..stat(concurrency, 0.0) }
    }

    fn stat(concurrency: f64, proxied: f64) -> PodStat {
        PodStat {
            pod: "p".into(),
            average_concurrency: concurrency,
            average_proxied_concurrency: proxied,
            request_count: concurrency * 10.0,
            proxied_request_count: proxied * 10.0,
            process_uptime_secs: 1.0,
            timestamp_ms: 0,
            average_queued: Some(0.0),
        }
    }

    #[test]
    fn a_sampled_pod_that_did_not_answer_is_not_counted_at_the_others_load() {
        // 2 ready, both sampled, 1 answered (the other just became ready): the one that answered only.
        assert_eq!(pods_to_count(2, 2, 1), 1);
        // 10 ready, 7 sampled, 6 answered: the 6, and the 3 the sample left out.
        assert_eq!(pods_to_count(10, 7, 6), 9);
        assert_eq!(pods_to_count(3, 3, 3), 3);
        assert_eq!(pods_to_count(2, 2, 0), 2, "no answer: every ready pod, so the second is no data");
        let total = |ready, sampled, answered: &[PodStat]| {
            service_total(Metric::Concurrency, pods_to_count(ready, sampled, answered.len()), answered, &[])
        };
        assert_eq!(total(2, 2, &[stat(8.0, 0.0)]), Some(8.0), "not 16");
        assert_eq!(total(2, 2, &[]), None);
    }

    #[test]
    fn sample_sizes_match_knative() {
        assert_eq!([0, 1, 2, 3].map(sample_size), [0, 1, 2, 3]);
        assert_eq!(sample_size(10), 7);
        assert_eq!(sample_size(100), 14);
        assert_eq!(sample_size(1000), 16);
    }

    #[test]
    fn old_pods_are_sampled_first() {
        let window = Duration::from_secs(60);
        let pods = (0..10u64)
            .map(|i| Candidate { pod: i, age: Duration::from_secs(if i % 2 == 0 { 100 + i } else { i }) })
            .collect();
        let sample = choose_sample(pods, window);
        assert_eq!(sample.len(), 7);
        assert_eq!(&sample[..5], &[8, 6, 4, 2, 0]);
    }

    #[test]
    fn totals_scale_the_sample_and_add_activators_without_counting_twice() {
        // 10 ready, 5 answered with 2 each of which 1 came through the activator: 20 at the pods, 10 of them
        // the activator's; the activator reports those 10 and 2 more it holds: 20 + 2.
        let answered = vec![stat(2.0, 1.0); 5];
        let total = service_total(Metric::Concurrency, 10, &answered, &[activator(12.0, 2.0)]).unwrap();
        assert!((total - 22.0).abs() < 1e-9, "{total}");
        // Rates: 200 arrivals a second at the pods, 100 of them forwarded, 120 at the activator: 200 - 100 + 120.
        let rps = service_total(Metric::Rps, 10, &answered, &[activator(12.0, 2.0)]).unwrap();
        assert!((rps - 220.0).abs() < 1e-9, "{rps}");
        // A version-1 activator does not say what it holds: its forwarded part comes off the pods' marked load.
        let v1 = PodStat { average_queued: None, ..stat(12.0, 0.0) };
        let total = service_total(Metric::Concurrency, 10, &answered, &[v1]).unwrap();
        assert!((total - 22.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn an_activator_leaving_the_path_is_not_counted_twice() {
        // Read on a service just up from zero (the k8s instances test): the pod's second had most requests
        // directly (9.57, 0.79 of it forwarded); the two activators' seconds, ending earlier, still forwarded
        // 9.73 and held none. 9.57 - 0.79 + 9.73 read 18.5 for 10 clients.
        let pod = stat(9.57, 0.79);
        let activators = [activator(5.06, 0.0), activator(4.67, 0.0)];
        let total = service_total(Metric::Concurrency, 1, &[pod], &activators).unwrap();
        assert!((total - 9.57).abs() < 1e-9, "{total}");
        // With no pod counted yet, all an activator has counts, forwarded or not.
        let total = service_total(Metric::Concurrency, 0, &[], &[activator(10.0, 3.0)]).unwrap();
        assert!((total - 10.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn requests_held_through_a_cold_start_count_once() {
        // 10 requests a second held for a 5 s cold start: when the pod comes up it gets the 50 held ones and
        // that second's 10, all marked; the activator counted 10 arrivals and forwarded 60. Demand: 10.
        let pod = PodStat { request_count: 60.0, proxied_request_count: 60.0, ..stat(1.0, 1.0) };
        let activator = PodStat { request_count: 10.0, proxied_request_count: 60.0, ..activator(0.0, 0.0) };
        assert_eq!(
            service_total(Metric::Rps, 1, std::slice::from_ref(&pod), std::slice::from_ref(&activator)),
            Some(10.0)
        );
        // An activator that does not say what it forwarded (before it did): its arrivals bound what comes off.
        let silent = PodStat { proxied_request_count: 0.0, ..activator };
        assert_eq!(service_total(Metric::Rps, 1, &[pod], &[silent]), Some(60.0));
    }

    #[test]
    fn marked_load_counts() {
        // Six clients send `Ebb-Proxied: activator` straight to a pod: the pod reports 6, all of it marked, and
        // no activator reports anything. Once, the autoscaler saw 0 and scaled the busy service to zero.
        let forged = vec![stat(6.0, 6.0)];
        assert_eq!(service_total(Metric::Concurrency, 1, &forged, &[]), Some(6.0));
        assert_eq!(service_total(Metric::Rps, 1, &forged, &[]), Some(60.0));
        // The activator really forwards 2 of them and holds 1 more: the pod's 6 and the 1 held.
        let total = service_total(Metric::Concurrency, 1, &forged, &[activator(3.0, 1.0)]).unwrap();
        assert!((total - 7.0).abs() < 1e-9, "{total}");
        // Rates: only the activator's 30 arrivals come off the pod's 60 marked ones, and are added back.
        let rps = service_total(Metric::Rps, 1, &forged, &[activator(3.0, 1.0)]).unwrap();
        assert!((rps - 60.0).abs() < 1e-9, "{rps}");
    }

    #[test]
    fn a_mark_larger_than_the_load_is_clamped() {
        let lying =
            PodStat { average_proxied_concurrency: 50.0, proxied_request_count: 500.0, ..stat(2.0, 0.0) };
        assert_eq!(pod_values(Metric::Concurrency, &lying), (2.0, 2.0));
        assert_eq!(pod_values(Metric::Rps, &lying), (20.0, 20.0));
        assert_eq!(service_total(Metric::Rps, 1, &[lying], &[activator(10.0, 0.0)]), Some(100.0));
        let queued_beyond = activator(1.0, 5.0);
        assert_eq!(service_total(Metric::Concurrency, 1, &[stat(2.0, 0.0)], &[queued_beyond]), Some(3.0));
    }

    #[test]
    fn no_data_is_not_zero() {
        assert_eq!(service_total(Metric::Concurrency, 0, &[], &[]), None);
        assert_eq!(service_total(Metric::Concurrency, 2, &[], &[stat(1.0, 0.0)]), None);
        assert_eq!(service_total(Metric::Concurrency, 0, &[], &[stat(1.0, 0.0)]), Some(1.0));
        assert_eq!(service_total(Metric::Concurrency, 1, &[stat(0.0, 0.0)], &[]), Some(0.0));
    }
}
