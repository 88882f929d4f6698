//! Where the simulated pods live: pod `i` of the whole fleet is `127.1.0.0 + i` (the whole of 127/8 is local
//! on Linux, so one listener on the unspecified address answers for all of them and learns the pod from the
//! address the scraper dialled), and service `s` owns pods `s x M .. (s + 1) x M`.

use std::net::Ipv4Addr;

/// The first pod's address.
const BASE: u32 = u32::from_be_bytes([127, 1, 0, 0]);
/// Pods that fit between 127.1.0.0 and 127.255.255.255.
pub const MAX_PODS: usize = (u32::from_be_bytes([127, 255, 255, 255]) - BASE) as usize;

/// The fleet's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    /// Services.
    pub services: usize,
    /// Pods per service.
    pub pods: usize,
}

impl Fleet {
    /// Every pod in the fleet.
    pub fn total_pods(&self) -> usize {
        self.services * self.pods
    }

    /// The address of pod `pod` (0-based) of service `service`.
    pub fn address(&self, service: usize, pod: usize) -> Ipv4Addr {
        Ipv4Addr::from(BASE + (service * self.pods + pod) as u32)
    }

    /// The service and pod at `ip`, if it is one of the fleet's.
    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<(usize, usize)> {
        let index = u32::from(ip).checked_sub(BASE)? as usize;
        (index < self.total_pods()).then(|| (index / self.pods, index % self.pods))
    }
}

/// Service `i`'s name (a DNS label, sorted in creation order).
pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Pod `p` of service `i`'s name.
pub fn pod_name(i: usize, p: usize) -> String {
    format!("svc-{i:05}-{p}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_pods_round_trip() {
        let fleet = Fleet { services: 10_000, pods: 3 };
        assert!(fleet.total_pods() < MAX_PODS);
        for (s, p) in [(0, 0), (0, 2), (9_999, 2), (4_321, 1)] {
            assert_eq!(fleet.pod_at(fleet.address(s, p)), Some((s, p)));
        }
        assert_eq!(fleet.pod_at(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(fleet.pod_at(fleet.address(10_000, 0)), None);
    }
}
