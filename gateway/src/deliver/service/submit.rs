//! One accepted request into the targets' queues ([`Inner::submit`]):
//! route and encode it once, then push each target its chunks under one
//! lock (`wal`: append them to the disk spills first and answer only once
//! they are durable), and log requests dropped whole.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::super::queue::{Chunk, Packed};
use super::super::stats::wall_ms;
use super::super::{Accepted, DeliveryError};
use super::target::Unpin;
use super::{Durability, Inner, TargetHandle};

/// How often a cluster's requests dropped whole are logged.
const DROPPED_LOG_EVERY: Duration = Duration::from_secs(60);

impl Inner {
    /// A request none of whose series goes anywhere for a reason the sender
    /// can fix (no Deployment matches, another cluster's Deployment, not in
    /// the catalog) is answered 2xx like any other, which looks like
    /// success: say so in the log, at most once a minute per cluster, with
    /// the reasons and one of its series.
    fn log_all_dropped(&self, batch: &Accepted, drops: &crate::deliver::route::Drops) {
        if drops.unattributed + drops.foreign + drops.filtered == 0 {
            return;
        }
        let now = Instant::now();
        {
            let Ok(mut logged) = self.dropped_logged.lock() else {
                return;
            };
            let cluster = batch.cluster.id.as_str();
            match logged.get(cluster) {
                Some(at) if now.duration_since(*at) < DROPPED_LOG_EVERY => return,
                _ => {}
            }
            if logged.len() > 10_000 {
                logged.clear();
            }
            logged.insert(cluster.to_owned(), now);
        }
        let example = batch
            .series
            .first()
            .map(|s| {
                let mut text = String::from("{");
                for (i, l) in s.view(&batch.body).labels().enumerate() {
                    if text.len() > 300 {
                        text.push_str(", ...");
                        break;
                    }
                    if i > 0 {
                        text.push_str(", ");
                    }
                    text.push_str(&String::from_utf8_lossy(l.name));
                    text.push_str("=\"");
                    text.push_str(&String::from_utf8_lossy(l.value));
                    text.push('"');
                }
                text.push('}');
                text
            })
            .unwrap_or_default();
        tracing::warn!(
            cluster = %batch.cluster.id,
            unattributed = drops.unattributed,
            foreign = drops.foreign,
            filtered = drops.filtered,
            no_target = drops.no_target,
            example = %example,
            "delivery: every series of a request from this cluster was dropped \
             (unattributed: no Deployment of the cluster matches its namespace or \
             deploymentId label; filtered: not in the catalog, see --catalog); \
             logged at most once a minute per cluster"
        );
    }

