//! The live system: the services that run now and how a new manifest is applied.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_admin::{ReloadRefused, ReloadReport};
use gantry_events::EventBus;
use gantry_gateway::{Gateway, GatewayMetrics, RouteTable};
use gantry_manifest::{Manifest, Platform};
use gantry_services::ServiceDirectory;
use gantry_services::ServiceHandle;

use crate::watch::Trigger;
use crate::{NodeOptions, READY_LIMIT};

/// What is running now, and what a reload compares against.
#[derive(Debug)]
pub(crate) struct Live {
    path: PathBuf,
    /// Where configurations come from: the manifest file, or the cluster.
    source: Source,
    /// What `gantry up`'s flags change in every configuration.
    node: NodeOptions,
    platform: Platform,
    /// The manifest text last applied, so a save without changes is a no-op.
    applied_text: String,
    /// The cluster configuration version running (cluster mode only).
    applied_version: Option<i64>,
    /// The cluster configuration version the last reload read (cluster mode).
    attempted_version: Option<i64>,
    services: HashMap<String, Arc<ServiceHandle>>,
    metrics: GatewayMetrics,
    gateway: Option<Gateway>,
    events: Events,
}

/// Where a reload reads the configuration.
#[derive(Debug)]
pub(crate) enum Source {
    /// The manifest file (embedded mode).
    File,
    /// The newest version stored in the cluster's database.
    Cluster(gantry_cluster::Cluster),
}

/// The event bus and what it needs from a reload.
#[derive(Debug)]
pub(crate) struct Events {
    pub bus: EventBus,
    pub workflows: gantry_workflows::Engine,
    /// The services deliveries go to; replaced with each reload's.
    pub directory: ServiceDirectory,
    /// The platform API's URL, given to every service as `GANTRY_API`.
    pub api_url: String,
    /// The functions, which the gateway and the bus see as services named `function:NAME`.
    pub functions: gantry_functions::Functions,
    /// Cron schedules that invoke functions.
    pub scheduler: gantry_functions::Scheduler,
    /// Upload buckets, which the gateway sees as services named `bucket:NAME`.
    pub buckets: gantry_buckets::Buckets,
    /// Service-level objectives and their alerts.
    pub slos: gantry_slo::Slos,
    /// The trace store, whose sampling follows `[telemetry]`.
    pub traces: gantry_telemetry::traces::TraceStore,
    /// The directory relative paths in every configuration resolve against:
    /// the local manifest's.
    pub base_dir: PathBuf,
}

/// A configuration read and checked, ready to start with.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub manifest: Manifest,
    pub text: String,
    /// Its version, in cluster mode.
    pub version: Option<i64>,
    pub source: Source,
    pub node: NodeOptions,
}

/// The services to run: the manifest's, one per function and one per bucket.
fn service_configs(
    manifest: &Manifest,
    functions: BTreeMap<String, gantry_manifest::Service>,
    buckets: BTreeMap<String, gantry_manifest::Service>,
) -> BTreeMap<String, gantry_manifest::Service> {
    let mut configs = manifest.services.clone();
    configs.extend(functions);
    configs.extend(buckets);
    configs
}

