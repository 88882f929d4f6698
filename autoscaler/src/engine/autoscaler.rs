//! The autoscaler of a set of services: what its source tells it (services, pods, activator stats), the
//! collection every second, the decisions every tick, and the actions it hands to its [`Scaler`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_config::Mode;
use ebb_config::ServiceConfig;
use ebb_config::ServiceId;
use ebb_config::wire::{IngestFrame, PodStat};
use ebb_http::stats::every_wall_second;
use ebb_kpa::{Error, Phase, TICK_INTERVAL, Timestamp};
use ebb_process::sync::Locked;
use futures::future::join_all;
use tokio::sync::{Semaphore, mpsc};

use super::collect;
use super::controller::{Actions, DecisionRecord, ServiceController, ServiceStatus};
use super::metrics::{Metrics, ServiceSeries};
use super::scaler::Scaler;
use super::scrape::Scraper;

/// Where the decision clock starts: a day after its own epoch, so that a clock resumed from persisted state
/// ([`Autoscaler::resume_service`]) can lie before this autoscaler started ([`Timestamp`] cannot be negative).
/// Older times are clamped to it, a day being longer than any window or period the clocks are compared with.
const CLOCK_ORIGIN: Duration = Duration::from_secs(86_400);

/// How far into each wall-clock second the pods are read (for the second before): the activators send their
/// frames for it just after it ends, and a read this late still falls within the second.
const COLLECT_AFTER_THE_SECOND: Duration = Duration::from_millis(250);

/// Services scraped at once (each its whole sample): enough to keep every core busy on a round, few enough
/// that a round is a steady stream rather than one burst that outlasts the scrape timeout.
const CONCURRENT_SCRAPES: usize = 256;

/// One pod of a service, as its source sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodTarget {
    /// The pod's name.
    pub name: String,
    /// Its queue-proxy's stats address; `None` until it has one.
    pub stats: Option<SocketAddr>,
    /// Ready and not terminating: counted as ready and sampled.
    pub ready: bool,
    /// Terminating: counted in no total.
    pub terminating: bool,
    /// When it started (older pods are sampled first).
    pub started: Instant,
}

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest wait for one pod's stat.
    pub scrape_timeout: Duration,
    /// How often pods are scraped (Knative: every second).
    pub scrape_interval: Duration,
    /// How often every service is decided for.
    pub tick_interval: Duration,
    /// Decisions kept per service (`/debug/decisions`).
    pub history_len: usize,
    /// Scrape connections kept open between seconds; `None`: as many as the open-files limit leaves room for
    /// ([`kept_connections_allowed`]).
    pub kept_connections: Option<usize>,
}

/// The scrape connections a process may keep: its open-files limit less a reserve for everything else (API
/// and ingest connections, listeners, and the scrapes of pods beyond the kept ones while they are in flight:
/// at most [`CONCURRENT_SCRAPES`] services' samples).
pub fn kept_connections_allowed() -> usize {
    let soft = ebb_process::limits::open_files().map_or(1024, |limits| limits.soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub((soft / 4).min(4096))
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scrape_timeout: Duration::from_millis(500),
            scrape_interval: Duration::from_secs(1),
            tick_interval: TICK_INTERVAL,
            // A minute of ticks, 160 bytes each: 4.7 KiB of every service's memory (100 records with their
            // reason sentences once made 30 KiB).
            history_len: 30,
            kept_connections: None,
        }
    }
}

struct Entry {
    controller: ServiceController,
    pods: Vec<PodTarget>,
    /// The latest stat of each activator since the last collection.
    activator_stats: HashMap<String, PodStat>,
    /// What the last decision said, to log repeats at debug level.
    last_logged: Option<LastDecision>,
    /// When the first stat showing load arrived while the service was at zero, until it is scaled up.
    cold_since: Option<Instant>,
    /// The time of the last collection, which stamped its second of load.
    collected_at: Option<Timestamp>,
    /// Its metric series.
    series: ServiceSeries,
}

