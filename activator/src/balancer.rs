//! Choosing a pod for a request: least-loaded with a free slot when the service has a concurrency limit
//! (Knative's first-available packs low pods and balances small limits poorly), power of two choices on
//! in-flight counts when it has none.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::uri::Authority;

/// A pod the activator may send to, with this activator's in-flight count for it.
#[derive(Debug)]
pub struct Endpoint {
    /// The pod's name.
    pub name: Arc<str>,
    /// The queue-proxy's data address.
    pub authority: Authority,
    in_flight: AtomicUsize,
}

impl Endpoint {
    /// An idle endpoint.
    pub fn new(name: Arc<str>, authority: Authority) -> Self {
        Self { name, authority, in_flight: AtomicUsize::new(0) }
    }

    /// Requests this activator has in flight to the pod.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request's claim on an endpoint; dropping it (when the response body ends) releases it.
#[derive(Debug)]
pub struct Lease {
    endpoint: Arc<Endpoint>,
}

impl Lease {
    /// The endpoint leased.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Picks an endpoint among `endpoints` (skipping those in `exclude`, pods that already failed this request).
/// With a per-pod limit, the least-loaded pod below it; if every pod is at its limit (the pod set changed under
/// a request that already holds a service slot), the least-loaded pod anyway: the queue-proxy's breaker is the
/// authority. Without a limit, the less loaded of two pods picked at random. `seed` supplies the randomness.
pub fn pick(endpoints: &[Arc<Endpoint>], per_pod: usize, exclude: &[Arc<str>], seed: u64) -> Option<Lease> {
    let usable = || endpoints.iter().filter(|e| !exclude.contains(&e.name));
    let count = usable().count();
    let chosen = match count {
        0 => return None,
        1 => usable().next(),
        _ if per_pod == usize::MAX => {
            let first = (seed % count as u64) as usize;
            let mut second = ((seed >> 32) % (count as u64 - 1)) as usize;
            if second >= first {
                second += 1;
            }
            let (a, b) = (usable().nth(first), usable().nth(second));
            match (a, b) {
                (Some(a), Some(b)) => Some(if b.in_flight() < a.in_flight() { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        // One pass, no allocation: the least-loaded pod below the limit, else the least-loaded of all. The scan
        // starts at a pod chosen by `seed`, so ties rotate and equal pods share the load.
        _ => {
            let start = (seed % count as u64) as usize;
            let mut below: Option<(&Arc<Endpoint>, usize)> = None;
            let mut any: Option<(&Arc<Endpoint>, usize)> = None;
            for endpoint in usable().skip(start).chain(usable().take(start)) {
                let load = endpoint.in_flight();
                if any.is_none_or(|(_, best)| load < best) {
                    any = Some((endpoint, load));
                }
                if load < per_pod && below.is_none_or(|(_, best)| load < best) {
                    below = Some((endpoint, load));
                }
            }
            below.or(any).map(|(endpoint, _)| endpoint)
        }
    }?;
    chosen.in_flight.fetch_add(1, Ordering::AcqRel);
    Some(Lease { endpoint: chosen.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    format!("pod-{i}").into(),
                    format!("127.0.0.{}:8012", i + 1).parse().unwrap(),
                ))
            })
            .collect()
    }

    #[test]
    fn two_pods_with_cc_1_share_load_evenly() {
        let pods = endpoints(2);
        let a = pick(&pods, 1, &[], 0).unwrap();
        let b = pick(&pods, 1, &[], 0).unwrap();
        assert_ne!(a.endpoint().name, b.endpoint().name, "the second request goes to the free pod");
        drop(a);
        let c = pick(&pods, 1, &[], 7).unwrap();
        assert_eq!(c.endpoint().name, pods[0].name, "the freed pod is the only one below its limit");
    }

    #[test]
    fn least_loaded_below_the_limit() {
        let pods = endpoints(3);
        let _held: Vec<Lease> = (0..5).map(|_| pick(&pods, 4, &[], 1).unwrap()).collect();
        let loads: Vec<usize> = pods.iter().map(|p| p.in_flight()).collect();
        assert_eq!(loads.iter().sum::<usize>(), 5);
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1, "{loads:?}");
    }

    #[test]
    fn all_pods_full_still_yields_the_least_loaded() {
        let pods = endpoints(2);
        let _a = pick(&pods, 1, &[], 0).unwrap();
        let _b = pick(&pods, 1, &[], 0).unwrap();
        let _c = pick(&pods, 1, &[], 0).unwrap();
        assert_eq!(pods.iter().map(|p| p.in_flight()).sum::<usize>(), 3);
    }

    #[test]
    fn excluded_pods_are_skipped_and_none_left_is_none() {
        let pods = endpoints(2);
        let lease = pick(&pods, 1, &[pods[0].name.clone()], 0).unwrap();
        assert_eq!(lease.endpoint().name, pods[1].name);
        assert!(pick(&pods, 1, &[pods[0].name.clone(), pods[1].name.clone()], 0).is_none());
        assert!(pick(&[], 1, &[], 0).is_none());
    }

    #[test]
    fn power_of_two_choices_prefers_the_less_loaded_of_two() {
        let pods = endpoints(2);
        let _busy: Vec<Lease> = (0..3).map(|_| pick(&pods[..1], usize::MAX, &[], 0).unwrap()).collect();
        for seed in [0, 1, 1 << 32, u64::MAX] {
            let lease = pick(&pods, usize::MAX, &[], seed).unwrap();
            assert_eq!(lease.endpoint().name, pods[1].name, "seed {seed}");
        }
    }

    #[test]
    fn leases_release_on_drop() {
        let pods = endpoints(1);
        let lease = pick(&pods, usize::MAX, &[], 0).unwrap();
        assert_eq!(pods[0].in_flight(), 1);
        drop(lease);
        assert_eq!(pods[0].in_flight(), 0);
    }
}
