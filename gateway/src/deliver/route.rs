//! Attribution, catalog, label stamping and fan-out of one request (SPEC §4):
//! plain code over a [`Plan`], no IO.
//!
//! # Plan
//! A [`Plan`] is compiled once per registry version: for every Deployment,
//! its *variants*, one per distinct set of target labels among its targets.
//! Each variant holds the pre-encoded [`LabelSet`] to stamp (the seven
//! registry labels plus the target labels) and the targets that receive
//! exactly that form. K targets with the same labels cost one encode.
//! Variants with exactly the same targets (a Workspace export linked to
//! every Deployment gives them all the same) form a [`TargetSet`]: a
//! request's records for a set are cut together, however many Deployments
//! it interleaves.
//!
//! # One request
//! [`Scratch::route`] resolves the sending cluster's attribution tables once
//! ([`Snapshot::cluster_view`]), then walks the scanned series once: it reads
//! `__name__`, `deploymentId` and `namespace` where the scanner found them
//! (no second parse of the labels), applies the catalog, attributes the
//! series (`foreign`, `unattributed` drops), checks the active-series limits
//! of its Deployment and cluster when they have one ([`super::limits`],
//! `series_limit` drops), and assigns it to a group (set, shard). The
//! shard is a fixed hash of its metric family and Deployment
//! (`shard_hash`) modulo the set's shard count, the widest of the set's
//! targets ([`Width`], read once per request per set); each target takes a
//! shard into lane `shard % width`, so a series' lane is its hash modulo
//! that target's width, and a Deployment spreads over as many lanes as its
//! load needs (docs/delivery.md "Lanes follow load"; the queue keeps a
//! series in order when the width changes). At width 1 a set's share of a
//! request is one chunk, Deployment by Deployment inside, compressed once
//! for all the set's targets: on dense-100 (1,000-series requests of 100
//! Deployments, 10 targets) 44-48 bytes per sample per target over the
//! runs measured (docs/benchmarks.md); the issue measured 68.5 with a chunk
//! per Deployment, in its own harness.
//! `route` returns an upper bound of the encoded size so the caller can
//! take that much from the memory budget first. [`Scratch::encode`] then
//! writes every group's records into one buffer (one allocation per
//! request), and [`Scratch::chunks`] yields each group as a refcounted slice
//! of it for each of the set's targets, with its Deployments' sample counts
//! as runs ([`ChunkOwners`], one allocation per request for all chunks).
//!
//! Per series that is: one foldhash lookup by `deploymentId` (or namespace)
//! in the cluster's tables, one by Deployment id in the plan, one hash over
//! the series' label bytes (its identity for the series limits), one over
//! its name, and array indexing for the group: a set touched by the request
//! gets a run of `shards` slots in a request-local vector, so (set, shard)
//! → group is two loads, not a map lookup.
//!
//! # Lanes on disk
//! A chunk spilled to disk carries its lane as a tag, and a restarted
//! process puts a recovered record back in lane `tag % lanes`, with the lane
//! count of the backlog's manifest; nothing new goes until the recovered
//! backlog is delivered (`TargetCore::set_recovered`), since the width, and
//! so a series' lane, may differ in the new process. [`lane_hash`] and
//! [`lane_key`] are still fixed functions (no per-process seed) and pinned
//! by a test.
//!
//! The scratch vectors are reused across requests: once warm, the routing
//! and encoding of a request allocate a constant number of times,
//! independent of its series count (see `gateway/tests/alloc.rs`).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fanout_proto::encode::{Encoder, LabelSet};
use fanout_proto::scan::{RoutingLabel, Series, SeriesView};

use super::accounting::{Owners, UNKNOWN};
use super::catalog::Catalog;
use super::limits::SeriesLimits;
use super::queue::{ChunkOwners, OwnerRun};
use crate::registry::{Attribution, DeploymentInfo, Snapshot};

/// The labels Fanout stamps from the registry.
pub const REGISTRY_LABELS: [&str; 7] = [
    "cloud_provider",
    "cloud_region",
    "cluster_organization_id",
    "deploymentId",
    "namespace",
    "organizationId",
    "workspaceId",
];

/// One stamped form of a Deployment's series and the targets that get it.
#[derive(Debug)]
pub struct Variant<T> {
    /// Labels to stamp.
    pub labels: LabelSet,
    /// Upper bound of the bytes the stamped labels add to a series.
    pub inject_bound: usize,
    /// Shards (the largest lane count of its targets).
    pub shards: u32,
    /// Receiving targets.
    pub targets: Vec<T>,
    /// Its Deployment's number ([`Owners`]), carried by its chunks.
    pub owner: u32,
    /// Its Deployment's [`lane_key`], mixed with a series' metric name
    /// into the hash that picks its shard (`shard_hash`).
    lane_key: u64,
    /// Its target set ([`Plan::sets`]): variants with the same targets
    /// (other Deployments, their own labels) share a request's chunks.
    set: u32,
    /// What `labels` were made from: its Deployment and its targets'
    /// `labels` ([`Plan::build_after`] reuses them while both are the same).
    made_from: (Arc<DeploymentInfo>, BTreeMap<String, String>),
}

