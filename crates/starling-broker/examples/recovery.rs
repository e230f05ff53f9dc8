//! Measures startup recovery: fills a store with 100,000 persistent sessions
//! (one subscription each) and 1,000,000 queued QoS 1 messages, then times how
//! long the broker takes to open the store and rebuild its state.
//!
//! `cargo run --release -p starling-broker --example recovery [DIR]`

use std::time::Instant;

use bytes::Bytes;
use starling_broker::auth::FileAuthenticator;
use starling_broker::store::{
    unix_ms, Durability, FjallStore, MessageRecord, Op, SessionRecord, Store, SubscriptionRecord,
};
use starling_broker::{BrokerState, Config};
use starling_codec::{ByteString, Publish, QoS, SubscriptionOptions};

const SESSIONS: usize = 100_000;
const PER_SESSION: u64 = 10;

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("starling-recovery-bench"));
    let _ = std::fs::remove_dir_all(&dir);
    let fill = Instant::now();
    {
        let mut store = FjallStore::open(&dir).expect("store opens");
        let mut publish = Publish::new("bench/topic", Bytes::from(vec![b'x'; 64]));
        publish.qos = QoS::AtLeastOnce;
        publish.packet_id = 1;
        let record = MessageRecord {
            publish,
            packet_id: 0,
            released: false,
            expires_at_ms: 0,
        }
        .encode()
        .expect("encodes");
        let mut ops = Vec::new();
        for s in 0..SESSIONS {
            let client: ByteString = format!("client-{s:06}").into();
            ops.push(Op::Session(
                client.clone(),
                SessionRecord {
                    expiry_interval: u32::MAX,
                    disconnected_at_ms: unix_ms(),
                },
            ));
            ops.push(Op::Subscribe(
                client.clone(),
                format!("bench/{s}/#").into(),
                SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                    id: None,
                },
            ));
            for seq in 1..=PER_SESSION {
                ops.push(Op::Message(client.clone(), seq, record.clone()));
            }
            if ops.len() >= 50_000 {
                store.apply(&ops, false).expect("writes");
                ops.clear();
            }
        }
        store.apply(&ops, true).expect("writes");
    }
    println!(
        "filled {SESSIONS} sessions and {} messages in {:.1} s",
        SESSIONS as u64 * PER_SESSION,
        fill.elapsed().as_secs_f64()
    );
    let config = Config {
        data_dir: dir.clone(),
        durability: Durability::Always,
        ..Config::default()
    };
    let auth = std::sync::Arc::new(FileAuthenticator {
        allow_anonymous: true,
        passwords: None,
    });
    let start = Instant::now();
    let state = BrokerState::open(config, auth, None).expect("broker state opens");
    let elapsed = start.elapsed();
    let sessions = state.session_count();
    let queued = state.queued_count();
    println!(
        "recovered {sessions} sessions, {queued} queued messages, {} subscriptions in {:.2} s",
        state.subscription_count(),
        elapsed.as_secs_f64()
    );
    if let Some(store) = state.store() {
        store.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
