//! The Starling MQTT broker.
#![forbid(unsafe_code)]
