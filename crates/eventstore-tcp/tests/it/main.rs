//! Integration tests of the EventStore TCP client.

mod batch_source;
mod cluster;
mod emulator;
mod persistent;
