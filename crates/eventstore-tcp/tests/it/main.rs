//! Integration tests of the EventStore TCP client.

mod batch_source;
mod emulator;
mod persistent;