impl Live {
    /// Starts every service of `manifest` and builds the first route table.
    pub async fn start(
        path: &Path,
        first: Loaded,
        metrics: GatewayMetrics,
        events: Events,
    ) -> Result<(Live, RouteTable), String> {
        let Loaded {
            manifest,
            text,
            version,
            source,
            node,
        } = first;
        events.functions.apply(&manifest).await?;
        events.buckets.apply(&manifest.buckets).await?;
        let mut services = HashMap::new();
        let configs = service_configs(
            &manifest,
            events.functions.services(),
            events.buckets.services(),
        );
        for (name, config) in &configs {
            let handle = ServiceHandle::start(name, config).map_err(|e| e.to_string())?;
            services.insert(name.clone(), handle);
        }
        for handle in services.values() {
            if !handle.wait_ready(READY_LIMIT).await {
                tracing::warn!(target: "gantry::app", service = handle.name(), limit = ?READY_LIMIT, "service is not healthy yet; its routes answer 503 until it is");
            }
        }
        let table = RouteTable::build(&manifest.routes, &services, &metrics, None)
            .map_err(|e| e.to_string())?
            .with_platform(&manifest.platform, None)
            .with_jwt(manifest.jwt.as_ref())
            .await?;
        events.directory.store(Arc::new(services.clone()));
        // Workflows first, so a subscription that starts them finds them.
        let registered = events
            .workflows
            .register(&manifest)
            .await
            .map_err(|e| e.to_string())?;
        let applied = events.bus.apply(&manifest).await?;
        tracing::info!(
            target: "gantry::events",
            topics = manifest.topics.len(),
            subscriptions = applied.subscriptions_started.len(),
            schemas_registered = ?applied.schemas_registered,
            "event bus ready"
        );
        events
            .workflows
            .resume_all()
            .await
            .map_err(|e| e.to_string())?;
        events.scheduler.apply(&manifest.schedules);
        if !registered.is_empty() {
            tracing::info!(target: "gantry::workflows", workflows = ?registered, "workflows ready");
        }
        let live = Live {
            path: path.to_path_buf(),
            source,
            node,
            platform: manifest.platform,
            applied_text: text,
            applied_version: version,
            attempted_version: version,
            services,
            metrics,
            gateway: None,
            events,
        };
        Ok((live, table))
    }

    pub(crate) fn with_gateway(mut self, gateway: Gateway) -> Live {
        self.gateway = Some(gateway);
        self
    }

    /// The cluster configuration version running, in cluster mode.
    pub(crate) fn version(&self) -> Option<i64> {
        self.applied_version
    }

    /// The cluster configuration version the last reload read, applied or
    /// refused.
    pub(crate) fn attempted_version(&self) -> Option<i64> {
        self.attempted_version
    }

    /// Re-reads the configuration (the manifest file, or the cluster's
    /// newest version) and applies it. On any error the running system is
    /// left exactly as it was.
    pub(crate) async fn reload(&mut self, trigger: Trigger) -> Result<ReloadReport, ReloadRefused> {
        let (text, origin, version) = match &self.source {
            Source::File => (
                std::fs::read_to_string(&self.path).unwrap_or_default(),
                self.path.clone(),
                None,
            ),
            Source::Cluster(cluster) => match cluster.config().latest().await {
                Ok(Some((version, text))) => (text, crate::cluster::origin(version), Some(version)),
                Ok(None) => return Ok(ReloadReport::default()),
                Err(error) => {
                    let reason = format!("cannot read the cluster's configuration: {error}");
                    return Err(self.refuse(trigger, reason));
                }
            },
        };
        if version.is_some() {
            self.attempted_version = version;
        }
        // Editors and `touch` fire file events without a change in content;
        // a cluster node hears of its own version more than once.
        let unchanged = match version {
            Some(version) => self.applied_version == Some(version),
            None => text == self.applied_text,
        };
        if unchanged && matches!(trigger, Trigger::FileChange | Trigger::Cluster) {
            return Ok(ReloadReport::default());
        }
        let base_dir = self.events.base_dir.clone();
        let mut manifest = match gantry_manifest::parse(&text, &origin, &base_dir) {
            Ok(manifest) => manifest,
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(target: "gantry::reload", trigger = trigger.as_str(), "manifest rejected; the previous configuration keeps serving:\n{reason}");
                return Err(ReloadRefused { reason });
            }
        };
        self.node.apply(&mut manifest.platform);

        crate::give_platform_env(&mut manifest, &self.events.api_url);

        let mut report = ReloadReport::default();
        for (what, old, new) in [
            ("listen", self.platform.listen, manifest.platform.listen),
            ("admin", self.platform.admin, manifest.platform.admin),
            ("api", self.platform.api, manifest.platform.api),
        ] {
            if old != new {
                report.warnings.push(format!(
                    "[platform] {what} changed from {old} to {new}; restart Gantry to apply it"
                ));
            }
        }

