//! [`PostgresStore`]: status in PostgreSQL, in a table compatible with EventStreamex.

use std::sync::Arc;

use async_trait::async_trait;
use headwaters_ordering_core::Timestamp;
use headwaters_ordering_core::pg::{PgConnection, PgError};

use crate::error::check_table_name;
use crate::store::{Item, StatusStore};
use crate::{DEFAULT_TABLE, Error};

/// Status in PostgreSQL, one upsert statement per batch.
///
/// Table (EventStreamex's `DbAdapter` schema, created if missing):
/// `entity VARCHAR(255) PRIMARY KEY, timestamp BIGINT NOT NULL` (Unix µs),
/// `updated_at TIMESTAMP NOT NULL`. Unlike EventStreamex, the upsert keeps the greater
/// timestamp (`GREATEST`), so a late, older event never moves an entity backwards.
///
/// The connection is re-established by the next operation after it is lost. TLS (rustls)
/// follows the URL's `sslmode` and `sslrootcert` as libpq does — `prefer` by default; use
/// `verify-full` to check the server's certificate (see
/// [`headwaters_ordering_core::pg`]).
pub struct PostgresStore {
    pg: PgConnection,
    table: Arc<str>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the config: it holds the password.
        f.debug_struct("PostgresStore")
            .field("target", &self.pg.target())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user:password@host:port/db`) and create the default table
    /// if it is missing.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, DEFAULT_TABLE).await
    }

    /// Connect and use `table`.
    pub async fn connect_with(url: &str, table: &str) -> Result<Self, Error> {
        check_table_name(table)?;
        let store = Self {
            pg: PgConnection::new(url).map_err(pg_error)?,
            table: Arc::from(table),
        };
        store
            .pg
            .client()
            .await
            .map_err(pg_error)?
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    entity VARCHAR(255) NOT NULL PRIMARY KEY,
                    timestamp BIGINT NOT NULL,
                    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL
                )"
            ))
            .await
            .map_err(server_error)?;
        Ok(store)
    }
}

fn pg_error(e: PgError) -> Error {
    match e {
        PgError::Connect {
            target,
            reason,
            source,
        } => Error::Connect {
            target,
            reason,
            source: source.map(|e| e as Arc<dyn std::error::Error + Send + Sync>),
        },
        other => Error::InvalidUrl {
            reason: other.to_string(),
        },
    }
}

fn server_error(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::Postgres {
            code: db.code().clone(),
            message: db.message().to_owned(),
        },
        None if e.is_closed() => Error::ConnectionLost(e.to_string()),
        None => Error::ConnectionLost(e.to_string()),
    }
}

#[async_trait]
impl StatusStore for PostgresStore {
    async fn store(&self, items: &[Item]) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let entities: Vec<&str> = items.iter().map(|(e, _)| e.as_str()).collect();
        let stamps: Vec<i64> = items.iter().map(|(_, t)| t.as_micros()).collect();
        let table = &self.table;
        let sql = format!(
            "INSERT INTO {table} AS old (entity, timestamp, updated_at)
             SELECT e, ts, NOW() FROM unnest($1::varchar[], $2::bigint[]) AS u(e, ts)
             ON CONFLICT (entity) DO UPDATE SET
               timestamp = GREATEST(old.timestamp, EXCLUDED.timestamp),
               updated_at = NOW()"
        );
        let client = self.pg.client().await.map_err(pg_error)?;
        client
            .execute(&sql, &[&entities, &stamps])
            .await
            .map_err(server_error)?;
        Ok(())
    }

    async fn load(&self) -> Result<Vec<Item>, Error> {
        let table = &self.table;
        let client = self.pg.client().await.map_err(pg_error)?;
        let rows = client
            .query(
                &format!("SELECT entity, timestamp FROM {table} ORDER BY updated_at"),
                &[],
            )
            .await
            .map_err(server_error)?;
        rows.iter()
            .map(|row| {
                let entity: String = row.try_get(0).map_err(server_error)?;
                let ts: i64 = row.try_get(1).map_err(server_error)?;
                Ok((entity, Timestamp::from_micros(ts)))
            })
            .collect()
    }

    async fn reset(&self) -> Result<(), Error> {
        let table = &self.table;
        let client = self.pg.client().await.map_err(pg_error)?;
        client
            .execute(&format!("DELETE FROM {table}"), &[])
            .await
            .map_err(server_error)?;
        Ok(())
    }
}