/// The variants of every Deployment that go to exactly the same targets:
/// a request's records for them are one chunk per lane, compressed once
/// for all those targets however many Deployments the request interleaves.
#[derive(Debug)]
pub struct TargetSet<T> {
    /// The targets (those of its first variant, in that order).
    pub targets: Vec<T>,
    /// Shards: the largest lane count of its targets.
    pub shards: u32,
}

/// The compiled routing of one registry version; `T` is the target handle.
#[derive(Debug)]
pub struct Plan<T> {
    /// Registry version it was built from.
    pub version: u64,
    variants: Vec<Variant<T>>,
    sets: Vec<TargetSet<T>>,
    /// Deployment id → indexes into `variants` (looked up per series).
    deployments: HashMap<String, Range<u32>, foldhash::fast::RandomState>,
}

/// The index in `sets` of the target set of sorted target `ids` (with
/// handles `targets`), added if new.
fn set_index<'a, T: Clone>(
    set_of: &mut HashMap<Vec<&'a str>, u32>,
    sets: &mut Vec<TargetSet<T>>,
    ids: Vec<&'a str>,
    targets: &[T],
) -> u32 {
    *set_of.entry(ids).or_insert_with(|| {
        sets.push(TargetSet {
            targets: targets.to_vec(),
            shards: 1,
        });
        (sets.len() - 1) as u32
    })
}

impl<T: Clone> Plan<T> {
    /// An empty plan (nothing routes anywhere).
    pub fn empty() -> Plan<T> {
        Plan {
            version: 0,
            variants: Vec::new(),
            sets: Vec::new(),
            deployments: HashMap::default(),
        }
    }

    /// Builds the plan of `snapshot`; `target` maps a target id to its handle
    /// and lane count (`None` skips the target).
    pub fn build(
        snapshot: &Snapshot,
        owners: &Owners,
        target: impl FnMut(&str) -> Option<(T, u32)>,
    ) -> Plan<T> {
        Plan::build_after(snapshot, owners, target, None)
    }

    /// [`Self::build`], taking from `prev` (the plan of an earlier version)
    /// the stamped labels of every variant whose Deployment (the same
    /// `Arc`: `Snapshot::build_after` keeps it while nothing of it changed)
    /// and target labels are the same: the labels' bytes are shared, not
    /// encoded again (at 10,000 Deployments, making them took most of a
    /// rebuild).
    pub fn build_after(
        snapshot: &Snapshot,
        owners: &Owners,
        mut target: impl FnMut(&str) -> Option<(T, u32)>,
        prev: Option<&Plan<T>>,
    ) -> Plan<T> {
        let mut variants = Vec::new();
        let mut sets: Vec<TargetSet<T>> = Vec::new();
        // Sorted target ids → set index.
        let mut set_of: HashMap<Vec<&str>, u32> = HashMap::new();
        let mut deployments = HashMap::default();
        for d in snapshot.registry().deployments.values() {
            let Some(info) = snapshot.deployment(&d.cluster_id, &d.id) else {
                continue;
            };
            type ByLabels<'a, T> =
                BTreeMap<&'a BTreeMap<String, String>, (Vec<T>, u32, Vec<&'a str>)>;
            let mut by_labels: ByLabels<'_, T> = BTreeMap::new();
            for t in &info.targets {
                if let Some((handle, lanes)) = target(&t.id.0) {
                    let e = by_labels.entry(&t.config.labels).or_default();
                    e.0.push(handle);
                    e.1 = e.1.max(lanes);
                    e.2.push(t.id.0.as_str());
                }
            }
            let start = variants.len() as u32;
            let owner = owners.intern(&info.id);
            let previous: &[Variant<T>] = prev
                .and_then(|p| {
                    let r = p.deployments.get(&info.id)?;
                    p.variants.get(r.start as usize..r.end as usize)
                })
                .unwrap_or(&[]);
            for (target_labels, (targets, shards, mut ids)) in by_labels {
                let reused = previous
                    .iter()
                    .find(|v| Arc::ptr_eq(&v.made_from.0, info) && v.made_from.1 == *target_labels);
                if let Some(v) = reused {
                    ids.sort_unstable();
                    let set = set_index(&mut set_of, &mut sets, ids, &targets);
                    let shared = &mut sets[set as usize];
                    shared.shards = shared.shards.max(shards.max(1));
                    variants.push(Variant {
                        labels: v.labels.clone(),
                        inject_bound: v.inject_bound,
                        shards: shards.max(1),
                        targets,
                        owner,
                        lane_key: v.lane_key,
                        set,
                        made_from: v.made_from.clone(),
                    });
                    continue;
                }
                let c = &info.cluster;
                let registry = [
                    ("cloud_provider", c.cloud_provider.as_str()),
                    ("cloud_region", c.cloud_region.as_str()),
                    ("cluster_organization_id", c.organization_id.as_str()),
                    ("deploymentId", info.id.as_str()),
                    ("namespace", info.namespace.as_str()),
                    ("organizationId", info.organization_id.as_str()),
                    ("workspaceId", info.workspace_id.as_str()),
                ];
                let all = registry
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .chain(target_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let labels = match LabelSet::new(all) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(deployment = %info.id, error = %e, "cannot build the labels of a target variant; its series are not delivered");
                        continue;
                    }
                };
                let inject_bound = labels.iter().map(|(n, v)| n.len() + v.len() + 16).sum();
                ids.sort_unstable();
                let set = set_index(&mut set_of, &mut sets, ids, &targets);
                let shared = &mut sets[set as usize];
                shared.shards = shared.shards.max(shards.max(1));
                variants.push(Variant {
                    labels,
                    inject_bound,
                    shards: shards.max(1),
                    targets,
                    owner,
                    lane_key: lane_key(&info.id),
                    set,
                    made_from: (info.clone(), target_labels.clone()),
                });
            }
            deployments.insert(info.id.clone(), start..variants.len() as u32);
        }
        Plan {
            version: snapshot.version(),
            variants,
            sets,
            deployments,
        }
    }

    /// Every variant.
    pub fn variants(&self) -> &[Variant<T>] {
        &self.variants
    }

    /// Every target set.
    pub fn sets(&self) -> &[TargetSet<T>] {
        &self.sets
    }
}

