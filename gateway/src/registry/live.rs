//! The live registry: a store, the shared snapshot, and the loop that keeps
//! the snapshot current.
//!
//! - Writes ([`Live::update`]) validate inside the store's transaction and
//!   install the new snapshot before returning, so a client reads its own
//!   write from the gateway it wrote through.
//! - Changes made elsewhere arrive through [`Store::subscribe`] (PostgreSQL
//!   NOTIFY or listener reconnect); a fallback poll of the version every
//!   [`POLL_INTERVAL`] covers a notification lost between reload and LISTEN.
//! - A snapshot is only swapped for a newer version, so a slow reload never
//!   rolls back a faster one. Each swap logs and broadcasts the target diff
//!   (ids and counts only; never endpoints' credentials or secrets).
//! - On a shared store each installed registry is also saved as the last
//!   known one in the data dir ([`Live::open_keeping`],
//!   `store::last_known`), which a gateway starts from when the store is
//!   unreachable ([`Live::open_from`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, Mutex};

use super::model::Registry;
use super::snapshot::{Snapshot, SnapshotDiff};
use super::store::{Store, StoreError, Stored, UpdateError};
use super::validate::validate;

/// Fallback poll of the store version.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The registry as this gateway currently sees it.
pub struct Live {
    store: Arc<dyn Store>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    diffs: broadcast::Sender<Arc<SnapshotDiff>>,
    install: Mutex<()>,
    /// Where each installed registry is saved (`store::last_known`).
    last_known: Option<PathBuf>,
    /// Whether the last look at the store (a version poll) reached it.
    reachable: std::sync::atomic::AtomicBool,
}

impl Live {
    /// Loads the registry from `store` and starts following its changes.
    pub async fn open(store: Arc<dyn Store>) -> Result<Arc<Live>, StoreError> {
        Live::open_keeping(store, None).await
    }

    /// [`Live::open`], saving every registry it installs as the last known
    /// one at `last_known`.
    pub async fn open_keeping(
        store: Arc<dyn Store>,
        last_known: Option<PathBuf>,
    ) -> Result<Arc<Live>, StoreError> {
        let stored = store.load().await?;
        Ok(Live::open_from(store, stored, last_known).await)
    }

    /// Starts from `stored` (the last known registry, when `store` is
    /// unreachable) and follows `store` from there.
    pub async fn open_from(
        store: Arc<dyn Store>,
        stored: Stored,
        last_known: Option<PathBuf>,
    ) -> Arc<Live> {
        let live = Arc::new(Live {
            store,
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            diffs: broadcast::channel(64).0,
            install: Mutex::new(()),
            reachable: std::sync::atomic::AtomicBool::new(false),
            last_known,
        });
        live.set_reachable(live.store.reachable());
        live.install(stored, Validated::No).await;
        tokio::spawn(follow(Arc::downgrade(&live), live.store.subscribe()));
        live
    }

    /// The shared snapshot that ingest and delivery read.
    pub fn shared(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Target diffs of every snapshot swap from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SnapshotDiff>> {
        self.diffs.subscribe()
    }

    /// Whether the store answered the last version poll (every
    /// [`POLL_INTERVAL`]; `/readyz` and `fanout_store_reachable` say so).
    pub fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets `fanout_store_reachable` again (after the recorder is installed).
    pub fn publish_reachable(&self) {
        self.set_reachable(self.reachable());
    }

    fn set_reachable(&self, yes: bool) {
        self.reachable
            .store(yes, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(crate::deliver::stats::names::STORE_REACHABLE).set(if yes {
            1.0
        } else {
            0.0
        });
    }

    /// The store, for its description.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Applies `change` to the stored registry (validated as a whole) and
    /// installs the result; returns the snapshot that contains it.
    pub async fn update<F>(&self, change: F) -> Result<Arc<Snapshot>, UpdateError>
    where
        F: FnOnce(&mut Registry) -> Result<(), UpdateError> + Send + 'static,
    {
        let stored = self
            .store
            .update(Box::new(move |registry: &mut Registry| {
                change(registry)?;
                validate(registry).map_err(|e| UpdateError::Invalid(e.problems))
            }))
            .await?;
        self.install(stored, Validated::Yes).await;
        Ok(self.current())
    }

    /// Reloads everything from the store if it has a newer version.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let stored = self.store.load().await?;
        self.install(stored, Validated::No).await;
        Ok(())
    }

    /// Installs `stored` unless it is older than the current snapshot:
    /// builds its snapshot, sends the diff to delivery, then saves the last
    /// known copy (after the diff, so delivery applies it meanwhile).
    async fn install(&self, stored: Stored, validated: Validated) {
        let _guard = self.install.lock().await;
        let old = self.snapshot.load_full();
        if stored.version <= old.version() && old.version() != 0 {
            return;
        }
        if validated == Validated::No {
            if let Err(e) = validate(&stored.registry) {
                // Only possible if someone edited the database by hand.
                tracing::error!(
                    version = stored.version,
                    problems = ?e.problems,
                    "registry: stored registry is invalid; keeping the previous one"
                );
                return;
            }
        }
        let copy = self.last_known.clone().map(|path| (path, stored.clone()));
        let new = Arc::new(Snapshot::build_after(
            stored.registry,
            stored.version,
            stored.salt,
            Some(&old),
        ));
        let diff = Arc::new(new.diff_from(&old));
        self.snapshot.store(new);
        // Freeing a registry of 10,000 Deployments takes milliseconds the
        // change's answer need not wait for.
        tokio::task::spawn_blocking(move || drop(old));
        tracing::info!(
            version = diff.to_version,
            added = diff.added.len(),
            changed = diff.changed.len(),
            removed = diff.removed.len(),
            "registry: installed new version"
        );
        // No receiver is fine: delivery may not be running.
        let _ = self.diffs.send(diff);
        if let Some((path, copy)) = copy {
            let saved = tokio::task::spawn_blocking(move || {
                super::store::last_known::save(&path, &copy).map_err(|e| (path, e))
            })
            .await;
            if let Ok(Err((path, e))) = saved {
                tracing::warn!(path = %path.display(), error = %e, "registry: cannot save the last known registry; a restart while the store is down would not find this version");
            }
        }
    }
}

/// Whether a registry to install was validated already (by the update
/// that wrote it) or comes from the store as it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Validated {
    Yes,
    No,
}

async fn follow(live: std::sync::Weak<Live>, mut changes: tokio::sync::watch::Receiver<u64>) {
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notifying = true;
    loop {
        let notified = tokio::select! {
            r = changes.changed(), if notifying => {
                // An error means the store's notifier is gone: poll only.
                notifying = r.is_ok();
                notifying
            }
            _ = poll.tick() => false,
        };
        let Some(live) = live.upgrade() else {
            return;
        };

        let stale = if notified {
            true
        } else {
            let read = live.store.version().await;
            let was = live.reachable();
            live.set_reachable(read.is_ok());
            match read {
                Ok(v) => v > live.current().version(),
                Err(e) => {
                    // Once per outage, not every poll.
                    if was {
                        tracing::warn!(error = %e, "registry: cannot read the store version; serving the registry as loaded until it answers");
                    }
                    false
                }
            }
        };
        if stale {
            match live.reload().await {
                Ok(()) => live.set_reachable(true),
                Err(e) => {
                    tracing::warn!(error = %e, "registry: reload failed; keeping the current registry");
                }
            }
        }
    }
}
