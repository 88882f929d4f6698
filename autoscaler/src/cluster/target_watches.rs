//! Watches of the scale targets other than Deployments (`scale-target-kinds`), started and stopped as the
//! ConfigMap changes, and what their `scale` subresources say.
//!
//! Each listed kind is looked up by discovery (its preferred version; it must serve `scale`) and watched,
//! labelled `ebb.dev/service`, in the watched namespaces. The scale subresource cannot be watched, so it is
//! read again whenever an object's `resourceVersion` changes (the kind's controller writes the object's
//! status as its pods come and go, so a changed selector or replicas count always changes it): one GET per
//! change, none per pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_config::ServiceId;
use ebb_config::names::LABEL_SERVICE;
use ebb_config::targets::TargetKind;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::discovery;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::cache::Cache;
use super::health::ApiHealth;
use super::selector::Selector;
use super::state::Signals;
use super::stores::{Watches, cached_watch, touch_by_name};
use super::targets::{ScaleView, Target};
use super::watched::WatchedObject;

/// How long a kind that discovery could not resolve waits before it is looked up again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(30);

/// How many scale subresources are read at once.
const CONCURRENT_SCALE_READS: usize = 16;

/// One kind being watched.
struct KindWatch {
    resource: ApiResource,
    caches: Vec<Cache<WatchedObject>>,
    _tasks: Watches,
}

/// A scale subresource as last read, with the object version it was read for.
struct CachedScale {
    resource_version: Option<String>,
    view: Result<ScaleView, String>,
}

type ObjectKey = (TargetKind, String, String);

/// The watches of the non-Deployment kinds and their scale subresources.
pub(crate) struct TargetWatches {
    client: Client,
    namespaces: Vec<Option<String>>,
    report_to: (Arc<ApiHealth>, Arc<Signals>),
    kinds: HashMap<TargetKind, KindWatch>,
    /// Kinds that discovery could not resolve, with why and when it was tried.
    unresolved: HashMap<TargetKind, (String, Instant)>,
    scales: HashMap<ObjectKey, CachedScale>,
}

impl TargetWatches {
    /// No kind watched yet; `namespaces` empty means all.
    pub fn new(client: Client, namespaces: &[String], health: Arc<ApiHealth>, signals: Arc<Signals>) -> Self {
        let namespaces =
            if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
        Self {
            client,
            namespaces,
            report_to: (health, signals),
            kinds: HashMap::new(),
            unresolved: HashMap::new(),
            scales: HashMap::new(),
        }
    }

    /// Watches exactly the non-Deployment kinds of `kinds`: starts the new ones (discovery first), stops the
    /// ones no longer listed. Returns the kinds that cannot be watched, with why.
    pub async fn sync(&mut self, kinds: &[TargetKind]) -> Vec<(TargetKind, String)> {
        let wanted: HashSet<&TargetKind> = kinds.iter().filter(|k| !k.is_deployments()).collect();
        self.kinds.retain(|k, _| wanted.contains(k));
        self.unresolved.retain(|k, _| wanted.contains(k));
        self.scales.retain(|(k, _, _), _| wanted.contains(k));
        for kind in wanted {
            if self.kinds.contains_key(kind) {
                continue;
            }
            if let Some((_, tried)) = self.unresolved.get(kind)
                && tried.elapsed() < DISCOVERY_RETRY
            {
                continue;
            }
            let namespace = self.namespaces.first().cloned().flatten();
            match resolve(&self.client, kind, namespace.as_deref()).await {
                Ok(resource) => {
                    tracing::info!(kind = %kind, version = %resource.version, "watching scale targets of {kind}");
                    self.unresolved.remove(kind);
                    let watch = self.watch(resource);
                    self.kinds.insert(kind.clone(), watch);
                }
                Err(why) => {
                    tracing::warn!(kind = %kind, "cannot watch {kind}: {why}");
                    self.unresolved.insert(kind.clone(), (why, Instant::now()));
                }
            }
        }
        self.unresolved.iter().map(|(k, (why, _))| (k.clone(), why.clone())).collect()
    }

    fn watch(&self, resource: ApiResource) -> KindWatch {
        let (health, signals) = &self.report_to;
        let labelled = watcher::Config::default().labels(LABEL_SERVICE);
        let mut tasks = Vec::new();
        let caches = (self.namespaces.iter())
            .map(|ns| {
                let api = match ns {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                    None => Api::all_with(self.client.clone(), &resource),
                };
                cached_watch((health, signals), &mut tasks, api, labelled.clone(), touch_by_name)
            })
            .collect();
        KindWatch { resource, caches, _tasks: Watches(tasks) }
    }

    /// Reads the scale subresource of every watched object whose version changed since it was last read
    /// (or whose last read failed), at most [`CONCURRENT_SCALE_READS`] at once. Returns the services read.
    pub async fn refresh_scales(&mut self) -> Vec<ServiceId> {
        let mut due = Vec::new();
        let mut present = HashSet::new();
        for (kind, watch) in &self.kinds {
            for kept in watch.caches.iter().filter(|c| c.listed()).flat_map(Cache::state) {
                let object = &kept.object;
                let key = (kind.clone(), object.namespace().unwrap_or_default(), object.name_any());
                let version = object.resource_version();
                let cached = self.scales.get(&key);
                if cached.is_none_or(|c| c.resource_version != version || c.view.is_err()) {
                    due.push((key.clone(), version, watch.resource.clone()));
                }
                present.insert(key);
            }
        }
        self.scales.retain(|key, _| present.contains(key));
        let client = &self.client;
        let reads =
            futures::stream::iter(due.into_iter().map(|((kind, ns, name), version, resource)| async move {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
                let view = read_scale(&api, &name).await;
                ((kind, ns, name), CachedScale { resource_version: version, view })
            }))
            .buffer_unordered(CONCURRENT_SCALE_READS)
            .collect::<Vec<_>>()
            .await;
        let read = reads.iter().map(|((_, ns, name), _)| ServiceId::new(ns, name)).collect();
        self.scales.extend(reads);
        read
    }

