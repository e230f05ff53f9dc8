//! One module per subcommand.

pub mod bench;
pub mod broker;
pub mod passwd;
pub mod pubsub;
