//! Which autoscaler replicas are alive, for spreading buckets evenly: each replica beats in one roster Lease
//! (an annotation of its own, `members.ebb.dev/IDENTITY: BUCKETS/BEAT`, rewritten every beat), and a replica
//! counts those whose annotation changed within the lease duration, by its own clock (as [`super::leader`]
//! judges expiry, so clock skew between nodes does not matter). One Lease with a get/update loop needs no
//! permission beyond the leader election's (no list of Leases).
//!
//! Each beat carries the replica's bucket count (1 without buckets), because replicas that count buckets
//! differently name different Leases and would act on the same services: while a live replica counts
//! otherwise, a replica takes no bucket (or, without buckets, no leadership) it does not hold already, so the
//! replicas of the old count keep acting until they are gone (a rollout that changes `--buckets`).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
// tokio's clock, so that tests with paused time see members expire.
use tokio::time::Instant;

/// The annotations' prefix: `members.ebb.dev/IDENTITY`.
const PREFIX: &str = "members.ebb.dev/";
/// An annotation unchanged for this many lease durations is removed (its replica is long gone).
const FORGET_AFTER: u32 = 6;

/// This replica's view of the roster.
#[derive(Debug)]
pub(crate) struct Members {
    roster: String,
    identity: String,
    lease_duration: Duration,
    /// This replica's bucket count, announced with each beat.
    buckets: u32,
    /// Each other member's last annotation value and when this replica saw it change.
    seen: HashMap<String, (String, Instant)>,
    beats: u64,
}

impl Members {
    /// The roster Lease `roster`, beaten in as `identity` with `buckets`; a member silent for `lease_duration`
    /// is gone.
    pub fn new(roster: String, identity: String, lease_duration: Duration, buckets: u32) -> Self {
        Self { roster, identity, lease_duration, buckets, seen: HashMap::new(), beats: 0 }
    }

    /// Replicas alive now that count buckets as this one does (the others take no bucket), this one included.
    pub fn live(&self) -> usize {
        let alike = |value: &String| count_of(value) == Some(self.buckets);
        1 + self
            .seen
            .values()
            .filter(|(value, at)| at.elapsed() < self.lease_duration && alike(value))
            .count()
    }

    /// The live replicas that announce another bucket count (or none readable), by identity.
    pub fn counting_otherwise(&self) -> Vec<String> {
        let mut others: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, (value, at))| {
                at.elapsed() < self.lease_duration && count_of(value) != Some(self.buckets)
            })
            .map(|(member, _)| member.clone())
            .collect();
        others.sort();
        others
    }

    /// Reads the roster, notes the others' beats and writes this replica's (a conflict is retried once on a
    /// fresh read; a lost beat is only late, the next one counts).
    pub async fn beat(&mut self, api: &Api<Lease>) -> Result<(), kube::Error> {
        self.beats += 1;
        for _attempt in 0..2 {
            let Some(mut lease) = api.get_opt(&self.roster).await? else {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.roster.clone()),
                        annotations: Some([(self.key(), self.value())].into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec::default()),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(err) => return Err(err),
                }
            };
            let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
            self.observe(annotations);
            let stale = self.stale();
            annotations.retain(|key, _| !stale.iter().any(|s| key.strip_prefix(PREFIX) == Some(s.as_str())));
            annotations.insert(self.key(), self.value());
            match api.replace(&self.roster, &PostParams::default(), &lease).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn key(&self) -> String {
        format!("{PREFIX}{}", self.identity)
    }

    /// `BUCKETS/BEAT`.
    fn value(&self) -> String {
        format!("{}/{}", self.buckets, self.beats)
    }

    /// Notes the beats in `annotations`: a value that changed is a beat seen now.
    fn observe(&mut self, annotations: &std::collections::BTreeMap<String, String>) {
        for (key, value) in annotations {
            let Some(member) = key.strip_prefix(PREFIX) else { continue };
            if member == self.identity {
                continue;
            }
            match self.seen.get_mut(member) {
                Some((last, at)) if last != value => (*last, *at) = (value.clone(), Instant::now()),
                Some(_) => {}
                None => {
                    self.seen.insert(member.to_owned(), (value.clone(), Instant::now()));
                }
            }
        }
    }

    /// Members silent for [`FORGET_AFTER`] lease durations, forgotten here and removed from the roster.
    fn stale(&mut self) -> Vec<String> {
        let forget = self.lease_duration * FORGET_AFTER;
        let stale: Vec<String> =
            self.seen.iter().filter(|(_, (_, at))| at.elapsed() >= forget).map(|(m, _)| m.clone()).collect();
        for member in &stale {
            self.seen.remove(member);
        }
        stale
    }
}

/// The bucket count a beat announces.
fn count_of(value: &str) -> Option<u32> {
    value.split_once('/')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn annotations(beats: &[(&str, u64)]) -> BTreeMap<String, String> {
        beats.iter().map(|(m, b)| (format!("{PREFIX}{m}"), format!("3/{b}"))).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_counts_while_its_beats_change_and_is_forgotten_long_after() {
        let mut members = Members::new("r".into(), "me".into(), Duration::from_secs(10), 3);
        assert_eq!(members.live(), 1);
        members.observe(&annotations(&[("me", 1), ("a", 1), ("b", 1)]));
        assert_eq!(members.live(), 3);
        tokio::time::advance(Duration::from_secs(6)).await;
        members.observe(&annotations(&[("me", 2), ("a", 2), ("b", 1)]));
        tokio::time::advance(Duration::from_secs(5)).await;
        // b has not beaten for 11 s, a for 5 s.
        assert_eq!(members.live(), 2);
        assert!(members.stale().is_empty());
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut stale = members.stale();
        stale.sort();
        assert_eq!(stale, ["a", "b"]);
        assert_eq!(members.live(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn live_members_with_another_bucket_count_are_named_until_they_are_gone() {
        let mut members = Members::new("r".into(), "me".into(), Duration::from_secs(10), 9);
        let roster = |old: u64, new: u64| -> BTreeMap<String, String> {
            [
                ("old-0", format!("1/{old}")),
                ("old-1", format!("unreadable{old}")),
                ("peer", format!("9/{new}")),
            ]
            .into_iter()
            .map(|(m, v)| (format!("{PREFIX}{m}"), v))
            .collect()
        };
        members.observe(&roster(1, 1));
        assert_eq!(members.counting_otherwise(), ["old-0", "old-1"]);
        assert_eq!(members.live(), 2, "only the replicas that share the buckets share them out");
        // The old replicas stop beating; the peer goes on.
        for beat in 2..4 {
            tokio::time::advance(Duration::from_secs(6)).await;
            members.observe(&roster(1, beat));
        }
        assert!(members.counting_otherwise().is_empty());
        assert_eq!(members.live(), 2);
        assert_eq!(count_of("12/7"), Some(12));
        assert_eq!(members.value(), "9/0");
    }
}