/// Samples not exported, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// No Deployment of the sending cluster matches.
    pub unattributed: u64,
    /// `deploymentId` of another cluster.
    pub foreign: u64,
    /// Not in the catalog.
    pub filtered: u64,
    /// Attributed to a Deployment that has no targets (not an error).
    pub no_target: u64,
    /// A new series of a cluster or Deployment at its `limits.series`.
    pub series_limit: u64,
}

#[derive(Debug, Clone)]
struct Group {
    set: u32,
    shard: u32,
    bound: usize,
    samples: u32,
    series: u32,
    range: Range<usize>,
    /// Its Deployments' runs in [`Scratch::runs`] (after encoding).
    runs: Range<u32>,
    /// The newest sample timestamp of its series (after encoding).
    newest: i64,
}

/// One chunk of a routed request: the records of one (target set, shard).
#[derive(Debug)]
pub struct Routed<'a, T> {
    /// The targets that get it.
    pub set: &'a TargetSet<T>,
    /// Its shard: the request's records for the set were cut by series
    /// hash into `shards` (a target takes it into lane `shard % width`).
    pub shard: u32,
    /// How many shards the request's records for the set were cut into.
    pub shards: u32,
    /// The encoded records, Deployment by Deployment.
    pub records: Bytes,
    /// Samples in them.
    pub samples: u32,
    /// Series in them.
    pub series: u32,
    /// Whose records they are.
    pub owners: ChunkOwners,
    /// The newest sample timestamp in them (ms; `i64::MIN`: none).
    pub newest: i64,
}

/// Marks an unused slot of [`Scratch::slot_base`] / [`Scratch::slots`].
const NONE: u32 = u32::MAX;

/// Reusable per-request working space.
#[derive(Debug, Default)]
pub struct Scratch {
    /// (group, variant, series index) of every routed series copy.
    items: Vec<(u32, u32, u32)>,
    groups: Vec<Group>,
    /// Per target set of the plan: where its slots start in `slots`, or
    /// `NONE` when the request did not touch it yet. All `NONE` between
    /// requests.
    slot_base: Vec<u32>,
    /// Per (touched set, shard): its group, or `NONE`.
    slots: Vec<u32>,
    /// Per target set: the shards this request cuts it into (valid where
    /// `slot_base` is set).
    set_shards: Vec<u32>,
    /// Sets whose `slot_base` is set, to reset them.
    touched: Vec<u32>,
    /// Each group's Deployments in order (after encoding): one run per
    /// Deployment, its end relative to the group's records.
    runs: Vec<OwnerRun>,
    encoder: Encoder,
}

const LANE_KEYS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The 128-bit product of `a` and `b`, its halves xor-ed: the mixing step of
/// foldhash and wyhash.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn mix16(h: u64, block: &[u8; 16]) -> u64 {
    let (a, b) = block.split_at(8);
    let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
    let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
    folded_multiply(a ^ LANE_KEYS[1], b ^ LANE_KEYS[2] ^ h)
}

