//! Publishes one message and waits for the broker's acknowledgement.
//!
//! ```sh
//! cargo run -p starling-client --example publish -- mqtt://localhost:1883 demo/topic "hello" 1
//! ```

use starling_client::{Client, ConnectOptions, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mqtt://localhost:1883".into());
    let topic = args.next().unwrap_or_else(|| "starling/example".into());
    let payload = args.next().unwrap_or_else(|| "hello from starling".into());
    let qos = match args.next().as_deref() {
        Some("0") | None => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        Some(other) => return Err(format!("invalid QoS {other}").into()),
    };

    let opts = ConnectOptions::from_url(&url)?;
    // A refusal prints as, e.g., "connection refused: not authorized (reason code 0x87)".
    let (client, connack) = Client::connect(opts).await?;
    println!("connected as {} ({})", connack.client_id, connack.code);

    let reason = client.publish(topic.as_str(), payload, qos, false).await?;
    println!("published to {topic}: {reason}");

    client.disconnect().await?;
    Ok(())
}
