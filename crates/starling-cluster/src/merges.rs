//! A session's messages handed to its owner: a node that gives up a
//! session another node took while it was cut off (see `rejoin`) sends the
//! owner the messages only it had (the *early* ones, see `backlog`), and
//! the owner adds to the session those it lacks.
//!
//! Each record goes with the stamp its message came with, in a header (a
//! node of an earlier version reads none and merges every record, as
//! before). The owner's routing task leaves out the stamps that a replay,
//! running or ended lately, gave the session: the owner rebuilt it from
//! its replica and replayed transit, which holds an early message as well
//! when only the replica lacked it (a QoS 2 message would come twice).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;

use crate::envelope::Stamp;
use crate::keys;
use crate::shared::{Inner, ReplayCommand};

/// Bytes of message records per merge request, about.
const CHUNK_BYTES: usize = 512 * 1024;
/// Records per merge request at most (their stamps' header stays small).
const CHUNK_RECORDS: usize = 4096;
/// The header naming each record's stamp, in order: `origin.seq` (hex
/// origin) or `-`, comma-separated.
const STAMPS: &str = "Starling-Stamps";

use crate::backlog::Early;

/// Times the owner is read again when it answers a merge without the
/// session (it moved on meanwhile, or is being installed there), half a
/// second apart. An owner that does not answer is not asked again.
const OWNER_TRIES: usize = 5;

/// Sends `records` (messages of session `id` the owner lacks) to `owner`;
/// when a part finds no session there, to whoever owns it now (seen: the
/// owner handed the session on just before the merge came, and 3,281
/// acknowledged messages were dropped).
pub async fn merge_to(inner: &Inner, owner: &str, id: &str, records: Vec<Early>) {
    if records.is_empty() {
        return;
    }
    let total = records.len();
    let parts = chunks(&records);
    let (mut added, mut next) = (0usize, 0usize);
    let mut owner = owner.to_string();
    for _ in 0..OWNER_TRIES {
        let mut answered = true;
        while let Some(part) = parts.get(next) {
            match merge_part(inner, &owner, id, part).await {
                Some(0) => break,
                Some(n) => (added, next) = (added + n, next + 1),
                None => {
                    answered = false;
                    break;
                }
            }
        }
        if next == parts.len() || !answered {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        match owner_now(inner, id).await {
            Some(now) if now != inner.node_id => owner = now,
            _ => break,
        }
    }
    if added < total {
        tracing::warn!(
            client_id = %id,
            %owner,
            lost = total - added,
            "messages this node held for a session another node owns now did not reach it"
        );
    } else {
        tracing::info!(client_id = %id, %owner, messages = total, "held messages handed to the session's owner");
    }
}

/// Sends one part of a merge to `owner`: how many of its records the
/// session has now (0: no session there), `None` without an answer.
async fn merge_part(inner: &Inner, owner: &str, id: &str, part: &[Early]) -> Option<usize> {
    let (body, stamps) = encode(id, part);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STAMPS, stamps.as_str());
    let asked = inner
        .client
        .request_with_headers(keys::merge(owner), headers, body);
    match tokio::time::timeout(inner.timeout * 3, asked).await {
        Ok(Ok(reply)) if reply.payload.len() == 4 => Some(reply.payload.clone().get_u32() as usize),
        _ => None,
    }
}

/// The node the owners bucket names for `id` now.
async fn owner_now(inner: &Inner, id: &str) -> Option<String> {
    let buckets = inner.buckets.get()?;
    let read = buckets.owners.entry(keys::of(id));
    match tokio::time::timeout(inner.timeout, read).await {
        Ok(Ok(Some(e))) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            Some(keys::owner_node(&e.value))
        }
        _ => None,
    }
}

/// Splits `records` into requests of [`CHUNK_BYTES`] and [`CHUNK_RECORDS`]
/// at most (one record at least each).
fn chunks(records: &[Early]) -> Vec<&[Early]> {
    let mut out = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let mut bytes = 0;
        let mut taken = 0;
        for (raw, _) in rest.iter().take(CHUNK_RECORDS) {
            if taken > 0 && bytes + raw.len() > CHUNK_BYTES {
                break;
            }
            bytes += raw.len() + 4;
            taken += 1;
        }
        out.push(&rest[..taken]);
        rest = &rest[taken..];
    }
    out
}

