//! Persistence of the registry behind one async trait, [`Store`].
//!
//! # Schema (identical in SQLite and PostgreSQL)
//! ```sql
//! fanout_meta    (name TEXT PRIMARY KEY, value TEXT NOT NULL)
//!                -- 'schema' (migration level), 'version' (registry version),
//!                -- 'target_salt' (random hex, keys target ids)
//! fanout_objects (kind TEXT, id TEXT, doc TEXT, version BIGINT, PRIMARY KEY (kind, id))
//!                -- one JSON document per object, secrets in clear;
//!                -- version = registry version of its last write
//! ```
//! # Migrations
//! One set per backend, `gateway/migrations/{postgres,sqlite}/NNNN_name.sql`,
//! embedded in the binary ([`POSTGRES_MIGRATIONS`], [`SQLITE_MIGRATIONS`])
//! and run at start by sqlx's [`Migrator`] (what `sqlx::migrate!` expands
//! to, without the proc-macro crate, which would build SQLite's C sources a
//! second time): `_sqlx_migrations` records each one with its checksum, a
//! changed file is refused, and PostgreSQL takes sqlx's advisory lock so
//! gateways starting together do not race. Migrations a newer gateway applied
//! and this binary does not know are left alone (rolling upgrades): whether
//! this binary may still use such a store is `schema_compat`'s call (see
//! [`schema_plan`]), checked in the same start-up transaction that records
//! `schema` (the level, never moved down) and the target salt.
//!
//! # Writes
//! [`Store::update`] runs a closure on the registry as stored *inside* the
//! write transaction (PostgreSQL: `SELECT ... FOR UPDATE` on the version row;
//! SQLite: one writer per process), so concurrent writers through different
//! gateways never lose each other's changes and the stored registry always
//! passes validation. Only rows that changed are written; a change that
//! changes nothing does not bump the version.
//!
//! # Change notification
//! [`Store::subscribe`] yields a counter that moves whenever the registry may
//! have changed behind this process's back: PostgreSQL bumps it on every
//! `NOTIFY fanout_registry` and on every reconnect of its listener (after which
//! everything is reloaded); SQLite never bumps it (one process owns the file).

pub mod last_known;
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::migrate::Migrator;
use tokio::sync::watch;

use super::model::{Kind, Object, Registry};

/// Errors of the storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("registry store: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed, or an applied one differs from this binary's.
    #[error("registry store: migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not parse.
    #[error("registry store: stored {kind} {id:?} is corrupt: {reason}")]
    Corrupt {
        /// Row kind.
        kind: String,
        /// Row id.
        id: String,
        /// Parse error (never contains a secret: serde reports positions, not values).
        reason: String,
    },
    /// The data directory cannot be created.
    #[error("registry store: cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway started from its last known registry and has not
    /// reached its store since ([`last_known::Reconnecting`]).
    #[error("registry store {0} is unreachable; serving the last known registry")]
    Unreachable(String),
    /// The `--store` setting is neither `sqlite` nor a `postgres://` URL.
    #[error("unknown store {0:?}: use sqlite or a postgres:// URL")]
    UnknownStore(String),
    /// The schema was migrated by a newer gateway in a way this one cannot use.
    #[error(
        "registry store: its schema (level {level}) was migrated by a newer gateway and needs one \
         that knows level {needs} or later; this gateway knows level {knows}: upgrade it"
    )]
    SchemaTooNew {
        /// The stored level.
        level: usize,
        /// The oldest level a gateway must know to use it.
        needs: usize,
        /// The level this binary knows ([`SCHEMA_LEVEL`]).
        knows: usize,
    },
}

impl StoreError {
    /// The cause when the store cannot take writes for now but may later
    /// (a full disk, an I/O error, the database unreachable or overloaded):
    /// the admin API answers 503 with `Retry-After` instead of 500.
    pub fn unavailable(&self) -> Option<&'static str> {
        if let StoreError::Unreachable(_) = self {
            return Some("database unreachable");
        }
        let StoreError::Database(e) = self else {
            return None;
        };
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code()?;
                // SQLite result codes (extended: the low byte is the primary
                // code), then PostgreSQL SQLSTATEs.
                if let Ok(n) = code.parse::<i32>() {
                    return match n & 0xff {
                        13 => Some("disk full"),
                        10 => Some("disk I/O error"),
                        5 | 6 => Some("database busy"),
                        _ => None,
                    };
                }
                match code.as_ref() {
                    "53100" => Some("disk full"),
                    "53200" => Some("out of memory"),
                    "53300" => Some("too many connections"),
                    "57P01" | "57P02" | "57P03" => Some("database restarting"),
                    c if c.starts_with("08") => Some("connection failure"),
                    _ => None,
                }
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                Some("database unreachable")
            }
            _ => None,
        }
    }
}

