//! [`PostgresCheckpoints`]: checkpoints shared by many instances, with an owner lease and
//! compare-and-set, so that two instances never checkpoint the same shard.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use headwaters_ordering_core::pg::{PgConnection, PgError};
use tokio::sync::MappedMutexGuard;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::checkpoint::{CheckpointError, Checkpointer, DEFAULT_TABLE, Lease, check_table_name};

/// Checkpoints in PostgreSQL, one row per shard with its owner and lease expiry.
///
/// * `acquire` takes the shard if it has no owner, is already ours, or its lease expired;
///   otherwise it fails with [`CheckpointError::LeaseHeld`].
/// * `checkpoint` and `renew` succeed only while the row still names this owner (a takeover
///   changes it); otherwise [`CheckpointError::LeaseLost`]. Each extends the lease.
/// * `release` clears the owner.
///
/// The processor renews at every checkpoint interval, so the lease must be longer than
/// that interval (default lease 30 s; default checkpoint interval 10 s).
///
/// Table (created if missing): `shard TEXT PRIMARY KEY, position TEXT, owner TEXT,
/// lease_until TIMESTAMPTZ, updated_at TIMESTAMPTZ`.
///
/// The connection is re-established by the next operation after it is lost. TLS (rustls)
/// follows the URL's `sslmode` and `sslrootcert` as libpq does (see
/// [`headwaters_ordering_core::pg`]).
pub struct PostgresCheckpoints {
    pg: PgConnection,
    table: String,
    owner: String,
    lease_ms: i64,
}

impl std::fmt::Debug for PostgresCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCheckpoints")
            .field("target", &self.pg.target())
            .field("table", &self.table)
            .field("owner", &self.owner)
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

impl PostgresCheckpoints {
    /// Connect to `url` as `owner` (a name unique to this instance, e.g. host and pid) with
    /// leases of `lease`, using the default table.
    pub async fn connect(
        url: &str,
        owner: impl Into<String>,
        lease: Duration,
    ) -> Result<Self, CheckpointError> {
        Self::connect_with(url, owner, lease, DEFAULT_TABLE).await
    }

    /// Connect with a table name.
    pub async fn connect_with(
        url: &str,
        owner: impl Into<String>,
        lease: Duration,
        table: &str,
    ) -> Result<Self, CheckpointError> {
        check_table_name(table)?;
        let store = Self {
            pg: PgConnection::new(url).map_err(pg_error)?,
            table: table.to_owned(),
            owner: owner.into(),
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        };
        store
            .client()
            .await?
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    shard TEXT NOT NULL PRIMARY KEY,
                    position TEXT,
                    owner TEXT,
                    lease_until TIMESTAMPTZ,
                    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )"
            ))
            .await
            .map_err(server_error)?;
        Ok(store)
    }

    /// This instance's owner name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The live client, connecting first if there is none.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, CheckpointError> {
        self.pg.client().await.map_err(pg_error)
    }

    /// Run one statement on the live client; the number of rows it changed.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, CheckpointError> {
        self.client()
            .await?
            .execute(sql, params)
            .await
            .map_err(server_error)
    }

    /// Run one query on the live client; its row, if any.
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, CheckpointError> {
        self.client()
            .await?
            .query_opt(sql, params)
            .await
            .map_err(server_error)
    }

    async fn owner_of(&self, shard: &str) -> Result<Option<String>, CheckpointError> {
        let table = &self.table;
        let row = self
            .query_opt(
                &format!("SELECT owner FROM {table} WHERE shard = $1"),
                &[&shard],
            )
            .await?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    /// `updated` rows from a compare-and-set: 0 means another owner has the shard.
    async fn owned(&self, shard: &str, updated: u64) -> Result<(), CheckpointError> {
        if updated == 1 {
            return Ok(());
        }
        Err(CheckpointError::LeaseLost {
            shard: shard.to_owned(),
            owner: self.owner_of(shard).await?,
        })
    }
}

fn pg_error(e: PgError) -> CheckpointError {
    match e {
        PgError::Connect {
            target,
            reason,
            source,
        } => CheckpointError::Connect {
            target,
            reason,
            source: source.map(|e| e as Arc<dyn std::error::Error + Send + Sync>),
        },
        other => CheckpointError::InvalidUrl {
            reason: other.to_string(),
        },
    }
}

