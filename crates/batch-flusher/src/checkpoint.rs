//! Where checkpoints live: the [`Checkpointer`] contract, its [`CheckpointError`], and
//! [`MemoryCheckpoints`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

/// Stores one checkpoint (a position's text form) per shard, and — for stores shared by many
/// instances — who owns each shard.
///
/// Contract: [`acquire`](Self::acquire) claims the shard for this instance (or fails with
/// [`CheckpointError::LeaseHeld`]) and returns its checkpoint; [`checkpoint`](Self::checkpoint)
/// stores a position only while this instance still owns the shard (else
/// [`CheckpointError::LeaseLost`]); [`renew`](Self::renew) keeps the claim alive;
/// [`release`](Self::release) gives it up.
#[async_trait]
pub trait Checkpointer: Send + Sync + 'static {
    /// Claim `shard` and return its last checkpoint.
    async fn acquire(&self, shard: &str) -> Result<Option<String>, CheckpointError>;

    /// Store `position` as `shard`'s checkpoint.
    async fn checkpoint(&self, shard: &str, position: &str) -> Result<(), CheckpointError>;

    /// Keep the claim on `shard` alive.
    async fn renew(&self, _shard: &str) -> Result<(), CheckpointError> {
        Ok(())
    }

    /// Give up the claim on `shard`.
    async fn release(&self, _shard: &str) -> Result<(), CheckpointError> {
        Ok(())
    }

    /// Every shard's lease, for balancing shards across instances; `None` for a store that
    /// one process owns alone (no leases to balance).
    async fn leases(&self) -> Result<Option<Vec<Lease>>, CheckpointError> {
        Ok(None)
    }

    /// Take `shard` over from `owner`, whose lease is still valid, and return its checkpoint:
    /// only while `owner` still holds it (else [`CheckpointError::LeaseHeld`] or
    /// [`CheckpointError::LeaseLost`]). The old owner's next checkpoint or renewal fails with
    /// `LeaseLost`, and it stops the shard without flushing. Stores without leases refuse.
    async fn steal(&self, shard: &str, _owner: &str) -> Result<Option<String>, CheckpointError> {
        Err(CheckpointError::LeaseHeld {
            shard: shard.to_owned(),
            owner: "this store has no shared leases".to_owned(),
        })
    }

    /// The name this instance holds leases under, if the store has leases.
    fn owner_name(&self) -> Option<&str> {
        None
    }
}

/// A shard's lease as a shared store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: String,
    /// Who holds it, if its lease is still valid; `None` when free or expired.
    pub owner: Option<String>,
    /// Its checkpoint.
    pub checkpoint: Option<String>,
}

#[async_trait]
impl<C: Checkpointer + ?Sized> Checkpointer for Arc<C> {
    async fn acquire(&self, shard: &str) -> Result<Option<String>, CheckpointError> {
        (**self).acquire(shard).await
    }
    async fn checkpoint(&self, shard: &str, position: &str) -> Result<(), CheckpointError> {
        (**self).checkpoint(shard, position).await
    }
    async fn renew(&self, shard: &str) -> Result<(), CheckpointError> {
        (**self).renew(shard).await
    }
    async fn release(&self, shard: &str) -> Result<(), CheckpointError> {
        (**self).release(shard).await
    }
    async fn leases(&self) -> Result<Option<Vec<Lease>>, CheckpointError> {
        (**self).leases().await
    }
    async fn steal(&self, shard: &str, owner: &str) -> Result<Option<String>, CheckpointError> {
        (**self).steal(shard, owner).await
    }
    fn owner_name(&self) -> Option<&str> {
        (**self).owner_name()
    }
}

/// A checkpoint store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Another instance owns the shard and its lease has not expired.
    #[error(
        "shard {shard:?} is owned by {owner:?} until its lease expires; another instance processes it"
    )]
    LeaseHeld {
        /// The shard.
        shard: String,
        /// The current owner.
        owner: String,
    },
    /// This instance no longer owns the shard: stop processing it without checkpointing.
    #[error("the lease on shard {shard:?} was lost{}; stop processing it", owner.as_ref().map(|o| format!(" to {o:?}")).unwrap_or_default())]
    LeaseLost {
        /// The shard.
        shard: String,
        /// The new owner, if known.
        owner: Option<String>,
    },
    /// The configured table name is not a plain SQL identifier.
    #[error(
        "invalid table name {0:?}: use ASCII letters, digits and underscores, starting with a letter or underscore, at most 63 characters"
    )]
    InvalidTableName(String),
    /// The database URL could not be parsed (the URL is not repeated: it may hold a password).
    #[error("invalid database URL: {reason}")]
    InvalidUrl {
        /// The parser's reason.
        reason: String,
    },
    /// The database could not be reached.
    #[error("cannot connect to the checkpoint database at {target}: {reason}")]
    Connect {
        /// Host and port, never credentials.
        target: String,
        /// Why.
        reason: String,
        /// The cause, when there is one (the PostgreSQL driver's error).
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// PostgreSQL answered with an error.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL error {}: {message}", code.code())]
    Postgres {
        /// The SQLSTATE.
        code: tokio_postgres::error::SqlState,
        /// The server's message.
        message: String,
    },
    /// SQLite failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite error: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// A blocking store task failed.
    #[error("a checkpoint store task failed: {0}")]
    Task(Arc<tokio::task::JoinError>),
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for CheckpointError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(Arc::new(e))
    }
}

impl From<tokio::task::JoinError> for CheckpointError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(Arc::new(e))
    }
}

#[cfg(feature = "sqlite")]
impl From<headwaters_ordering_core::sqlite::SqliteError> for CheckpointError {
    fn from(e: headwaters_ordering_core::sqlite::SqliteError) -> Self {
        use headwaters_ordering_core::sqlite::SqliteError;
        match e {
            SqliteError::Sqlite(e) => Self::Sqlite(e),
            SqliteError::Task(e) => Self::Task(e),
        }
    }
}

/// Checkpoints in memory, for one process (no leases). Clones share the same map.
#[derive(Debug, Default, Clone)]
pub struct MemoryCheckpoints {
    map: Arc<Mutex<HashMap<String, String>>>,
}

impl MemoryCheckpoints {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored checkpoint of `shard`.
    pub fn get(&self, shard: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(shard)
            .cloned()
    }
}

#[async_trait]
impl Checkpointer for MemoryCheckpoints {
    async fn acquire(&self, shard: &str) -> Result<Option<String>, CheckpointError> {
        Ok(self.get(shard))
    }

    async fn checkpoint(&self, shard: &str, position: &str) -> Result<(), CheckpointError> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard.to_owned(), position.to_owned());
        Ok(())
    }
}

/// The default checkpoint table of the SQL stores.
pub const DEFAULT_TABLE: &str = "headwaters_checkpoints";

/// Check a table name: it is spliced into SQL, so only plain identifiers are allowed.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn check_table_name(name: &str) -> Result<(), CheckpointError> {
    if headwaters_ordering_core::sql::is_table_name(name) {
        Ok(())
    } else {
        Err(CheckpointError::InvalidTableName(name.to_owned()))
    }
}
