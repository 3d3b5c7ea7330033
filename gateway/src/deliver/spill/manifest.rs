//! The manifest of a queue directory: which target wrote it, for whom.
//!
//! A target id is a hash of the target's whole config, so a config change
//! (endpoint, auth, headers, labels, delivery options) gives its queue a new
//! directory. The manifest lets a restarted gateway find the backlog that
//! belongs to a target whose config changed meanwhile: the *routes* (every
//! Deployment/export pair that leads to the target) say what the backlog is
//! for, independently of the config. See [`successor`] for the rule.
//!
//! `<queue dir>/target.json`, written through `target.json.tmp`, fsync,
//! rename and an fsync of the directory, so a crash leaves the old or the new
//! manifest, never a torn one. It holds no secret and no endpoint:
//! ```json
//! {"version": 1, "targetId": "3f2a…", "lanes": 16,
//!  "routes": [{"deploymentId": "dep-1", "exportId": "prom"}]}
//! ```
//! `lanes` is the lane count of the core that queued the records: a record's
//! lane tag only keeps per-series order under that lane count. `laneKey`
//! says what picked a record's lane: `series` (the series' hash modulo the
//! target's width when it was pushed; written since the width follows the
//! load), `deployment` (the Deployment id), `family` (metric name and
//! Deployment) or `labels` (every label; a manifest without the field).
//! Whatever the key, a recovered backlog is delivered before any new data
//! goes (`TargetCore::set_recovered` sets the barrier): the width, and so a
//! series' lane, may differ from one push to another.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::sync_dir;
use super::SpillError;

/// File name of the manifest in a queue directory.
pub const MANIFEST_FILE: &str = "target.json";
const MANIFEST_TMP: &str = "target.json.tmp";
/// Format version written (and the only one read).
pub const MANIFEST_VERSION: u32 = 1;
/// Manifests larger than this are not read (a real one is a few KiB).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// What picked a queued record's lane (`route::lane_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LaneKey {
    /// Every label of the series (releases before the family key).
    #[default]
    Labels,
    /// The metric name and the Deployment.
    Family,
    /// The Deployment.
    Deployment,
    /// The series' hash modulo the target's width when it was pushed (the
    /// width follows the load). A backlog is delivered whole before any new
    /// data goes, whatever the key.
    Series,
}

impl LaneKey {
    /// The key this release uses.
    pub const CURRENT: LaneKey = LaneKey::Series;
}

/// One (Deployment, export) pair that leads to a target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRoute {
    /// The Deployment id.
    pub deployment_id: String,
    /// The metrics export id.
    pub export_id: String,
}

/// What a queue directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The target whose queue this is.
    pub target_id: String,
    /// Lane count of the core that queued the records.
    pub lanes: u32,
    /// What picked the records' lanes ([`LaneKey::Labels`] when absent).
    #[serde(default)]
    pub lane_key: LaneKey,
    /// Its routes, sorted and without duplicates.
    pub routes: Vec<ManifestRoute>,
}

impl Manifest {
    /// A manifest for `target_id`; sorts and dedups `routes`.
    pub fn new(target_id: &str, lanes: u32, mut routes: Vec<ManifestRoute>) -> Manifest {
        routes.sort();
        routes.dedup();
        Manifest {
            version: MANIFEST_VERSION,
            target_id: target_id.to_owned(),
            lanes,
            lane_key: LaneKey::CURRENT,
            routes,
        }
    }

