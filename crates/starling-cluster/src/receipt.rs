//! A node's receipt: what it has stored of the messages from the other
//! nodes (see `transit`), written by its replicating store with the batches
//! that hold them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::envelope::Stamp;

/// Origins whose newest stamp is older than this leave the receipt.
pub const FORGET_ORIGIN: Duration = Duration::from_secs(600);

/// What a node has stored of the messages from the other nodes, written by
/// its replicating store with the batches that hold them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Receipt {
    /// When it was written (ms since the epoch): the node was storing then.
    pub at_ms: u64,
    /// The node's own run.
    pub own: u64,
    /// The newest stamp stored there, per origin.
    pub high: HashMap<u64, u64>,
}

impl Receipt {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(16 + 16 * self.high.len());
        b.put_u64(self.at_ms);
        b.put_u64(self.own);
        for (o, s) in &self.high {
            b.put_u64(*o);
            b.put_u64(*s);
        }
        b.freeze()
    }

    pub fn decode(mut raw: &[u8]) -> Option<Receipt> {
        if raw.len() < 16 || !raw.len().is_multiple_of(16) {
            return None;
        }
        let at_ms = raw.get_u64();
        let own = raw.get_u64();
        let mut high = HashMap::new();
        while raw.has_remaining() {
            high.insert(raw.get_u64(), raw.get_u64());
        }
        Some(Receipt { at_ms, own, high })
    }

    /// Whether `stamp` may not have been stored by the receipt's node: it
    /// is newer than what that node stored of its run (its own run's
    /// messages included: its store records their stamps too).
    pub fn missed(&self, stamp: Stamp) -> bool {
        stamp.seq > self.high.get(&stamp.origin).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_reads_back_and_tells_what_was_missed() {
        let r = Receipt {
            at_ms: 1_700_000_000_000,
            own: 7,
            high: [(1, 10), (2, 20)].into_iter().collect(),
        };
        let back = Receipt::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(!r.missed(Stamp { origin: 1, seq: 10 }));
        assert!(r.missed(Stamp { origin: 1, seq: 11 }));
        assert!(r.missed(Stamp { origin: 3, seq: 1 }), "an unknown run");
        assert!(
            r.missed(Stamp { origin: 7, seq: 99 }),
            "the node's own count as the others' (its store records them)"
        );
        assert!(Receipt::decode(&[0; 15]).is_none());
        assert!(Receipt::decode(&[0; 24]).is_none());
    }
}
