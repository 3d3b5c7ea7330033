//! The immutable, pre-indexed registry view that the hot path reads.
//!
//! A [`Snapshot`] is built once per registry version from a validated
//! [`Registry`] and never changes; `serve` keeps the current one in an
//! `Arc<ArcSwap<Snapshot>>`, so ingest and delivery read it with one atomic
//! load and no lock. Every lookup borrows its key (`&str`, or `&[u8]` where
//! the key comes straight from a request body), so no lookup allocates.
//!
//! # Per-series lookups
//! Attribution runs once per series, so its maps use foldhash (keyed with a
//! random seed once per process: still resistant to a sender choosing
//! colliding label values, several times cheaper than SipHash on short keys),
//! and a request resolves its cluster once: [`Snapshot::cluster_view`] gives
//! the cluster's Deployments by id and by namespace, and
//! [`ClusterView::attribute`] looks a series up there by its label bytes
//! (validated UTF-8, compared as bytes: no re-check per series).
//!
//! Targets are deduplicated here: every (Deployment, export) pair resolves to a
//! [`TargetConfig`], and pairs with the same [`TargetId`] share one
//! `Arc<Target>`. A Deployment lists each of its targets once, however many of
//! its exports lead there, so each sample reaches each target once.
//!
//! Secrets: `Snapshot` holds ingest tokens and target credentials; its `Debug`
//! shows neither (tokens are not printed, [`Secret`] masks itself).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::model::{DeploymentType, Limits, Registry, Secret};
use super::resolve::{Compiled, ExportIndex, TargetConfig, TargetId};
use super::secrets::Scrubber;

/// The cluster an ingest request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Cluster id.
    pub id: String,
    /// Stamped as `cluster_organization_id`.
    pub organization_id: String,
    /// Stamped as `cloud_provider`.
    pub cloud_provider: String,
    /// Stamped as `cloud_region`.
    pub cloud_region: String,
    /// Its own limits (the gateway's defaults apply where unset).
    pub limits: Limits,
    /// `fanout_cluster_samples_total{cluster}`, registered at its first
    /// accepted write (so a dry run's snapshot registers nothing).
    pub samples_metric: LazyCounter,
}

/// A metric handle registered at first use; not part of what a cluster is
/// (every two compare equal).
#[derive(Debug, Clone, Default)]
pub struct LazyCounter(std::sync::OnceLock<metrics::Counter>);

impl LazyCounter {
    /// The counter, registered by `make` on the first call.
    pub fn get(&self, make: impl FnOnce() -> metrics::Counter) -> &metrics::Counter {
        self.0.get_or_init(make)
    }
}

impl PartialEq for LazyCounter {
    fn eq(&self, _: &LazyCounter) -> bool {
        true
    }
}

impl Eq for LazyCounter {}

/// A Deployment as delivery needs it: its labels and its targets.
#[derive(Debug)]
pub struct DeploymentInfo {
    /// Stamped as `deploymentId`.
    pub id: String,
    /// Stamped as `workspaceId`.
    pub workspace_id: String,
    /// The Workspace's organization, stamped as `organizationId`.
    pub organization_id: String,
    /// Stamped as `namespace`.
    pub namespace: String,
    /// Display name.
    pub name: String,
    /// HOSTED or HYBRID.
    pub kind: DeploymentType,
    /// Its own limits (the gateway's defaults apply where unset).
    pub limits: Limits,
    /// The cluster it runs on.
    pub cluster: Arc<ClusterInfo>,
    /// Every target its series go to, each once, in target-id order.
    pub targets: Vec<Arc<Target>>,
}

/// One (Deployment, export) pair that leads to a target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetRoute {
    /// The Deployment.
    pub deployment_id: String,
    /// The export.
    pub export_id: String,
}