/// The hash that picks a series' lane (shard): a fixed function of `bytes`,
/// the same in every process, platform and release, because lane tags are
/// persisted in the disk spill (see the module docs). One 128-bit multiply
/// per 16 bytes; not keyed: a sender can at most crowd its own series into
/// one lane, as with any unkeyed hash.
pub fn lane_hash(bytes: &[u8]) -> u64 {
    let mut h = LANE_KEYS[0] ^ bytes.len() as u64;
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        h = mix16(h, block.try_into().unwrap_or(&[0; 16]));
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 16];
        tail[..rest.len()].copy_from_slice(rest);
        h = mix16(h, &tail);
    }
    folded_multiply(h ^ LANE_KEYS[3], LANE_KEYS[0] ^ bytes.len() as u64)
}

/// The lane key of a series: its Deployment's id, so that all of a
/// Deployment's series share one lane of each target (module docs).
/// Computed once per plan ([`Variant::lane_key`]), not per series. Pinned.
pub fn lane_key(deployment: &str) -> u64 {
    folded_multiply(
        lane_hash(deployment.as_bytes()) ^ LANE_KEYS[2],
        LANE_KEYS[1],
    )
}

/// The hash that picks a series' shard, and so its lane at every width:
/// its metric family and its Deployment. A Deployment spreads over the
/// lanes by family while a family's series stay side by side, where they
/// share most of their bytes within snappy's reach (hashing every label
/// cost 45 bytes per sample per target on fanout-1 at saturation, 36.6
/// with the Deployment alone as the key). Any fixed function of the series
/// keeps its order; this one needs no pinning (a recovered backlog goes
/// first whatever the key).
#[inline]
fn shard_hash(family: u64, deployment: u64) -> u64 {
    folded_multiply(family ^ deployment, LANE_KEYS[1])
}

/// The hash of a series (its identity for the series limits): over its
/// label fields in one call, or, when other fields sit between its labels
/// (allowed, written by no known sender), over each label field in turn.
#[inline]
fn series_hash(view: &SeriesView<'_>) -> u64 {
    match view.label_fields() {
        Some(fields) => lane_hash(fields),
        None => view.labels().fold(LANE_KEYS[3], |h, l| {
            folded_multiply(h ^ lane_hash(l.raw), LANE_KEYS[1])
        }),
    }
}

/// A target as routing sees it: how many shards it wants a request's
/// records cut into (its lane groups: `TargetCore::width`). The chunks of a
/// target set are cut for the widest of its targets; each takes shard `s`
/// into lane `s % width`.
pub trait Width {
    /// Shards wanted (a power of two; larger values are capped at the
    /// set's lanes).
    fn width(&self) -> u32;
}

/// Test and bench handles: as wide as their lanes.
impl Width for String {
    fn width(&self) -> u32 {
        u32::MAX
    }
}

/// Test and bench handles: as wide as their lanes.
impl Width for u32 {
    fn width(&self) -> u32 {
        u32::MAX
    }
}

/// What routing checks a request against, besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The registry version the plan was built from.
    pub snapshot: &'a Snapshot,
    /// Which names are exported.
    pub catalog: &'a Catalog,
    /// Active-series limits.
    pub limits: &'a SeriesLimits,
}

impl Scratch {
    /// Attributes, filters and groups the series of one request from
    /// `cluster_id`; returns the drops and an upper bound of the encoded size.
    pub fn route<T: Width>(
        &mut self,
        plan: &Plan<T>,
        rules: &Rules<'_>,
        cluster_id: &str,
        body: &[u8],
        series: &[Series],
    ) -> (Drops, usize) {
        let Rules {
            snapshot,
            catalog,
            limits,
        } = *rules;
        self.reset(plan.sets.len());
        let mut checks = limits.checks(std::time::Instant::now());
        let cluster = snapshot.cluster_view(cluster_id);
        let mut drops = Drops::default();
        let mut total = 0usize;
        for (i, s) in series.iter().enumerate() {
            let samples = (s.samples() + s.histograms()) as u64;
            let view = s.view(body);
            let name = view.routing_label(RoutingLabel::Name);
            if !name.is_some_and(|n| catalog.admits(n)) {
                drops.filtered += samples;
                continue;
            }
            let attribution = match &cluster {
                Some(c) => c.attribute(
                    view.routing_label(RoutingLabel::DeploymentId),
                    view.routing_label(RoutingLabel::Namespace),
                ),
                None => Attribution::Unattributed,
            };
            let info = match attribution {
                Attribution::Deployment(d) => d,
                Attribution::Foreign => {
                    drops.foreign += samples;
                    continue;
                }
                Attribution::Unattributed => {
                    drops.unattributed += samples;
                    continue;
                }
            };
            let range = match plan.deployments.get(info.id.as_str()) {
                Some(r) if !r.is_empty() => r.clone(),
                _ => {
                    drops.no_target += samples;
                    continue;
                }
            };
            let hash = series_hash(&view);
            // Its metric family's hash (the name is short; once per series).
            let family = lane_hash(name.unwrap_or_default());
            if !checks.admit(info, hash, samples) {
                drops.series_limit += samples;
                continue;
            }
            let len = s.range().len();
            for v in range {
                let variant = &plan.variants[v as usize];
                let (base, shards) = self.open_set(plan, variant.set);
                let shard = (shard_hash(family, variant.lane_key) & u64::from(shards - 1)) as u32;
                let g = self.group_of(variant.set, base + shard, shard);
                let bound = len + variant.inject_bound + 11;
                let group = &mut self.groups[g as usize];
                group.bound += bound;
                group.samples = group.samples.saturating_add(samples as u32);
                group.series += 1;
                total += bound;
                self.items.push((g, v, i as u32));
            }
        }
        (drops, total)
    }

