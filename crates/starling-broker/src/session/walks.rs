//! The retained messages a session's new subscriptions are still owed: for
//! each, where its walk of the retained tree stopped. The attached connection
//! takes a step of the first walk whenever its queue runs empty
//! (`Machine::drain`), so the retained messages of a subscription are streamed
//! at the pace of the client's socket and Receive Maximum, whatever their
//! number, without going through the bounded queue all at once.

use std::collections::VecDeque;

use starling_codec::{ByteString, QoS};

/// One subscription's retained messages still to send.
#[derive(Debug, Clone)]
pub struct RetainedWalk {
    /// The filter as the session holds it (under the mountpoint).
    pub filter: ByteString,
    /// The topic of the last node visited; `None` before the first step.
    pub after: Option<ByteString>,
    /// The QoS the subscription was granted.
    pub granted: QoS,
    /// The subscription identifier, if any.
    pub sub_id: Option<u32>,
}

/// The walks of one session, in the order their SUBSCRIBEs came (a pointer
/// while none is under way).
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // one pointer in every session, not a deque's three words
pub struct Walks(Option<Box<VecDeque<RetainedWalk>>>);

impl Walks {
    /// Starts a walk, after those under way; a walk for the same filter
    /// under way starts again (the filter was subscribed again).
    pub fn start(&mut self, walk: RetainedWalk) {
        self.stop(&walk.filter);
        self.0.get_or_insert_with(Default::default).push_back(walk);
    }

    /// Ends the walk for `filter`, if any (it was unsubscribed).
    pub fn stop(&mut self, filter: &str) {
        if let Some(walks) = &mut self.0 {
            walks.retain(|w| *w.filter != *filter);
            if walks.is_empty() {
                self.0 = None;
            }
        }
    }

    /// The walk to take a step of.
    pub fn current(&mut self) -> Option<&mut RetainedWalk> {
        self.0.as_mut().and_then(|w| w.front_mut())
    }

    /// The current walk is complete.
    pub fn finish_current(&mut self) {
        if let Some(walks) = &mut self.0 {
            walks.pop_front();
            if walks.is_empty() {
                self.0 = None;
            }
        }
    }

    /// Whether any walk is under way.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// How many walks are under way.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |w| w.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(filter: &str) -> RetainedWalk {
        RetainedWalk {
            filter: filter.into(),
            after: None,
            granted: QoS::AtLeastOnce,
            sub_id: None,
        }
    }

    #[test]
    fn walks_go_in_order_and_a_resubscribe_starts_again() {
        let mut w = Walks::default();
        assert!(w.is_empty());
        w.start(walk("a/#"));
        w.start(walk("b/#"));
        if let Some(cur) = w.current() {
            cur.after = Some("a/1".into());
        }
        w.start(walk("a/#"));
        assert_eq!(w.len(), 2);
        assert_eq!(
            w.current().map(|c| c.filter.to_string()),
            Some("b/#".into())
        );
        w.finish_current();
        let cur = w.current().expect("a/# again");
        assert_eq!(&*cur.filter, "a/#");
        assert!(cur.after.is_none());
        w.stop("a/#");
        assert!(w.is_empty());
        assert!(w.current().is_none());
    }
}
