//! The crate's [`Error`].

use std::sync::Arc;

/// A process-status failure. Cheap to clone: one write error is reported to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configured table name is not a plain SQL identifier.
    #[error(
        "invalid table name {0:?}: use ASCII letters, digits and underscores, starting with a letter or underscore, at most 63 characters"
    )]
    InvalidTableName(String),
    /// The database URL could not be parsed. The URL itself is not repeated (it may hold a
    /// password).
    #[error("invalid database URL: {reason}; expected e.g. postgres://user@127.0.0.1:5432/db")]
    InvalidUrl {
        /// The parser's reason.
        reason: String,
    },
    /// The database could not be reached or refused the connection.
    #[error(
        "cannot connect to the database at {target}: {reason}; check that it runs and that DATABASE_URL is right"
    )]
    Connect {
        /// Host and port (never credentials).
        target: String,
        /// Why.
        reason: String,
        /// The cause, when there is one (the PostgreSQL driver's error).
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The PostgreSQL server answered with an error.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    #[error("PostgreSQL error {}: {message}{}", code.code(), postgres_hint(code))]
    Postgres {
        /// The SQLSTATE, e.g. [`SqlState::INSUFFICIENT_PRIVILEGE`](crate::SqlState)
        /// (`42501`).
        code: tokio_postgres::error::SqlState,
        /// The server's message.
        message: String,
    },
    /// The PostgreSQL connection was lost; the next operation reconnects.
    #[error("the PostgreSQL connection was lost: {0}")]
    ConnectionLost(String),
    /// SQLite failed.
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    #[error("SQLite error: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// The background writer is gone (the [`ProcessStatus`](crate::ProcessStatus) was shut
    /// down).
    #[error("the process-status writer has stopped; nothing more can be recorded")]
    WriterStopped,
    /// [`ProcessStatus::open`](crate::ProcessStatus::open) was called outside a tokio runtime.
    #[error("ProcessStatus::open must be called from inside a tokio runtime")]
    NoRuntime,
    /// A blocking storage task failed.
    #[error("a storage task failed: {0}")]
    Task(Arc<tokio::task::JoinError>),
}

#[cfg(feature = "postgres")]
fn postgres_hint(code: &tokio_postgres::error::SqlState) -> &'static str {
    use tokio_postgres::error::SqlState;
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        " (the database user lacks a privilege on the status table: GRANT it, or use another table_name)"
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        " (the database does not exist: create it or fix the URL)"
    } else if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        " (authentication failed: check the user and password)"
    } else {
        ""
    }
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(Arc::new(e))
    }
}

#[cfg(feature = "sqlite")]
impl From<headwaters_ordering_core::sqlite::SqliteError> for Error {
    fn from(e: headwaters_ordering_core::sqlite::SqliteError) -> Self {
        use headwaters_ordering_core::sqlite::SqliteError;
        match e {
            SqliteError::Sqlite(e) => Self::Sqlite(e),
            SqliteError::Task(e) => Self::Task(e),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(Arc::new(e))
    }
}

/// Check a table name: it is spliced into SQL, so only plain identifiers are allowed.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn check_table_name(name: &str) -> Result<(), Error> {
    if headwaters_ordering_core::sql::is_table_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidTableName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["event_streamex_process_status", "_t", "T1"] {
            assert!(check_table_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1t", "t; DROP TABLE x", "a-b", "t\"", &"x".repeat(64)] {
            assert!(
                matches!(check_table_name(bad), Err(Error::InvalidTableName(_))),
                "{bad}"
            );
        }
    }
}
