//! [`SqliteStore`]: status in a SQLite file (bundled SQLite, WAL) — the embedded default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use headwaters_ordering_core::Timestamp;
use rusqlite::{Connection, OpenFlags, params};

use crate::error::check_table_name;
use crate::store::{Item, StatusStore};
use crate::{DEFAULT_TABLE, Error};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sync {
    /// `synchronous=FULL`: a committed batch survives a process crash **and** a power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a committed batch survives a process crash; the last batches may
    /// be rolled back by a power loss or OS crash. Faster.
    Normal,
}

/// Status in a SQLite database file. Writes are one transaction per batch, so a crash leaves
/// every entity with a value that was really written.
///
/// Table (same columns as EventStreamex's PostgreSQL table):
/// `entity TEXT PRIMARY KEY, timestamp INTEGER NOT NULL` (Unix µs), `updated_at INTEGER NOT
/// NULL` (Unix µs of the write).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    table: Arc<str>,
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
        let table: Arc<str> = Arc::from(table);
        let (p, t) = (path.clone(), Arc::clone(&table));
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, Error> {
            let conn = Connection::open_with_flags(
                &p,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let level = match sync {
                Sync::Full => "FULL",
                Sync::Normal => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", level)?;
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    entity TEXT NOT NULL PRIMARY KEY,
                    timestamp INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL
                )"
            ))?;
            Ok(conn)
        })
        .await??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            table,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let conn = Arc::clone(&self.conn);
        let table = Arc::clone(&self.table);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, &table)
        })
        .await?
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
