//! A takeover over core NATS, as both nodes read it: the new node's
//! request (the client id, when it was sent, and by which node) and the
//! old node's answer
//! ([`Handed`]: the session's parts and its cut, ask again, or ask
//! another node). `owners` asks, `handover` answers.

use bytes::Bytes;

/// The first byte of a takeover request that says when it was sent (never
/// the first byte of UTF-8 text: an earlier version's request, the client
/// id alone, is told apart, and such a node does not answer this one).
pub(crate) const TIMED: u8 = 0xFF;

/// The first byte of a takeover request that also names its asker.
pub(crate) const FROM: u8 = 0xFE;

/// A takeover request: [`FROM`], when it was sent (ms since the epoch),
/// the revision of the asker's write of the owner key, the asker's node id
/// (a length byte, then the id), then the client id ([`TIMED`] with the
/// time alone where the id is longer than 255 bytes). A
/// request that reaches the old node after the asker gave up on it (a NATS
/// route cut, then back, delivers what it buffered) is not served: the
/// asker has rebuilt the session elsewhere meanwhile. The asker is where
/// the session goes: the old node sends later askers there. A revision
/// older than the old node's own write of the key is a claim that lost to
/// the old node's own later one: not served ([`Handed::Superseded`]).
pub(crate) fn request(client_id: &str, asker: &str, revision: u64) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(18 + asker.len() + client_id.len());
    match u8::try_from(asker.len()) {
        Ok(len) => {
            b.extend_from_slice(&[FROM]);
            b.extend_from_slice(&starling_broker::store::unix_ms().to_be_bytes());
            b.extend_from_slice(&revision.to_be_bytes());
            b.extend_from_slice(&[len]);
            b.extend_from_slice(asker.as_bytes());
        }
        Err(_) => {
            b.extend_from_slice(&[TIMED]);
            b.extend_from_slice(&starling_broker::store::unix_ms().to_be_bytes());
        }
    }
    b.extend_from_slice(client_id.as_bytes());
    b.freeze()
}

/// A takeover request as the old node reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub client_id: &'a str,
    /// Zero for an earlier version's request, which does not say.
    pub age: std::time::Duration,
    /// The node that asks and the revision of its write of the owner key,
    /// where the request says.
    pub asker: Option<(&'a str, u64)>,
}

/// A takeover request's parts, if it is one.
pub(crate) fn read(payload: &[u8]) -> Option<Request<'_>> {
    let (first, rest) = payload.split_first()?;
    if *first != TIMED && *first != FROM {
        let client_id = std::str::from_utf8(payload).ok()?;
        let age = std::time::Duration::ZERO;
        return Some(Request {
            client_id,
            age,
            asker: None,
        });
    }
    let (sent, mut rest) = rest.split_at_checked(8)?;
    let sent = u64::from_be_bytes(sent.try_into().ok()?);
    let age = starling_broker::store::unix_ms().saturating_sub(sent);
    let mut asker = None;
    if *first == FROM {
        let (revision, after) = rest.split_at_checked(8)?;
        let revision = u64::from_be_bytes(revision.try_into().ok()?);
        let (len, after) = after.split_first()?;
        let (name, after) = after.split_at_checked(usize::from(*len))?;
        asker = Some((std::str::from_utf8(name).ok()?, revision));
        rest = after;
    }
    let client_id = std::str::from_utf8(rest).ok()?;
    let age = std::time::Duration::from_millis(age);
    Some(Request {
        client_id,
        age,
        asker,
    })
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
    fn a_takeover_request_says_its_age_and_asker_and_earlier_versions_are_still_read() {
        let raw = request("sub-ü", "node2", 17);
        let read_back = read(&raw).expect("read back");
        assert_eq!(read_back.client_id, "sub-ü");
        assert_eq!(read_back.asker, Some(("node2", 17)));
        assert!(read_back.age < std::time::Duration::from_secs(60));
        let long = "n".repeat(300);
        let raw = request("c", &long, 17);
        let read_back = read(&raw).expect("read back");
        assert_eq!((read_back.client_id, read_back.asker), ("c", None));
        let mut old = bytes::BytesMut::new();
        old.extend_from_slice(&[TIMED]);
        old.extend_from_slice(&1_000u64.to_be_bytes());
        old.extend_from_slice(b"c");
        let old = read(&old).expect("read back");
        assert!(
            old.age > std::time::Duration::from_secs(3600),
            "sent long ago"
        );
        assert_eq!((old.client_id, old.asker), ("c", None));
        let plain = read(b"plain-id").expect("read back");
        assert_eq!(
            (plain.client_id, plain.age),
            ("plain-id", std::time::Duration::ZERO)
        );
        assert_eq!(read(&[TIMED, 0, 1]), None, "too short");
        assert_eq!(read(&[0xC3]), None, "not UTF-8");
        let mut cut = bytes::BytesMut::new();
        cut.extend_from_slice(&[FROM]);
        cut.extend_from_slice(&1_000u64.to_be_bytes());
        cut.extend_from_slice(&17u64.to_be_bytes());
        cut.extend_from_slice(&[9, b'n']);
        assert_eq!(read(&cut), None, "the asker cut short");
    }
}
