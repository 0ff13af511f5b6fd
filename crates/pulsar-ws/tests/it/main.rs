//! Integration tests of the Pulsar WebSocket client.

mod batch_source;
mod emulator;
