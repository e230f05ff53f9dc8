//! An async MQTT 3.1 / 3.1.1 / 5.0 client for tokio, built on the Starling codec.
//!
//! ```no_run
//! use starling_client::{Client, ConnectOptions, QoS};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = ConnectOptions::from_url("mqtt://localhost:1883?client_id=demo")?;
//! let (client, connack) = Client::connect(opts).await?;
//! println!("session present: {}", connack.session_present);
//! client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
//! client.publish("sensors/t1", "21.5", QoS::AtLeastOnce, false).await?;
//! if let Some(msg) = client.recv().await {
//!     println!("{}: {:?}", msg.topic, msg.payload);
//! }
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! - [`Client::connect`] takes [`ConnectOptions`] (from a URL: `mqtt://`,
//!   `tcp://`, `mqtts://`, `ws://`, `wss://`, `quic://`) and returns the typed
//!   CONNACK ([`ConnAckInfo`]), or a [`ConnectError`] whose message names the
//!   reason of a refusal.
//! - Transports: TCP, TLS (rustls), WebSocket (subprotocol `mqtt`, binary
//!   frames), WebSocket over TLS, and QUIC through quinn (`quic://HOST:PORT`,
//!   TLS 1.3 with ALPN `mqtt`, one bidirectional stream per connection, as
//!   EMQX, NanoMQ and the Starling broker serve it). The TLS transports share
//!   [`ClientTlsConfig`]: CA file, client certificate and key, server name,
//!   `insecure`. Keep alive, QoS, sessions and reconnection work the same
//!   over all of them.
//! - The protocol logic lives in [`state`], which does no I/O; the connection
//!   task in [`Client`] drives it. See [`client`] for the backpressure rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
mod error;
mod options;
pub mod outbox;
pub mod state;
mod transport;
mod types;

pub use auth::{EnhancedAuth, Scram};
pub use client::{Acknowledgement, Client};
pub use error::{ClientError, ConnectCode, ConnectError, Refusal};
pub use options::{
    parse_version, ClientTlsConfig, ConnectOptions, LastWill, ReconnectOptions, TransportKind,
};
pub use outbox::Outbox;
pub use types::{ConnAckInfo, ConnectionStatus, Message, ServerLimits};

pub use starling_codec::{
    ByteString, ConnectReturnCode, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};
