//! What an attached connection is made of, apart from its socket and its
//! protocol state: the client's negotiated settings ([`Client`], which a
//! parked connection keeps), why a connection ends ([`Close`]), and the
//! connection slots it holds ([`Slots`]).

use std::sync::Arc;
use std::time::Duration;

use starling_codec::{ByteString, ProtocolVersion, ReasonCode, Will};

use crate::auth::{Acl, Grant, ListenerFile};
use crate::metrics::DisconnectReason;
use crate::session::Session;

/// Most topic aliases the broker assigns towards one client, whatever the
/// client allows: the map of aliases is per-connection memory.
pub(crate) const OUT_ALIAS_CAP: u16 = 1024;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Close {
    /// DISCONNECT with reason 0x00: the will is discarded.
    Normal,
    /// DISCONNECT with reason 0x04: the will is published.
    NormalWithWill,
    /// The peer closed the socket or it failed.
    PeerClosed,
    /// Nothing arrived within 1.5 times the keep alive.
    KeepAlive,
    /// A protocol violation, with the reason code to report.
    Protocol(ReasonCode, String),
    /// Another connection took the client id over.
    TakenOver,
    /// The node cannot keep the session for the cluster: DISCONNECT 0x9C
    /// Use another server; the will is left to the cluster (see
    /// [`crate::session::Kick::Fenced`]).
    Fenced,
    /// The node is stopping and its clients go to the other nodes of the
    /// cluster: DISCONNECT 0x9C Use another server; the will is published.
    Draining,
    /// The broker is shutting down.
    Shutdown,
    /// The store could not write a message that the client is waiting to
    /// have acknowledged: the acknowledgement is withheld, so the client
    /// sends the message again on its next connection (DISCONNECT 0x80).
    StoreFailed,
    /// An operator disconnected the client (the admin API): DISCONNECT 0x98.
    Administrative,
    /// The client did not read what it was sent within the backpressure
    /// bound (`slow-consumer = "disconnect"`): DISCONNECT 0x97 Quota exceeded.
    SlowConsumer,
    /// The client's credentials expired (its grant's `expires_at`, a
    /// token's `exp`): DISCONNECT 0x87 Not authorized.
    CredentialsExpired,
    /// Not a close: the connection is idle and may park (see [`crate::connection::hibernate`]).
    Hibernate,
}

impl Close {
    /// The DISCONNECT reason the broker sends for this close, if it sends
    /// one. `reference`: where a cluster node sends its clients away to
    /// (`[cluster] server-reference`); without one, a stopping node says
    /// it is shutting down rather than "use another server" unnamed.
    pub(crate) fn server_reason(&self, reference: Option<&str>) -> Option<ReasonCode> {
        match self {
            Close::Draining if reference.is_none() => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::KeepAlive => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            Close::Protocol(code, _) => Some(*code),
            Close::TakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
            Close::Fenced | Close::Draining => Some(ReasonCode::USE_ANOTHER_SERVER),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::StoreFailed => Some(ReasonCode::UNSPECIFIED_ERROR),
            Close::Administrative => Some(ReasonCode::ADMINISTRATIVE_ACTION),
            Close::SlowConsumer => Some(ReasonCode::QUOTA_EXCEEDED),
            Close::CredentialsExpired => Some(ReasonCode::NOT_AUTHORIZED),
            _ => None,
        }
    }

    /// How the metrics count this close.
    pub(crate) fn metric_reason(&self) -> DisconnectReason {
        match self {
            Close::Normal | Close::NormalWithWill => DisconnectReason::Normal,
            Close::PeerClosed | Close::Hibernate => DisconnectReason::PeerClosed,
            Close::KeepAlive => DisconnectReason::KeepAlive,
            Close::Protocol(..) => DisconnectReason::ProtocolError,
            Close::TakenOver | Close::Fenced => DisconnectReason::TakenOver,
            Close::Shutdown | Close::Draining => DisconnectReason::Shutdown,
            Close::StoreFailed => DisconnectReason::StoreFailed,
            Close::Administrative => DisconnectReason::Administrative,
            Close::SlowConsumer => DisconnectReason::SlowConsumer,
            Close::CredentialsExpired => DisconnectReason::CredentialsExpired,
        }
    }

