//! [`SqliteCheckpoints`]: checkpoints in a SQLite file (one process; no leases).

use std::path::Path;

use async_trait::async_trait;
use headwaters_ordering_core::sqlite::{SqliteDb, Synchronous};
use rusqlite::{Connection, OptionalExtension, params};

use crate::checkpoint::{CheckpointError, Checkpointer, DEFAULT_TABLE, check_table_name};

/// Checkpoints in a SQLite database (WAL, `synchronous=FULL`): a stored checkpoint survives a
/// crash of the process and of the machine. For one process at a time; several instances
/// sharing shards use [`PostgresCheckpoints`](crate::PostgresCheckpoints).
#[derive(Debug, Clone)]
pub struct SqliteCheckpoints {
    db: SqliteDb,
}

impl SqliteCheckpoints {
    /// Open (or create) the store at `path` with the default table.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        Self::open_with(path, DEFAULT_TABLE).await
    }

    /// Open with a table name.
    pub async fn open_with(path: impl AsRef<Path>, table: &str) -> Result<Self, CheckpointError> {
        check_table_name(table)?;
        let columns = "shard TEXT NOT NULL PRIMARY KEY,
                       position TEXT NOT NULL,
                       updated_at INTEGER NOT NULL";
        let db = SqliteDb::open(path.as_ref(), table, columns, Synchronous::Full).await?;
        Ok(Self { db })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        self.db
            .blocking(move |conn, table| f(conn, table).map_err(CheckpointError::from))
            .await
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
