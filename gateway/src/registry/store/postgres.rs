//! The fleet store: PostgreSQL, shared by every gateway of a fleet.
//!
//! Writes lock the `version` row of `fanout_meta` (`SELECT ... FOR UPDATE`),
//! so writers through different gateways serialize, and send
//! `pg_notify('fanout_registry', version)` inside the transaction: PostgreSQL
//! delivers it at commit, to every gateway listening.
//!
//! A background task holds a [`PgListener`] on that channel and bumps the
//! [`Store::subscribe`] counter on every notification, and also after every
//! (re)connect, because notifications sent while disconnected are lost: the
//! live registry then reloads everything. If the database is unreachable the
//! task retries once a second and the gateway keeps serving its last snapshot.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::watch;

use super::{
    apply_change, new_salt, redact_url, registry_from_rows, row_changes, schema_plan, LastRead,
    StatusReport, StatusRow, Store, StoreError, Stored, UpdateError, UpdateFn, POSTGRES_MIGRATIONS,
};

/// The LISTEN/NOTIFY channel.
pub const CHANNEL: &str = "fanout_registry";

/// Advisory lock key held while migrating (`"fanout"` in ASCII).
const MIGRATION_LOCK: i64 = 0x66_61_6e_6f_75_74;

/// PostgreSQL-backed registry store.
pub struct PostgresStore {
    pool: PgPool,
    url: String,
    changes: watch::Sender<u64>,
    listener: tokio::task::JoinHandle<()>,
    last: LastRead,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects, migrates, and starts listening for changes.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        POSTGRES_MIGRATIONS.migrator().await?.run(&pool).await?;
        let mut tx = pool.begin().await?;
        migrate(&mut tx).await?;
        tx.commit().await?;
        let changes = watch::channel(0).0;
        let listener = tokio::spawn(listen(pool.clone(), changes.clone()));
        Ok(PostgresStore {
            pool,
            url: redact_url(url),
            changes,
            listener,
            last: LastRead::default(),
        })
    }
}

async fn listen(pool: PgPool, changes: watch::Sender<u64>) {
    let bump = || changes.send_modify(|n| *n = n.wrapping_add(1));
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "registry: cannot connect to listen for changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "registry: LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything may have changed while we were not listening.
        bump();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => bump(),
                Ok(None) => {
                    tracing::warn!(
                        "registry: lost the change listener connection; reconnecting and reloading"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registry: change listener failed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

/// Start-up, after the migrations: refuses a store this binary is too old
/// for, records the schema level (never down) and the target salt.
async fn migrate(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut **tx)
        .await?;
    let meta = |name: &'static str| {
        sqlx::query("SELECT value FROM fanout_meta WHERE name = $1").bind(name)
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
            "INSERT INTO fanout_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO fanout_meta (name, value) VALUES ('target_salt', $1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(new_salt())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The registry version; with `lock`, the row stays locked until the
/// transaction ends (writers take turns).
async fn read_version(tx: &mut Transaction<'_, Postgres>, lock: bool) -> Result<u64, StoreError> {
    let lock_sql = if lock {
        "SELECT value FROM fanout_meta WHERE name = 'version' FOR UPDATE"
    } else {
        "SELECT value FROM fanout_meta WHERE name = 'version'"
    };
    let version: String = sqlx::query(lock_sql).fetch_one(&mut **tx).await?.get(0);
    Ok(version.parse().unwrap_or(0))
}

async fn read_all(tx: &mut Transaction<'_, Postgres>, lock: bool) -> Result<Stored, StoreError> {
    let version = read_version(tx, lock).await?;
    read_objects(tx, version).await
}

/// The salt and every object, of the registry at `version`.
async fn read_objects(
    tx: &mut Transaction<'_, Postgres>,
    version: u64,
) -> Result<Stored, StoreError> {
    let salt: String = sqlx::query("SELECT value FROM fanout_meta WHERE name = 'target_salt'")
        .fetch_one(&mut **tx)
        .await?
        .get(0);
    let rows = sqlx::query("SELECT kind, id, doc FROM fanout_objects")
        .fetch_all(&mut **tx)
        .await?;
    let registry = registry_from_rows(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))))?;
    Ok(Stored {
        registry: Arc::new(registry),
        version,
        salt: Arc::from(salt.into_bytes()),
    })
}