        // Stage: build everything the manifest asks for beside what runs, and
        // check it. Nothing running changes until every check has passed;
        // a refusal at any step undoes what the earlier steps built.
        let functions = match self.events.functions.stage(&manifest).await {
            Ok(staged) => staged,
            Err(error) => return Err(self.refuse(trigger, error)),
        };
        let buckets = match self.events.buckets.stage(&manifest.buckets).await {
            Ok(staged) => staged,
            Err(error) => {
                self.events.functions.discard(functions);
                return Err(self.refuse(trigger, error));
            }
        };
        let mut staged = Staging {
            live: self,
            functions: Some(functions),
            buckets: Some(buckets),
            fresh: Vec::new(),
        };
        let configs = service_configs(
            &manifest,
            staged
                .functions
                .as_ref()
                .map(|f| f.services())
                .unwrap_or_default(),
            staged
                .buckets
                .as_ref()
                .map(|b| b.services())
                .unwrap_or_default(),
        );
        // Start what is new or changed; keep what is the same.
        let mut next = HashMap::new();
        for (name, config) in &configs {
            match staged.live.services.get(name) {
                Some(running) if running.config() == config => {
                    report.unchanged.push(name.clone());
                    next.insert(name.clone(), running.clone());
                }
                existing => {
                    let handle = match ServiceHandle::start(name, config) {
                        Ok(handle) => handle,
                        Err(error) => return Err(staged.refuse(trigger, error.to_string()).await),
                    };
                    if existing.is_some() {
                        report.restarted.push(name.clone());
                    } else {
                        report.started.push(name.clone());
                    }
                    staged.fresh.push(handle.clone());
                    next.insert(name.clone(), handle);
                }
            }
        }
        // New instances must be healthy before they get traffic.
        for handle in staged.fresh.clone() {
            if !handle.wait_ready(READY_LIMIT).await {
                let name = handle.name().to_string();
                let why = format!(
                    "service `{name}` did not become healthy within {READY_LIMIT:?}; check its logs"
                );
                return Err(staged.refuse(trigger, why).await);
            }
        }
        let previous = staged.live.gateway.as_ref().map(Gateway::table);
        let table = match RouteTable::build(
            &manifest.routes,
            &next,
            &staged.live.metrics,
            previous.as_deref(),
        ) {
            Ok(table) => match table
                .with_platform(&manifest.platform, previous.as_deref())
                .with_jwt(manifest.jwt.as_ref())
                .await
            {
                Ok(table) => table,
                Err(error) => return Err(staged.refuse(trigger, error).await),
            },
            Err(error) => return Err(staged.refuse(trigger, error.to_string()).await),
        };
        // The last check: event schemas against their registered versions.
        let bus_plan = match staged.live.events.bus.check(&manifest).await {
            Ok(plan) => plan,
            Err(error) => return Err(staged.refuse(trigger, error).await),
        };

        // Commit: every check passed. From here on only a failing store can
        // stop a step, and it is reported without undoing the others.
        let (functions, buckets) = staged.commit();
        self.events.functions.commit(functions);
        self.events.buckets.commit(buckets);
        // Deliveries and saga steps go to the new services from here on.
        self.events.directory.store(Arc::new(next.clone()));
        // New runs use the new definitions; runs in flight keep theirs.
        if let Err(error) = self.events.workflows.register(&manifest).await {
            tracing::error!(target: "gantry::reload", %error, "cannot register the workflows; new runs keep the previous definitions");
            report
                .warnings
                .push(format!("the workflow store failed: {error}"));
        }
        if let Err(error) = self.events.bus.commit(bus_plan, &manifest).await {
            tracing::error!(target: "gantry::reload", %error, "the event store failed while applying topics and subscriptions");
            report
                .warnings
                .push(format!("the event store failed: {error}"));
        }
        self.events.scheduler.apply(&manifest.schedules);
        self.events.slos.apply(&manifest.slos);
        self.events.slos.set_alerting(&manifest.alerting);
        self.events
            .traces
            .set_sampling(crate::sampling(&manifest.telemetry));
        report.routes = manifest.routes.len();
        if let Some(gateway) = &self.gateway {
            gateway.swap(table);
        }