    /// Empties the request state; `sets` is the plan's target set count.
    fn reset(&mut self, sets: usize) {
        self.items.clear();
        self.groups.clear();
        self.runs.clear();
        for v in self.touched.drain(..) {
            self.slot_base[v as usize] = NONE;
        }
        self.slots.clear();
        // Grows only when a plan has more sets than any before it.
        if self.slot_base.len() < sets {
            self.slot_base.resize(sets, NONE);
            self.set_shards.resize(sets, 1);
        }
    }

    /// Where `set`'s slots start and how many shards this request cuts it
    /// into: the widest of its targets ([`Width`]), read once per request.
    #[inline]
    fn open_set<T: Width>(&mut self, plan: &Plan<T>, set: u32) -> (u32, u32) {
        let base = &mut self.slot_base[set as usize];
        if *base == NONE {
            let s = &plan.sets[set as usize];
            let widest = s.targets.iter().map(Width::width).max().unwrap_or(1);
            let shards = widest.clamp(1, s.shards.max(1)).next_power_of_two();
            *base = self.slots.len() as u32;
            self.slots.resize(self.slots.len() + shards as usize, NONE);
            self.touched.push(set);
            self.set_shards[set as usize] = shards;
        }
        (*base, self.set_shards[set as usize])
    }

    /// The group of `set`'s shard `shard` in slot `slot`, opened if new.
    #[inline]
    fn group_of(&mut self, set: u32, slot: u32, shard: u32) -> u32 {
        let slot = &mut self.slots[slot as usize];
        if *slot == NONE {
            *slot = self.groups.len() as u32;
            self.groups.push(Group {
                set,
                shard,
                bound: 0,
                samples: 0,
                series: 0,
                range: 0..0,
                runs: 0..0,
                newest: i64::MIN,
            });
        }
        *slot
    }

    /// Encodes every routed series with its variant's labels into one
    /// buffer: group by group, and within a group Deployment by Deployment
    /// (a Deployment's series side by side share their labels within
    /// snappy's reach), each in the request's order.
    pub fn encode<T>(&mut self, plan: &Plan<T>, body: &[u8], series: &[Series]) -> Bytes {
        self.items.sort_unstable();
        let total: usize = self.groups.iter().map(|g| g.bound).sum();
        let mut out = BytesMut::with_capacity(total);
        let mut current: Option<(u32, u32)> = None;
        // The current run's samples and newest timestamp, added to its
        // group when the run closes (not per series).
        let (mut run_samples, mut run_newest) = (0u32, i64::MIN);
        let items = std::mem::take(&mut self.items);
        for &(g, v, i) in &items {
            if current != Some((g, v)) {
                if let Some((pg, pv)) = current {
                    self.close_run(plan, pg, pv, (run_samples, run_newest), out.len());
                }
                if current.map(|c| c.0) != Some(g) {
                    let group = &mut self.groups[g as usize];
                    group.range.start = out.len();
                    group.runs = self.runs.len() as u32..self.runs.len() as u32;
                }
                current = Some((g, v));
                (run_samples, run_newest) = (0, i64::MIN);
            }
            let s = &series[i as usize];
            run_samples = run_samples.saturating_add((s.samples() + s.histograms()) as u32);
            run_newest = run_newest.max(s.newest());
            let labels = &plan.variants[v as usize].labels;
            self.encoder.encode_series(s.view(body), labels, &mut out);
        }
        if let Some((pg, pv)) = current {
            self.close_run(plan, pg, pv, (run_samples, run_newest), out.len());
        }
        self.items = items;
        out.freeze()
    }

    /// Ends the run of variant `v` in group `g` at `end` of the buffer;
    /// `(samples, newest)`: its samples and newest timestamp.
    fn close_run<T>(
        &mut self,
        plan: &Plan<T>,
        g: u32,
        v: u32,
        (samples, newest): (u32, i64),
        end: usize,
    ) {
        let group = &mut self.groups[g as usize];
        group.range.end = end;
        group.newest = group.newest.max(newest);
        self.runs.push(OwnerRun {
            owner: plan.variants[v as usize].owner,
            end: (end - group.range.start) as u32,
            samples,
        });
        group.runs.end = self.runs.len() as u32;
    }

