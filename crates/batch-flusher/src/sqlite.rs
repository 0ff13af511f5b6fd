//! [`SqliteCheckpoints`]: checkpoints in a SQLite file (one process; no leases).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::checkpoint::{CheckpointError, Checkpointer, DEFAULT_TABLE, check_table_name};

/// Checkpoints in a SQLite database (WAL, `synchronous=FULL`): a stored checkpoint survives a
/// crash of the process and of the machine. For one process at a time; several instances
/// sharing shards use [`PostgresCheckpoints`](crate::PostgresCheckpoints).
#[derive(Debug, Clone)]
pub struct SqliteCheckpoints {
    conn: Arc<Mutex<Connection>>,
    table: Arc<str>,
}

impl SqliteCheckpoints {
    /// Open (or create) the store at `path` with the default table.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        Self::open_with(path, DEFAULT_TABLE).await
    }

    /// Open with a table name.
    pub async fn open_with(path: impl AsRef<Path>, table: &str) -> Result<Self, CheckpointError> {
        check_table_name(table)?;
        let path = path.as_ref().to_owned();
        let table: Arc<str> = Arc::from(table);
        let t = Arc::clone(&table);
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, CheckpointError> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    shard TEXT NOT NULL PRIMARY KEY,
                    position TEXT NOT NULL,
                    updated_at INTEGER NOT NULL
                )"
            ))?;
            Ok(conn)
        })
        .await??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            table,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        let (conn, table) = (Arc::clone(&self.conn), Arc::clone(&self.table));
        let result = tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn, &table)
        })
        .await?;
        Ok(result?)
    }
}

#[async_trait]
impl Checkpointer for SqliteCheckpoints {
    async fn acquire(&self, shard: &str) -> Result<Option<String>, CheckpointError> {
        let shard = shard.to_owned();
        self.blocking(move |conn, table| {
            conn.query_row(
                &format!("SELECT position FROM {table} WHERE shard = ?1"),
                [shard],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn checkpoint(&self, shard: &str, position: &str) -> Result<(), CheckpointError> {
        let (shard, position) = (shard.to_owned(), position.to_owned());
        self.blocking(move |conn, table| {
            conn.execute(
                &format!(
                    "INSERT INTO {table} (shard, position, updated_at) VALUES (?1, ?2, unixepoch('subsec') * 1000)
                     ON CONFLICT (shard) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at"
                ),
                params![shard, position],
            )
            .map(drop)
        })
        .await
    }
}