/// A delivery target: one queue, one batch stream.
#[derive(Debug, PartialEq)]
pub struct Target {
    /// Stable identity.
    pub id: TargetId,
    /// Endpoint, auth, headers, labels, delivery options.
    pub config: TargetConfig,
    /// Every (Deployment, export) that leads here, sorted.
    pub routes: Vec<TargetRoute>,
    /// Takes this target's secrets out of what it sends back (built from `config`).
    pub scrubber: Scrubber,
}

impl Target {
    /// What people call it, as the console's Targets view does: the
    /// exports that route here and how many Deployments they carry
    /// (`dev-prom ·2`); its id when nothing routes here. Log lines carry it
    /// next to the id (which tells two targets of one export apart).
    pub fn name(&self) -> String {
        routes_name(&self.routes).unwrap_or_else(|| self.id.0.clone())
    }
}

/// [`Target::name`] of `routes`; `None` for none.
pub fn routes_name(routes: &[TargetRoute]) -> Option<String> {
    fanout_proto::api::target_label(
        routes
            .iter()
            .map(|r| (r.export_id.as_str(), r.deployment_id.as_str())),
    )
}

/// Where a series belongs (SPEC §4).
#[derive(Debug, Clone, Copy)]
pub enum Attribution<'a> {
    /// To this Deployment.
    Deployment(&'a Arc<DeploymentInfo>),
    /// Its `deploymentId` names a Deployment of another cluster.
    Foreign,
    /// No Deployment of the sending cluster matches.
    Unattributed,
}

/// A map looked up on the hot path (see the module docs).
type FastMap<K, V> = HashMap<K, V, RandomState>;

struct ClusterEntry {
    info: Arc<ClusterInfo>,
    token: Secret,
    /// Shared with the previous snapshot when none of its Deployments
    /// changed ([`Snapshot::build_after`]).
    tables: Arc<Tables>,
}

/// A cluster's Deployments by id and by namespace.
#[derive(Default)]
struct Tables {
    by_id: FastMap<Box<[u8]>, Arc<DeploymentInfo>>,
    by_namespace: FastMap<Box<[u8]>, Arc<DeploymentInfo>>,
}

/// One cluster's attribution tables, resolved once per request
/// ([`Snapshot::cluster_view`]).
#[derive(Clone, Copy)]
pub struct ClusterView<'a> {
    entry: &'a ClusterEntry,
    deployment_cluster: &'a FastMap<Box<[u8]>, String>,
}

impl fmt::Debug for ClusterView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterView")
            .field("cluster", &self.entry.info.id)
            .field("deployments", &self.entry.tables.by_id.len())
            .finish()
    }
}

impl<'a> ClusterView<'a> {
    /// The cluster.
    pub fn info(&self) -> &'a Arc<ClusterInfo> {
        &self.entry.info
    }

    /// Attributes a series of this cluster from the bytes of its
    /// `deploymentId` and `namespace` labels (SPEC §4): by `deploymentId`
    /// among this cluster's Deployments; one of another cluster is
    /// `Foreign`; an unknown one, or none, falls back to the namespace.
    #[inline]
    pub fn attribute(
        &self,
        deployment_id: Option<&[u8]>,
        namespace: Option<&[u8]>,
    ) -> Attribution<'a> {
        if let Some(dep) = deployment_id {
            if let Some(d) = self.entry.tables.by_id.get(dep) {
                return Attribution::Deployment(d);
            }
            if self.deployment_cluster.contains_key(dep) {
                return Attribution::Foreign;
            }
        }
        match namespace.and_then(|ns| self.entry.tables.by_namespace.get(ns)) {
            Some(d) => Attribution::Deployment(d),
            None => Attribution::Unattributed,
        }
    }
}

/// The registry compiled for lock-free reads.
pub struct Snapshot {
    version: u64,
    salt: Arc<[u8]>,
    registry: Arc<Registry>,
    clusters: FastMap<String, ClusterEntry>,
    by_token: HashMap<String, Arc<ClusterInfo>>,
    deployment_cluster: Arc<FastMap<Box<[u8]>, String>>,
    targets: BTreeMap<TargetId, Arc<Target>>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("clusters", &self.clusters.len())
            .field("deployments", &self.deployment_cluster.len())
            .field("targets", &self.targets.len())
            .finish()
    }
}

