//! The Starling MQTT broker: listeners, the connection state machine, sessions,
//! the topic index, retained messages, wills, authentication and ACLs.
//!
//! [`Broker::bind`] binds the listeners of a [`Config`]; [`Broker::run`] serves
//! until its [`ShutdownHandle`] fires. See `ARCHITECTURE.md` for the data path.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
mod broker;
pub mod cluster;
pub mod config;
mod connection;
pub mod events;
mod fence;
mod handover;
mod journal;
mod lifecycle;
pub mod message;
pub mod metrics;
mod persist;
mod rate;
pub mod retained;
mod server;
pub mod session;
pub mod store;
mod sys;
mod timers;
pub mod topic_tree;
mod transport;

pub use broker::{BrokerState, Refusal, Scope};
pub use config::{Config, ConfigError, LogFormat};
pub use handover::{HandoverBuilder, HandoverError, CHUNK as HANDOVER_CHUNK};
pub use server::{
    Broker, BrokerBuilder, ListenerUrl, LocalConnector, ReloadError, ReloadHandle, ShutdownHandle,
    StartError, Transport,
};
pub use sys::{publish as publish_sys, sweep, sweep_spilled, VERSION};
