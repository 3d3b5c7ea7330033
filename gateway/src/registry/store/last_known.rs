//! The last known registry: a gateway on a shared store (PostgreSQL) keeps
//! the registry it last installed in its data dir, so that it can start
//! and forward data while the store is unreachable (docs/fleet.md "When
//! PostgreSQL is down").
//!
//! - [`save`] writes `registry-last-known.json` (the version, the target id
//!   salt and every object as the store keeps it) to a temp file, syncs it
//!   and renames it over the old one: a crash leaves the old file or the
//!   new one, never a torn one. The file holds the same credentials as the
//!   store does, so it is readable by its owner only (0600).
//! - [`load`] reads it back ([`registry_from_rows`], as a store reads its
//!   rows), with the time it was saved.
//! - [`Reconnecting`] is the store a gateway started from that file uses:
//!   every call fails with [`StoreError::Unreachable`] until a background
//!   task opens the real store (retrying with backoff), then every call
//!   goes to it and a change notification makes the gateway load the
//!   store's registry (the newer version wins, as always).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    registry_from_rows, row_changes, StatusReport, StatusRow, Store, StoreError, Stored,
    UpdateError, UpdateFn,
};
use crate::registry::model::Registry;

/// The file name in the data dir.
pub const FILE: &str = "registry-last-known.json";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    version: u64,
    salt: String,
    saved_ms: u64,
    objects: Vec<Row>,
}

#[derive(Serialize, Deserialize)]
struct Row {
    kind: String,
    id: String,
    doc: String,
}

/// The path of the last known registry in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Writes `stored` as the last known registry at `path` (atomically).
pub fn save(path: &Path, stored: &Stored) -> std::io::Result<()> {
    let (rows, _) = row_changes(&Registry::default(), &stored.registry);
    let file = File {
        version: stored.version,
        salt: String::from_utf8_lossy(&stored.salt).into_owned(),
        saved_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        objects: rows
            .into_iter()
            .map(|(kind, id, doc)| Row {
                kind: kind.as_str().to_owned(),
                id,
                doc,
            })
            .collect(),
    };
    let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    // A temp file of its own: a save left running by a cancelled install
    // never shares one with the next.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{}.{n}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The last known registry at `path` and when it was saved; `None` when
/// there is none.
pub fn load(path: &Path) -> Result<Option<(Stored, SystemTime)>, StoreError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(corrupt(path, e.to_string())),
    };
    let file: File = serde_json::from_slice(&text).map_err(|e| corrupt(path, e.to_string()))?;
    let registry = registry_from_rows(file.objects.into_iter().map(|r| (r.kind, r.id, r.doc)))?;
    let saved = UNIX_EPOCH + Duration::from_millis(file.saved_ms);
    Ok(Some((
        Stored {
            registry: Arc::new(registry),
            version: file.version,
            salt: Arc::from(file.salt.into_bytes()),
        },
        saved,
    )))
}

fn corrupt(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt {
        kind: "last known registry".into(),
        id: path.display().to_string(),
        reason,
    }
}

/// A store that is not reachable yet: see the module docs.
pub struct Reconnecting {
    inner: Arc<OnceLock<Arc<dyn Store>>>,
    description: String,
    changes: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reconnecting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first and the longest wait between attempts to open the store: a
/// change made once it is back reaches this gateway within about a second
/// (an attempt on a refused connection costs next to nothing).
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(1);

impl Reconnecting {
    /// Starts opening the store with `open` in the background (again and
    /// again, with backoff, until it succeeds); `description` names it in
    /// logs (no password).
    pub fn start<F>(description: String, open: F) -> Reconnecting
    where
        F: Fn() -> BoxFuture<'static, Result<Arc<dyn Store>, StoreError>> + Send + 'static,
    {
        let inner: Arc<OnceLock<Arc<dyn Store>>> = Arc::new(OnceLock::new());
        let changes = watch::channel(0u64).0;
        let task = tokio::spawn(connect(inner.clone(), changes.clone(), open));
        Reconnecting {
            inner,
            description,
            changes,
            task,
        }
    }

    fn store(&self) -> Result<&Arc<dyn Store>, StoreError> {
        self.inner
            .get()
            .ok_or_else(|| StoreError::Unreachable(self.description.clone()))
    }
}

async fn connect<F>(inner: Arc<OnceLock<Arc<dyn Store>>>, changes: watch::Sender<u64>, open: F)
where
    F: Fn() -> BoxFuture<'static, Result<Arc<dyn Store>, StoreError>>,
{
    let bump = |c: &watch::Sender<u64>| c.send_modify(|n| *n = n.wrapping_add(1));
    let mut wait = RETRY_FIRST;
    let mut attempts = 0u64;
    let store = loop {
        match open().await {
            Ok(s) => break s,
            Err(e) => {
                attempts += 1;
                // Logged at attempts 1, 2, 4, 8, ...: a long outage does not
                // fill the log.
                if attempts.is_power_of_two() {
                    tracing::warn!(error = %e, attempts, "registry: the store is still unreachable; serving the last known registry");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    };
    tracing::info!(store = %store.describe(), "registry: store reachable again; loading its registry");
    let mut notes = store.subscribe();
    let _ = inner.set(store);
    bump(&changes);
    while notes.changed().await.is_ok() {
        bump(&changes);
    }
}

impl Store for Reconnecting {
    fn load(&self) -> BoxFuture<'_, Result<Stored, StoreError>> {
        async move { self.store()?.load().await }.boxed()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move { self.store()?.version().await }.boxed()
    }

    fn update(&self, change: UpdateFn) -> BoxFuture<'_, Result<Stored, UpdateError>> {
        async move { self.store()?.update(change).await }.boxed()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        match self.inner.get() {
            Some(s) => s.describe(),
            None => format!(
                "{} (unreachable; serving the last known registry)",
                self.description
            ),
        }
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn reachable(&self) -> bool {
        self.inner.get().is_some()
    }

    fn report_status(&self, report: StatusReport) -> BoxFuture<'_, Result<(), StoreError>> {
        async move { self.store()?.report_status(report).await }.boxed()
    }

    fn read_status(
        &self,
        deployment: Option<&str>,
        since_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<StatusRow>, StoreError>> {
        let deployment = deployment.map(str::to_owned);
        async move {
            self.store()?
                .read_status(deployment.as_deref(), since_ms)
                .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::Object;

    #[test]
    fn a_saved_registry_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert!(load(&path).unwrap().is_none(), "none yet");
        let mut registry = Registry::default();
        registry.insert(
            Object::from_json(
                crate::registry::model::Kind::Cluster,
                serde_json::json!({"id": "c1", "organizationId": "o1", "cloudProvider": "aws",
                    "cloudRegion": "us-east-1", "ingestToken": "secret-token-1"}),
            )
            .unwrap(),
        );
        let stored = Stored {
            registry: registry.into(),
            version: 7,
            salt: Arc::from(&b"salt"[..]),
        };
        save(&path, &stored).unwrap();
        let (back, saved) = load(&path).unwrap().unwrap();
        assert_eq!((back.version, &back.salt[..]), (7, &b"salt"[..]));
        assert_eq!(back.registry, stored.registry);
        assert!(saved <= SystemTime::now());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner only: it holds credentials");
        }
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            load(&path).is_err(),
            "a torn file is an error, not an empty registry"
        );
    }
}