/// What the engine keeps of a service's last decision: whether the next one repeats it, and whether the
/// status series or the phase moved, are told from this (a whole record is 248 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LastDecision {
    desired: u32,
    ready: u32,
    mode: &'static str,
    phase: &'static str,
    panic: bool,
    decider_kind: &'static str,
    policy_kind: &'static str,
}

impl LastDecision {
    fn of(record: &DecisionRecord) -> Self {
        Self {
            desired: record.desired,
            ready: record.ready,
            mode: record.mode,
            phase: record.phase,
            panic: record.panic,
            decider_kind: record.decider_kind,
            policy_kind: record.policy_kind,
        }
    }

    /// Whether `next` changes nothing worth an info line: the same replicas, mode, phase, ready pods and
    /// reason kinds (the panic flag aside).
    fn repeated_by(&self, next: &Self) -> bool {
        Self { panic: next.panic, ..*self } == *next
    }
}

impl Entry {
    fn ready(&self) -> u32 {
        self.pods.iter().filter(|p| p.ready && !p.terminating).count() as u32
    }

    fn status(&self, id: &ServiceId) -> ServiceStatus {
        self.controller.status(&id.namespace, &id.name, self.ready(), self.pods.len() as u32)
    }
}

/// The autoscaler of a set of services.
pub struct Autoscaler {
    /// Boxed: a B-tree node holds 11 entries, full or not, and an entry is over a kilobyte.
    services: Mutex<BTreeMap<ServiceId, Box<Entry>>>,
    scaler: Arc<dyn Scaler>,
    metrics: Metrics,
    scraper: Scraper,
    /// Services whose pods are being scraped now, at most [`CONCURRENT_SCRAPES`].
    in_flight: Arc<Semaphore>,
    options: Options,
    epoch: Instant,
}