        // Stop what was replaced or removed, once its requests are done.
        let mut retired = Vec::new();
        for (name, handle) in self.services.drain() {
            let kept = next.get(&name).is_some_and(|n| Arc::ptr_eq(n, &handle));
            if !kept {
                if !next.contains_key(&name) {
                    report.stopped.push(name);
                }
                retired.push(handle);
            }
        }
        let drain = self.platform.drain_timeout;
        if let Some(gateway) = &self.gateway {
            gateway.retire_sockets(&retired, drain);
        }
        tokio::spawn(async move {
            // A request that read the old route table just before the swap may
            // not have registered as in flight yet, but it holds that table,
            // and the table holds the handle: wait until only `retired` does
            // (every such request is done), then drain what is left.
            let deadline = tokio::time::Instant::now() + drain;
            while retired.iter().any(|h| Arc::strong_count(h) > 1)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(held) = retired.iter().find(|h| Arc::strong_count(h) > 1) {
                tracing::warn!(target: "gantry::reload", service = %held.name(), "a replaced service is still referenced after the drain timeout; stopping it anyway");
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            stop_all(retired, left).await;
        });

        self.services = next;
        self.applied_text = text;
        self.applied_version = version;
        // Listeners, and the certificates they were started with, stay until
        // a restart (certificate files themselves are watched and reloaded).
        if manifest
            .platform
            .tls
            .as_ref()
            .map(|t| (&t.certs, &t.client_ca))
            != self.platform.tls.as_ref().map(|t| (&t.certs, &t.client_ca))
            || manifest.platform.redirect_http != self.platform.redirect_http
        {
            report.warnings.push(
                "changes to `[platform.tls]` certificate files, `client_ca` or `redirect_http` take effect at the next restart".into(),
            );
        }
        // The event store was opened with its durability.
        if manifest.platform.events_sync != self.platform.events_sync {
            report.warnings.push(format!(
                "[platform] events_sync changed from {} to {}; restart Gantry to apply it",
                self.platform.events_sync.as_str(),
                manifest.platform.events_sync.as_str()
            ));
        }
        self.platform = Platform {
            listen: self.platform.listen,
            admin: self.platform.admin,
            api: self.platform.api,
            redirect_http: self.platform.redirect_http,
            tls: self.platform.tls.clone(),
            events_sync: self.platform.events_sync,
            ..manifest.platform
        };
        for sorted in [
            &mut report.started,
            &mut report.restarted,
            &mut report.stopped,
            &mut report.unchanged,
        ] {
            sorted.sort();
        }
        tracing::info!(
            target: "gantry::reload",
            trigger = trigger.as_str(),
            started = ?report.started,
            restarted = ?report.restarted,
            stopped = ?report.stopped,
            unchanged = report.unchanged.len(),
            routes = report.routes,
            "manifest applied"
        );
        for warning in &report.warnings {
            tracing::warn!(target: "gantry::reload", "{warning}");
        }
        Ok(report)
    }

    fn refuse(&self, trigger: Trigger, reason: String) -> ReloadRefused {
        tracing::error!(target: "gantry::reload", trigger = trigger.as_str(), %reason, "reload refused; the previous configuration keeps serving");
        ReloadRefused { reason }
    }

    /// Stops every service (shutdown).
    pub async fn stop_all(&mut self, drain: Duration) {
        stop_all(self.services.drain().map(|(_, h)| h).collect(), drain).await;
    }
}

/// Stops services concurrently so one slow process does not delay the others.
async fn stop_all(handles: Vec<Arc<ServiceHandle>>, drain: Duration) {
    let mut stops = tokio::task::JoinSet::new();
    for handle in handles {
        stops.spawn(async move { handle.stop(drain).await });
    }
    while stops.join_next().await.is_some() {}
}

/// A reload between stage and commit: what it built so far, undone by
/// [`Staging::refuse`].
struct Staging<'a> {
    live: &'a Live,
    functions: Option<gantry_functions::Staged>,
    buckets: Option<gantry_buckets::StagedBuckets>,
    /// Services started for the new manifest.
    fresh: Vec<Arc<ServiceHandle>>,
}

impl Staging<'_> {
    /// Undoes the stage and refuses the reload.
    async fn refuse(mut self, trigger: Trigger, reason: String) -> ReloadRefused {
        if let Some(functions) = self.functions.take() {
            self.live.events.functions.discard(functions);
        }
        if let Some(buckets) = self.buckets.take() {
            self.live.events.buckets.discard(buckets);
        }
        stop_all(std::mem::take(&mut self.fresh), Duration::ZERO).await;
        self.live.refuse(trigger, reason)
    }

    /// The staged functions and buckets, to commit.
    fn commit(mut self) -> (gantry_functions::Staged, gantry_buckets::StagedBuckets) {
        (
            self.functions.take().unwrap_or_default(),
            self.buckets.take().unwrap_or_default(),
        )
    }
}
