//! Which node serves each client id: a key-value bucket whose revision
//! fences the writes. A node claims a client id by reading its key, asking
//! the owner (if another node) to close the client there, and writing itself
//! as owner conditioned on the revision it read: of two nodes racing for
//! one id, exactly one write succeeds.

use std::sync::Arc;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use starling_broker::cluster::Ownership;

use crate::keys;
use crate::node::Inner;

/// Claims `client_id` for this node. A clean session (`persistent` false)
/// is served here when the cluster cannot be asked; a persistent one is not.
pub async fn claim(inner: &Inner, client_id: &str, persistent: bool) -> Ownership {
    let unreachable = if persistent {
        Ownership::Unavailable
    } else {
        Ownership::Local
    };
    let Some(buckets) = inner.buckets.get() else {
        return unreachable;
    };
    if !inner.connected() {
        return unreachable;
    }
    let store = &buckets.owners;
    let key = keys::of(client_id);
    let me = Bytes::from(inner.node_id.clone());
    let entry = match tokio::time::timeout(inner.timeout, store.entry(key.clone())).await {
        Ok(Ok(e)) => e.filter(|e| e.operation == Operation::Put),
        Ok(Err(e)) => {
            tracing::warn!(%client_id, "session owner not read: {e}");
            return unreachable;
        }
        Err(_) => return unreachable,
    };
    let written = match entry {
        None => store.create(&key, me).await.map(|_| ()).map_err(|e| {
            let lost = e.kind() == kv::CreateErrorKind::AlreadyExists;
            (lost, e.to_string())
        }),
        Some(e) if e.value == inner.node_id.as_bytes() => return Ownership::Local,
        Some(e) => {
            let owner = String::from_utf8_lossy(&e.value).into_owned();
            take_from(inner, &owner, client_id).await;
            store
                .update(&key, me, e.revision)
                .await
                .map(|_| ())
                .map_err(|e| {
                    let lost = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                    (lost, e.to_string())
                })
        }
    };
    match written {
        Ok(()) => Ownership::Local,
        Err((true, _)) => {
            tracing::info!(%client_id, "another node claimed this client id first");
            Ownership::Busy
        }
        Err((false, e)) => {
            tracing::warn!(%client_id, "session owner not written: {e}");
            unreachable
        }
    }
}

/// Asks node `owner` to close `client_id` there. An owner that does not
/// answer (it is gone) is passed over: its claim is overwritten.
async fn take_from(inner: &Inner, owner: &str, client_id: &str) {
    let subject = keys::takeover(owner);
    let asked = inner
        .client
        .request(subject, Bytes::from(client_id.to_string()));
    match tokio::time::timeout(inner.timeout, asked).await {
        Ok(Ok(_)) => tracing::debug!(%client_id, %owner, "taken over from another node"),
        Ok(Err(e)) => tracing::info!(%client_id, %owner, "the previous owner did not answer: {e}"),
        Err(_) => tracing::info!(%client_id, %owner, "the previous owner did not answer in time"),
    }
}

/// The session of `client_id` ended here: the claim is removed unless
/// another node (or a new connection here) holds it now.
pub async fn release(inner: &Inner, client_id: &str) {
    if inner.handing_over.lock().remove(client_id) {
        return;
    }
    let Some(buckets) = inner.buckets.get() else {
        return;
    };
    let key = keys::of(client_id);
    let Ok(Ok(Some(entry))) =
        tokio::time::timeout(inner.timeout, buckets.owners.entry(key.clone())).await
    else {
        return;
    };
    let ours = entry.operation == Operation::Put && entry.value == inner.node_id.as_bytes();
    let back = inner
        .broker()
        .is_some_and(|b| b.session(client_id).is_some());
    if ours && !back {
        if let Err(e) = buckets
            .owners
            .delete_expect_revision(&key, Some(entry.revision))
            .await
        {
            tracing::debug!(%client_id, "session owner not cleared: {e}");
        }
    }
}

/// Answers other nodes' takeover requests for clients of this node.
pub async fn serve_takeovers(inner: Arc<Inner>) {
    let subject = keys::takeover(&inner.node_id);
    let mut requests = match inner.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("takeover requests cannot be served: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Some(broker) = inner.broker() else { return };
        let Ok(client_id) = std::str::from_utf8(&request.payload) else {
            continue;
        };
        inner.handing_over.lock().insert(client_id.to_string());
        if !broker.taken_over(client_id) {
            inner.handing_over.lock().remove(client_id);
        }
        if let Some(reply) = request.reply {
            let _ = inner.client.publish(reply, Bytes::from_static(b"ok")).await;
        }
    }
}