/// Why a change to the registry was not applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The change breaks the rules; every problem listed.
    #[error("invalid registry")]
    Invalid(Vec<String>),
    /// The object to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The change conflicts with the stored state (exists already, still referenced).
    #[error("conflict")]
    Conflict(Vec<String>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A change: runs on the registry as stored, inside the write transaction.
pub type UpdateFn = Box<dyn FnOnce(&mut Registry) -> Result<(), UpdateError> + Send>;

/// The registry as loaded from a store.
#[derive(Debug, Clone)]
pub struct Stored {
    /// All objects (shared with the snapshot built from it, and with the
    /// store's [`LastRead`]).
    pub registry: Arc<Registry>,
    /// Registry version (0: never written).
    pub version: u64,
    /// Key of the target ids, stable for the life of the store.
    pub salt: Arc<[u8]>,
}

/// The last registry a store read or wrote, with its version. An update
/// whose transaction finds that version starts from it instead of reading
/// and parsing every row again (60 ms of a one-export change at 10,000
/// exports). Every writer bumps the version in the same transaction as its
/// rows, so the version says whether the copy is current.
#[derive(Default)]
pub(crate) struct LastRead(std::sync::Mutex<Option<Stored>>);

impl LastRead {
    /// The copy, if it is of `version`.
    pub(crate) fn of(&self, version: u64) -> Option<Stored> {
        let last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().filter(|s| s.version == version).cloned()
    }

    /// Keeps `stored` (read, or written and committed); the registry is
    /// shared, not copied.
    pub(crate) fn keep(&self, stored: &Stored) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored.clone());
    }
}

/// A registry store.
pub trait Store: Send + Sync + 'static {
    /// Loads everything.
    fn load(&self) -> BoxFuture<'_, Result<Stored, StoreError>>;
    /// The current registry version (cheap).
    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Applies `change` atomically; returns the new registry and version.
    fn update(&self, change: UpdateFn) -> BoxFuture<'_, Result<Stored, UpdateError>>;
    /// A counter that moves when the registry may have changed elsewhere.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// A short description for logs (never with a password).
    fn describe(&self) -> String;
    /// False while a gateway started from its last known registry has not
    /// reached the store yet ([`last_known::Reconnecting`]).
    fn reachable(&self) -> bool {
        true
    }
    /// Whether several gateways share it (then they report their export
    /// status through it, [`Store::report_status`]).
    fn is_shared(&self) -> bool {
        false
    }
    /// Writes one gateway's status report in one transaction (readers see
    /// it whole or not at all). A store of one gateway (SQLite) has nothing
    /// to share: it keeps nothing.
    fn report_status(&self, report: StatusReport) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = report;
        Box::pin(async { Ok(()) })
    }
    /// Every gateway's rows for Deployment `deployment` (all when `None`)
    /// reported since `since_ms`.
    fn read_status(
        &self,
        deployment: Option<&str>,
        since_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<StatusRow>, StoreError>> {
        let _ = (deployment, since_ms);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// One gateway's report on one (Deployment, target) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// The reporting gateway.
    pub gateway: String,
    /// The Deployment.
    pub deployment_id: String,
    /// The target.
    pub target_id: String,
    /// When it reported (ms since the epoch).
    pub reported_ms: i64,
    /// Its `ExportStatus`, as JSON.
    pub doc: String,
}

/// A status row to write: `(Deployment, target, doc)`.
pub type StatusUpsert = (String, String, String);

/// One gateway's status report ([`Store::report_status`]): its heartbeat,
/// the rows that changed since its last report, and what is gone.
#[derive(Debug, Clone, Default)]
pub struct StatusReport {
    /// The reporting gateway.
    pub gateway: String,
    /// Its first report since it started: its older rows are deleted first.
    pub replace: bool,
    /// Rows to insert or replace.
    pub upserts: Vec<StatusUpsert>,
    /// Its `(Deployment, target)` rows to delete (pairs it no longer has).
    pub deletes: Vec<(String, String)>,
    /// Now (ms since the epoch): the heartbeat and the written rows' time.
    pub now_ms: i64,
    /// Rows of gateways whose last report is older than this are deleted.
    pub expire_before_ms: i64,
}

/// Opens the store named by `--store` (`None` or `sqlite`: SQLite in `data_dir`).
pub async fn open(setting: Option<&str>, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match setting {
        None | Some("") | Some("sqlite") => {
            Ok(Arc::new(sqlite::SqliteStore::open(data_dir).await?))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(postgres::PostgresStore::open(url).await?))
        }
        Some(other) => Err(StoreError::UnknownStore(redact_url(other))),
    }
}