    /// The reason string sent with the DISCONNECT, if any.
    pub(crate) fn reason_string(&self) -> Option<&str> {
        match self {
            Close::Protocol(_, why) => Some(why),
            Close::StoreFailed => Some("the broker could not store the message"),
            Close::SlowConsumer => Some("slow consumer: messages were not read in time"),
            Close::CredentialsExpired => Some("credentials expired"),
            Close::Fenced => Some("this node lost the cluster: connect to another node"),
            Close::Draining => Some("this node is stopping: connect to another node"),
            _ => None,
        }
    }
}

/// The client side of an attached connection. Kept small: a parked
/// connection is mostly this (see [`crate::connection::hibernate`]).
pub(crate) struct Client {
    pub version: ProtocolVersion,
    pub username: Option<ByteString>,
    /// The session; its `client_id` is the client's.
    pub session: Arc<Session>,
    pub keep_alive: Duration,
    /// Boxed: a will with its properties is large and most clients have none.
    pub will: Option<Box<Will>>,
    pub expiry_interval: u32,
    /// The window of unacknowledged messages towards the client.
    pub client_receive_max: u16,
    /// The client's Maximum Packet Size (`u32::MAX` when it set none).
    pub client_max_packet: u32,
    /// The Topic Alias Maximum the broker announced to this client.
    pub alias_max: u16,
    /// How many aliases the broker may assign towards the client: its Topic
    /// Alias Maximum, capped at [`OUT_ALIAS_CAP`].
    pub out_alias_max: u16,
    /// Topic aliases in use, both ways; allocated when the first is.
    pub aliases: Option<Box<Aliases>>,
    /// The listener's own ACL, used instead of the broker's.
    pub acl: Option<Arc<ListenerFile<Acl>>>,
    /// What the authentication source granted (own topic rules, superuser,
    /// when the credentials expire).
    pub grant: Option<Arc<Grant>>,
    /// The listener's mountpoint (topic prefix); see [`super::mount`].
    pub mountpoint: Option<Box<ByteString>>,
    /// The index of the listener it came through (`u16::MAX`: none).
    pub listener: u16,
    /// MQTT 5 Request Problem Information: when `false`, no Reason String
    /// or User Property goes on anything but PUBLISH, CONNACK and
    /// DISCONNECT [MQTT-3.1.2-29].
    pub problem_info: bool,
    /// Whether it authenticated with SCRAM-SHA-256 (and so may re-authenticate).
    pub enhanced_auth: bool,
}

/// The topic aliases of an MQTT 5 connection.
#[derive(Default)]
pub(crate) struct Aliases {
    /// Set by the client, by alias - 1, grown on demand up to `alias_max`.
    pub inbound: Vec<Option<ByteString>>,
    /// Assigned by the broker towards the client.
    pub outbound: std::collections::HashMap<ByteString, u16>,
}

impl Client {
    /// The client identifier.
    pub fn client_id(&self) -> &ByteString {
        &self.session.client_id
    }

    /// The topic aliases, allocating them on first use.
    pub fn aliases_mut(&mut self) -> &mut Aliases {
        self.aliases.get_or_insert_with(Default::default)
    }

    /// What the connection leaves behind when it ends with `close`: a normal
    /// DISCONNECT (0x00) discards the will; a fenced connection leaves it
    /// to the cluster (its copy there is not cleared).
    pub fn departure(self, close: &Close) -> crate::lifecycle::Departure {
        crate::lifecycle::Departure {
            clear_shared_will: self.will.is_some() && !matches!(close, Close::Fenced),
            session: self.session,
            will: match close {
                Close::Normal | Close::Fenced => None,
                _ => self.will.map(|w| *w),
            },
            expiry_interval: self.expiry_interval,
            username: self.username,
            acl: self.acl,
            grant: self.grant,
        }
    }

    /// Whether a packet of `len` bytes fits the client's Maximum Packet Size.
    pub fn fits(&self, len: usize) -> bool {
        u32::try_from(len).is_ok_and(|n| n <= self.client_max_packet)
    }
}

/// Connection slots held by a connection, released when it ends (`None` in
/// [`super::Keep`] when the broker and the listener set no limit).
pub(crate) struct Slots {
    pub _global: Option<tokio::sync::OwnedSemaphorePermit>,
    pub _listener: Option<tokio::sync::OwnedSemaphorePermit>,
}
