//! Starling nodes as one broker over NATS (issue 18, in progress).
//!
//! This first step holds how MQTT topics and filters become NATS subjects
//! ([`subject`]); the NATS client, interest routing, session ownership and
//! the replicated state come next, behind the broker's `cluster` seam.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod subject;
