//! A cold start as the activator sees it, phase by phase: the first request for a service with no ready pod
//! begins it, the first pod object of the service marks the scale-up done (the autoscaler decided, its patch
//! was accepted, the Deployment controller created a pod), and the first pod that answers the activator's
//! probe ends it. Every request that waited through it is answered with the phases it lived through in a
//! `Server-Timing` header, and the phases feed the `ebb_activator_cold_start_*` histograms.

use std::fmt::Write;
use std::time::Instant;

use http::HeaderValue;

/// The times one cold start passed each boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// The first request arrived with no ready pod.
    pub began: Instant,
    /// The first pod of the service was seen (in any state but terminating).
    pub pod_seen: Option<Instant>,
    /// The first pod answered its probe.
    pub ready: Option<Instant>,
}

impl Timeline {
    /// A cold start beginning `at`.
    pub fn begin(at: Instant) -> Self {
        Self { began: at, pod_seen: None, ready: None }
    }

    /// Whether the service has a ready pod again.
    pub fn is_over(&self) -> bool {
        self.ready.is_some()
    }

    /// The phases a request that arrived at `arrived` and got its response headers at `answered` lived
    /// through. Boundaries before its arrival count as its arrival, so the phases always add up to its wait.
    pub fn phases(&self, arrived: Instant, answered: Instant) -> Phases {
        // A pod may answer its probe before its object is seen (a lagging watch): then both came at once.
        let pod_seen = self.pod_seen.or(self.ready).unwrap_or(answered).clamp(arrived, answered);
        let ready = self.ready.unwrap_or(answered).clamp(pod_seen, answered);
        Phases { scale: pod_seen - arrived, pod_start: ready - pod_seen, forward: answered - ready }
    }
}

/// One request's wait, split by cold-start phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Until the service's first pod existed: the autoscaler's decision, its scale patch, the pod's creation.
    pub scale: std::time::Duration,
    /// Until that pod answered the probe: scheduling, image pull, container start, model load.
    pub pod_start: std::time::Duration,
    /// Until the pod's response headers came back: the forward and the model's time to first byte.
    pub forward: std::time::Duration,
}

impl Phases {
    /// The whole wait.
    pub fn total(&self) -> std::time::Duration {
        self.scale + self.pod_start + self.forward
    }

    /// The `Server-Timing` header value (milliseconds, as the header's `dur` wants).
    pub fn server_timing(&self) -> HeaderValue {
        let mut value = String::with_capacity(160);
        for (name, what, duration) in [
            ("ebb-scale", "scale-up until a pod exists", self.scale),
            ("ebb-pod-start", "pod start until ready", self.pod_start),
            ("ebb-forward", "ready until first byte", self.forward),
            ("ebb-cold-start", "total wait", self.total()),
        ] {
            let separator = if value.is_empty() { "" } else { ", " };
            let ms = duration.as_secs_f64() * 1000.0;
            let _ = write!(value, "{separator}{name};dur={ms:.3};desc=\"{what}\"");
        }
        HeaderValue::try_from(value).expect("the header is plain ASCII")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_request_that_waited_from_the_start_sees_every_phase() {
        let t0 = Instant::now();
        let timeline = Timeline { began: t0, pod_seen: Some(t0 + ms(30)), ready: Some(t0 + ms(1030)) };
        let phases = timeline.phases(t0, t0 + ms(1045));
        assert_eq!(phases, Phases { scale: ms(30), pod_start: ms(1000), forward: ms(15) });
        assert_eq!(phases.total(), ms(1045));
    }

    #[test]
    fn a_later_request_counts_only_what_it_waited_through() {
        let t0 = Instant::now();
        let timeline = Timeline { began: t0, pod_seen: Some(t0 + ms(30)), ready: Some(t0 + ms(1030)) };
        let phases = timeline.phases(t0 + ms(500), t0 + ms(1040));
        assert_eq!(phases, Phases { scale: ms(0), pod_start: ms(530), forward: ms(10) });
    }

    #[test]
    fn missing_boundaries_fall_back_to_the_next_one() {
        // A pod answered before the activator saw its object (a watch lagging behind the probe).
        let t0 = Instant::now();
        let timeline = Timeline { began: t0, pod_seen: None, ready: Some(t0 + ms(40)) };
        let phases = timeline.phases(t0, t0 + ms(50));
        assert_eq!(phases, Phases { scale: ms(40), pod_start: ms(0), forward: ms(10) });
        let waiting = Timeline::begin(t0).phases(t0, t0 + ms(50));
        assert_eq!(waiting, Phases { scale: ms(50), pod_start: ms(0), forward: ms(0) });
    }

    #[test]
    fn the_header_names_each_phase_in_milliseconds() {
        let phases = Phases { scale: ms(30), pod_start: ms(1000), forward: Duration::from_micros(1500) };
        let header = phases.server_timing();
        let text = header.to_str().unwrap();
        assert!(text.starts_with("ebb-scale;dur=30.000;desc=\"scale-up until a pod exists\", "), "{text}");
        assert!(text.contains("ebb-pod-start;dur=1000.000;"), "{text}");
        assert!(text.contains("ebb-forward;dur=1.500;"), "{text}");
        assert!(text.contains("ebb-cold-start;dur=1031.500;"), "{text}");
    }
}
