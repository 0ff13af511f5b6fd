//! [`SqliteStore`]: status in a SQLite file (bundled SQLite, WAL) — the embedded default.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use headwaters_ordering_core::Timestamp;
use headwaters_ordering_core::sqlite::SqliteDb;
pub use headwaters_ordering_core::sqlite::Synchronous as Sync;
use rusqlite::{Connection, params};

use crate::error::check_table_name;
use crate::store::{Item, StatusStore};
use crate::{DEFAULT_TABLE, Error};

/// Status in a SQLite database file. Writes are one transaction per batch, so a crash leaves
/// every entity with a value that was really written.
///
/// Table (same columns as EventStreamex's PostgreSQL table):
/// `entity TEXT PRIMARY KEY, timestamp INTEGER NOT NULL` (Unix µs), `updated_at INTEGER NOT
/// NULL` (Unix µs of the write).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: SqliteDb,
    path: PathBuf,
}

impl SqliteStore {
    /// Open (or create) the database at `path` with the default table and [`Sync::Full`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, DEFAULT_TABLE, Sync::Full).await
    }

    /// Open with a table name and sync level.
    pub async fn open_with(path: impl AsRef<Path>, table: &str, sync: Sync) -> Result<Self, Error> {
        check_table_name(table)?;
        let path = path.as_ref().to_owned();
        let columns = "entity TEXT NOT NULL PRIMARY KEY,
                       timestamp INTEGER NOT NULL,
                       updated_at INTEGER NOT NULL";
        let db = SqliteDb::open(&path, table, columns, sync).await?;
        Ok(Self { db, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.db.blocking(f).await
    }
}

#[async_trait]
impl StatusStore for SqliteStore {
    async fn store(&self, items: &[Item]) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let items = items.to_vec();
        self.blocking(move |conn, table| {
            let now = Timestamp::now().as_micros();
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT INTO {table} (entity, timestamp, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (entity) DO UPDATE SET
                       timestamp = max(timestamp, excluded.timestamp),
                       updated_at = excluded.updated_at"
                ))?;
                for (entity, ts) in &items {
                    stmt.execute(params![entity, ts.as_micros(), now])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn load(&self) -> Result<Vec<Item>, Error> {
        self.blocking(|conn, table| {
            let mut stmt = conn.prepare(&format!(
                "SELECT entity, timestamp FROM {table} ORDER BY updated_at"
            ))?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Timestamp::from_micros(row.get(1)?),
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn reset(&self) -> Result<(), Error> {
        self.blocking(|conn, table| {
            conn.execute(&format!("DELETE FROM {table}"), [])?;
            Ok(())
        })
        .await
    }
}
