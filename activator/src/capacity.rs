//! How much of a service this activator may send at once (docs/architecture.md, "The request path").

/// Slots per pod when the service has no concurrency limit: large enough never to throttle, small enough that
/// the sum over many pods cannot overflow the breaker.
pub const UNLIMITED_PER_POD: u32 = 1 << 16;

/// This activator's share of a service's capacity: `max(1, floor(CC x ready / activators))`, or unlimited
/// (per ready pod) when CC is 0; zero when no pod is ready, so requests queue. The queue-proxy's breaker
/// stays the authority; this only keeps the activator from overrunning it.
pub fn service_capacity(container_concurrency: u32, ready_pods: usize, activators: usize) -> u32 {
    if ready_pods == 0 {
        return 0;
    }
    let ready = ready_pods.min(u32::MAX as usize / UNLIMITED_PER_POD as usize) as u32;
    if container_concurrency == 0 {
        return ready * UNLIMITED_PER_POD;
    }
    let total = u64::from(container_concurrency) * u64::from(ready) / activators.max(1) as u64;
    total.clamp(1, u64::from(u32::MAX)) as u32
}

/// The most requests this activator sends to one pod at once: its share of the pod's slots, at least 1.
pub fn pod_capacity(container_concurrency: u32, activators: usize) -> usize {
    match container_concurrency {
        0 => usize::MAX,
        cc => (cc as usize).div_ceil(activators.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_shared_among_activators_and_never_zero_with_a_ready_pod() {
        assert_eq!(service_capacity(10, 3, 1), 30);
        assert_eq!(service_capacity(10, 3, 4), 7, "floor(30 / 4)");
        assert_eq!(service_capacity(1, 1, 5), 1, "max(1, floor(1 / 5))");
        assert_eq!(service_capacity(10, 0, 1), 0, "no ready pod: everything queues");
        assert_eq!(service_capacity(0, 2, 3), 2 * UNLIMITED_PER_POD);
        assert_eq!(service_capacity(0, usize::MAX, 1), u32::MAX / UNLIMITED_PER_POD * UNLIMITED_PER_POD);
    }

    #[test]
    fn per_pod_share() {
        assert_eq!(pod_capacity(4, 1), 4);
        assert_eq!(pod_capacity(4, 3), 2);
        assert_eq!(pod_capacity(1, 3), 1);
        assert_eq!(pod_capacity(0, 2), usize::MAX);
    }
}