    /// Each group after [`encode`](Self::encode). Chunks of several
    /// Deployments carry their runs (one allocation per request for all).
    pub fn chunks<'a, T>(
        &'a self,
        plan: &'a Plan<T>,
        records: &'a Bytes,
    ) -> impl Iterator<Item = Routed<'a, T>> + 'a {
        let shared: Option<Arc<[OwnerRun]>> = self
            .groups
            .iter()
            .any(|g| g.runs.len() > 1)
            .then(|| Arc::from(self.runs.as_slice()));
        self.groups.iter().map(move |g| {
            let runs = &self.runs[g.runs.start as usize..g.runs.end as usize];
            let owners = match (runs, &shared) {
                ([one], _) => ChunkOwners::One(one.owner),
                ([_, _, ..], Some(all)) => ChunkOwners::Runs(all.clone(), g.runs.start, g.runs.end),
                _ => ChunkOwners::One(UNKNOWN),
            };
            Routed {
                set: &plan.sets[g.set as usize],
                shard: g.shard,
                shards: self.set_shards[g.set as usize],
                records: records.slice(g.range.clone()),
                samples: g.samples,
                series: g.series,
                owners,
                newest: g.newest,
            }
        })
    }
}

/// A shared scratch pool so concurrent requests each get their own.
#[derive(Debug, Default)]
pub struct ScratchPool {
    free: std::sync::Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    /// Takes a scratch (a new one when none is free).
    pub fn take(&self) -> Scratch {
        self.free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default()
    }

    /// Returns a scratch for reuse (at most 64 are kept).
    pub fn give(&self, s: Scratch) {
        if let Ok(mut f) = self.free.lock() {
            if f.len() < 64 {
                f.push(s);
            }
        }
    }
}