impl Store for PostgresStore {
    fn load(&self) -> BoxFuture<'_, Result<Stored, StoreError>> {
        async move {
            // REPEATABLE READ: version and rows from one consistent snapshot.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
            let stored = read_all(&mut tx, false).await?;
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
            let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
            let version = read_version(&mut tx, true).await?;
            let current = match self.last.of(version) {
                Some(c) => c,
                None => read_objects(&mut tx, version).await?,
            };
            let Some(next) = apply_change(&current.registry, change)? else {
                return Ok(current);
            };
            let version = current.version + 1;
            let (upserts, deletes) = row_changes(&current.registry, &next);
            for (kind, id, doc) in upserts {
                sqlx::query(
                    "INSERT INTO fanout_objects (kind, id, doc, version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, version = excluded.version",
                )
                .bind(kind.as_str())
                .bind(id)
                .bind(doc)
                .bind(version as i64)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
            for (kind, id) in deletes {
                sqlx::query("DELETE FROM fanout_objects WHERE kind = $1 AND id = $2")
                    .bind(kind.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
            }
            sqlx::query("UPDATE fanout_meta SET value = $1 WHERE name = 'version'")
                .bind(version.to_string())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(version.to_string())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
            let stored = Stored {
                registry: Arc::new(next),
                version,
                salt: current.salt,
            };
            self.last.keep(&stored);
            Ok(stored)
        }
        .boxed()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        format!("postgres {}", self.url)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn report_status(&self, report: StatusReport) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let StatusReport {
                gateway,
                replace,
                upserts,
                deletes,
                now_ms,
                expire_before_ms,
            } = report;
            // One transaction: readers see this report whole or not at all.
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO fanout_status_gateways (gateway, reported_ms) VALUES ($1, $2) \
                 ON CONFLICT (gateway) DO UPDATE SET reported_ms = excluded.reported_ms",
            )
            .bind(&gateway)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if replace {
                sqlx::query("DELETE FROM fanout_export_status WHERE gateway = $1")
                    .bind(&gateway)
                    .execute(&mut *tx)
                    .await?;
            }
            if !deletes.is_empty() {
                let (deps, targets): (Vec<String>, Vec<String>) = deletes.into_iter().unzip();
                sqlx::query(
                    "DELETE FROM fanout_export_status WHERE gateway = $1 AND (deployment_id, target_id) IN \
                     (SELECT * FROM UNNEST($2::TEXT[], $3::TEXT[]))",
                )
                .bind(&gateway)
                .bind(deps)
                .bind(targets)
                .execute(&mut *tx)
                .await?;
            }
            if !upserts.is_empty() {
                let mut deps = Vec::with_capacity(upserts.len());
                let mut targets = Vec::with_capacity(upserts.len());
                let mut docs = Vec::with_capacity(upserts.len());
                for (d, t, doc) in upserts {
                    deps.push(d);
                    targets.push(t);
                    docs.push(doc);
                }
                // One statement for the whole batch.
                sqlx::query(
                    "INSERT INTO fanout_export_status (gateway, deployment_id, target_id, reported_ms, doc) \
                     SELECT $1, d, t, $2, doc FROM UNNEST($3::TEXT[], $4::TEXT[], $5::TEXT[]) AS u(d, t, doc) \
                     ON CONFLICT (gateway, deployment_id, target_id) \
                     DO UPDATE SET reported_ms = excluded.reported_ms, doc = excluded.doc",
                )
                .bind(&gateway)
                .bind(now_ms)
                .bind(deps)
                .bind(targets)
                .bind(docs)
                .execute(&mut *tx)
                .await?;
            }
            // Rows of gateways gone quiet (and of older gateways that write
            // no heartbeat, by their own time).
            sqlx::query(
                "DELETE FROM fanout_export_status s WHERE s.reported_ms < $1 AND NOT EXISTS \
                 (SELECT 1 FROM fanout_status_gateways g WHERE g.gateway = s.gateway AND g.reported_ms >= $1)",
            )
            .bind(expire_before_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM fanout_status_gateways WHERE reported_ms < $1")
                .bind(expire_before_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }

    fn read_status(
        &self,
        deployment: Option<&str>,
        since_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<StatusRow>, StoreError>> {
        let deployment = deployment.map(str::to_owned);
        async move {
            let rows = sqlx::query(
                "SELECT s.gateway, s.deployment_id, s.target_id, \
                 GREATEST(s.reported_ms, COALESCE(g.reported_ms, 0)) AS at, s.doc \
                 FROM fanout_export_status s LEFT JOIN fanout_status_gateways g ON g.gateway = s.gateway \
                 WHERE GREATEST(s.reported_ms, COALESCE(g.reported_ms, 0)) >= $1 \
                 AND ($2::TEXT IS NULL OR s.deployment_id = $2) \
                 ORDER BY s.deployment_id, s.target_id, s.gateway",
            )
            .bind(since_ms)
            .bind(deployment)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| StatusRow {
                    gateway: r.get(0),
                    deployment_id: r.get(1),
                    target_id: r.get(2),
                    reported_ms: r.get(3),
                    doc: r.get(4),
                })
                .collect())
        }
        .boxed()
    }
}
