//! Integration tests of the EventStore TCP client.

mod access;
mod batch_source;
mod cluster;
mod emulator;
mod persistent;