fn server_error(e: tokio_postgres::Error) -> CheckpointError {
    match e.as_db_error() {
        Some(db) => CheckpointError::Postgres {
            code: db.code().clone(),
            message: db.message().to_owned(),
        },
        None => CheckpointError::Connect {
            target: "PostgreSQL".into(),
            reason: e.to_string(),
            source: Some(Arc::new(e)),
        },
    }
}

#[async_trait]
impl Checkpointer for PostgresCheckpoints {
    async fn acquire(&self, shard: &str) -> Result<Option<String>, CheckpointError> {
        let table = &self.table;
        let row = self.query_opt(
                &format!(
                    "INSERT INTO {table} AS c (shard, position, owner, lease_until, updated_at)
                     VALUES ($1, NULL, $2, now() + $3::bigint * interval '1 millisecond', now())
                     ON CONFLICT (shard) DO UPDATE SET
                       owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until, updated_at = now()
                     WHERE c.owner IS NULL OR c.owner = EXCLUDED.owner OR c.lease_until < now()
                     RETURNING position"
                ),
                &[&shard, &self.owner, &self.lease_ms],
            ).await?;
        match row {
            Some(row) => Ok(row.get::<_, Option<String>>(0)),
            None => Err(CheckpointError::LeaseHeld {
                shard: shard.to_owned(),
                owner: self.owner_of(shard).await?.unwrap_or_default(),
            }),
        }
    }

    async fn checkpoint(&self, shard: &str, position: &str) -> Result<(), CheckpointError> {
        let table = &self.table;
        let updated = self.execute(
                &format!(
                    "UPDATE {table} SET position = $3,
                       lease_until = now() + $4::bigint * interval '1 millisecond', updated_at = now()
                     WHERE shard = $1 AND owner = $2"
                ),
                &[&shard, &self.owner, &position, &self.lease_ms],
            ).await?;
        self.owned(shard, updated).await
    }

    async fn renew(&self, shard: &str) -> Result<(), CheckpointError> {
        let table = &self.table;
        let updated = self
            .execute(
                &format!(
                    "UPDATE {table} SET lease_until = now() + $3::bigint * interval '1 millisecond'
                     WHERE shard = $1 AND owner = $2"
                ),
                &[&shard, &self.owner, &self.lease_ms],
            )
            .await?;
        self.owned(shard, updated).await
    }

    async fn release(&self, shard: &str) -> Result<(), CheckpointError> {
        let table = &self.table;
        self.execute(
                &format!("UPDATE {table} SET owner = NULL, lease_until = NULL WHERE shard = $1 AND owner = $2"),
                &[&shard, &self.owner],
            ).await?;
        Ok(())
    }

    async fn leases(&self) -> Result<Option<Vec<Lease>>, CheckpointError> {
        let table = &self.table;
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT shard, CASE WHEN lease_until > now() THEN owner END, position
                     FROM {table} ORDER BY shard"
                ),
                &[],
            )
            .await
            .map_err(server_error)?;
        Ok(Some(
            rows.iter()
                .map(|r| Lease {
                    shard: r.get(0),
                    owner: r.get(1),
                    checkpoint: r.get(2),
                })
                .collect(),
        ))
    }

    async fn steal(&self, shard: &str, owner: &str) -> Result<Option<String>, CheckpointError> {
        let table = &self.table;
        let row = self
            .query_opt(
                &format!(
                    "UPDATE {table} SET owner = $3,
                       lease_until = now() + $4::bigint * interval '1 millisecond', updated_at = now()
                     WHERE shard = $1 AND owner = $2
                     RETURNING position"
                ),
                &[&shard, &owner, &self.owner, &self.lease_ms],
            )
            .await?;
        match row {
            Some(row) => Ok(row.get::<_, Option<String>>(0)),
            None => Err(CheckpointError::LeaseHeld {
                shard: shard.to_owned(),
                owner: self.owner_of(shard).await?.unwrap_or_default(),
            }),
        }
    }

    fn owner_name(&self) -> Option<&str> {
        Some(&self.owner)
    }
}