impl Snapshot {
    /// An empty registry at version 0 (before the store is loaded).
    pub fn empty() -> Snapshot {
        Snapshot::build(Arc::new(Registry::default()), 0, Arc::from(&b""[..]))
    }

    /// Compiles a validated registry of `version`; `salt` keys the target ids.
    pub fn build(registry: Arc<Registry>, version: u64, salt: Arc<[u8]>) -> Snapshot {
        Snapshot::build_after(registry, version, salt, None)
    }

    /// [`Self::build`], reusing from `prev` (an earlier version's snapshot
    /// with the same salt) what did not change: clusters, targets with the
    /// same routes, Deployments with the same labels and targets, a
    /// cluster's attribution tables when none of its Deployments changed,
    /// and the Deployment-to-cluster table when no Deployment came, went or
    /// moved. The result equals a fresh build; a change of one export
    /// allocates for what it touches, and the hot path and delivery see the
    /// same `Arc`s for everything else (`TargetHandle::set_target` skips
    /// those).
    pub fn build_after(
        registry: Arc<Registry>,
        version: u64,
        salt: Arc<[u8]>,
        prev: Option<&Snapshot>,
    ) -> Snapshot {
        let prev = prev.filter(|p| p.salt == salt);
        let mut clusters: FastMap<String, ClusterEntry> = FastMap::default();
        let mut by_token = HashMap::new();
        for c in registry.clusters.values() {
            let fresh = ClusterInfo {
                id: c.id.clone(),
                organization_id: c.organization_id.clone(),
                cloud_provider: c.cloud_provider.clone(),
                cloud_region: c.cloud_region.clone(),
                limits: c.limits,
                samples_metric: LazyCounter::default(),
            };
            let info = match prev.and_then(|p| p.clusters.get(&c.id)) {
                Some(old) if *old.info == fresh => old.info.clone(),
                _ => Arc::new(fresh),
            };
            by_token.insert(c.ingest_token.expose().to_owned(), info.clone());
            clusters.insert(
                c.id.clone(),
                ClusterEntry {
                    info,
                    token: c.ingest_token.clone(),
                    tables: Arc::default(),
                },
            );
        }

        // Resolve every Deployment first, then share targets by id.
        let mut configs: BTreeMap<TargetId, (Arc<Compiled>, Vec<TargetRoute>)> = BTreeMap::new();
        let mut dep_targets: Vec<(&str, Vec<TargetId>)> = Vec::new();
        let mut index = ExportIndex::new(&registry, &salt);
        for d in registry.deployments.values() {
            let mut ids = Vec::new();
            for (export_id, c) in index.reached(d) {
                let entry = configs
                    .entry(c.target_id.clone())
                    .or_insert_with(|| (c.clone(), Vec::new()));
                entry.1.push(TargetRoute {
                    deployment_id: d.id.clone(),
                    export_id: export_id.to_owned(),
                });
                ids.push(c.target_id.clone());
            }
            ids.sort();
            ids.dedup();
            dep_targets.push((&d.id, ids));
        }
        let targets: BTreeMap<TargetId, Arc<Target>> = configs
            .into_iter()
            .map(|(id, (compiled, mut routes))| {
                routes.sort();
                // The same id is the same config: only the routes may differ.
                let target = match prev.and_then(|p| p.targets.get(&id)) {
                    Some(old) if old.routes == routes => old.clone(),
                    _ => {
                        let config = compiled.config.clone();
                        let scrubber = Scrubber::new(&config);
                        Arc::new(Target {
                            id: id.clone(),
                            config,
                            routes,
                            scrubber,
                        })
                    }
                };
                (id, target)
            })
            .collect();

        // Per cluster: its Deployments, and whether each is the previous one.
        let mut members: FastMap<&str, Vec<(Arc<DeploymentInfo>, bool)>> = FastMap::default();
        for (dep_id, ids) in dep_targets {
            let d = &registry.deployments[dep_id];
            let Some(cluster) = clusters.get(&d.cluster_id).map(|e| &e.info) else {
                continue;
            };
            let organization_id = registry
                .workspaces
                .get(&d.workspace_id)
                .map_or("", |w| w.organization_id.as_str());
            let old = prev.and_then(|p| p.deployment(&d.cluster_id, &d.id));
            let same = old.is_some_and(|o| {
                o.workspace_id == d.workspace_id
                    && o.organization_id == organization_id
                    && o.namespace == d.namespace
                    && o.name == d.name
                    && o.kind == d.kind
                    && o.limits == d.limits
                    && Arc::ptr_eq(&o.cluster, cluster)
                    && o.targets.len() == ids.len()
                    && o.targets
                        .iter()
                        .zip(&ids)
                        .all(|(t, id)| targets.get(id).is_some_and(|n| Arc::ptr_eq(t, n)))
            });
            let info = match old {
                Some(o) if same => o.clone(),
                _ => Arc::new(DeploymentInfo {
                    id: d.id.clone(),
                    workspace_id: d.workspace_id.clone(),
                    organization_id: organization_id.to_owned(),
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                    kind: d.kind,
                    limits: d.limits,
                    cluster: cluster.clone(),
                    targets: ids
                        .iter()
                        .filter_map(|id| targets.get(id).cloned())
                        .collect(),
                }),
            };
            members
                .entry(d.cluster_id.as_str())
                .or_default()
                .push((info, same));
        }
        for (cluster_id, entry) in clusters.iter_mut() {
            let list = members.remove(cluster_id.as_str()).unwrap_or_default();
            let old = prev.and_then(|p| p.clusters.get(cluster_id));
            // Every Deployment the same, and as many: the same tables.
            if let Some(old) = old.filter(|o| {
                o.tables.by_id.len() == list.len() && list.iter().all(|(_, same)| *same)
            }) {
                entry.tables = old.tables.clone();
                continue;
            }
            let mut tables = Tables::default();
            for (info, _) in list {
                tables
                    .by_namespace
                    .insert(bytes_key(&info.namespace), info.clone());
                tables.by_id.insert(bytes_key(&info.id), info);
            }
            entry.tables = Arc::new(tables);
        }

        let unmoved = prev.is_some_and(|p| {
            let old = &p.registry.deployments;
            old.len() == registry.deployments.len()
                && old
                    .values()
                    .zip(registry.deployments.values())
                    .all(|(a, b)| a.id == b.id && a.cluster_id == b.cluster_id)
        });
        let deployment_cluster = match prev {
            Some(p) if unmoved => p.deployment_cluster.clone(),
            _ => Arc::new(
                registry
                    .deployments
                    .values()
                    .map(|d| (bytes_key(&d.id), d.cluster_id.clone()))
                    .collect(),
            ),
        };

        Snapshot {
            version,
            salt,
            registry,
            clusters,
            by_token,
            deployment_cluster,
            targets,
        }
    }

