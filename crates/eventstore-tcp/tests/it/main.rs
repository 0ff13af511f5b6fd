//! Integration tests of the EventStore TCP client.

mod emulator;