/// Serves other nodes' merges into sessions this node owns: the routing
/// task adds what the session lacks (see the module's documentation).
pub async fn serve(inner: Arc<Inner>) {
    let mut requests = match inner.client.subscribe(keys::merge(&inner.node_id)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("merges from other nodes cannot be served: {e}");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let stamps = request
            .headers
            .as_ref()
            .and_then(|h| h.get(STAMPS))
            .map(|v| v.as_str().to_owned());
        let merged = match decode(request.payload) {
            Some((id, raws)) => {
                let records = with_stamps(raws, stamps.as_deref());
                let (done, answer) = tokio::sync::oneshot::channel();
                let asked = ReplayCommand::Merge(id, records, done);
                match inner.replays.send(asked).await {
                    Ok(()) => answer.await.unwrap_or(0),
                    Err(_) => return,
                }
            }
            None => 0,
        };
        if let Some(reply) = request.reply {
            let count = u32::try_from(merged).unwrap_or(u32::MAX);
            let _ = inner
                .client
                .publish(reply, Bytes::copy_from_slice(&count.to_be_bytes()))
                .await;
        }
    }
}

/// A merge request: the session's id, its records; and their stamps.
fn encode(id: &str, records: &[Early]) -> (Bytes, String) {
    let mut body = BytesMut::new();
    body.put_u16(u16::try_from(id.len()).unwrap_or(u16::MAX));
    body.put_slice(id.as_bytes());
    let mut stamps = String::new();
    for (i, (raw, stamp)) in records.iter().enumerate() {
        body.put_u32(u32::try_from(raw.len()).unwrap_or(u32::MAX));
        body.put_slice(raw);
        if i > 0 {
            stamps.push(',');
        }
        match stamp {
            Some((origin, seq)) => stamps.push_str(&format!("{origin:x}.{seq}")),
            None => stamps.push('-'),
        }
    }
    (body.freeze(), stamps)
}

fn decode(mut p: Bytes) -> Option<(String, Vec<Bytes>)> {
    if p.len() < 2 {
        return None;
    }
    let len = usize::from(p.get_u16());
    if p.len() < len {
        return None;
    }
    let id = String::from_utf8(p.split_to(len).to_vec()).ok()?;
    let mut records = Vec::new();
    while p.len() >= 4 {
        let len = p.get_u32() as usize;
        if p.len() < len {
            return None;
        }
        records.push(p.split_to(len));
    }
    Some((id, records))
}

/// Pairs each record with its stamp from the header; all without one when
/// the header is missing or does not name one per record.
fn with_stamps(raws: Vec<Bytes>, header: Option<&str>) -> Vec<(Bytes, Option<Stamp>)> {
    let parsed: Option<Vec<Option<Stamp>>> = header.and_then(|h| {
        h.split(',')
            .map(|s| match s {
                "-" => Some(None),
                s => {
                    let (origin, seq) = s.split_once('.')?;
                    Some(Some(Stamp {
                        origin: u64::from_str_radix(origin, 16).ok()?,
                        seq: seq.parse().ok()?,
                    }))
                }
            })
            .collect()
    });
    match parsed {
        Some(stamps) if stamps.len() == raws.len() => raws.into_iter().zip(stamps).collect(),
        _ => raws.into_iter().map(|r| (r, None)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_request_reads_back_with_its_stamps() {
        let records = vec![
            (Bytes::from_static(b"x"), Some((0xab, 7))),
            (Bytes::from_static(b"yz"), None),
        ];
        let (body, stamps) = encode("abc", &records);
        assert_eq!(stamps, "ab.7,-");
        let (id, raws) = decode(body).expect("well formed");
        assert_eq!(id, "abc");
        let got = with_stamps(raws, Some(&stamps));
        assert_eq!(
            got,
            vec![
                (
                    Bytes::from_static(b"x"),
                    Some(Stamp {
                        origin: 0xab,
                        seq: 7
                    })
                ),
                (Bytes::from_static(b"yz"), None),
            ]
        );
        assert!(decode(Bytes::from_static(&[0, 9, b'a'])).is_none());
    }

    #[test]
    fn stamps_that_do_not_fit_the_records_are_ignored() {
        let raws = || vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")];
        for header in [None, Some("1.1"), Some("1.1,zz"), Some("1.1,2.x"), Some("")] {
            let got = with_stamps(raws(), header);
            assert!(got.iter().all(|(_, s)| s.is_none()), "{header:?}");
        }
    }

    #[test]
    fn requests_stay_within_their_bounds() {
        let many: Vec<Early> = (0..10_000)
            .map(|_| (Bytes::from_static(b"m"), None))
            .collect();
        let sizes: Vec<usize> = chunks(&many).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![4096, 4096, 1808]);
        let big = Bytes::from(vec![0u8; CHUNK_BYTES]);
        let large: Vec<Early> = (0..3).map(|_| (big.clone(), None)).collect();
        assert_eq!(
            chunks(&large).iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
        assert!(chunks(&[]).is_empty());
    }
}
