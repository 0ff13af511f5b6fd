//! Entry points for the fuzz targets (feature `fuzzing`; not a stable API).

use prost::Message;

use crate::command::Command;
use crate::types::ResolvedEvent;
use crate::wire;

/// Decode `payload` as the message a server sends with `command` and turn it into domain
/// types, as the client does. Malformed input must come back as an error, never a panic.
pub fn decode_message(command: Command, payload: &[u8]) {
    use Command as C;
    match command {
        C::ReadStreamEventsForwardCompleted | C::ReadStreamEventsBackwardCompleted => {
            if let Ok(m) = wire::ReadStreamEventsCompleted::decode(payload) {
                let _ = m.result();
                m.events.into_iter().for_each(|e| {
                    let _ = ResolvedEvent::from_indexed(e);
                });
            }
        }
        C::ReadAllEventsForwardCompleted | C::ReadAllEventsBackwardCompleted => {
            if let Ok(m) = wire::ReadAllEventsCompleted::decode(payload) {
                let _ = m.result();
                m.events.into_iter().for_each(|e| {
                    let _ = ResolvedEvent::from_all(e);
                });
            }
        }
        C::ReadEventCompleted => {
            if let Ok(m) = wire::ReadEventCompleted::decode(payload) {
                let _ = m.result();
                let _ = ResolvedEvent::from_indexed(m.event.unwrap_or_default());
            }
        }
        C::StreamEventAppeared => {
            if let Ok(m) = wire::StreamEventAppeared::decode(payload) {
                let _ = ResolvedEvent::from_all(m.event);
            }
        }
        C::PersistentSubscriptionStreamEventAppeared => {
            if let Ok(m) = wire::PersistentSubscriptionStreamEventAppeared::decode(payload) {
                let _ = ResolvedEvent::from_indexed(m.event);
            }
        }
        C::WriteEventsCompleted => {
            let _ = wire::WriteEventsCompleted::decode(payload).map(|m| m.result());
        }
        C::DeleteStreamCompleted => {
            let _ = wire::DeleteStreamCompleted::decode(payload).map(|m| m.result());
        }
        C::TransactionStartCompleted => {
            let _ = wire::TransactionStartCompleted::decode(payload).map(|m| m.result());
        }
        C::TransactionWriteCompleted => {
            let _ = wire::TransactionWriteCompleted::decode(payload).map(|m| m.result());
        }
        C::TransactionCommitCompleted => {
            let _ = wire::TransactionCommitCompleted::decode(payload).map(|m| m.result());
        }
        C::CreatePersistentSubscriptionCompleted => {
            let _ =
                wire::CreatePersistentSubscriptionCompleted::decode(payload).map(|m| m.result());
        }
        C::UpdatePersistentSubscriptionCompleted => {
            let _ =
                wire::UpdatePersistentSubscriptionCompleted::decode(payload).map(|m| m.result());
        }
        C::DeletePersistentSubscriptionCompleted => {
            let _ =
                wire::DeletePersistentSubscriptionCompleted::decode(payload).map(|m| m.result());
        }
        C::SubscriptionConfirmation => {
            let _ = wire::SubscriptionConfirmation::decode(payload);
        }
        C::PersistentSubscriptionConfirmation => {
            let _ = wire::PersistentSubscriptionConfirmation::decode(payload);
        }
        C::SubscriptionDropped => {
            let _ = wire::SubscriptionDropped::decode(payload).map(|m| m.reason());
        }
        C::NotHandled => {
            if let Ok(m) = wire::NotHandled::decode(payload) {
                let _ = m.reason();
                if let Some(info) = m.additional_info {
                    let _ = wire::not_handled::MasterInfo::decode(info);
                }
            }
        }
        _ => {}
    }
}