/// A handle for tests and benches: the shared [`Arc`] of a plan.
pub type SharedPlan<T> = Arc<Plan<T>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ops, Document, Registry};
    use fanout_proto::v1;

    fn snapshot() -> Snapshot {
        let yaml = "clusters:\n  - {id: c1, organizationId: oc1, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: t1}\n  - {id: c2, organizationId: oc2, cloudProvider: gcp, cloudRegion: eu, ingestToken: t2}\n\
            workspaces:\n  - {id: ws, organizationId: ow, name: w}\n\
            deployments:\n  - {id: d1, workspaceId: ws, clusterId: c1, namespace: ns1, type: HOSTED, name: a}\n  - {id: d2, workspaceId: ws, clusterId: c2, namespace: ns2, type: HOSTED, name: b}\n  - {id: d3, workspaceId: ws, clusterId: c1, namespace: ns3, type: HOSTED, name: c}\n\
            metricsExports:\n  - {id: x, objectKey: x, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://h/x', labels: {env: dev}}}\n  - {id: y, objectKey: y, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://h/y', labels: {env: dev}}}\n  - {id: z, objectKey: z, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {endpoint: 'http://h/z'}}\n  - {id: w, objectKey: w, scope: DEPLOYMENT, scopeEntityId: d2, metricsExport: {endpoint: 'http://h/w'}}\n";
        let mut r = Registry::default();
        ops::replace_all(&mut r, Document::parse(yaml.as_bytes(), true).unwrap()).unwrap();
        Snapshot::build(Arc::new(r), 1, Arc::from(&b"s"[..]))
    }

    /// A plan built after another, on a snapshot built after the other's,
    /// equals a fresh build, and shares the stamped labels of what did not
    /// change.
    #[test]
    fn a_plan_built_after_another_equals_a_fresh_build() {
        let first = snapshot();
        let handle = |id: &str| Some((id.to_owned(), 4));
        let old: Plan<String> = Plan::build(&first, &Owners::default(), handle);
        let mut r = (**first.registry()).clone();
        r.clusters.get_mut("c2").unwrap().cloud_region = "eu-2".into();
        let second = Snapshot::build_after(Arc::new(r), 2, Arc::from(&b"s"[..]), Some(&first));
        let owners = Owners::default();
        let after = Plan::build_after(&second, &owners, handle, Some(&old));
        let fresh = Plan::build(&second, &owners, handle);
        let shown = |p: &Plan<String>| {
            let sets: Vec<String> = p.sets().iter().map(|s| format!("{s:?}")).collect();
            let variants: Vec<String> = p
                .variants()
                .iter()
                .map(|v| {
                    format!(
                        "{:?} {} {:?} {} {}",
                        v.labels, v.shards, v.targets, v.owner, v.set
                    )
                })
                .collect();
            (variants, sets)
        };
        assert_eq!(shown(&after), shown(&fresh));
        // d1's labels (cluster c1, unchanged) are shared with the old plan;
        // d2's (cluster c2, whose region changed) are new.
        let first_byte = |l: &LabelSet| l.iter().next().map(|(name, _)| name.as_ptr());
        let shares = |p: &Plan<String>, dep: &str| {
            let v = &p.variants()[p.deployments[dep].start as usize];
            old.variants()
                .iter()
                .any(|o| first_byte(&o.labels) == first_byte(&v.labels))
        };
        assert!(shares(&after, "d1"));
        assert!(!shares(&after, "d2"));
        assert!(!shares(&fresh, "d1"));
    }

    fn ts(labels: &[(&str, &str)], samples: usize) -> v1::TimeSeries {
        v1::TimeSeries {
            labels: labels
                .iter()
                .map(|(k, v)| v1::Label {
                    name: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: (0..samples)
                .map(|i| v1::Sample {
                    value: i as f64,
                    timestamp: i as i64,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn deliver_route_attributes_stamps_and_shares_variants() {
        let snap = snapshot();
        let plan: Plan<String> = Plan::build(&snap, &Owners::default(), |id| {
            snap.target(id).map(|t| (t.config.endpoint.clone(), 4))
        });
        // d1: x and y share labels (one variant), z has none; d2: one; d3: none.
        assert_eq!(plan.variants().len(), 3);
        let req = v1::WriteRequest {
            timeseries: vec![
                // Unsorted, spoofed metadata, attributed by deploymentId.
                ts(
                    &[
                        ("__name__", "airflow_ti_failures_total"),
                        ("workspaceId", "evil"),
                        ("deploymentId", "d1"),
                        ("pod", "p"),
                    ],
                    2,
                ),
                // By namespace.
                ts(&[("__name__", "kube_pod_labels"), ("namespace", "ns1")], 1),
                // d2 is on another cluster: foreign even with a matching namespace.
                ts(
                    &[
                        ("__name__", "kube_pod_labels"),
                        ("deploymentId", "d2"),
                        ("namespace", "ns1"),
                    ],
                    1,
                ),
                // Unknown deploymentId falls back to the namespace.
                ts(
                    &[
                        ("__name__", "kube_pod_labels"),
                        ("deploymentId", "nope"),
                        ("namespace", "ns1"),
                    ],
                    1,
                ),
                ts(&[("__name__", "kube_pod_labels"), ("namespace", "ns-x")], 3),
                ts(
                    &[("__name__", "go_gc_duration_seconds"), ("namespace", "ns1")],
                    4,
                ),
                ts(&[("__name__", "kube_pod_labels"), ("namespace", "ns3")], 5),
            ],
            ..Default::default()
        };
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut series = Vec::new();
        fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series).unwrap();
        let mut scratch = Scratch::default();
        let (drops, bound) = scratch.route(
            &plan,
            &Rules {
                snapshot: &snap,
                catalog: &Catalog::builtin(),
                limits: &SeriesLimits::new(None, None),
            },
            "c1",
            &body,
            &series,
        );
        assert_eq!(
            drops,
            Drops {
                unattributed: 3,
                foreign: 1,
                filtered: 4,
                no_target: 5,
                series_limit: 0,
            }
        );
        let records = scratch.encode(&plan, &body, &series);
        assert!(records.len() <= bound);
        let mut per_target: BTreeMap<String, Vec<Vec<(String, String)>>> = BTreeMap::new();
        let mut samples = 0;
        for routed in scratch.chunks(&plan, &records) {
            samples += routed.samples;
            let req: v1::WriteRequest = prost::Message::decode(routed.records).unwrap();
            // A chunk's newest timestamp is that of the samples it holds.
            let newest = req
                .timeseries
                .iter()
                .flat_map(|s| s.samples.iter().map(|x| x.timestamp))
                .max();
            assert_eq!(Some(routed.newest), newest);
            for t in &routed.set.targets {
                for series in &req.timeseries {
                    let labels = series
                        .labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect();
                    per_target.entry(t.clone()).or_default().push(labels);
                }
            }
        }
        // 3 series of d1 (2 + 1 + 1 samples) in two variants.
        assert_eq!(samples, 8);
        assert_eq!(
            per_target.keys().collect::<Vec<_>>(),
            ["http://h/x", "http://h/y", "http://h/z"]
        );
        for (target, sets) in &per_target {
            assert_eq!(sets.len(), 3, "{target}");
            for set in sets {
                let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
                assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
                let get = |k: &str| set.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                assert_eq!(get("workspaceId"), Some("ws"));
                assert_eq!(get("deploymentId"), Some("d1"));
                assert_eq!(get("namespace"), Some("ns1"));
                assert_eq!(get("organizationId"), Some("ow"));
                assert_eq!(get("cluster_organization_id"), Some("oc1"));
                assert_eq!(get("cloud_provider"), Some("aws"));
                assert_eq!(get("cloud_region"), Some("us-east-1"));
                let env = if target.ends_with('z') {
                    None
                } else {
                    Some("dev")
                };
                assert_eq!(get("env"), env, "{target}");
            }
        }
        assert_eq!(per_target["http://h/x"], per_target["http://h/y"]);
    }

    /// A Deployment's series spread over the lanes by series hash, and
    /// each keeps its lane when another target with a different
    /// `maxConcurrency` joins its set (which raises the set's shard
    /// count): lanes are powers of two (`lanes_for`), so `shard % lanes` is
    /// the series hash modulo the lanes whatever the shards.
    #[test]
    fn deliver_route_lane_of_a_series_stays_when_a_target_joins_its_variant() {
        use crate::deliver::queue::lanes_for;
        let snap = snapshot();
        let req = v1::WriteRequest {
            timeseries: (0..200)
                .map(|i| {
                    let pod = format!("pod-{i}");
                    // Several families, one Deployment.
                    let name = [
                        "kube_pod_labels",
                        "kube_pod_status_phase",
                        "kube_pod_status_ready",
                        "kube_pod_status_scheduled",
                        "kube_pod_status_qos_class",
                        "kube_pod_status_reason",
                        "container_cpu_usage_seconds_total",
                        "container_memory_working_set_bytes",
                    ][i % 8];
                    ts(
                        &[
                            ("__name__", name),
                            ("namespace", "ns1"),
                            ("pod", pod.as_str()),
                        ],
                        1,
                    )
                })
                .collect(),
            ..Default::default()
        };
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let mut series = Vec::new();
        fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series).unwrap();
        // x alone (maxConcurrency 3), then x with y (maxConcurrency 5) in its
        // variant: the lane of every series on x, by pod.
        let x_lanes = lanes_for(3);
        let lanes_on_x = |with_y: bool| {
            let plan: Plan<String> = Plan::build(&snap, &Owners::default(), |id| {
                let t = snap.target(id)?;
                match t.config.endpoint.as_str() {
                    "http://h/x" => Some((t.config.endpoint.clone(), x_lanes)),
                    "http://h/y" if with_y => Some((t.config.endpoint.clone(), lanes_for(5))),
                    _ => None,
                }
            });
            let mut scratch = Scratch::default();
            scratch.route(
                &plan,
                &Rules {
                    snapshot: &snap,
                    catalog: &Catalog::builtin(),
                    limits: &SeriesLimits::new(None, None),
                },
                "c1",
                &body,
                &series,
            );
            let records = scratch.encode(&plan, &body, &series);
            let mut lanes = BTreeMap::new();
            for routed in scratch.chunks(&plan, &records) {
                if !routed.set.targets.iter().any(|t| t == "http://h/x") {
                    continue;
                }
                let req: v1::WriteRequest = prost::Message::decode(routed.records).unwrap();
                for s in req.timeseries {
                    let pod = s.labels.iter().find(|l| l.name == "pod").unwrap();
                    lanes.insert(pod.value.clone(), routed.shard % x_lanes);
                }
            }
            lanes
        };
        let alone = lanes_on_x(false);
        assert_eq!(alone.len(), 200);
        let lanes: std::collections::BTreeSet<_> = alone.values().collect();
        assert_eq!(
            lanes.len(),
            x_lanes as usize,
            "one Deployment's series over every lane"
        );
        assert_eq!(alone, lanes_on_x(true));
    }
}

#[cfg(test)]
mod lane_hash_tests {
    use super::{lane_hash, lane_key};

    /// Lane tags are persisted in the disk spill and read back by the next
    /// process (possibly a newer release): these values must never change.
    /// If this fails, the lane hash changed: recovered backlogs of older
    /// releases would lose per-series order against new data.
    #[test]
    fn deliver_route_lane_hash_is_fixed_across_processes_and_releases() {
        let pinned: [(&[u8], u64); 4] = [
            (b"", 0x0a7b_f91b_e9f1_7e87),
            (b"a", 0x6eff_8eee_a712_ffa5),
            (b"0123456789abcdef", 0x1c52_2845_35a9_d783),
            (b"0123456789abcdefX", 0x4886_0196_f170_ebc2),
        ];
        for (input, want) in pinned {
            assert_eq!(lane_hash(input), want, "{input:?}");
        }
        let pinned: [(&str, u64); 3] = [
            ("", 0x55e0_0c2e_390a_e5d5),
            ("d1", 0x8be3_ae3d_2c31_5dd8),
            ("clt0a1b2c3d4e5f6g7h8i9j0", 0xe706_3e22_78d2_896e),
        ];
        for (deployment, want) in pinned {
            assert_eq!(lane_key(deployment), want, "{deployment}");
        }
    }

    /// Low bits pick the lane (`hash % lanes`, lanes a power of two): they
    /// spread similar label sets evenly.
    #[test]
    fn deliver_route_lane_hash_spreads_similar_series_over_lanes() {
        let mut lanes = [0u32; 8];
        for i in 0..8_000 {
            let labels = format!("pod=airflow-worker-6d9f7c8b5-{i:05x}");
            lanes[(lane_hash(labels.as_bytes()) % 8) as usize] += 1;
        }
        assert!(
            lanes.iter().all(|&n| (800..1_200).contains(&n)),
            "{lanes:?}"
        );
    }
}
