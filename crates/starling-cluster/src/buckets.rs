//! The key-value buckets, made by hand as their backing streams: the NATS
//! client's own bucket creation asks the server for features that Debian's
//! nats-server 2.9 does not have.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

/// Revisions kept per client id in the owners bucket: enough to find the
/// writer just before one's own among racing writes.
pub const OWNER_HISTORY: i64 = 8;

/// The cluster's buckets.
#[derive(Clone)]
pub struct Buckets {
    /// Who owns each client id's session.
    pub owners: kv::Store,
    /// The retained messages.
    pub retained: kv::Store,
    /// The wills of connected clients, under `<node>.<client>`.
    pub wills: kv::Store,
    /// Each node's heartbeat, under its key.
    pub nodes: kv::Store,
    /// Each node's receipt (see `transit`), under its key.
    pub receipts: kv::Store,
}

/// Opens (creating if needed) the buckets with `replicas` copies each.
pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Buckets, async_nats::Error> {
    Ok(Buckets {
        owners: bucket(js, crate::keys::OWNERS, OWNER_HISTORY, replicas, false).await?,
        retained: bucket(js, crate::keys::RETAINED, 1, replicas, true).await?,
        wills: bucket(js, crate::keys::WILLS, 1, replicas, true).await?,
        nodes: bucket(js, crate::keys::NODES, 1, replicas, true).await?,
        receipts: bucket(js, crate::keys::RECEIPTS, 1, replicas, true).await?,
    })
}

/// `direct`: reads may be answered by any replica (fast, but a replica
/// that is catching up, after its server restarted, answers what it had).
/// The owners bucket reads from the stream's leader: a claim must see the
/// latest owner.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    replicas: usize,
    direct: bool,
) -> Result<kv::Store, async_nats::Error> {
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: direct,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(config.clone()).await?;
    // Made by an earlier version with other reads.
    if stream.info().await?.config.allow_direct != direct {
        js.update_stream(config).await?;
    }
    Ok(js.get_key_value(name).await?)
}
