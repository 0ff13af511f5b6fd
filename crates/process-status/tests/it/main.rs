//! Integration tests of headwaters-process-status (one binary, modules per store).

mod behaviour;
mod postgres;
mod sqlite;