    pub(super) async fn submit(self: &Arc<Self>, batch: Accepted) -> Result<(), DeliveryError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(DeliveryError::Unavailable(
                "delivery is shutting down".into(),
            ));
        }
        let snapshot = self.snapshot.load_full();
        let mut plan = self.plan.load_full();
        if plan.version != snapshot.version() {
            // Applying a registry version opens queues, may adopt or move a
            // backlog and fsyncs: off the async workers.
            let (inner, snap) = (Arc::clone(self), Arc::clone(&snapshot));
            let _ = tokio::task::spawn_blocking(move || inner.sync(&snap)).await;
            plan = self.plan.load_full();
        }
        let s = &batch.summary;
        if s.metadata > 0 {
            self.metadata.record(&batch.body, &batch.cluster.id);
        }
        let stats = &self.stats;
        stats.add_ingest(
            (s.samples + s.histograms) as u64,
            s.series as u64,
            batch.body.len() as u64,
        );
        batch
            .cluster
            .samples_metric
            .get(|| {
                metrics::counter!(super::super::stats::names::CLUSTER_SAMPLES, "cluster" => batch.cluster.id.clone())
            })
            .increment((s.samples + s.histograms) as u64);

        tracing::debug!(
            cluster = %batch.cluster.id,
            series = s.series,
            samples = s.samples,
            total_samples = stats.samples.load(Ordering::Relaxed),
            "accepted batch"
        );
        let mut scratch = self.scratch.take();
        let rules = crate::deliver::route::Rules {
            snapshot: &snapshot,
            catalog: &self.settings.catalog,
            limits: &self.series_limits,
        };
        let (drops, bound) =
            scratch.route(&plan, &rules, &batch.cluster.id, &batch.body, &batch.series);
        stats.add_drops(&drops);
        if bound == 0 {
            self.scratch.give(scratch);
            self.log_all_dropped(&batch, &drops);
            return Ok(());
        }
        // A request whose encoded forms exceed half the whole budget (a huge
        // body times many variants) is accounted at half the budget rather
        // than refused forever.
        let want = (bound as u64).min(self.budget.total_bytes() / 2);
        let mut permit = match self.budget.try_acquire(want) {
            Ok(p) => p,
            Err(_) => {
                match self
                    .budget
                    .acquire_timeout(want, self.settings.admission_wait)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        self.scratch.give(scratch);
                        return Err(DeliveryError::Overloaded(format!(
                            "target queues hold the memory budget: {e}"
                        )));
                    }
                }
            }
        };
        let records = scratch.encode(&plan, &batch.body, &batch.series);
        drop(batch);
        permit.shrink_to(records.len() as u64);
        let permit = Arc::new(permit);
        let now = Instant::now();
        let wall = wall_ms(SystemTime::now());
        let wal = self.settings.durability == Durability::Wal;
        // wal: the highest seq appended per target, and whether any chunk
        // could not be made durable.
        let mut touched: Vec<(Arc<TargetHandle>, u64)> = Vec::new();
        let mut not_durable = false;
        // Chunks of a variant with several targets get a slot for their
        // compressed form (one allocation, only when needed): compressed
        // once for all of them, when sent or written to disk (`wal`).
        let chunks: Vec<_> = scratch.chunks(&plan, &records).collect();
        let slots = chunks
            .iter()
            .any(|c| c.set.targets.len() > 1)
            .then(|| Packed::slots(chunks.len()));
        let chunk_of = |c: usize| {
            let routed = &chunks[c];
            Chunk {
                records: routed.records.clone(),
                samples: routed.samples,
                series: routed.series,
                enqueued: now,
                permit: Some(permit.clone()),
                packed: slots
                    .as_ref()
                    .filter(|_| routed.set.targets.len() > 1)
                    .map(|slots| Packed::new(slots.clone(), c as u32)),
                push: 0,
                owners: routed.owners.clone(),
                wire: 0,
                newest: routed.newest,
            }
        };
        if !wal {
            // Each target's chunks under one lock and one wake-up: (target,
            // chunk index, target index in its variant), in chunk order per
            // target.
            let mut pairs: Vec<(usize, u32, u32)> = chunks
                .iter()
                .enumerate()
                .flat_map(|(c, routed)| {
                    routed
                        .set
                        .targets
                        .iter()
                        .enumerate()
                        .map(move |(k, t)| (Arc::as_ptr(t) as usize, c as u32, k as u32))
                })
                .collect();
            pairs.sort_unstable();
            for run in pairs.chunk_by(|a, b| a.0 == b.0) {
                let (_, c0, k0) = run[0];
                let target = &chunks[c0 as usize].set.targets[k0 as usize];
                // The shortest queue among the others that get these chunks:
                // each set's targets once (a set's chunks, one per lane,
                // come one after another), not once per chunk.
                let mut peers: Option<u64> = None;
                let mut last: *const _ = std::ptr::null();
                for &(_, c, _) in run {
                    let set = chunks[c as usize].set;
                    if std::ptr::eq(set, last) {
                        continue;
                    }
                    last = set;
                    for t in set.targets.iter().filter(|t| !Arc::ptr_eq(t, target)) {
                        let q = t.queued.load(Ordering::Relaxed);
                        peers = Some(peers.map_or(q, |p| p.min(q)));
                    }
                }
                let items = run
                    .iter()
                    .map(|&(_, c, _)| (chunks[c as usize].shard, chunk_of(c as usize)));
                let unpin = Unpin {
                    budget: &self.budget,
                    peers,
                };
                // One width per push: the fewest shards of its chunks.
                let shards = run
                    .iter()
                    .map(|&(_, c, _)| chunks[c as usize].shards)
                    .min()
                    .unwrap_or(1);
                target.push_all(shards, items, Some(unpin), stats, now, wall);
            }
        } else {
            for (c, routed) in chunks.iter().enumerate() {
                let chunk = chunk_of(c);
                for t in &routed.set.targets {
                    match t.push_wal(routed.shard, chunk.clone(), stats, now, wall) {
                        Some(seq) => match touched.iter_mut().find(|(h, _)| Arc::ptr_eq(h, t)) {
                            Some((_, s)) => *s = (*s).max(seq),
                            None => touched.push((t.clone(), seq)),
                        },
                        None => not_durable = true,
                    }
                }
            }
        }
        drop(records);
        self.scratch.give(scratch);
        if wal {
            // Group commit: each queue's sync thread answers every request
            // waiting while one fsync runs.
            let waits: Vec<_> = touched
                .iter()
                .filter_map(|(h, seq)| h.spill.as_ref().map(|s| s.commit.durable(*seq)))
                .collect();
            for w in waits {
                if let Err(e) = w.await {
                    not_durable = true;
                    stats.add_spill_error();
                    tracing::warn!(error = %e, "delivery: wal fsync failed; the request is refused");
                }
            }
            if not_durable {
                return Err(DeliveryError::Unavailable(
                    "durability wal: the data could not be made durable on disk; retry".into(),
                ));
            }
        }
        stats.set_memory_in_use(
            self.budget
                .total_bytes()
                .saturating_sub(self.budget.available_bytes()),
        );
        Ok(())
    }
}