impl fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Autoscaler").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Autoscaler {
    /// An autoscaler with no services, acting through `scaler`.
    pub fn new(scaler: Arc<dyn Scaler>, options: Options) -> Arc<Self> {
        Arc::new(Self {
            services: Mutex::default(),
            scaler,
            metrics: Metrics::new(),
            scraper: Scraper::new(options.scrape_timeout)
                .keeping_at_most(options.kept_connections.unwrap_or_else(kept_connections_allowed)),
            in_flight: Arc::new(Semaphore::new(CONCURRENT_SCRAPES)),
            options,
            epoch: Instant::now(),
        })
    }

    /// The decision clock: time since this autoscaler started, plus [`CLOCK_ORIGIN`].
    pub fn now(&self) -> Timestamp {
        Timestamp::from_duration(CLOCK_ORIGIN + self.epoch.elapsed())
    }

    /// The decision clock's time `ago` before now (clamped at the clock's epoch, a day before start).
    pub fn ago(&self, ago: Duration) -> Timestamp {
        Timestamp::from_duration(self.now().since_epoch().saturating_sub(ago))
    }

    /// Resumes a just-added service's policy clocks from persisted state (a new leader): its `phase` (with
    /// when it was entered; `None` keeps the fresh one) and its `mode`, entered at `mode_since`. Unknown
    /// services are ignored.
    pub fn resume_service(&self, id: &ServiceId, phase: Option<Phase>, mode: Mode, mode_since: Timestamp) {
        let mut services = self.services.locked();
        if let Some(entry) = services.get_mut(id) {
            entry.controller.resume(phase, mode, mode_since);
            tracing::info!(service = %id, phase = %entry.controller.phase(), %mode, "resumed the scale-to-zero clocks");
            entry.series.observe_status(&entry.status(id));
        }
    }

    /// Adds a service (with `replicas` in force now) or applies its changed configuration. On error the last
    /// good configuration stays in force.
    pub fn set_service(&self, id: ServiceId, config: ServiceConfig, replicas: u32) -> Result<(), Error> {
        self.set_service_with_ready(id, config, replicas, 0)
    }

    /// [`Self::set_service`] for a source that knows how many pods are ready when it first sees the service
    /// (the Kubernetes controller after a restart): with more than one ready pod the decider starts in panic
    /// holding that count, so a restart never shrinks a scaled service.
    pub fn set_service_with_ready(
        &self,
        id: ServiceId,
        config: ServiceConfig,
        replicas: u32,
        ready: u32,
    ) -> Result<(), Error> {
        let now = self.now();
        let mut services = self.services.locked();
        match services.get_mut(&id) {
            Some(entry) => entry.controller.update(config),
            None => {
                let controller =
                    ServiceController::new(config, now, ready, replicas, self.options.history_len)?;
                let entry = Entry {
                    controller,
                    pods: Vec::new(),
                    activator_stats: HashMap::new(),
                    last_logged: None,
                    cold_since: None,
                    collected_at: None,
                    series: self.metrics.add_service(&id),
                };
                entry.series.observe_status(&entry.status(&id));
                services.insert(id, Box::new(entry));
                Ok(())
            }
        }
    }

    /// Forgets a service.
    pub fn remove_service(&self, id: &ServiceId) {
        if self.services.locked().remove(id).is_some() {
            self.metrics.remove_service(id);
        }
    }

    /// Replaces a service's pods.
    pub fn set_pods(&self, id: &ServiceId, pods: Vec<PodTarget>) {
        let mut services = self.services.locked();
        if let Some(entry) = services.get_mut(id) {
            entry.pods = pods;
            entry.series.observe_status(&entry.status(id));
        }
    }

    /// Takes an activator's stat. For a service at zero it is recorded and decided on at once (the cold
    /// start); otherwise it joins the current second's collection.
    pub fn ingest(&self, frame: IngestFrame) {
        self.metrics.stats_received("activator", 1);
        let id = ServiceId::new(frame.namespace, frame.name);
        let now = self.now();
        let (actions, moved) = {
            let mut services = self.services.locked();
            let Some(entry) = services.get_mut(&id) else {
                tracing::debug!(service = %id, "stat for an unknown service; ignored");
                return;
            };
            if entry.controller.replicas() == 0 && !entry.controller.is_paused() {
                let metric = entry.controller.config().scaling.metric;
                let value = collect::activator_value(metric, &frame.stat);
                if value > 0.0 {
                    entry.cold_since.get_or_insert_with(Instant::now);
                }
                if let Err(err) = entry.controller.record(now, value) {
                    tracing::warn!(service = %id, "stat refused: {err}");
                    return;
                }
                self.decide(&id, entry, now)
            } else {
                entry.activator_stats.insert(frame.stat.pod.clone(), frame.stat);
                return;
            }
        };
        self.apply(&id, actions, moved);
    }

    /// Decides for one service now (the lock is held; the actions are applied after it is released). Also
    /// says whether the phase or the panic flag moved, which the scaler may publish.
    fn decide(&self, id: &ServiceId, entry: &mut Entry, now: Timestamp) -> (Actions, bool) {
        let ready = entry.ready();
        let in_path = self.scaler.activator_in_path(id);
        let load_at = self.load_at(entry, now);
        let (record, actions) =
            entry.controller.tick(now, load_at, Some(ready), in_path, self.scaler.activators_ready());
        entry.series.decided(&record);
        // The status gauges move with the replicas in force and the ready pods (`set_pods` updates the pod
        // counts), so they are set when those change: a status snapshot (its strings) and four labelled
        // lookups per service on every tick cost several times the decision itself.
        let moved =
            entry.last_logged.as_ref().is_none_or(|l| l.desired != record.desired || l.ready != record.ready);
        if moved {
            entry.series.observe_status(&entry.status(id));
        }
        if record.changed
            && record.desired > 0
            && let Some(since) = entry.cold_since.take()
        {
            entry.series.cold_start_decided(since.elapsed());
        }
        let fmt_obs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        // Every decision is logged; those that change nothing (same replicas, mode, phase and reason kind as
        // the last one) at debug level, so an idle service does not fill the terminal.
        let this = LastDecision::of(&record);
        let level_info = !entry.last_logged.is_some_and(|last| last.repeated_by(&this));
        let moved =
            entry.last_logged.as_ref().is_none_or(|l| l.phase != record.phase || l.panic != record.panic);
        entry.last_logged = Some(this);
        macro_rules! log_decision {
            ($level:ident) => {
                tracing::$level!(
                    target: "ebb::decision",
            service = %id,
            observed = %fmt_obs(record.observed_stable),
            panic_observed = %fmt_obs(record.observed_panic),
            desired = record.desired,
            ready = record.ready,
            mode = record.mode,
            phase = record.phase,
            reason = %record.reason,
            "decision"
                )
            };
        }
        if level_info {
            log_decision!(info);
        } else {
            log_decision!(debug);
        }
        (actions, moved)
    }

    /// When a decision at `now` reads the service's load: as of its last collection while collections keep
    /// coming. A tick that lands before the current second's collection has finished must not read that
    /// second as idle: with a 1 s panic window (a 6 s stable window) it read every burst as zero load, and
    /// panic mode never started. When collections stop, the load is read at `now` and ages out as it should.
    fn load_at(&self, entry: &Entry, now: Timestamp) -> Timestamp {
        match entry.collected_at {
            Some(at) if now.saturating_since(at) <= 2 * self.options.scrape_interval => at,
            _ => now,
        }
    }

    fn apply(&self, id: &ServiceId, actions: Actions, moved: bool) {
        if moved && actions.mode.is_none() && actions.replicas.is_none() {
            self.scaler.status_moved(id);
        }
        if let Some(mode) = actions.mode {
            self.scaler.set_mode(id, mode);
        }
        if let Some(replicas) = actions.replicas {
            self.scaler.set_replicas(id, replicas);
        }
    }

    /// Decides for every service now.
    pub fn tick(&self) {
        let started = Instant::now();
        let now = self.now();
        let mut all = Vec::new();
        {
            let mut services = self.services.locked();
            for (id, entry) in services.iter_mut() {
                let (actions, moved) = self.decide(id, entry, now);
                all.push((id.clone(), actions, moved));
            }
        }
        for (id, actions, moved) in all {
            self.apply(&id, actions, moved);
        }
        self.metrics.tick_took(started.elapsed());
    }

    /// Scrapes every service's pod sample and records one second of load per service.
    pub async fn collect(&self) {
        let now = self.now();
        let plan: Vec<(ServiceId, usize, Vec<SocketAddr>)> = {
            let services = self.services.locked();
            services
                .iter()
                .map(|(id, entry)| {
                    let window = entry.controller.stable_window();
                    let candidates = entry
                        .pods
                        .iter()
                        .filter(|p| p.ready && !p.terminating)
                        .filter_map(|p| {
                            p.stats.map(|addr| collect::Candidate { pod: addr, age: p.started.elapsed() })
                        })
                        .collect();
                    (id.clone(), entry.ready() as usize, collect::choose_sample(candidates, window))
                })
                .collect()
        };
        // A task per service: the scrapes run on every worker thread, at most `CONCURRENT_SCRAPES` services
        // at once, and each pod's timeout starts when its own request does. All at once, 30,000 requests
        // left in one burst, the last of them timed out while waiting their turn, and each timeout cost a new
        // connection the next second. (One future joining every scrape by hand polled all 30,000 pending ones on each
        // wake-up at 10,000 services: O(pods^2) a second, most of a core, and scrapes timed out.)
        let tasks: Vec<_> = plan
            .into_iter()
            .map(|(id, ready, sample)| {
                let (scraper, in_flight) = (self.scraper.clone(), self.in_flight.clone());
                tokio::spawn(async move {
                    // Closed only when the autoscaler is dropped; then nothing waits for these results.
                    let _permit = in_flight.acquire_owned().await;
                    let results = join_all(sample.iter().map(|addr| scraper.scrape(*addr))).await;
                    (id, ready, results)
                })
            })
            .collect();
        let results: Vec<_> = join_all(tasks).await.into_iter().filter_map(Result::ok).collect();
        self.scraper.close_idle();
        self.metrics.scrape_connections(self.scraper.kept(), self.scraper.keep_limit());
        let mut services = self.services.locked();
        for (id, ready, results) in results {
            let Some(entry) = services.get_mut(&id) else { continue };
            entry.collected_at = Some(now);
            let sampled = results.len();
            let mut answered = Vec::with_capacity(results.len());
            for result in results {
                match result {
                    Ok(stat) => answered.push(stat),
                    Err(err) => {
                        entry.series.scrape_failed();
                        tracing::debug!(service = %id, "scrape failed: {err}");
                    }
                }
            }
            self.metrics.stats_received("pod", answered.len() as u64);
            let activators: Vec<PodStat> = entry.activator_stats.drain().map(|(_, s)| s).collect();
            let metric = entry.controller.config().scaling.metric;
            let counted = collect::pods_to_count(ready, sampled, answered.len());
            let total = collect::service_total(metric, counted, &answered, &activators);
            tracing::trace!(
                target: "ebb::load",
                service = %id,
                ready,
                sampled,
                pods = ?answered.iter().map(|s| collect::pod_values(metric, s)).collect::<Vec<_>>(),
                activators = ?activators.iter().map(|s| (collect::activator_value(metric, s), s.average_queued)).collect::<Vec<_>>(),
                ?total,
                "one second of load"
            );
            if let Some(total) = total
                && let Err(err) = entry.controller.record(now, total)
            {
                tracing::warn!(service = %id, "load refused: {err}");
            }
        }
    }

    /// Every service's status, by name.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services.locked().iter().map(|(id, entry)| entry.status(id)).collect()
    }

    /// One service's status.
    pub fn status_of(&self, id: &ServiceId) -> Option<ServiceStatus> {
        self.services.locked().get(id).map(|entry| entry.status(id))
    }

    /// A service's last decisions, oldest first.
    pub fn decisions(&self, id: &ServiceId) -> Option<Vec<DecisionRecord>> {
        self.services.locked().get(id).map(|entry| entry.controller.history())
    }

    /// The Prometheus text of the autoscaler's metrics.
    pub fn encode_metrics(&self) -> String {
        self.metrics.encode()
    }

    /// Appends the Prometheus text of the autoscaler's metrics to `out` (a page of several parts, written once).
    pub fn encode_metrics_into(&self, out: &mut String) {
        self.metrics.encode_into(out);
    }

    /// Collects every second, decides every tick and ingests the activators' stats until `stop` resolves.
    pub async fn run(
        self: Arc<Self>,
        mut frames: mpsc::Receiver<IngestFrame>,
        stop: impl Future<Output = ()>,
    ) {
        // Collections read the wall clock's last whole second, which the pods and activators all measure (see
        // `ebb_http::stats`): a quarter of a second into each, when the activators' frames for it are in.
        let mut collect = every_wall_second(COLLECT_AFTER_THE_SECOND, self.options.scrape_interval);
        let mut tick = tokio::time::interval(self.options.tick_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Collection runs on its own task so a slow scrape never delays a tick or a cold-start stat.
        let collector = {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    collect.tick().await;
                    this.collect().await;
                }
            })
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                frame = frames.recv() => match frame {
                    Some(frame) => self.ingest(frame),
                    None => { std::future::pending::<()>().await }
                },
                _ = tick.tick() => self.tick(),
            }
        }
        collector.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ebb_config::wire::{IngestFrame, PodStat};
    use ebb_config::{GlobalConfig, resolve_service};

    use super::*;
    use crate::engine::debug;

    /// Records the replicas asked for.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<u32>>);

    impl Scaler for Recorder {
        fn set_replicas(&self, _service: &ServiceId, replicas: u32) {
            self.0.lock().unwrap().push(replicas);
        }
        fn set_mode(&self, _service: &ServiceId, _mode: Mode) {}
        fn activator_in_path(&self, _service: &ServiceId) -> bool {
            true
        }
    }

    /// Counts the calls that say a status moved without a change of replicas or mode.
    #[derive(Default)]
    struct Moves(Mutex<Vec<ServiceId>>);

    impl Scaler for Moves {
        fn set_replicas(&self, _service: &ServiceId, _replicas: u32) {}
        fn set_mode(&self, _service: &ServiceId, _mode: Mode) {}
        fn status_moved(&self, service: &ServiceId) {
            self.0.lock().unwrap().push(service.clone());
        }
        fn activator_in_path(&self, _service: &ServiceId) -> bool {
            true
        }
    }

    /// A service whose defaults let it start at zero.
    fn starting_at_zero() -> ServiceConfig {
        let data: BTreeMap<String, String> = [("allow-zero-initial-scale", "true"), ("initial-scale", "0")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let global = GlobalConfig::from_data(&data).unwrap().value;
        resolve_service(&BTreeMap::new(), &global).unwrap().value
    }

    #[test]
    fn an_entry_is_worth_boxing() {
        assert!(std::mem::size_of::<Entry>() > 512, "{}", std::mem::size_of::<Entry>());
    }

    #[test]
    fn a_decision_kinds_series_appears_with_its_first_decision_and_counts_every_one() {
        let autoscaler = Autoscaler::new(Arc::new(Recorder::default()), Options::default());
        let id = ServiceId::new("demo", "chat");
        autoscaler.set_service(id.clone(), starting_at_zero(), 0).unwrap();
        let series = |page: &str, family: &str| -> Vec<String> {
            page.lines().filter(|l| l.starts_with(family)).map(str::to_owned).collect()
        };
        let page = autoscaler.encode_metrics();
        assert_eq!(series(&page, "ebb_autoscaler_decisions_total{"), [] as [String; 0]);
        assert!(!series(&page, "ebb_autoscaler_desired_pods{").is_empty(), "gauges exist at once");

        autoscaler.tick();
        autoscaler.tick();
        let page = autoscaler.encode_metrics();
        let decided = series(&page, "ebb_autoscaler_decisions_total{");
        assert_eq!(decided.len(), 1, "one kind decided: {decided:?}");
        assert!(decided[0].ends_with(" 2"), "both ticks counted: {decided:?}");
        assert_eq!(series(&page, "ebb_autoscaler_policy_decisions_total{").len(), 1, "{page}");

        autoscaler.remove_service(&id);
        let page = autoscaler.encode_metrics();
        assert_eq!(series(&page, "ebb_autoscaler_decisions_total{"), [] as [String; 0]);
    }

    #[test]
    fn a_decision_repeats_the_last_whatever_its_panic_flag_and_not_when_anything_else_moves() {
        let last = LastDecision {
            desired: 2,
            ready: 2,
            mode: "serve",
            phase: "active",
            panic: false,
            decider_kind: "load",
            policy_kind: "desired",
        };
        assert!(last.repeated_by(&last));
        assert!(last.repeated_by(&LastDecision { panic: true, ..last }));
        for moved in [
            LastDecision { desired: 3, ..last },
            LastDecision { ready: 1, ..last },
            LastDecision { mode: "proxy", ..last },
            LastDecision { phase: "idle", ..last },
            LastDecision { decider_kind: "zero", ..last },
            LastDecision { policy_kind: "held", ..last },
        ] {
            assert!(!last.repeated_by(&moved), "{moved:?}");
        }
    }

    #[test]
    fn a_status_that_moves_is_reported_once_and_a_repeat_is_not() {
        let scaler = Arc::new(Moves::default());
        let autoscaler = Autoscaler::new(scaler.clone(), Options::default());
        let config = starting_at_zero();
        let id = ServiceId::new("demo", "chat");
        autoscaler.set_service(id.clone(), config, 0).unwrap();
        autoscaler.tick();
        assert_eq!(scaler.0.lock().unwrap().len(), 1, "the first decision publishes the phase");
        autoscaler.tick();
        autoscaler.tick();
        assert_eq!(*scaler.0.lock().unwrap(), [id], "nothing moved since");
    }

    /// A queue-proxy stats endpoint answering every scrape with `concurrency`, on a real socket.
    async fn stats_server(concurrency: f64) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stat = PodStat {
            pod: "chat-0".into(),
            average_concurrency: concurrency,
            average_proxied_concurrency: 0.0,
            request_count: concurrency,
            proxied_request_count: 0.0,
            process_uptime_secs: 100.0,
            timestamp_ms: 0,
            average_queued: Some(0.0),
        };
        let body = stat.encode().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(&[head.as_bytes(), &body].concat()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tick_in_the_second_after_a_collection_still_sees_it_in_a_one_second_panic_window() {
        let autoscaler = Autoscaler::new(Arc::new(Recorder::default()), Options::default());
        // A 6 s stable window makes a 1 s panic window: the last collected second is all of it.
        let annotations: BTreeMap<String, String> =
            [("autoscaling.knative.dev/window", "6s"), ("autoscaling.knative.dev/target", "10")]
                .map(|(k, v)| (k.into(), v.into()))
                .into();
        let config = resolve_service(&annotations, &GlobalConfig::default()).unwrap().value;
        let id = ServiceId::new("demo", "chat");
        autoscaler.set_service(id.clone(), config, 1).unwrap();
        let stats = stats_server(50.0).await;
        let pod = PodTarget {
            name: "chat-0".into(),
            stats: Some(stats),
            ready: true,
            terminating: false,
            started: Instant::now(),
        };
        autoscaler.set_pods(&id, vec![pod]);

        autoscaler.collect().await;
        // The tick lands in the next second, before that second's collection (as it does when the tick and
        // collection intervals drift against each other).
        let collected = autoscaler.now().whole_secs();
        while autoscaler.now().whole_secs() == collected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        autoscaler.tick();

        let last = autoscaler.decisions(&id).unwrap().pop().unwrap();
        assert_eq!(last.observed_panic, Some(50.0), "{last:?}");
        // Target 10 at the default 70 % utilization is 7 per pod: ceil(50 / 7) = 8, over 2 x 1 ready.
        assert!(last.panic, "50 concurrent over a target of 7 on 1 pod is a panic: {last:?}");
        assert_eq!(last.desired, 8, "{last:?}");
        // What the kept history rebuilds from the decider's outcome.
        assert_eq!(last.decider_desired, Some(8), "{last:?}");
        assert!(last.excess_burst_capacity.is_some_and(|e| e < 0), "{last:?}");
        assert_eq!((last.decider_kind, last.changed), ("panic", true), "{last:?}");
    }

    #[test]
    fn a_cold_start_stat_is_decided_at_once_and_the_wait_is_recorded() {
        let scaler = Arc::new(Recorder::default());
        let autoscaler = Autoscaler::new(scaler.clone(), Options::default());
        let config = starting_at_zero();
        let id = ServiceId::new("demo", "chat");
        autoscaler.set_service(id.clone(), config, 0).unwrap();
        autoscaler.tick();
        assert_eq!(*scaler.0.lock().unwrap(), [] as [u32; 0], "at zero without load");

        let stat = PodStat {
            pod: "activator-0".into(),
            average_concurrency: 1.0,
            average_proxied_concurrency: 1.0,
            request_count: 1.0,
            proxied_request_count: 1.0,
            process_uptime_secs: 1.0,
            timestamp_ms: 0,
            average_queued: Some(0.0),
        };
        autoscaler.ingest(IngestFrame { namespace: "demo".into(), name: "chat".into(), stat });
        assert_eq!(*scaler.0.lock().unwrap(), [1], "scaled up as the stat arrived");
        let metrics = autoscaler.encode_metrics();
        let series =
            "ebb_autoscaler_cold_start_decision_seconds_count{namespace=\"demo\",service=\"chat\"} 1";
        assert!(metrics.contains(series), "{metrics}");

        // The decision trace names the service and keeps the last ones asked for.
        let (status, body) = debug::decisions(&autoscaler, Some("service=demo%2Fchat&limit=1"), "default");
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body["service"], "demo/chat");
        let decisions = body["decisions"].as_array().unwrap();
        assert_eq!(decisions.len(), 1);
        assert_eq!(
            (decisions[0]["desired"].as_u64(), decisions[0]["changed"].as_bool()),
            (Some(1), Some(true))
        );
        let (status, body) = debug::decisions(&autoscaler, Some("service=chat"), "demo");
        assert_eq!((status, body["decisions"].as_array().unwrap().len()), (http::StatusCode::OK, 2));
        for (query, expected) in [
            (None, http::StatusCode::BAD_REQUEST),
            (Some("service=demo/chat&limit=few"), http::StatusCode::BAD_REQUEST),
            (Some("service=demo/other"), http::StatusCode::NOT_FOUND),
        ] {
            let (status, body) = debug::decisions(&autoscaler, query, "default");
            assert_eq!(status, expected, "{query:?}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
    }
}
