//! The embedded store: one SQLite file, `registry.sqlite`, in `--data-dir`.
//!
//! WAL journal, a 5 s busy timeout, and one writer at a time per process (a
//! tokio mutex around [`Store::update`]); the data directory belongs to one
//! gateway, so no other process writes the file and [`Store::subscribe`] never
//! moves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{watch, Mutex};

use super::{
    apply_change, new_salt, registry_from_rows, row_changes, schema_plan, LastRead, Store,
    StoreError, Stored, UpdateError, UpdateFn, SQLITE_MIGRATIONS,
};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "registry.sqlite";

/// SQLite-backed registry store.
pub struct SqliteStore {
    pool: SqlitePool,
    path: String,
    writer: Mutex<()>,
    changes: watch::Sender<u64>,
    last: LastRead,
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/registry.sqlite` and migrates it.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        SQLITE_MIGRATIONS.migrator().await?.run(&pool).await?;
        let mut tx = pool.begin().await?;
        migrate(&mut tx).await?;
        tx.commit().await?;
        Ok(SqliteStore {
            pool,
            path: path.display().to_string(),
            writer: Mutex::new(()),
            changes: watch::channel(0).0,
            last: LastRead::default(),
        })
    }
}

/// Applies `change` inside `tx`: the registry after it, and whether
/// anything was written (no-op changes are not).
async fn write_change(
    conn: &mut SqliteConnection,
    change: UpdateFn,
    last: &LastRead,
) -> Result<(Stored, bool), UpdateError> {
    let current = match last.of(read_version(conn).await?) {
        Some(c) => c,
        None => read_all(conn).await?,
    };
    let Some(next) = apply_change(&current.registry, change)? else {
        return Ok((current, false));
    };
    let version = current.version + 1;
    let (upserts, deletes) = row_changes(&current.registry, &next);
    for (kind, id, doc) in upserts {
        sqlx::query(
            "INSERT INTO fanout_objects (kind, id, doc, version) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, version = excluded.version",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(doc)
        .bind(version as i64)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    }
    for (kind, id) in deletes {
        sqlx::query("DELETE FROM fanout_objects WHERE kind = ?1 AND id = ?2")
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from)?;
    }
    sqlx::query("UPDATE fanout_meta SET value = ?1 WHERE name = 'version'")
        .bind(version.to_string())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    Ok((
        Stored {
            registry: Arc::new(next),
            version,
            salt: current.salt,
        },
        true,
    ))
}

/// Start-up, after the migrations: refuses a store this binary is too old
/// for, records the schema level (never down) and the target salt.
async fn migrate(tx: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
    let meta = |name: &'static str| {
        sqlx::query("SELECT value FROM fanout_meta WHERE name = ?1").bind(name)
    };
    let level: Option<String> = meta("schema")
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get(0));
    let compat: Option<String> = meta("schema_compat")
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get(0));
    let (level, compat) = schema_plan(level, compat)?;
    for (name, value) in [("schema", level), ("schema_compat", compat)] {
        sqlx::query(
            "INSERT INTO fanout_meta (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO fanout_meta (name, value) VALUES ('target_salt', ?1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(new_salt())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn read_version(conn: &mut SqliteConnection) -> Result<u64, StoreError> {
    let v: String = sqlx::query("SELECT value FROM fanout_meta WHERE name = 'version'")
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    Ok(v.parse().unwrap_or(0))
}

async fn read_all(conn: &mut SqliteConnection) -> Result<Stored, StoreError> {
    let rows = sqlx::query("SELECT kind, id, doc FROM fanout_objects")
        .fetch_all(&mut *conn)
        .await?;
    let registry = registry_from_rows(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))))?;
    let meta = sqlx::query("SELECT name, value FROM fanout_meta")
        .fetch_all(&mut *conn)
        .await?;
    let mut version = 0;
    let mut salt = String::new();
    for row in meta {
        let name: String = row.get(0);
        let value: String = row.get(1);
        match name.as_str() {
            "version" => version = value.parse().unwrap_or(0),
            "target_salt" => salt = value,
            _ => {}
        }
    }
    Ok(Stored {
        registry: Arc::new(registry),
        version,
        salt: Arc::from(salt.into_bytes()),
    })
}

impl Store for SqliteStore {
    fn load(&self) -> BoxFuture<'_, Result<Stored, StoreError>> {
        async move {
            let mut tx = self.pool.begin().await?;
            let stored = read_all(&mut tx).await?;
            tx.commit().await?;
            self.last.keep(&stored);
            Ok(stored)
        }
        .boxed()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let v: String = sqlx::query("SELECT value FROM fanout_meta WHERE name = 'version'")
                .fetch_one(&self.pool)
                .await?
                .get(0);
            Ok(v.parse().unwrap_or(0))
        }
        .boxed()
    }

    fn update(&self, change: UpdateFn) -> BoxFuture<'_, Result<Stored, UpdateError>> {
        async move {
            let _writer = self.writer.lock().await;
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            // The transaction is plain SQL, not sqlx's `Transaction`: when
            // COMMIT fails (a full disk), SQLite keeps the transaction open,
            // and sqlx would hand the connection back still inside it (every
            // later write then fails: "database is locked", or "non-zero
            // transaction depth"). IMMEDIATE takes the write lock at the
            // start, where the busy timeout applies.
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .map_err(StoreError::from)?;
            let done = match write_change(&mut conn, change, &self.last).await {
                Ok((stored, true)) => sqlx::query("COMMIT")
                    .execute(&mut *conn)
                    .await
                    .map(|_| (stored, true))
                    .map_err(|e| UpdateError::from(StoreError::from(e))),
                other => other,
            };
            if !matches!(done, Ok((_, true))) {
                match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    Ok(_) => {}
                    // SQLite already rolled back (it does on a full disk).
                    Err(e) if e.to_string().contains("no transaction is active") => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "registry store: rollback failed; closing that connection");
                        let _ = conn.detach().close().await;
                    }
                }
            }
            if let Ok((stored, true)) = &done {
                self.last.keep(stored);
            }
            done.map(|(stored, _)| stored)
        }
        .boxed()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path)
    }
}
