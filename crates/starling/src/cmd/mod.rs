//! One module per subcommand.

pub mod broker;
pub mod passwd;
pub mod pubsub;
