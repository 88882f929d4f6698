//! Services spread over autoscaler replicas (as Knative's `buckets`): every service falls in one of a
//! configured number of buckets by a stable hash of `namespace/name`, each bucket has a Lease, and a replica
//! collects, decides and writes only for the services of the buckets it holds. With one bucket (the default)
//! none of this runs: the single leader Lease decides who writes, and every replica collects.
//!
//! Even spread: each replica takes free buckets only while it holds fewer than its share,
//! `ceil(buckets / live replicas)` ([`super::members`] counts the live ones), and hands back any above it, so a
//! replica that joins gets its share and one that dies leaves its buckets to the others. A bucket Lease is held
//! and taken over exactly as the leader Lease is ([`super::leader::step`]): a Lease unrenewed for its duration
//! (by the taker's own clock) is free, and a holder that cannot renew within the renew deadline stops acting
//! before that, so no two replicas act on one bucket.

use std::sync::Arc;

use ebb_config::ServiceId;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::health::ApiHealth;
use super::leader::{self, LeaseConfig, Observed};
use super::members::Members;

/// The buckets this replica holds, as published to the pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    held: Vec<bool>,
}

impl Owned {
    /// None of `count` buckets.
    pub fn none(count: u32) -> Self {
        Self { held: vec![false; count as usize] }
    }

    /// Whether this replica holds `id`'s bucket.
    pub fn owns(&self, id: &ServiceId) -> bool {
        let count = self.held.len() as u32;
        count > 0 && self.held[bucket_of(id, count) as usize]
    }

    /// Whether any bucket is held.
    pub fn any(&self) -> bool {
        self.held.contains(&true)
    }

    /// The buckets held, by index.
    pub fn buckets(&self) -> Vec<u32> {
        (0..self.held.len() as u32).filter(|&b| self.held[b as usize]).collect()
    }
}

/// `id`'s bucket among `count`: FNV-1a of `namespace/name`, stable across replicas, releases and platforms.
pub fn bucket_of(id: &ServiceId, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.namespace.bytes().chain([b'/']).chain(id.name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(count.max(1))) as u32
}

/// The Lease of bucket `index` of `count`, after the leader Lease `base`: `ebb-autoscaler-bucket-01-of-10`.
pub fn lease_name(base: &str, index: u32, count: u32) -> String {
    format!("{base}-bucket-{index:02}-of-{count:02}")
}

/// The roster Lease of the replicas sharing the buckets of leader Lease `base`.
pub fn roster_name(base: &str) -> String {
    format!("{base}-members")
}

/// This replica's share of `count` buckets among `live` replicas.
pub fn fair_share(count: u32, live: usize) -> usize {
    (count as usize).div_ceil(live.max(1))
}

