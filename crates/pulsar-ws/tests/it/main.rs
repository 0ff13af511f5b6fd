//! Integration tests of the Pulsar WebSocket client.

mod batch_source;
mod differential;
mod emulator;
mod java_peer;
mod stop;
