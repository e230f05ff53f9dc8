//! Subscribes to a filter and prints messages until Ctrl-C, reconnecting
//! automatically and resuming the session if the connection drops.
//!
//! ```sh
//! cargo run -p starling-client --example subscribe -- mqtt://localhost:1883 'demo/#'
//! ```

use starling_client::{Client, ConnectOptions, QoS, ReconnectOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mqtt://localhost:1883".into());
    let filter = args.next().unwrap_or_else(|| "starling/#".into());

    let mut opts = ConnectOptions::from_url(&url)?;
    opts.client_id = format!("starling-example-{}", std::process::id());
    opts.clean_start = false;
    opts.session_expiry = Some(300);
    opts.reconnect = Some(ReconnectOptions::default());

    let (client, connack) = Client::connect(opts).await?;
    println!("connected (session present: {})", connack.session_present);
    let granted = client.subscribe(filter.as_str(), QoS::AtLeastOnce).await?;
    println!("subscribed to {filter}: {granted}");

    loop {
        tokio::select! {
            msg = client.recv() => match msg {
                Some(msg) => println!(
                    "{} (QoS {}{}): {}",
                    msg.topic,
                    msg.qos as u8,
                    if msg.retain { ", retained" } else { "" },
                    String::from_utf8_lossy(&msg.payload)
                ),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                client.disconnect().await?;
                break;
            }
        }
    }
    Ok(())
}
