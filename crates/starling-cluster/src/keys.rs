//! Names the cluster uses in NATS: key-value keys, queue group names and
//! node subjects, each derived the same way on every node.

use sha2::{Digest, Sha256};

/// The bucket of session owners: key = [`of`] the client id, value = the
/// owning node's id.
pub const OWNERS: &str = "starling_owners";
/// The bucket of retained messages: key = [`of`] the topic, value = the
/// message's envelope.
pub const RETAINED: &str = "starling_retained";
/// The wills of the clients connected to each node.
pub const WILLS: &str = "starling_wills";
/// Each node's heartbeat.
pub const NODES: &str = "starling_nodes";
/// What each node routed from the others (see `transit`).
pub const RECEIPTS: &str = "starling_receipts";

/// The owners bucket's value for `client_id` on `node`: the node, then
/// the client id (a survivor adopting a dead node's sessions needs it).
pub fn owner_value(node: &str, client_id: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!("{node}\n{client_id}"))
}

/// The node in an owners bucket value.
pub fn owner_node(value: &[u8]) -> String {
    let node = value.split(|b| *b == b'\n').next().unwrap_or(value);
    String::from_utf8_lossy(node).into_owned()
}

/// The client id in an owners bucket value.
pub fn owner_client(value: &[u8]) -> Option<String> {
    let at = value.iter().position(|b| *b == b'\n')?;
    std::str::from_utf8(&value[at + 1..])
        .ok()
        .map(str::to_string)
}

/// A node's key in the wills and nodes buckets.
pub fn node(id: &str) -> String {
    of(id)[..16].to_string()
}

/// A key for any string (a client id, a topic): the hex SHA-256 of it, so
/// that every byte MQTT allows fits a key, and every length.
pub fn of(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes())[..])
}

/// The NATS queue group that serves the shared subscription `$share/g/f`:
/// one per group and filter, the same on every node.
pub fn queue(shared: &str) -> String {
    format!("s{}", &of(shared)[..32])
}

/// The subject on which node `node` answers takeover requests.
pub fn takeover(node: &str) -> String {
    format!("starling.node.{node}.takeover")
}

/// The subject on which node `node` serves the parts of sessions it
/// handed over.
pub fn handover(node: &str) -> String {
    format!("starling.node.{node}.handover")
}

/// The subject on which node `node` takes messages for a session it owns
/// that another node held for it while cut off (see `rejoin`).
pub fn merge(node: &str) -> String {
    format!("starling.node.{node}.merge")
}

/// The subject on which node `node` says whether it holds a session (see
/// `holder`).
pub fn holds(node: &str) -> String {
    format!("starling.node.{node}.holds")
}

/// The subject on which a node back on NATS asks every node to read the
/// transit window around its absence again (core NATS may have lost what
/// it published then).
pub const REPAIR: &str = "starling.repair";

/// Requests to repair the run of a node that does not answer (see `moved`).
pub const REPAIR_RUN: &str = "starling.repair.run";

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_fit_nats() {
        assert_eq!(
            of("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = "x/".repeat(40_000);
        assert_eq!(of(&long).len(), 64);
        assert_ne!(queue("$share/g/a/+"), queue("$share/g/a/#"));
        assert!(queue("$share/g/a b.c")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric()));
    }
}
