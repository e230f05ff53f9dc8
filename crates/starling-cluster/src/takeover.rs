//! A takeover over core NATS, as both nodes read it: the new node's
//! request (the client id and when it was sent; in headers, the asker and
//! the revision of its owner write) and the old node's answer
//! ([`Handed`]: the session's parts and its cut, ask again, or ask
//! another node). `owners` asks, `handover` answers.

use bytes::Bytes;

/// The first byte of a takeover request that says when it was sent (never
/// the first byte of UTF-8 text: an earlier version's request, the client
/// id alone, is told apart, and such a node does not answer this one).
pub(crate) const TIMED: u8 = 0xFF;

/// The header naming a takeover's asker.
const ASKER: &str = "Starling-Asker";
/// The header with the revision of the asker's write of the owner key.
const REVISION: &str = "Starling-Revision";

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

/// The headers of a takeover request: the asker and the revision of its
/// owner write. The asker is where the session goes (the old node sends
/// later askers there); a revision older than the old node's own write is
/// a claim that lost to the old node's own later one, not served
/// ([`Handed::Superseded`]). In headers, so that a node of an earlier
/// version reads the request as before (and a request without them, from
/// such a node, is served as before).
pub(crate) fn headers(asker: &str, revision: u64) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ASKER, asker);
    headers.insert(REVISION, revision.to_string().as_str());
    headers
}

/// A takeover request's asker and the revision of its owner write, where
/// its headers say.
pub(crate) fn asker(headers: Option<&async_nats::HeaderMap>) -> Option<(String, u64)> {
    let headers = headers?;
    let asker = headers.get(ASKER)?.as_str().to_string();
    let revision = headers.get(REVISION)?.as_str().parse().ok()?;
    Some((asker, revision))
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

/// A takeover's answer to a claim that the old node's own later claim
/// overtook (only to askers that say their revision: an earlier version
/// would not read it).
const SUPERSEDED: u32 = u32::MAX - 2;

/// A takeover's answer.
pub(crate) enum Handed {
    /// How many parts the session has (0: none here), and its cut.
    Parts(u32, Option<crate::receipt::Receipt>),
    /// Ask again (a replay or a claim of the session is in progress here).
    Busy,
    /// Not here: ask that node, where a failed claim here left it or this
    /// node handed it over.
    Elsewhere(String),
    /// This node's own claim of the client id came after the asker's: the
    /// asker's claim is lost.
    Superseded,
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
            Handed::Superseded => answer.extend_from_slice(&SUPERSEDED.to_be_bytes()),
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
            SUPERSEDED => Handed::Superseded,
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

    #[test]
    fn a_takeover_requests_asker_is_read_from_its_headers() {
        let h = headers("node2", 17);
        assert_eq!(asker(Some(&h)), Some(("node2".to_string(), 17)));
        assert_eq!(asker(None), None, "an earlier version's request");
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(ASKER, "node2");
        bad.insert(REVISION, "x");
        assert_eq!(asker(Some(&bad)), None, "a revision that is no number");
    }
}
