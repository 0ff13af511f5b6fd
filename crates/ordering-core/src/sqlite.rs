//! SQLite files for the stores (feature `sqlite`): opened once with the settings every store
//! wants — WAL, a busy timeout, the sync level asked for, its table created — and used from
//! async code through [`SqliteDb::blocking`]. `headwaters-process-status` and
//! `headwaters-batch-flusher` both open their files through it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How hard SQLite syncs a commit to disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `FULL`: a commit survives a process crash **and** a power loss.
    #[default]
    Full,
    /// `NORMAL`: a commit survives a process crash; the last ones may be rolled back by a
    /// power loss or OS crash. Faster.
    Normal,
}

/// Why a SQLite call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SqliteError {
    /// SQLite refused (the file cannot be opened, a constraint, a full disk…).
    #[error("SQLite: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// The blocking task running the call panicked or was cancelled.
    #[error("the SQLite task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

impl From<rusqlite::Error> for SqliteError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(Arc::new(e))
    }
}

/// One SQLite file and one table in it, shared by clones (calls run one at a time on
/// tokio's blocking pool).
#[derive(Debug, Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
    table: Arc<str>,
}

impl SqliteDb {
    /// Open (or create) the file at `path` in WAL mode with a 5 s busy timeout and
    /// `synchronous` as given, and create `table` with `columns` (the column list of a
    /// `CREATE TABLE`) unless it exists. `table` must have passed
    /// [`sql::is_table_name`](crate::sql::is_table_name).
    pub async fn open(
        path: &Path,
        table: &str,
        columns: &str,
        synchronous: Synchronous,
    ) -> Result<Self, SqliteError> {
        let table: Arc<str> = Arc::from(table);
        let create = format!("CREATE TABLE IF NOT EXISTS {table} ({columns})");
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, SqliteError> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let level = match synchronous {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", level)?;
            conn.execute_batch(&create)?;
            Ok(conn)
        })
        .await
        .map_err(|e| SqliteError::Task(Arc::new(e)))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            table,
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Run `f` with the connection and the table name on the blocking pool.
    pub async fn blocking<T, E>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        let (conn, table) = (Arc::clone(&self.conn), Arc::clone(&self.table));
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, &table)
        })
        .await
        .map_err(|e| E::from(SqliteError::Task(Arc::new(e))))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_opens_in_wal_with_its_table_and_keeps_what_was_written() {
        let dir = std::env::temp_dir().join(format!("hw-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let db = SqliteDb::open(
            &path,
            "t",
            "k TEXT PRIMARY KEY, v INTEGER",
            Synchronous::Normal,
        )
        .await
        .unwrap();
        let mode: String = db
            .blocking(|c, _| {
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .map_err(SqliteError::from)
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        db.blocking(|c, t| {
            c.execute(&format!("INSERT INTO {t} VALUES ('a', 1)"), [])
                .map_err(SqliteError::from)
        })
        .await
        .unwrap();
        drop(db);
        let again = SqliteDb::open(
            &path,
            "t",
            "k TEXT PRIMARY KEY, v INTEGER",
            Synchronous::Full,
        )
        .await
        .unwrap();
        let v: i64 = again
            .blocking(|c, t| {
                c.query_row(&format!("SELECT v FROM {t} WHERE k = 'a'"), [], |r| {
                    r.get(0)
                })
                .map_err(SqliteError::from)
            })
            .await
            .unwrap();
        assert_eq!(v, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
