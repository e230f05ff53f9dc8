//! Values the client hands to the application.

use bytes::Bytes;
use starling_codec::{ByteString, ConnAck, Properties, ProtocolVersion, Publish, QoS};

use crate::error::ConnectCode;

/// An application message received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic (any topic alias already resolved).
    pub topic: ByteString,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// Whether the server sent it as a retained message.
    pub retain: bool,
    /// Whether the server marked it as a possible redelivery.
    pub dup: bool,
    /// MQTT 5 properties (content type, user properties, subscription identifiers, ...).
    pub properties: Properties,
    /// The packet identifier (0 for QoS 0), which [`crate::Client::ack`]
    /// names with [`crate::ConnectOptions::manual_acks`].
    pub packet_id: u16,
}

impl From<Publish> for Message {
    fn from(p: Publish) -> Self {
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            properties: p.properties,
            packet_id: p.packet_id,
        }
    }
}

/// The limits a server announces in CONNACK (MQTT 5; defaults for 3.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// How many QoS 1/2 publishes we may have in flight (65,535 when unset).
    pub receive_maximum: u16,
    /// The largest packet the server accepts, if it set a limit.
    pub maximum_packet_size: Option<u32>,
    /// How many topic aliases we may use towards the server.
    pub topic_alias_maximum: u16,
    /// The highest QoS the server supports.
    pub maximum_qos: QoS,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: bool,
    /// Whether subscription identifiers are supported.
    pub subscription_identifiers_available: bool,
    /// Whether shared subscriptions are supported.
    pub shared_subscription_available: bool,
    /// The keep alive the server imposes, if it overrode ours.
    pub server_keep_alive: Option<u16>,
    /// The session expiry the server settled on, if it changed ours.
    pub session_expiry_interval: Option<u32>,
}

impl ServerLimits {
    pub(crate) fn from_properties(p: &Properties) -> Self {
        ServerLimits {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: p.maximum_packet_size,
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            wildcard_subscription_available: p.wildcard_subscription_available.unwrap_or(true),
            subscription_identifiers_available: p.subscription_identifier_available.unwrap_or(true),
            shared_subscription_available: p.shared_subscription_available.unwrap_or(true),
            server_keep_alive: p.server_keep_alive,
            session_expiry_interval: p.session_expiry_interval,
        }
    }
}

/// The server's answer to a successful CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckInfo {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// The return code (3.x) or reason code (5.0); a success value here.
    pub code: ConnectCode,
    /// The client identifier the server assigned, when we sent an empty one (MQTT 5).
    pub assigned_client_id: Option<String>,
    /// The client identifier in force: ours, or the assigned one.
    pub client_id: String,
    /// The protocol version spoken.
    pub version: ProtocolVersion,
    /// The server's limits.
    pub limits: ServerLimits,
    /// Every CONNACK property, as received.
    pub properties: Properties,
}

impl ConnAckInfo {
    /// The Response Information the server gave (MQTT 5, when asked for
    /// with [`crate::ConnectOptions::request_response_information`]).
    pub fn response_information(&self) -> Option<&str> {
        self.properties.response_information.as_deref()
    }

    pub(crate) fn new(connack: &ConnAck, version: ProtocolVersion, client_id: &str) -> Self {
        let code = if version.is_v5() {
            ConnectCode::V5(connack.reason_code)
        } else {
            ConnectCode::V3(connack.return_code())
        };
        let assigned = connack
            .properties
            .assigned_client_identifier
            .as_ref()
            .map(|s| s.to_string());
        ConnAckInfo {
            session_present: connack.session_present,
            code,
            client_id: assigned.clone().unwrap_or_else(|| client_id.to_owned()),
            assigned_client_id: assigned,
            version,
            limits: ServerLimits::from_properties(&connack.properties),
            properties: connack.properties.clone(),
        }
    }
}

/// Where the connection stands, as published by [`crate::Client::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Connected; `connects` counts successful connections, the first included.
    Connected {
        /// How many times the client has connected, reconnections included.
        connects: u64,
        /// The session present flag of the last CONNACK.
        session_present: bool,
    },
    /// The connection was lost and automatic reconnection is trying again.
    Reconnecting {
        /// Why the last connection ended.
        reason: String,
    },
    /// The client is closed for good.
    Closed {
        /// Why.
        reason: String,
    },
}
