//! erlmld's flusher and batch processor: batch records into a sink, checkpoint safely.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod batch;

pub use batch::{Batch, Leftover, Schedule, SubSequence, Token, TokenError};
