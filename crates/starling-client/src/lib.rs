//! An async MQTT client.
#![forbid(unsafe_code)]
