//! A target's sender task ([`run_target`]): polls the core for batches,
//! sends them, reads spilled records back, reopens a broken disk queue, and
//! applies each attempt's outcome ([`on_done`]); a retired target stops
//! here once empty.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::target::{lag_seconds, TargetHandle};
use super::Inner;
use crate::deliver::policy::SendResult;
use crate::deliver::queue::Event;
use crate::deliver::stats::{self, names, RecentError};

struct Done {
    lane: u32,
    batch: u64,
    result: SendResult,
    /// Samples a 2.0 receiver did not write of a batch it took (partial write).
    unwritten: u64,
    latency: Duration,
    /// A recovery probe (not a batch: no latency recorded).
    probe: bool,
}

/// The next finished attempt; never, before the first send.
async fn next_done(done: &mut Option<(mpsc::Sender<Done>, mpsc::Receiver<Done>)>) -> Option<Done> {
    match done {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn run_target(inner: Arc<Inner>, h: Arc<TargetHandle>) {
    // Attempts report back here. Made at the first send: its first block
    // is 2.8 KiB, which a target that never sends (of thousands) should
    // not hold.
    let mut done: Option<(mpsc::Sender<Done>, mpsc::Receiver<Done>)> = None;
    let mut in_flight = 0u32;
    let mut sends = Vec::new();
    loop {
        let mut reopen_at = h.spill_reopen_at(Instant::now());
        if reopen_at.is_some_and(|t| t <= Instant::now()) {
            let (h2, i2) = (h.clone(), inner.clone());
            reopen_at =
                tokio::task::spawn_blocking(move || h2.recover_spill(&i2.stats, Instant::now()))
                    .await
                    .unwrap_or(None);
        }
        h.reload(&inner.stats);
        // A failed read back just broke the queue: schedule its reopen (the
        // lanes waiting for disk records have no wake-up of their own).
        let reopen_at = reopen_at.or_else(|| h.spill_reopen_at(Instant::now()));
        let now = Instant::now();
        let (wake, idle, pending) = match h.core.lock() {
            Ok(mut core) => {
                while let Some(d) = core.poll(now) {
                    sends.push(d);
                }
                h.metrics.load().queue_bytes.set(core.queue_bytes() as f64);
                // The lag, unless the disk part is unknown now (queue busy).
                let mut oldest = h.spill.is_none().then(|| lag_seconds(&core, now, None));
                if let Some(s) = &h.spill {
                    if let Ok(q) = s.queue.try_lock() {
                        let st = q.stats();
                        oldest = Some(lag_seconds(&core, now, st.oldest_enqueued_ms));
                        let m = h.metrics.load();
                        m.spill_bytes.set(st.bytes as f64);
                        m.spill_disk_full
                            .set(if st.space_short { 1.0 } else { 0.0 });
                        h.note_spill_space(st.space_short);
                    }
                }
                if let Some(age) = oldest {
                    h.metrics.load().oldest.set(age);
                }
                h.metrics.load().in_flight.set(f64::from(core.in_flight()));
                h.metrics
                    .load()
                    .concurrency
                    .set(f64::from(core.concurrency()));
                (core.next_wakeup(), core.is_idle(), core.pending_samples())
            }
            Err(_) => return,
        };
        for d in sends.drain(..) {
            in_flight += 1;
            if d.attempt > 1 {
                h.metrics.load().retries.increment(1);
            }
            let target = h.target();
            let (inner, h) = (inner.clone(), h.clone());
            let tx = done
                .get_or_insert_with(|| mpsc::channel(crate::deliver::queue::MAX_LANES as usize * 2))
                .0
                .clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let sent = if d.probe {
                    // An empty 1.0 write: a 2.0 answer to it says nothing
                    // about the wire state.
                    crate::deliver::protocol::Sent {
                        result: inner.sender.send_as(&target, d.body, 1, false).await.0,
                        unwritten: 0,
                    }
                } else {
                    crate::deliver::protocol::send(
                        &inner.sender,
                        &target,
                        &h.wire,
                        &inner.metadata,
                        d.body,
                        d.attempt,
                    )
                    .await
                };
                let _ = tx
                    .send(Done {
                        lane: d.lane,
                        batch: d.batch,
                        result: sent.result,
                        unwritten: sent.unwritten,
                        latency: t0.elapsed(),
                        probe: d.probe,
                    })
                    .await;
            });
        }
        if let Some(removed) = h.removed_at() {
            if idle && in_flight == 0 {
                if leave_retired(&inner, &h) {
                    break;
                }
                // Revived (or not listed as retired yet): go on.
                tokio::task::yield_now().await;
                continue;
            }
            if now.saturating_duration_since(removed) > inner.settings.removed_drain {
                if h.spill.is_some() {
                    // Keep it on disk for the retention period.
                    let lost = spill_all_blocking(&inner, &h).await;
                    inner.stats.abandoned.fetch_add(lost, Ordering::Relaxed);
                    if !leave_retired(&inner, &h) {
                        // Revived (its id is back in the registry) while it
                        // went to disk: it goes on, reading its backlog back.
                        h.resume_after_spill();
                        tracing::info!(exports = %h.name(), target_id = %h.id, lost, "delivery: removed target came back while its backlog went to disk; it resumes from disk");
                        continue;
                    }
                    // Revived and removed again while it went to disk: what
                    // was pushed meanwhile goes to disk too.
                    let again = match h.core.lock() {
                        Ok(c) => !c.memory_empty(),
                        Err(_) => false,
                    };
                    let lost = if again {
                        let more = spill_all_blocking(&inner, &h).await;
                        inner.stats.abandoned.fetch_add(more, Ordering::Relaxed);
                        lost + more
                    } else {
                        lost
                    };
                    tracing::warn!(exports = %h.name(), target_id = %h.id, samples = pending, lost, "delivery: removed target did not drain in time; its backlog stays on disk for the retention period");
                    break;
                }
                if !leave_retired(&inner, &h) {
                    tokio::task::yield_now().await;
                    continue;
                }
                inner.stats.abandoned.fetch_add(pending, Ordering::Relaxed);
                metrics::counter!(names::DROPPED, "reason" => "removed").increment(pending);
                tracing::warn!(exports = %h.name(), target_id = %h.id, samples = pending, "delivery: removed target did not drain in time; its data is dropped");
                break;
            }
        }
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let wake = match (wake, reopen_at) {
            (Some(w), Some(r)) => Some(w.min(r)),
            (w, r) => w.or(r),
        };
        let sleep_until = wake
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = h.notify.notified() => {}
            Some(first) = next_done(&mut done) => {
                in_flight = in_flight.saturating_sub(1);
                on_done(&inner, &h, first);
                // Drain every other finished attempt before polling again.
                while let Some(d) = done.as_mut().and_then(|(_, rx)| rx.try_recv().ok()) {
                    in_flight = in_flight.saturating_sub(1);
                    on_done(&inner, &h, d);
                }
            }
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
    }
    if let Ok(mut r) = inner.retired.lock() {
        r.retain(|x| !Arc::ptr_eq(x, &h));
    }
    if h.removed_at().is_some() {
        // A request routed with a plan from before the removal may still
        // push here: it is counted as dropped, not lost silently.
        if let Ok(mut core) = h.core.lock() {
            core.close();
        }
    }
    if h.removed_at().is_some() && !inner.stopped.load(Ordering::SeqCst) {
        inner.forget_drained(&h);
    }
    tracing::debug!(exports = %h.name(), target_id = %h.id, "delivery: target sender stopped");
}

