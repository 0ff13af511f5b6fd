//! [`Error`]: what can go wrong talking to Kinesis.

use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use headwaters_batch_flusher::CheckpointError;

/// A Kinesis source or worker failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No credentials to sign requests with.
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (read by KinesisConfig::from_env), call KinesisConfig::with_credentials, or build the client with aws-config and use KinesisSource::from_client"
    )]
    NoCredentials,
    /// A Kinesis API call failed (after the retries it is worth).
    #[error("Kinesis {operation} on stream {stream:?} failed: {detail}")]
    Api {
        /// The API operation.
        operation: &'static str,
        /// The stream.
        stream: String,
        /// The SDK's full account of the failure (its causes included).
        detail: String,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `GetShardIterator` answered without an iterator.
    #[error("Kinesis returned no shard iterator for shard {shard:?}")]
    NoIterator {
        /// The shard.
        shard: String,
    },
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl Error {
    pub(crate) fn api<E, R>(operation: &'static str, stream: &str, e: SdkError<E, R>) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        Self::Api {
            operation,
            stream: stream.to_owned(),
            detail: DisplayErrorContext(&e).to_string(),
            source: Box::new(e),
        }
    }
}