    /// Every watched object whose scale subresource was read, as a target; and the objects whose scale could
    /// not be read, with why.
    pub fn targets(&self) -> (Vec<Target>, Vec<(Target, String)>) {
        let (mut targets, mut failed) = (Vec::new(), Vec::new());
        for (kind, watch) in &self.kinds {
            for kept in watch.caches.iter().filter(|c| c.listed()).flat_map(Cache::state) {
                self.sort(kind, watch, &kept.object, &mut targets, &mut failed);
            }
        }
        (targets, failed)
    }

    /// The services of every watched object.
    pub fn ids(&self) -> Vec<ServiceId> {
        let caches = self.kinds.values().flat_map(|w| w.caches.iter().filter(|c| c.listed()));
        caches.flat_map(Cache::state).map(|o| o.meta.service_id()).collect()
    }

    /// [`Self::targets`] of service `id` alone: the object of each watched kind named as it.
    pub fn targets_of(&self, id: &ServiceId) -> (Vec<Target>, Vec<(Target, String)>) {
        let (mut targets, mut failed) = (Vec::new(), Vec::new());
        for (kind, watch) in &self.kinds {
            let found =
                watch.caches.iter().filter(|c| c.listed()).find_map(|c| c.get(&id.namespace, &id.name));
            if let Some(kept) = found {
                self.sort(kind, watch, &kept.object, &mut targets, &mut failed);
            }
        }
        (targets, failed)
    }

    /// `object` as a target, or with why its scale could not be read; nothing before its scale was read.
    fn sort(
        &self,
        kind: &TargetKind,
        watch: &KindWatch,
        object: &DynamicObject,
        targets: &mut Vec<Target>,
        failed: &mut Vec<(Target, String)>,
    ) {
        let key = (kind.clone(), object.namespace().unwrap_or_default(), object.name_any());
        let Some(cached) = self.scales.get(&key) else { return };
        match &cached.view {
            Ok(view) => {
                targets.push(Target::from_object(kind.clone(), watch.resource.clone(), object, view.clone()))
            }
            Err(why) => {
                let placeholder = ScaleView { replicas: 0, selector: None };
                let target = Target::from_object(kind.clone(), watch.resource.clone(), object, placeholder);
                failed.push((target, why.clone()));
            }
        }
    }

    /// The watched object `namespace/name` of `kind`, as its watch shows it now.
    pub fn object(&self, kind: &TargetKind, namespace: &str, name: &str) -> Option<Arc<WatchedObject>> {
        let watch = self.kinds.get(kind)?;
        watch.caches.iter().find_map(|c| c.get(namespace, name))
    }

    /// Whether every watched kind has listed once, so that a target missing from [`Self::targets`] is gone
    /// rather than not yet seen (a kind that cannot be watched has no targets to lose).
    pub fn synced(&self) -> bool {
        self.kinds.values().all(|w| w.caches.iter().all(Cache::listed))
    }
}

/// The preferred version of `kind`, which must serve the scale subresource and which this account may list
/// (checked first: a watch that is refused would retry for ever and look like an unreachable API server).
async fn resolve(client: &Client, kind: &TargetKind, namespace: Option<&str>) -> Result<ApiResource, String> {
    let group = discovery::group(client, &kind.group)
        .await
        .map_err(|e| format!("API group {} is not served: {e}", kind.group))?;
    let (resource, capabilities) = group
        .recommended_resources()
        .into_iter()
        .find(|(r, _)| r.plural == kind.resource)
        .ok_or_else(|| format!("API group {} has no resource {}", kind.group, kind.resource))?;
    if !capabilities.subresources.iter().any(|(r, _)| r.plural == "scale") {
        return Err(format!(
            "{kind} does not serve the scale subresource (a CustomResourceDefinition needs subresources.scale)"
        ));
    }
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.list_metadata(&ListParams::default().limit(1)).await.map_err(|e| match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the autoscaler may not list {kind}: grant it the RBAC of manifests/scale-targets/ for this kind"
        ),
        e => format!("cannot list {kind}: {e}"),
    })?;
    Ok(resource)
}

/// Reads `name`'s scale subresource.
async fn read_scale(api: &Api<DynamicObject>, name: &str) -> Result<ScaleView, String> {
    let scale = api.get_scale(name).await.map_err(|e| format!("cannot read its scale subresource: {e}"))?;
    let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
    let selector = match scale.status.and_then(|s| s.selector).filter(|s| !s.is_empty()) {
        Some(text) => Some(Selector::parse(&text).map_err(|e| format!("its scale status.selector: {e}"))?),
        None => None,
    };
    Ok(ScaleView { replicas, selector })
}