    /// Cluster of an ingest token (bearer), or of (cluster id, token) for basic auth.
    pub fn authenticate(&self, cluster_id: Option<&str>, token: &str) -> Option<Arc<ClusterInfo>> {
        if token.is_empty() {
            return None;
        }
        match cluster_id {
            Some(id) => {
                let entry = self.clusters.get(id)?;
                entry.token.matches(token).then(|| entry.info.clone())
            }
            None => self.by_token.get(token).cloned(),
        }
    }

    /// The registry version this snapshot was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The registry this snapshot was built from.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The salt that keys target ids.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Deployment `deployment_id` of cluster `cluster_id`.
    pub fn deployment(
        &self,
        cluster_id: &str,
        deployment_id: &str,
    ) -> Option<&Arc<DeploymentInfo>> {
        self.clusters
            .get(cluster_id)?
            .tables
            .by_id
            .get(deployment_id.as_bytes())
    }

    /// The Deployment of cluster `cluster_id` in `namespace`.
    pub fn deployment_by_namespace(
        &self,
        cluster_id: &str,
        namespace: &str,
    ) -> Option<&Arc<DeploymentInfo>> {
        self.clusters
            .get(cluster_id)?
            .tables
            .by_namespace
            .get(namespace.as_bytes())
    }

    /// The cluster id of any Deployment, whichever cluster it is on.
    pub fn deployment_cluster_id(&self, deployment_id: &str) -> Option<&str> {
        self.deployment_cluster
            .get(deployment_id.as_bytes())
            .map(String::as_str)
    }