/// [`TargetHandle::spill_all`] on a blocking thread (it may scan and fsync
/// the disk queue); works on any runtime flavor.
pub(super) async fn spill_all_blocking(inner: &Arc<Inner>, h: &Arc<TargetHandle>) -> u64 {
    let (h2, i2) = (h.clone(), inner.clone());
    match tokio::task::spawn_blocking(move || h2.spill_all(&i2.stats)).await {
        Ok(lost) => lost,
        Err(e) => {
            tracing::error!(exports = %h.name(), target_id = %h.id, error = %e, "delivery: moving this target's queue to disk failed");
            0
        }
    }
}

/// A retired target's sender is about to stop: takes `h` out of the retired
/// list, under the lock [`Inner::sync`] revives retired targets with, so a
/// revival either happened before (returns false: `h` is active again and
/// its sender must go on) or finds nothing and starts a new handle.
fn leave_retired(inner: &Inner, h: &Arc<TargetHandle>) -> bool {
    let Ok(mut r) = inner.retired.lock() else {
        return true;
    };
    let before = r.len();
    r.retain(|x| !Arc::ptr_eq(x, h));
    let gone = r.len() != before;
    if gone {
        // Gone for good: its series leave /metrics after the idle timeout.
        stats::forget_target(&h.id());
    }
    gone
}