    /// Reads the manifest of `dir`: `Ok(None)` when there is none (a queue
    /// of an older layout) or it is of another version.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, SpillError> {
        let path = dir.join(MANIFEST_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SpillError::io("open", &path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| SpillError::io("stat", &path, e))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(SpillError::io(
                "read",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, "manifest too large"),
            ));
        }
        let m: Manifest = serde_json::from_reader(io::BufReader::new(file)).map_err(|e| {
            SpillError::io(
                "parse",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        Ok((m.version == MANIFEST_VERSION).then_some(m))
    }

    /// Writes it to `dir` atomically (tmp, fsync, rename, fsync of `dir`).
    pub fn write(&self, dir: &Path) -> Result<(), SpillError> {
        let tmp = dir.join(MANIFEST_TMP);
        let path = dir.join(MANIFEST_FILE);
        let body = serde_json::to_vec(self).map_err(|e| {
            SpillError::io(
                "encode",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        let mut f = File::create(&tmp).map_err(|e| SpillError::io("create", &tmp, e))?;
        f.write_all(&body)
            .map_err(|e| SpillError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| SpillError::io("fsync", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| SpillError::io("rename", &path, e))?;
        sync_dir(dir)
    }
}

/// Moves the queue directory `from` (an orphan's) to `to` (its successor's)
/// with one rename, so nothing is copied and a crash leaves it under one name
/// or the other. A `to` that exists must hold no records: it is removed.
/// Then fsyncs the parent directory ([`sync_parent`]).
///
/// An error means the directory was *not* moved. Once the rename succeeded
/// the queue is at `to` whatever happens next, so a failed fsync of the
/// parent is only logged (a crash may then find it under `from` again,
/// where the next start adopts it again).
pub fn take_over(from: &Path, to: &Path) -> Result<(), SpillError> {
    move_dir(from, to)?;
    sync_parent(to);
    Ok(())
}

/// The rename of [`take_over`] without the fsync of the parent (so a caller
/// holding a lock can do that after releasing it): removes `to` if it
/// exists (it must hold no records), then renames `from` to `to`. An error
/// means `from` was not moved.
pub fn move_dir(from: &Path, to: &Path) -> Result<(), SpillError> {
    match fs::remove_dir_all(to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SpillError::io("remove", to, e)),
    }
    fs::rename(from, to).map_err(|e| SpillError::io("rename", from, e))
}

/// Fsyncs the parent of `dir` after [`move_dir`]; a failure is logged, not
/// returned (the rename happened either way).
pub fn sync_parent(dir: &Path) {
    if let Some(root) = dir.parent() {
        if let Err(e) = sync_dir(root) {
            tracing::warn!(error = %e, dir = %dir.display(),
                "spill: a queue directory was renamed but the rename may not be durable yet");
        }
    }
}

/// Which of `candidates` a target with `routes` takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Successor {
    /// None has the same routes.
    None,
    /// Exactly this one (index into the candidates).
    Unique(usize),
    /// Several have the same routes: none is taken (which came first is
    /// unknown, so their order could not be kept).
    Ambiguous(usize),
}

/// The successor rule: a target takes over the backlog of an orphan whose
/// manifest has exactly its routes (non-empty), if that orphan is the only
/// one. `routes` must be sorted and deduplicated (as in [`Manifest::new`]).
pub fn successor(routes: &[ManifestRoute], candidates: &[&Manifest]) -> Successor {
    if routes.is_empty() {
        return Successor::None;
    }
    let mut found = candidates
        .iter()
        .enumerate()
        .filter(|(_, m)| m.routes == routes)
        .map(|(i, _)| i);
    match (found.next(), found.count()) {
        (None, _) => Successor::None,
        (Some(i), 0) => Successor::Unique(i),
        (Some(_), more) => Successor::Ambiguous(more + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(d: &str, e: &str) -> ManifestRoute {
        ManifestRoute {
            deployment_id: d.into(),
            export_id: e.into(),
        }
    }

    #[test]
    fn spill_manifest_round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        let m = Manifest::new("t1", 8, vec![r("d2", "e"), r("d1", "e"), r("d1", "e")]);
        assert_eq!(m.routes, vec![r("d1", "e"), r("d2", "e")]);
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(m.clone()));
        assert!(!dir.path().join(MANIFEST_TMP).exists());
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(text.contains("\"deploymentId\":\"d1\""), "{text}");
        assert!(text.contains("\"laneKey\":\"series\""), "{text}");
        // A manifest of a release before the lane key: its lanes were
        // picked by every label.
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            br#"{"version":1,"targetId":"t","lanes":4,"routes":[]}"#,
        )
        .unwrap();
        let old = Manifest::read(dir.path()).unwrap().unwrap();
        assert_eq!((old.lanes, old.lane_key), (4, LaneKey::Labels));
        // Another version is ignored; garbage is an error naming the file.
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            br#"{"version":2,"targetId":"t","lanes":1,"routes":[]}"#,
        )
        .unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{").unwrap();
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains(MANIFEST_FILE), "{e}");
    }

    #[test]
    fn spill_successor_needs_exactly_one_equal_route_set() {
        let a = Manifest::new("a", 4, vec![r("d1", "e")]);
        let b = Manifest::new("b", 4, vec![r("d1", "e"), r("d2", "e")]);
        let c = Manifest::new("c", 4, vec![r("d1", "e")]);
        let empty = Manifest::new("z", 4, vec![]);
        let routes = vec![r("d1", "e")];
        assert_eq!(successor(&routes, &[&b, &a]), Successor::Unique(1));
        // A superset or subset is not the same export for these Deployments.
        assert_eq!(successor(&[r("d2", "e")], &[&a, &b]), Successor::None);
        assert_eq!(successor(&routes, &[&b]), Successor::None);
        assert_eq!(successor(&routes, &[&a, &b, &c]), Successor::Ambiguous(2));
        assert_eq!(successor(&[], &[&empty]), Successor::None);
    }
}
