//! The one-byte command codes ([`Command`]).

macro_rules! commands {
    ($($(#[$meta:meta])* $name:ident = $code:literal,)+) => {
        /// A frame's command (`TcpCommand`). Internal cluster commands and unknown codes are
        /// kept as [`Command::Other`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Command {
            $($(#[$meta])* $name,)+
            /// Any other code.
            Other(u8),
        }

        impl Command {
            /// The wire code.
            pub const fn code(self) -> u8 {
                match self {
                    $(Self::$name => $code,)+
                    Self::Other(c) => c,
                }
            }

            /// From the wire code.
            pub const fn from_code(code: u8) -> Self {
                match code {
                    $($code => Self::$name,)+
                    c => Self::Other(c),
                }
            }
        }
    };
}

impl Command {
    /// Whether this answer ends a subscription (a drop, refused credentials, a bad
    /// request).
    #[cfg(feature = "client")]
    pub(crate) const fn ends_subscription(self) -> bool {
        matches!(
            self,
            Self::SubscriptionDropped | Self::NotAuthenticated | Self::BadRequest
        )
    }
}

commands! {
    /// Either side asks for a heartbeat (empty payload).
    HeartbeatRequest = 0x01,
    /// The answer, with the request's correlation id.
    HeartbeatResponse = 0x02,
    /// Client ping.
    Ping = 0x03,
    /// Server pong (echoes the ping).
    Pong = 0x04,
    /// Append events.
    WriteEvents = 0x82,
    /// Append result.
    WriteEventsCompleted = 0x83,
    /// Start a transaction.
    TransactionStart = 0x84,
    /// Transaction started.
    TransactionStartCompleted = 0x85,
    /// Write into a transaction.
    TransactionWrite = 0x86,
    /// Transaction write result.
    TransactionWriteCompleted = 0x87,
    /// Commit a transaction.
    TransactionCommit = 0x88,
    /// Commit result.
    TransactionCommitCompleted = 0x89,
    /// Delete a stream.
    DeleteStream = 0x8A,
    /// Delete result.
    DeleteStreamCompleted = 0x8B,
    /// Read one event.
    ReadEvent = 0xB0,
    /// Read-one result.
    ReadEventCompleted = 0xB1,
    /// Read a stream forward.
    ReadStreamEventsForward = 0xB2,
    /// Forward read result.
    ReadStreamEventsForwardCompleted = 0xB3,
    /// Read a stream backward.
    ReadStreamEventsBackward = 0xB4,
    /// Backward read result.
    ReadStreamEventsBackwardCompleted = 0xB5,
    /// Read `$all` forward.
    ReadAllEventsForward = 0xB6,
    /// `$all` forward result.
    ReadAllEventsForwardCompleted = 0xB7,
    /// Read `$all` backward.
    ReadAllEventsBackward = 0xB8,
    /// `$all` backward result.
    ReadAllEventsBackwardCompleted = 0xB9,
    /// Filtered `$all` read forward (20.6+).
    FilteredReadAllEventsForward = 0xBA,
    /// Its result.
    FilteredReadAllEventsForwardCompleted = 0xBB,
    /// Filtered `$all` read backward (20.6+).
    FilteredReadAllEventsBackward = 0xBC,
    /// Its result (the code skips 0xBD).
    FilteredReadAllEventsBackwardCompleted = 0xBE,
    /// Volatile subscription (empty stream id = `$all`).
    SubscribeToStream = 0xC0,
    /// Subscription confirmed.
    SubscriptionConfirmation = 0xC1,
    /// A live event.
    StreamEventAppeared = 0xC2,
    /// Unsubscribe.
    UnsubscribeFromStream = 0xC3,
    /// A subscription ended.
    SubscriptionDropped = 0xC4,
    /// Join a persistent subscription group.
    ConnectToPersistentSubscription = 0xC5,
    /// Joined.
    PersistentSubscriptionConfirmation = 0xC6,
    /// A persistent-subscription event.
    PersistentSubscriptionStreamEventAppeared = 0xC7,
    /// Create a persistent subscription.
    CreatePersistentSubscription = 0xC8,
    /// Created.
    CreatePersistentSubscriptionCompleted = 0xC9,
    /// Delete a persistent subscription.
    DeletePersistentSubscription = 0xCA,
    /// Deleted.
    DeletePersistentSubscriptionCompleted = 0xCB,
    /// Ack events (no reply).
    PersistentSubscriptionAckEvents = 0xCC,
    /// Nak events (no reply).
    PersistentSubscriptionNakEvents = 0xCD,
    /// Update a persistent subscription.
    UpdatePersistentSubscription = 0xCE,
    /// Updated.
    UpdatePersistentSubscriptionCompleted = 0xCF,
    /// Start a scavenge.
    ScavengeDatabase = 0xD0,
    /// Scavenge answer.
    ScavengeDatabaseResponse = 0xD1,
    /// Filtered subscription (20.6+).
    FilteredSubscribeToStream = 0xD2,
    /// Filtered subscription checkpoint (20.6+).
    CheckpointReached = 0xD3,
    /// A request the receiver could not understand (UTF-8 reason).
    BadRequest = 0xF0,
    /// The server did not handle the request (not ready, too busy, not leader, read-only).
    NotHandled = 0xF1,
    /// Authenticate the connection (credentials in the frame).
    Authenticate = 0xF2,
    /// Authenticated.
    Authenticated = 0xF3,
    /// Credentials refused (UTF-8 reason).
    NotAuthenticated = 0xF4,
    /// Say who the client is (protocol version 1 = 64-bit event numbers).
    IdentifyClient = 0xF5,
    /// Identified.
    ClientIdentified = 0xF6,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0..=u8::MAX {
            assert_eq!(Command::from_code(code).code(), code);
        }
        assert_eq!(Command::from_code(0xBD), Command::Other(0xBD));
        assert_eq!(Command::FilteredReadAllEventsBackwardCompleted.code(), 0xBE);
        assert_eq!(Command::IdentifyClient.code(), 0xF5);
    }
}
