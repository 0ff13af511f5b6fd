//! Integration tests of the Pulsar WebSocket client.

mod emulator;
