//! A takeover over core NATS, as both nodes read it: the new node's
//! request (the client id and when it was sent) and the old node's answer
//! ([`Handed`]: the session's parts and its cut, ask again, or ask
//! another node). `owners` asks, `handover` answers.

use bytes::Bytes;

/// The first byte of a takeover request that says when it was sent (never
/// the first byte of UTF-8 text: an earlier version's request, the client
/// id alone, is told apart, and such a node does not answer this one).
pub(crate) const TIMED: u8 = 0xFF;

/// A takeover request: [`TIMED`], when it was sent (ms since the epoch),
/// then the client id. A request that reaches the old node after the asker
/// gave up on it (a NATS route cut, then back, delivers what it buffered)
/// is not served: the asker has rebuilt the session elsewhere meanwhile.
pub(crate) fn request(client_id: &str) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(9 + client_id.len());
    b.extend_from_slice(&[TIMED]);
    b.extend_from_slice(&starling_broker::store::unix_ms().to_be_bytes());
    b.extend_from_slice(client_id.as_bytes());
    b.freeze()
}

/// A takeover request's client id and age (zero for an earlier version's
/// request, which does not say), if it is one.
pub(crate) fn read(payload: &[u8]) -> Option<(&str, std::time::Duration)> {
    let Some((&TIMED, rest)) = payload.split_first() else {
        let id = std::str::from_utf8(payload).ok()?;
        return Some((id, std::time::Duration::ZERO));
    };
    let (sent, id) = rest.split_at_checked(8)?;
    let sent = u64::from_be_bytes(sent.try_into().ok()?);
    let age = starling_broker::store::unix_ms().saturating_sub(sent);
    let id = std::str::from_utf8(id).ok()?;
    Some((id, std::time::Duration::from_millis(age)))
}

/// A takeover's answer while the session's replay is in progress.
const BUSY: u32 = u32::MAX;

/// A takeover's answer from a node without the session, followed by the
/// node that has it.
const ELSEWHERE: u32 = u32::MAX - 1;

/// A takeover's answer.
pub(crate) enum Handed {
    /// How many parts the session has (0: none here), and its cut.
    Parts(u32, Option<crate::receipt::Receipt>),
    /// Ask again (a replay or a claim of the session is in progress here).
    Busy,
    /// Not here: ask that node, where a failed claim here left it.
    Elsewhere(String),
}

impl Handed {
    pub(crate) fn encode(self) -> Bytes {
        let mut answer = bytes::BytesMut::new();
        match self {
            Handed::Parts(parts, cut) => {
                answer.extend_from_slice(&parts.to_be_bytes());
                if let Some(cut) = cut {
                    answer.extend_from_slice(&cut.encode());
                }
            }
            Handed::Busy => answer.extend_from_slice(&BUSY.to_be_bytes()),
            Handed::Elsewhere(node) => {
                answer.extend_from_slice(&ELSEWHERE.to_be_bytes());
                answer.extend_from_slice(node.as_bytes());
            }
        }
        answer.freeze()
    }

    /// `None`: not an answer.
    pub(crate) fn decode(payload: &[u8]) -> Option<Handed> {
        let count = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
        Some(match count {
            BUSY => Handed::Busy,
            ELSEWHERE => Handed::Elsewhere(String::from_utf8(payload[4..].to_vec()).ok()?),
            parts => Handed::Parts(parts, crate::receipt::Receipt::decode(&payload[4..])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_request_says_its_age_and_an_earlier_versions_is_still_read() {
        let raw = request("sub-ü");
        let (id, age) = read(&raw).expect("read back");
        assert_eq!(id, "sub-ü");
        assert!(age < std::time::Duration::from_secs(60));
        let mut old = bytes::BytesMut::new();
        old.extend_from_slice(&[TIMED]);
        old.extend_from_slice(&1_000u64.to_be_bytes());
        old.extend_from_slice(b"c");
        let (_, age) = read(&old).expect("read back");
        assert!(age > std::time::Duration::from_secs(3600), "sent long ago");
        assert_eq!(
            read(b"plain-id"),
            Some(("plain-id", std::time::Duration::ZERO))
        );
        assert_eq!(read(&[TIMED, 0, 1]), None, "too short");
        assert_eq!(read(&[0xC3]), None, "not UTF-8");
    }
}
