//! Integration tests of headwaters-batch-flusher (one binary, modules by topic).

mod fakes;
mod postgres;
mod processor;
mod sqlite;