fn on_done(inner: &Inner, h: &TargetHandle, done: Done) {
    let (event, was, highest_sent) = match h.core.lock() {
        Ok(mut core) => {
            let was = core.state(Instant::now());
            let ev = core.on_result(
                done.lane,
                done.batch,
                &done.result,
                done.latency,
                Instant::now(),
                SystemTime::now(),
            );
            if done.unwritten > 0 {
                core.count_unwritten(done.unwritten);
            }
            (ev, was, core.counters().highest_sent_ms)
        }
        Err(_) => return,
    };
    if !done.probe && matches!(done.result, SendResult::Status { .. }) {
        h.metrics.load().latency.record(done.latency.as_secs_f64());
    }
    if done.unwritten > 0 {
        count_rejected(inner, h, done.unwritten);
    }
    match event {
        Event::Sent { samples, bytes } => {
            if highest_sent != i64::MIN {
                h.metrics
                    .load()
                    .highest_sent
                    .set(highest_sent as f64 / 1000.0);
            }
            h.metrics.load().samples.increment(u64::from(samples));
            h.metrics.load().bytes.increment(bytes);
            h.metrics.load().requests.increment(1);
            inner
                .stats
                .out_samples
                .fetch_add(u64::from(samples), Ordering::Relaxed);
            inner.stats.out_bytes.fetch_add(bytes, Ordering::Relaxed);
            if was != "healthy" && was != "paused" {
                tracing::info!(exports = %h.name(), target_id = %h.id, "delivery: target recovered");
            }
        }
        Event::Retrying {
            kind,
            status,
            message,
        } => {
            metrics::counter!(names::TARGET_FAILURES, "target" => h.id(), "status" => kind)
                .increment(1);
            if was == "healthy" {
                tracing::warn!(exports = %h.name(), target_id = %h.id, error = %message, "delivery: target failing; retrying");
            } else {
                tracing::debug!(exports = %h.name(), target_id = %h.id, error = %message, "delivery: retry failed");
            }
            inner.stats.push_error(RecentError {
                time: SystemTime::now(),
                target: h.id(),
                status,
                message,
            });
        }
        Event::Dropped {
            status,
            samples,
            message,
        } => {
            metrics::counter!(names::TARGET_FAILURES, "target" => h.id(), "status" => status.to_string())
                .increment(1);
            count_rejected(inner, h, u64::from(samples));
            tracing::warn!(exports = %h.name(), target_id = %h.id, status, samples, error = %message, "delivery: batch rejected by the target; dropped");
            inner.stats.push_error(RecentError {
                time: SystemTime::now(),
                target: h.id(),
                status: Some(status),
                message,
            });
        }
        Event::Probed { recovered } => {
            tracing::debug!(exports = %h.name(), target_id = %h.id, recovered, "delivery: recovery probe answered");
        }
        Event::Stale => {}
    }
}

/// Counts `samples` dropped as `rejected` by the target (a refused batch, or
/// the part of a batch a 2.0 receiver did not write) in the target's and
/// the gateway's metrics.
fn count_rejected(inner: &Inner, h: &TargetHandle, samples: u64) {
    h.metrics.load().rejected.increment(samples);
    metrics::counter!(names::DROPPED, "reason" => "rejected").increment(samples);
    inner.stats.rejected.fetch_add(samples, Ordering::Relaxed);
}
