//! The emulator's own copy of the generated protobuf messages (`cargo xtask codegen`).

#[allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    unnameable_types,
    clippy::all,
    clippy::use_self,
    clippy::enum_variant_names
)]
mod generated {
    include!("wire/event_store.client.messages.rs");
}

pub(crate) use generated::*;
