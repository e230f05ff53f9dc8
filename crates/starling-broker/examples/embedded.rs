//! Starling embedded in an application, with its own authentication,
//! authorization and event observer (the embedding API, `Broker::builder`).
//!
//! ```text
//! cargo run -p starling-broker --example embedded
//! mosquitto_pub -p 1884 -u device-7 -P s3cret -t devices/device-7/temp -m 21
//! ```
//! Devices log in with the user name `device-N` and the password `s3cret`;
//! each may publish only under `devices/<its name>/`; every connection and
//! message is printed by the observer.

use std::sync::Arc;

use starling_broker::auth::chain::Client;
use starling_broker::auth::{Access, AuthnSource, AuthzSource, Credentials, Verdict};
use starling_broker::events::{Event, EventObserver};
use starling_broker::{Broker, Config};

/// Knows the devices: `device-*` with the shared password.
struct Devices;

impl AuthnSource for Devices {
    fn name(&self) -> &str {
        "devices"
    }
    fn authenticate(&self, c: &Credentials<'_>) -> Verdict {
        match (c.username, c.password) {
            (Some(u), Some(b"s3cret")) if u.starts_with("device-") => Verdict::Allow,
            (Some(u), _) if u.starts_with("device-") => Verdict::Deny,
            _ => Verdict::Ignore,
        }
    }
    fn is_slow(&self, _: &Credentials<'_>) -> bool {
        false
    }
}

/// A device writes only under its own topic.
struct OwnTopics;

impl AuthzSource for OwnTopics {
    fn name(&self) -> &str {
        "own-topics"
    }
    fn authorize(&self, client: &Client<'_>, topic: &str, access: Access) -> Verdict {
        let Some(user) = client.username.filter(|u| u.starts_with("device-")) else {
            return Verdict::Ignore;
        };
        let own = topic
            .strip_prefix("devices/")
            .and_then(|t| t.strip_prefix(user));
        match (access, own) {
            (Access::Write, Some(rest)) if rest.starts_with('/') => Verdict::Allow,
            (Access::Write, _) => Verdict::Deny,
            (Access::Read, _) => Verdict::Ignore,
        }
    }
}

/// Prints what happens.
struct Printer;

impl EventObserver for Printer {
    fn observe(&self, event: &Event) {
        match event {
            Event::ClientConnected { client_id, .. } => println!("connected: {client_id}"),
            Event::MessagePublished { message, .. } => {
                println!("{}: {} bytes", message.topic, message.payload.len())
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), starling_broker::StartError> {
    let config = Config {
        listen: vec!["mqtt://127.0.0.1:1884".into()],
        allow_anonymous: false,
        durability: starling_broker::store::Durability::None,
        ..Config::default()
    };
    let broker = Broker::builder(config)
        .authenticate(Arc::new(Devices))
        .authorize(Arc::new(OwnTopics))
        .observe(Arc::new(Printer))
        .bind()
        .await?;
    println!("listening on {:?}", broker.local_addrs());
    broker.run().await;
    Ok(())
}
