//! Transactions: events written in several requests, visible together at the commit —
//! [`Transaction`].

use prost::Message as _;

use crate::command::Command;
use crate::connection::Connection;
use crate::error::Error;
use crate::ops::{decode, operation_error};
use crate::types::{EventData, ExpectedVersion, WriteResult};
use crate::wire::{self, OperationResult};

/// An open transaction on one stream. Nothing is visible until [`Transaction::commit`];
/// the expected version is checked then. Dropping it without a commit abandons it.
#[derive(Debug)]
pub struct Transaction {
    connection: Connection,
    stream: String,
    id: i64,
}

impl Connection {
    /// Start a transaction on `stream`.
    pub async fn start_transaction(
        &self,
        stream: &str,
        expected: ExpectedVersion,
    ) -> Result<Transaction, Error> {
        let request = wire::TransactionStart {
            event_stream_id: stream.to_owned(),
            expected_version: expected.wire(),
            require_master: true,
        };
        let frame = self
            .request(Command::TransactionStart, request.encode_to_vec())
            .await?;
        let done: wire::TransactionStartCompleted =
            decode(&frame, Command::TransactionStartCompleted)?;
        match done.result() {
            OperationResult::Success => Ok(Transaction {
                connection: self.clone(),
                stream: stream.to_owned(),
                id: done.transaction_id,
            }),
            other => Err(operation_error(other, done.message, stream, None)),
        }
    }
}

impl Transaction {
    /// The server's id of the transaction.
    pub const fn id(&self) -> i64 {
        self.id
    }

    /// Add events (not visible before the commit).
    pub async fn write(&self, events: &[EventData]) -> Result<(), Error> {
        let request = wire::TransactionWrite {
            transaction_id: self.id,
            events: events.iter().map(EventData::to_wire).collect(),
            require_master: true,
        };
        let frame = self
            .connection
            .request(Command::TransactionWrite, request.encode_to_vec())
            .await?;
        let done: wire::TransactionWriteCompleted =
            decode(&frame, Command::TransactionWriteCompleted)?;
        match done.result() {
            OperationResult::Success => Ok(()),
            other => Err(operation_error(other, done.message, &self.stream, None)),
        }
    }

    /// Commit: every event written becomes visible at once, if the stream is still at the
    /// expected version.
    pub async fn commit(self) -> Result<WriteResult, Error> {
        let request = wire::TransactionCommit {
            transaction_id: self.id,
            require_master: true,
        };
        let frame = self
            .connection
            .request(Command::TransactionCommit, request.encode_to_vec())
            .await?;
        let done: wire::TransactionCommitCompleted =
            decode(&frame, Command::TransactionCommitCompleted)?;
        match done.result() {
            OperationResult::Success => Ok(WriteResult::from_wire(
                done.last_event_number,
                done.commit_position,
                done.prepare_position,
            )),
            other => Err(operation_error(other, done.message, &self.stream, None)),
        }
    }
}