/// The oldest migration level a gateway must know to use a store that this
/// binary migrated, stored as `schema_compat`. Migrations only add (tables,
/// columns with defaults, fields that older gateways skip), so a gateway of
/// the previous release keeps working on a store migrated by this one during
/// a rolling upgrade; a migration that older gateways cannot work with
/// raises this, and they then refuse to start with
/// [`StoreError::SchemaTooNew`] instead of misreading the store.
pub const SCHEMA_COMPAT: usize = 1;

/// The `schema` and `schema_compat` values to store, given the stored ones
/// (`level`, `compat`): never moves either down, so an older gateway on a
/// newer store leaves the newer levels in place; refuses a store whose
/// `schema_compat` is above [`SCHEMA_LEVEL`] with [`StoreError::SchemaTooNew`].
pub(crate) fn schema_plan(
    level: Option<String>,
    compat: Option<String>,
) -> Result<(String, String), StoreError> {
    let level: usize = level.and_then(|l| l.parse().ok()).unwrap_or(0);
    let compat: usize = compat.and_then(|l| l.parse().ok()).unwrap_or(0);
    let knows = SCHEMA_LEVEL;
    if compat > knows {
        return Err(StoreError::SchemaTooNew {
            level,
            needs: compat,
            knows,
        });
    }
    if level > knows {
        tracing::warn!(
            level,
            knows,
            "registry store: its schema was migrated by a newer gateway; working with the levels \
             this gateway knows (fields only newer gateways know are kept in rows this one does not change)"
        );
    }
    Ok((
        level.max(knows).to_string(),
        compat.max(SCHEMA_COMPAT).to_string(),
    ))
}

/// The schema level this binary knows: the number of migrations in each
/// backend's set.
pub const SCHEMA_LEVEL: usize = 3;