    /// The attribution tables of cluster `cluster_id` (`None`: unknown
    /// cluster, whose series are all unattributed); resolve once per request.
    pub fn cluster_view(&self, cluster_id: &str) -> Option<ClusterView<'_>> {
        Some(ClusterView {
            entry: self.clusters.get(cluster_id)?,
            deployment_cluster: &self.deployment_cluster,
        })
    }

    /// Attributes a series sent by `cluster_id` from its `deploymentId` and
    /// `namespace` labels (SPEC §4). Per request, prefer one
    /// [`cluster_view`](Self::cluster_view) and [`ClusterView::attribute`].
    pub fn attribute(
        &self,
        cluster_id: &str,
        deployment_id: Option<&str>,
        namespace: Option<&str>,
    ) -> Attribution<'_> {
        match self.cluster_view(cluster_id) {
            Some(view) => view.attribute(
                deployment_id.map(str::as_bytes),
                namespace.map(str::as_bytes),
            ),
            None => Attribution::Unattributed,
        }
    }

    /// The resolved targets of a Deployment (empty if it has none or is unknown).
    pub fn targets_of(&self, cluster_id: &str, deployment_id: &str) -> &[Arc<Target>] {
        self.deployment(cluster_id, deployment_id)
            .map_or(&[], |d| d.targets.as_slice())
    }

    /// Every target, in id order.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }

    /// One target by id.
    pub fn target(&self, id: &str) -> Option<&Arc<Target>> {
        self.targets.get(id)
    }

    /// What changed in targets from `old` to `self`.
    pub fn diff_from(&self, old: &Snapshot) -> SnapshotDiff {
        let mut diff = SnapshotDiff {
            from_version: old.version,
            to_version: self.version,
            ..SnapshotDiff::default()
        };
        for (id, t) in &self.targets {
            match old.targets.get(id) {
                None => diff.added.push(t.clone()),
                Some(o) if o.routes != t.routes => diff.changed.push(t.clone()),
                Some(_) => {}
            }
        }
        for id in old.targets.keys() {
            if !self.targets.contains_key(id) {
                diff.removed.push(id.clone());
            }
        }
        diff
    }
}

fn bytes_key(s: &str) -> Box<[u8]> {
    Box::from(s.as_bytes())
}

/// Targets added, changed (same identity, different routes) and removed between two versions.
///
/// A target whose config changes gets a new id: it shows as one removed and
/// one added, and queues of unchanged targets are untouched.
#[derive(Debug, Default)]
pub struct SnapshotDiff {
    /// Version of the old snapshot.
    pub from_version: u64,
    /// Version of the new snapshot.
    pub to_version: u64,
    /// Targets that did not exist before.
    pub added: Vec<Arc<Target>>,
    /// Targets that exist in both with different routes.
    pub changed: Vec<Arc<Target>>,
    /// Ids of targets that are gone.
    pub removed: Vec<TargetId>,
}

impl SnapshotDiff {
    /// Whether no target changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}