/// Holds this replica's share of the buckets until `shutdown` turns true, publishing the held ones on `owned`;
/// then releases them, so the others take them at once. `config` is the leader Lease's timing; its name is the
/// base of the buckets' names.
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    count: u32,
    owned: watch::Sender<Owned>,
    health: Arc<ApiHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let configs: Vec<LeaseConfig> = (0..count)
        .map(|b| LeaseConfig { name: lease_name(&config.name, b, count), ..config.clone() })
        .collect();
    let mut observed: Vec<Observed> = (0..count).map(|_| Observed::default()).collect();
    let mut renewed: Vec<Option<Instant>> = vec![None; count as usize];
    let mut held = vec![false; count as usize];
    let mut members =
        Members::new(roster_name(&config.name), config.identity.clone(), config.lease_duration, count);
    let mut waiting_for = Vec::new();
    while !*shutdown.borrow() {
        if let Err(err) = members.beat(&api).await {
            tracing::warn!("bucket roster: {err}");
        }
        let share = fair_share(count, members.live());
        // Replicas of another count act on Leases of other names: take nothing new until they are gone.
        let others = members.counting_otherwise();
        if others != waiting_for {
            if !others.is_empty() {
                tracing::warn!(
                    ?others,
                    "replicas with another bucket count are alive; taking no bucket until they are gone"
                );
            }
            waiting_for = others;
        }
        for (b, lease) in configs.iter().enumerate() {
            let mine = held[b];
            // A held bucket is renewed every renew interval; the others are looked at every round, so that
            // their expiry is judged from a full lease duration of observation when one is taken over.
            if mine && renewed[b].is_some_and(|at| at.elapsed() < config.renew_interval) {
                continue;
            }
            let may_take = mine || (waiting_for.is_empty() && held.iter().filter(|h| **h).count() < share);
            match leader::step(&api, lease, &mut observed[b], may_take).await {
                Ok(now_held) => {
                    health.ok();
                    if now_held {
                        renewed[b] = Some(Instant::now());
                    }
                    if now_held != mine {
                        tracing::info!(bucket = %lease.name, held = now_held, "bucket ownership changed");
                    }
                    held[b] = now_held;
                }
                Err(err) => {
                    health.failed();
                    tracing::warn!(bucket = %lease.name, "bucket lease request failed: {err}");
                    if mine && renewed[b].is_none_or(|at| at.elapsed() >= config.renew_deadline) {
                        tracing::warn!(bucket = %lease.name, "could not renew in time; no longer acting");
                        held[b] = false;
                    }
                }
            }
        }
        // Above the share (a replica joined): hand back the extra buckets, last first. They stop being acted on
        // here before the release lets another replica take them.
        let mut extra = held.iter().filter(|h| **h).count().saturating_sub(share);
        let mut released = Vec::new();
        for b in (0..count as usize).rev() {
            if extra > 0 && held[b] {
                held[b] = false;
                extra -= 1;
                released.push(b);
            }
        }
        owned.send_if_modified(|now| {
            let changed = now.held != held;
            now.held.clone_from(&held);
            changed
        });
        for b in released {
            match leader::release(&api, &configs[b]).await {
                Ok(()) => tracing::info!(bucket = %configs[b].name, share, "handed a bucket back"),
                Err(err) => tracing::warn!(bucket = %configs[b].name, "could not hand a bucket back: {err}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.retry_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    owned.send_replace(Owned::none(count));
    for (b, lease) in configs.iter().enumerate() {
        if held[b]
            && let Err(err) = leader::release(&api, lease).await
        {
            tracing::warn!(bucket = %lease.name, "could not release: {err}");
        }
    }
}

/// Without buckets: beats in the roster as a replica of one bucket (so that replicas started with buckets
/// wait for this one), and allows taking the leader Lease, on `may_lead`, only while no live replica counts
/// buckets (those act on their buckets' services, which the leader would act on too). `config` is the
/// leader Lease's; its renew interval paces the beats.
pub async fn guard_leadership(
    api: Api<Lease>,
    config: LeaseConfig,
    may_lead: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut members =
        Members::new(roster_name(&config.name), config.identity.clone(), config.lease_duration, 1);
    while !*shutdown.borrow() {
        if let Err(err) = members.beat(&api).await {
            tracing::warn!("bucket roster: {err}");
        }
        let others = members.counting_otherwise();
        may_lead.send_if_modified(|now| {
            let free = others.is_empty();
            if *now != free && !free {
                tracing::warn!(
                    ?others,
                    "replicas with buckets are alive; not taking the leader Lease until they are gone"
                );
            }
            std::mem::replace(now, free) != free
        });
        tokio::select! {
            () = tokio::time::sleep(config.renew_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread_services_evenly() {
        // Stable: the same service lands in the same bucket on every replica and release.
        assert_eq!(
            bucket_of(&ServiceId::new("default", "chat"), 10),
            bucket_of(&ServiceId::new("default", "chat"), 10)
        );
        let mut per_bucket = [0usize; 10];
        for i in 0..10_000 {
            per_bucket
                [bucket_of(&ServiceId::new(format!("ns-{}", i % 7), format!("svc-{i}")), 10) as usize] += 1;
        }
        for n in per_bucket {
            assert!((850..=1150).contains(&n), "{per_bucket:?}");
        }
        assert_eq!(bucket_of(&ServiceId::new("a", "b"), 1), 0);
    }

    #[test]
    fn shares_round_up_so_every_bucket_has_a_taker() {
        assert_eq!(fair_share(10, 3), 4);
        assert_eq!(fair_share(10, 1), 10);
        assert_eq!(fair_share(3, 3), 1);
        assert_eq!(fair_share(2, 5), 1);
        assert_eq!(fair_share(4, 0), 4);
    }

    #[test]
    fn owned_buckets_decide_which_services_are_ours() {
        let id = ServiceId::new("default", "chat");
        let mut owned = Owned::none(4);
        assert!(!owned.owns(&id));
        owned.held[bucket_of(&id, 4) as usize] = true;
        assert!(owned.owns(&id));
        assert_eq!(owned.buckets(), [bucket_of(&id, 4)]);
        assert!(!Owned::default().owns(&id));
        assert_eq!(lease_name("ebb-autoscaler", 3, 10), "ebb-autoscaler-bucket-03-of-10");
    }
}