/// One backend's migrations, `(version, description, SQL)`, versions 1 to
/// [`SCHEMA_LEVEL`] in order.
#[derive(Debug, Clone, Copy)]
pub struct Migrations(pub &'static [(i64, &'static str, &'static str)]);

/// PostgreSQL's migrations (`gateway/migrations/postgres/`).
pub const POSTGRES_MIGRATIONS: Migrations = Migrations(&[
    (
        1,
        "registry",
        include_str!("../../../migrations/postgres/0001_registry.sql"),
    ),
    (
        2,
        "export status",
        include_str!("../../../migrations/postgres/0002_export_status.sql"),
    ),
    (
        3,
        "status gateways",
        include_str!("../../../migrations/postgres/0003_status_gateways.sql"),
    ),
]);

/// SQLite's migrations (`gateway/migrations/sqlite/`).
pub const SQLITE_MIGRATIONS: Migrations = Migrations(&[
    (
        1,
        "registry",
        include_str!("../../../migrations/sqlite/0001_registry.sql"),
    ),
    (
        2,
        "export status",
        include_str!("../../../migrations/sqlite/0002_export_status.sql"),
    ),
    (
        3,
        "status gateways",
        include_str!("../../../migrations/sqlite/0003_status_gateways.sql"),
    ),
]);

impl sqlx::migrate::MigrationSource<'static> for Migrations {
    fn resolve(
        self,
    ) -> BoxFuture<'static, Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        version,
                        description.into(),
                        sqlx::migrate::MigrationType::Simple,
                        sql.into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

impl Migrations {
    /// The migrator of this set: applied migrations it does not know (a
    /// newer gateway's) are ignored, not an error.
    pub(crate) async fn migrator(self) -> Result<Migrator, StoreError> {
        let mut migrator = Migrator::new(self).await?;
        migrator.set_ignore_missing(true);
        Ok(migrator)
    }
}

/// A row to insert or update: `(kind, id, JSON document)`.
pub(crate) type Upsert = (Kind, String, String);

/// Rows to write to go from `old` to `new`: upserts and deletes `(kind, id)`.
/// Compares in place: only changed objects are copied and encoded.
pub(crate) fn row_changes(old: &Registry, new: &Registry) -> (Vec<Upsert>, Vec<(Kind, String)>) {
    let mut rows = (Vec::new(), Vec::new());
    changed_rows(
        Kind::Cluster,
        &old.clusters,
        &new.clusters,
        Object::Cluster,
        &mut rows,
    );
    changed_rows(
        Kind::Workspace,
        &old.workspaces,
        &new.workspaces,
        Object::Workspace,
        &mut rows,
    );
    changed_rows(
        Kind::Deployment,
        &old.deployments,
        &new.deployments,
        Object::Deployment,
        &mut rows,
    );
    changed_rows(
        Kind::MetricsExport,
        &old.metrics_exports,
        &new.metrics_exports,
        Object::MetricsExport,
        &mut rows,
    );
    rows
}

/// The rows of one kind for [`row_changes`].
fn changed_rows<T: PartialEq + Clone>(
    kind: Kind,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    object: fn(T) -> Object,
    (upserts, deletes): &mut (Vec<Upsert>, Vec<(Kind, String)>),
) {
    for (id, v) in new {
        if old.get(id) != Some(v) {
            let doc = object(v.clone()).to_stored_json().to_string();
            upserts.push((kind, id.clone(), doc));
        }
    }
    deletes.extend(
        old.keys()
            .filter(|id| !new.contains_key(*id))
            .map(|id| (kind, id.clone())),
    );
}

/// Builds a registry from stored rows.
pub(crate) fn registry_from_rows(
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> Result<Registry, StoreError> {
    let mut registry = Registry::default();
    for (kind, id, doc) in rows {
        let corrupt = |reason: String| StoreError::Corrupt {
            kind: kind.clone(),
            id: id.clone(),
            reason,
        };
        let k = Kind::from_str_opt(&kind).ok_or_else(|| corrupt("unknown kind".into()))?;
        let value = serde_json::from_str(&doc).map_err(|e| corrupt(e.to_string()))?;
        let (object, unknown) = parse_stored(k, value).map_err(corrupt)?;
        if !unknown.is_empty() {
            tracing::warn!(
                kind = %kind,
                id = %id,
                fields = ?unknown,
                "registry store: a newer gateway stored fields this one does not know; they are \
                 ignored here (and dropped if this gateway changes the object)"
            );
        }
        registry.insert(object);
    }
    Ok(registry)
}

/// A stored document as this binary knows it, and the fields it skipped:
/// documents are parsed strictly (an unknown field is an error, so that a
/// typo in the admin API never passes), and a stored field that a newer
/// gateway wrote is removed from the object serde names as its place (the
/// one holding it whose other keys are all among the expected ones) and
/// the parse tried again.
pub(crate) fn parse_stored(kind: Kind, mut value: Value) -> Result<(Object, Vec<String>), String> {
    let mut unknown = Vec::new();
    loop {
        let e = match Object::from_json_in_place(kind, &mut value) {
            Ok(object) => return Ok((object, unknown)),
            Err(e) => e,
        };
        // serde: "unknown field `x`, expected one of `a`, `b`" (or "expected `a`").
        let names: Vec<&str> = e.split('`').skip(1).step_by(2).collect();
        let (true, Some((field, expected))) = (e.starts_with("unknown field"), names.split_first())
        else {
            return Err(e);
        };
        if unknown.len() >= 64 || !remove_unknown(&mut value, field, expected) {
            return Err(e);
        }
        unknown.push((*field).to_owned());
    }
}

/// Removes `field` from the first object (depth first) that has it and no
/// key outside `expected`; false when there is none.
fn remove_unknown(value: &mut Value, field: &str, expected: &[&str]) -> bool {
    match value {
        Value::Object(map) => {
            if map.contains_key(field)
                && map
                    .keys()
                    .all(|k| k == field || expected.contains(&k.as_str()))
            {
                map.remove(field);
                return true;
            }
            map.values_mut().any(|v| remove_unknown(v, field, expected))
        }
        Value::Array(items) => items.iter_mut().any(|v| remove_unknown(v, field, expected)),
        _ => false,
    }
}

/// Runs `change` on a copy of `current`; the new registry if it differs.
pub(crate) fn apply_change(
    current: &Registry,
    change: UpdateFn,
) -> Result<Option<Registry>, UpdateError> {
    let mut next = current.clone();
    change(&mut next)?;
    Ok((next != *current).then_some(next))
}

/// A fresh random salt: 32 bytes from the OS random source (`getrandom`), as hex.
pub(crate) fn new_salt() -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // No OS randomness at all: fall back to the process's hasher keys
        // (still unpredictable enough for a salt that only keeps ids apart).
        tracing::warn!(error = %e, "registry: the OS random source failed; salting with the hasher's keys");
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn redacts_passwords_in_store_urls() {
        assert_eq!(
            redact_url("postgres://fanout:hunter2@127.0.0.1:5432/db"),
            "postgres://fanout:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/db"),
            "postgres://127.0.0.1/db"
        );
    }

    #[test]
    fn salts_differ() {
        assert_ne!(new_salt(), new_salt());
        assert_eq!(new_salt().len(), 64);
    }
}
