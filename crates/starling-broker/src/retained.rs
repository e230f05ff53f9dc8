//! Retained messages: the latest retained message per topic, in a trie of their
//! own so that a wildcard subscribe walks only the branches its filter names.
//!
//! Children are kept in name order, so the trie can be walked in topic order
//! and a walk resumed after the last topic it visited ([`RetainedTree::walk`]):
//! a subscriber is streamed its retained messages a batch at a time, as its
//! queue drains, whatever their number. A node holds a compact copy of its
//! message (its topic is the node's path; its payload in an allocation of its
//! own, not the publisher's receive buffer); the [`Message`] is made again for
//! each delivery.
//!
//! The tree counts what it holds ([`RetainedTree::bytes`]), so that a broker
//! can refuse a new retained message past its limits
//! ([`RetainedTree::set_within`]): a client chooses how many topics it
//! retains on, and how deep.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use starling_codec::{ByteString, Properties, QoS};
use tokio::time::Instant;

use crate::message::Message;

/// Up to this many children are kept in a sorted vector (one allocation,
/// sized to fit); more go into a B-tree.
const FEW: usize = 16;

type Entry = (Box<str>, Node);

/// A node's children, in name order.
#[derive(Debug)]
enum Children {
    Few(Vec<Entry>),
    Many(BTreeMap<Box<str>, Node>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(m) => m.is_empty(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Children::Few(v) => v.len(),
            Children::Many(m) => m.len(),
        }
    }

    fn get(&self, name: &str) -> Option<&Node> {
        self.get_entry(name).map(|(_, n)| n)
    }

    fn get_entry(&self, name: &str) -> Option<(&str, &Node)> {
        match self {
            Children::Few(v) => v
                .binary_search_by(|(k, _)| (**k).cmp(name))
                .ok()
                .map(|i| (&*v[i].0, &v[i].1)),
            Children::Many(m) => m.get_key_value(name).map(|(k, n)| (&**k, n)),
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        match self {
            Children::Few(v) => match v.binary_search_by(|(k, _)| (**k).cmp(name)) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            Children::Many(m) => m.get_mut(name),
        }
    }

    /// The child `name`, made if missing.
    fn child(&mut self, name: &str) -> &mut Node {
        if let Children::Few(v) = self {
            if v.len() >= FEW && v.binary_search_by(|(k, _)| (**k).cmp(name)).is_err() {
                *self = Children::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.binary_search_by(|(k, _)| (**k).cmp(name)) {
                    Ok(i) => i,
                    Err(i) => {
                        v.reserve_exact(1);
                        v.insert(i, (name.into(), Node::default()));
                        i
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => m.entry(name.into()).or_default(),
        }
    }

    fn remove(&mut self, name: &str) -> Option<Node> {
        match self {
            Children::Few(v) => match v.binary_search_by(|(k, _)| (**k).cmp(name)) {
                Ok(i) => {
                    let (_, n) = v.remove(i);
                    v.shrink_to_fit();
                    Some(n)
                }
                Err(_) => None,
            },
            Children::Many(m) => m.remove(name),
        }
    }

    /// The children named `from` or later (all, without `from`).
    fn iter_from(&self, from: Option<&str>) -> ChildIter<'_> {
        match self {
            Children::Few(v) => {
                let start = from.map_or(0, |f| v.partition_point(|(k, _)| &**k < f));
                ChildIter::Few(v[start..].iter())
            }
            Children::Many(m) => {
                let start = from.map_or(Bound::Unbounded, Bound::Included);
                ChildIter::Many(m.range::<str, _>((start, Bound::Unbounded)))
            }
        }
    }

    /// Takes every child out, leaving none.
    fn take_all(&mut self) -> Vec<Node> {
        match std::mem::take(self) {
            Children::Few(v) => v.into_iter().map(|(_, n)| n).collect(),
            Children::Many(m) => m.into_values().collect(),
        }
    }
}

/// Children in name order, borrowed.
enum ChildIter<'a> {
    Few(std::slice::Iter<'a, Entry>),
    Many(std::collections::btree_map::Range<'a, Box<str>, Node>),
    One(Option<(&'a str, &'a Node)>),
}

impl<'a> Iterator for ChildIter<'a> {
    type Item = (&'a str, &'a Node);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ChildIter::Few(it) => it.next().map(|(k, n)| (&**k, n)),
            ChildIter::Many(it) => it.next().map(|(k, n)| (&**k, n)),
            ChildIter::One(one) => one.take(),
        }
    }
}

/// What one topic level of a retained message is counted as, beside the
/// message's own weight: its node, its name's allocation and the children
/// entry that points to it (a conservative figure: levels shared with other
/// topics are counted for each).
const LEVEL_COST: usize = 64;

/// What a retained message of `msg`'s weight and topic costs the tree, in
/// bytes, as [`RetainedTree::bytes`] counts it.
pub fn cost(msg: &Message) -> usize {
    let levels = msg.topic.bytes().filter(|&b| b == b'/').count() + 1;
    let cost = (msg.weight() as usize)
        .saturating_add(levels.saturating_mul(LEVEL_COST))
        .saturating_add(std::mem::size_of::<Kept>());
    // As the tree keeps it (a packet is far smaller).
    cost.min(u32::MAX as usize)
}

/// Whether limits leave `msg` aside: a `$SYS` message the broker made (a
/// client's, a bridge's for one, counts).
fn exempt(msg: &Message) -> bool {
    msg.publisher.is_none() && msg.topic.starts_with("$SYS")
}

/// A retained message as the tree keeps it; its topic is the node's path.
#[derive(Debug)]
struct Kept {
    payload: Bytes,
    /// What it was counted as ([`cost`]; 4 bytes: one of these per
    /// retained message).
    cost: u32,
    /// The broker's own `$SYS` message: left aside by limits ([`exempt`]).
    exempt: bool,
    expires_at: Option<Instant>,
    /// `None` when the message has no properties (most do not).
    properties: Option<Box<Properties>>,
    qos: QoS,
}

impl Kept {
    fn new(msg: &Message) -> Kept {
        let none = msg.properties == Properties::default();
        Kept {
            // Its own allocation: a slice would keep the publisher's whole
            // receive buffer alive for as long as the message is retained.
            payload: Bytes::copy_from_slice(&msg.payload),
            cost: cost(msg) as u32,
            exempt: exempt(msg),
            expires_at: msg.expires_at,
            properties: (!none).then(|| Box::new(msg.properties.clone())),
            qos: msg.qos,
        }
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The message, on `topic`, as the broker routes it.
    fn message(&self, topic: ByteString) -> Arc<Message> {
        Arc::new(Message {
            topic,
            payload: self.payload.clone(),
            qos: self.qos,
            retain: true,
            properties: self.properties.as_deref().cloned().unwrap_or_default(),
            expires_at: self.expires_at,
            publisher: None,
        })
    }
}

#[derive(Debug, Default)]
struct Node {
    children: Children,
    kept: Option<Box<Kept>>,
}

/// Dropping a deep branch must not recurse once per level: the children are
/// moved onto a heap stack and dropped one by one, each as a leaf.
impl Drop for Node {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack = self.children.take_all();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.take_all());
        }
    }
}

/// The retained message store.
#[derive(Default)]
pub struct RetainedTree {
    root: Node,
    count: usize,
    /// The sum of the messages' [`cost`]s.
    bytes: usize,
    /// The count and bytes of the broker's own `$SYS` messages, which
    /// limits leave aside ([`exempt`]).
    exempt: (usize, usize),
}

/// Only the figures: a derived `Debug` would recurse once per level.
impl std::fmt::Debug for RetainedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedTree")
            .field("count", &self.count)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// How much a [`RetainedTree`] may hold when a message is set within limits
/// (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Retained messages.
    pub messages: usize,
    /// Their [`cost`]s, summed.
    pub bytes: usize,
}

impl RetainedLimits {
    /// No limit.
    pub const NONE: RetainedLimits = RetainedLimits {
        messages: 0,
        bytes: 0,
    };
}

/// One step of a resumable walk ([`RetainedTree::walk`]).
#[derive(Debug, Default)]
pub struct WalkStep {
    /// The unexpired matching messages found, in topic order.
    pub messages: Vec<Arc<Message>>,
    /// Where to go on from: the topic of the last node visited. `None`
    /// when the walk is complete.
    pub next: Option<ByteString>,
}

/// How far one step of a walk goes at most.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Messages found.
    pub messages: usize,
    /// Their weight ([`Message::weight`]); a step finds at least one.
    pub bytes: usize,
    /// Nodes visited.
    pub nodes: usize,
}

impl StepLimits {
    /// No limit: the whole walk in one step.
    pub const NONE: StepLimits = StepLimits {
        messages: usize::MAX,
        bytes: usize::MAX,
        nodes: usize::MAX,
    };
}

/// The children of one node being walked.
struct Frame<'a> {
    /// The depth of the children (their topic's number of levels).
    depth: usize,
    iter: ChildIter<'a>,
    /// Whether the parent's topic is a prefix of the cursor: then a child
    /// named as the cursor's next level is on its path too.
    on_path: bool,
    /// Under a `#`: every descendant matches.
    hash: bool,
    /// A wildcard at the first level: `$` topics do not match [MQTT-4.7.2-1].
    skip_dollar: bool,
}

/// The frame for the children of `node` (at `depth`) that `levels` can
/// match and that come after the cursor `after`; `None` when there are none.
fn frame<'a>(
    node: &'a Node,
    depth: usize,
    on_path: bool,
    hash: bool,
    levels: &[&str],
    after: &[&str],
) -> Option<Frame<'a>> {
    if node.children.is_empty() {
        return None;
    }
    let from = if on_path {
        after.get(depth).copied()
    } else {
        None
    };
    let (iter, hash, skip_dollar) = if hash {
        (node.children.iter_from(from), true, false)
    } else {
        match levels.get(depth).copied() {
            None => return None,
            Some("#") => (node.children.iter_from(from), true, depth == 0),
            Some("+") => (node.children.iter_from(from), false, depth == 0),
            Some(level) => {
                if from.is_some_and(|f| level < f) {
                    return None;
                }
                (ChildIter::One(node.children.get_entry(level)), false, false)
            }
        }
    };
    Some(Frame {
        depth: depth + 1,
        iter,
        on_path: from.is_some(),
        hash,
        skip_dollar,
    })
}

impl RetainedTree {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What the retained messages cost, summed ([`cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `msg` as the retained message of its topic, or deletes the retained
    /// message when the payload is empty.
    pub fn set(&mut self, msg: Arc<Message>) {
        self.set_within(msg, RetainedLimits::NONE);
    }

    /// As [`RetainedTree::set`], unless the tree would then hold more than
    /// `limits` allow: then nothing changes and `false` is returned. A
    /// removal, and a message that replaces one no smaller, always fit.
    /// The broker's own `$SYS` messages are neither limited nor counted
    /// against the limits.
    pub fn set_within(&mut self, msg: Arc<Message>, limits: RetainedLimits) -> bool {
        if msg.payload.is_empty() {
            self.remove(&msg.topic);
            return true;
        }
        let kept = Kept::new(&msg);
        // One walk, as without limits, unless the message would not fit as
        // a new topic: then whether it replaces one decides.
        let cost = kept.cost as usize;
        if !kept.exempt && !self.fits(cost, None, limits) {
            let old = self.kept(&msg.topic).map(|k| (k.cost as usize, k.exempt));
            let fits = match old {
                Some((old, false)) => cost <= old || self.fits(cost, Some(old), limits),
                _ => false,
            };
            if !fits {
                return false;
            }
        }
        let exempt = kept.exempt;
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.child(level);
        }
        if let Some(old) = node.kept.replace(Box::new(kept)) {
            self.untally(old.cost as usize, old.exempt);
        }
        self.count += 1;
        self.bytes = self.bytes.saturating_add(cost);
        if exempt {
            self.exempt.0 += 1;
            self.exempt.1 = self.exempt.1.saturating_add(cost);
        }
        true
    }

    /// Whether a message of `cost` fits within `limits` beside the others
    /// the limits count, in place of one of `replaced` bytes if any.
    fn fits(&self, cost: usize, replaced: Option<usize>, limits: RetainedLimits) -> bool {
        let count = self.count - self.exempt.0 - usize::from(replaced.is_some()) + 1;
        let bytes = (self.bytes - self.exempt.1 - replaced.unwrap_or(0)).saturating_add(cost);
        (limits.messages == 0 || count <= limits.messages)
            && (limits.bytes == 0 || bytes <= limits.bytes)
    }

    /// Takes a message of `cost` out of the figures.
    fn untally(&mut self, cost: usize, exempt: bool) {
        self.count -= 1;
        self.bytes -= cost;
        if exempt {
            self.exempt.0 -= 1;
            self.exempt.1 -= cost;
        }
    }

    /// The message kept on `topic`, expired or not.
    fn kept(&self, topic: &str) -> Option<&Kept> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.kept.as_deref()
    }

    /// Removes the message retained on `topic`, and the nodes left empty,
    /// from the tree and its figures. Returns true if there was one.
    fn remove(&mut self, topic: &str) -> bool {
        let Some((cost, exempt)) = self.kept(topic).map(|k| (k.cost as usize, k.exempt)) else {
            return false;
        };
        self.remove_node(topic);
        self.untally(cost, exempt);
        true
    }

    /// Removes the message retained on `topic` and the nodes left empty.
    /// Returns true if there was one. Iterative: a topic's depth is the
    /// client's to choose, the stack's is not.
    fn remove_node(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        // The depth of the last node on the path that must stay because it
        // holds something besides the path's next step.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            let Some(next) = node.children.get(level) else {
                return false;
            };
            if node.kept.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            node = next;
        }
        if node.kept.is_none() {
            return false;
        }
        let cut = node.children.is_empty();
        let mut node = &mut self.root;
        for (depth, level) in levels.iter().enumerate() {
            if cut && depth == keep {
                // Dropping the branch is iterative too (`Node`'s `Drop`).
                node.children.remove(level);
                return true;
            }
            let Some(next) = node.children.get_mut(level) else {
                return false;
            };
            node = next;
        }
        node.kept.take().is_some()
    }

    /// The unexpired retained messages whose topics match a valid `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.matching_at_most(filter, now, usize::MAX)
    }

    /// Like [`RetainedTree::matching`], stopping after `limit` messages.
    pub fn matching_at_most(&self, filter: &str, now: Instant, limit: usize) -> Vec<Arc<Message>> {
        let limits = StepLimits {
            messages: limit,
            ..StepLimits::NONE
        };
        self.walk(filter, None, now, limits).messages
    }

    /// Walks the topics that match a valid `filter` in topic order (a topic
    /// before its subtopics, levels compared bytewise), from after the topic
    /// `after` (from the start: `None`), as far as `limits` let it. The step
    /// says where to go on from.
    ///
    /// Depth-first with an explicit stack of frames, each iterating one
    /// node's children lazily: a node at depth `d` is only compared with the
    /// filter's level `d`, every node is visited at most once per walk, and
    /// resuming costs one descent along the cursor's path, whatever the
    /// filter's wildcards. A message set or cleared meanwhile before the
    /// cursor is not seen (the subscription gets it live); after, it is.
    pub fn walk(
        &self,
        filter: &str,
        after: Option<&str>,
        now: Instant,
        limits: StepLimits,
    ) -> WalkStep {
        let levels: Vec<&str> = filter.split('/').collect();
        let cursor: Vec<&str> = after.map(|a| a.split('/').collect()).unwrap_or_default();
        let mut path: Vec<&str> = Vec::new();
        let mut frames: Vec<Frame<'_>> = Vec::new();
        frames.extend(frame(
            &self.root,
            0,
            after.is_some(),
            false,
            &levels,
            &cursor,
        ));
        let mut step = WalkStep::default();
        let (mut visited, mut bytes) = (0usize, 0usize);
        while let Some(top) = frames.last_mut() {
            let Some((name, node)) = top.iter.next() else {
                frames.pop();
                continue;
            };
            if top.skip_dollar && name.starts_with('$') {
                continue;
            }
            let (depth, hash) = (top.depth, top.hash);
            // On the cursor's path: the node's topic is a prefix of the
            // cursor (or the cursor), so it was visited before.
            let on_path = top.on_path && cursor.get(depth - 1) == Some(&name);
            path.truncate(depth - 1);
            path.push(name);
            let matched = hash || levels.len() == depth || levels.get(depth) == Some(&"#");
            if matched && !on_path {
                if let Some(kept) = node.kept.as_ref().filter(|k| !k.is_expired(now)) {
                    let msg = kept.message(path.join("/").into());
                    bytes = bytes.saturating_add(msg.weight() as usize);
                    step.messages.push(msg);
                }
            }
            frames.extend(frame(node, depth, on_path, hash, &levels, &cursor));
            // A node on the cursor's path is no place to stop (going on from
            // it would visit again what followed it), nor counted: it is the
            // descent to where the last step stopped.
            if on_path {
                continue;
            }
            visited += 1;
            if step.messages.len() >= limits.messages
                || bytes >= limits.bytes
                || visited >= limits.nodes
            {
                if !frames.is_empty() {
                    step.next = Some(path.join("/").into());
                }
                break;
            }
        }
        step
    }

    /// Calls `f` with the topic and message of every retained message, in
    /// topic order.
    fn each(&self, mut f: impl FnMut(&[&str], &Kept)) {
        let mut path: Vec<&str> = Vec::new();
        let mut frames: Vec<(usize, ChildIter<'_>)> = vec![(1, self.root.children.iter_from(None))];
        while let Some((depth, iter)) = frames.last_mut() {
            let depth = *depth;
            let Some((name, node)) = iter.next() else {
                frames.pop();
                continue;
            };
            path.truncate(depth - 1);
            path.push(name);
            if let Some(kept) = &node.kept {
                f(&path, kept);
            }
            if !node.children.is_empty() {
                frames.push((depth + 1, node.children.iter_from(None)));
            }
        }
    }

    /// Removes expired messages; returns their topics.
    pub fn sweep(&mut self, now: Instant) -> Vec<ByteString> {
        let mut expired: Vec<ByteString> = Vec::new();
        self.each(|path, kept| {
            if kept.is_expired(now) {
                expired.push(path.join("/").into());
            }
        });
        for topic in &expired {
            self.remove(topic);
        }
        expired
    }

    /// Every retained message, for persistence and `$SYS`.
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::with_capacity(self.count);
        self.each(|path, kept| out.push(kept.message(path.join("/").into())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use starling_codec::{Properties, QoS};

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        })
    }

    /// A retained message on `topic` ("x") that expires `at`.
    fn expiring(topic: &str, at: Instant) -> Message {
        Message {
            expires_at: Some(at),
            retain: true,
            ..msg(topic, "x").unretained()
        }
    }

    fn topics(tree: &RetainedTree, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = tree
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn wildcard_lookup() {
        let mut tree = RetainedTree::default();
        for t in ["a", "a/b", "a/b/c", "a/c", "$SYS/x", "/x"] {
            tree.set(msg(t, "p"));
        }
        assert_eq!(tree.len(), 6);
        assert_eq!(topics(&tree, "a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&tree, "a/+"), ["a/b", "a/c"]);
        assert_eq!(topics(&tree, "#"), ["/x", "a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&tree, "+/x"), ["/x"]);
        assert_eq!(topics(&tree, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&tree, "a/b"), ["a/b"]);
        tree.set(msg("a/b", ""));
        assert_eq!(topics(&tree, "a/#"), ["a", "a/b/c", "a/c"]);
        assert_eq!(tree.len(), 5);
    }

    #[test]
    fn limits_refuse_new_topics_and_growth_but_not_replacement_or_removal() {
        let mut tree = RetainedTree::default();
        let two = RetainedLimits {
            messages: 2,
            bytes: 0,
        };
        assert!(tree.set_within(msg("a", "1"), two));
        assert!(tree.set_within(msg("b/c", "1"), two));
        assert!(!tree.set_within(msg("d", "1"), two), "a third topic");
        assert_eq!(topics(&tree, "#"), ["a", "b/c"]);
        assert!(
            tree.set_within(msg("a", "a longer payload"), two),
            "a replacement"
        );
        assert!(tree.set_within(msg("b/c", ""), two), "a removal");
        assert!(tree.set_within(msg("d", "1"), two), "room again");
        assert_eq!(tree.len(), 2);
        // The broker's `$SYS` messages are left aside; a client's count.
        assert!(tree.set_within(msg("$SYS/broker/uptime", "1"), two));
        assert!(tree.set_within(msg("$SYS/broker/uptime", "12"), two));
        assert_eq!(tree.len(), 3);
        let bridged = Message {
            publisher: Some("bridge".into()),
            ..msg("$SYS/broker/connection/b/state", "1").unretained()
        };
        assert!(!tree.set_within(Arc::new(bridged), two));
        assert!(tree.set_within(msg("$SYS/broker/uptime", ""), two));
        assert!(
            !tree.set_within(msg("e", "1"), two),
            "still two of a client's"
        );

        const LONG: &str = "a payload of two hundred bytes or so, long enough that shrinking it \
            to four bytes frees more than what a new one-byte topic costs beside its payload: \
            a node, a name, a children entry, and the copy the tree keeps of it.";
        let one = cost(&msg("x", LONG));
        let bytes = RetainedLimits {
            messages: 0,
            bytes: one * 2,
        };
        let mut tree = RetainedTree::default();
        assert!(tree.set_within(msg("x", LONG), bytes));
        assert!(tree.set_within(msg("y", LONG), bytes));
        assert_eq!(tree.bytes(), one * 2);
        assert!(!tree.set_within(msg("z", "1"), bytes), "past the bytes");
        let longer: &'static str = Box::leak(format!("{LONG}!").into_boxed_str());
        assert!(
            !tree.set_within(msg("x", longer), bytes),
            "a larger replacement past them"
        );
        assert!(tree.set_within(msg("x", "1234"), bytes), "a smaller one");
        assert!(tree.set_within(msg("y", "1234"), bytes));
        assert!(
            tree.set_within(msg("z", "1"), bytes),
            "what the smaller ones freed"
        );
        // Deep topics cost per level: a client cannot hide a deep tree in
        // a small payload.
        let deep = "l/".repeat(100) + "end";
        assert!(cost(&msg(&deep, "p")) >= 100 * LEVEL_COST);
        assert!(!tree.set_within(msg(&deep, "p"), bytes));
        for t in ["x", "y", "z"] {
            tree.set(msg(t, ""));
        }
        assert_eq!((tree.len(), tree.bytes()), (0, 0));
    }

    #[test]
    fn the_figures_follow_sets_removals_and_sweeps() {
        // What each retained message keeps beside its node: no larger than
        // before the figures (its cost is 4 bytes in the padding).
        assert!(std::mem::size_of::<Kept>() <= 64);
        let mut tree = RetainedTree::default();
        let now = Instant::now();
        tree.set(msg("a/b", "payload"));
        tree.set(Arc::new(expiring("e", now)));
        assert_eq!(
            tree.bytes(),
            cost(&msg("a/b", "payload")) + cost(&msg("e", "x"))
        );
        assert_eq!(tree.sweep(now).len(), 1);
        assert_eq!(tree.bytes(), cost(&msg("a/b", "payload")));
        tree.set(msg("a/b", "other"));
        assert_eq!(tree.bytes(), cost(&msg("a/b", "other")));
        tree.set(msg("a/b", ""));
        assert_eq!((tree.len(), tree.bytes()), (0, 0));
        assert!(tree.root.children.is_empty());
    }

    #[test]
    fn expired_are_not_returned_and_are_swept() {
        let mut tree = RetainedTree::default();
        let now = Instant::now();
        tree.set(Arc::new(expiring("e", now)));
        assert!(tree.matching("e", now).is_empty());
        assert_eq!(tree.sweep(now).len(), 1);
        assert!(tree.is_empty());
        tree.set(msg("f", "x"));
        assert_eq!(tree.len(), 1);
    }

    /// Every topic a walk yields, resumed after each step of `limit`
    /// messages or `budget` nodes.
    fn walked(tree: &RetainedTree, filter: &str, limit: usize, budget: usize) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut after: Option<ByteString> = None;
        for _ in 0..10_000 {
            let limits = StepLimits {
                messages: limit,
                bytes: usize::MAX,
                nodes: budget,
            };
            let step = tree.walk(filter, after.as_deref(), now, limits);
            out.extend(step.messages.iter().map(|m| m.topic.to_string()));
            match step.next {
                Some(next) => after = Some(next),
                None => return out,
            }
        }
        panic!("the walk did not end");
    }

    #[test]
    fn a_walk_resumes_in_topic_order_whatever_its_steps() {
        let mut tree = RetainedTree::default();
        let mut all = Vec::new();
        for a in ["", "a", "b", "$SYS", "zz"] {
            for b in 0..40 {
                let t = format!("{a}/{b:02}");
                tree.set(msg(&t, "p"));
                all.push(t);
            }
            tree.set(msg(a, "p"));
            all.push(a.to_string());
            tree.set(msg(&format!("{a}/07/deep/er"), "p"));
            all.push(format!("{a}/07/deep/er"));
        }
        for filter in [
            "#",
            "a/#",
            "+/07/#",
            "+/+",
            "b/07",
            "+/07/deep/er",
            "$SYS/#",
            "/+",
        ] {
            let whole = walked(&tree, filter, usize::MAX, usize::MAX);
            let mut expected: Vec<String> = all
                .iter()
                .filter(|t| starling_codec::topic::matches(filter, t))
                .cloned()
                .collect();
            expected.sort_by(|x, y| x.split('/').cmp(y.split('/')));
            assert_eq!(whole, expected, "{filter}");
            for (limit, budget) in [(1, usize::MAX), (3, usize::MAX), (usize::MAX, 1), (2, 5)] {
                assert_eq!(
                    walked(&tree, filter, limit, budget),
                    whole,
                    "{filter} {limit} {budget}"
                );
            }
        }
    }

    #[test]
    fn a_walk_sees_what_is_set_after_its_cursor_and_not_before() {
        let mut tree = RetainedTree::default();
        for t in ["a/1", "a/3", "a/5"] {
            tree.set(msg(t, "p"));
        }
        let now = Instant::now();
        let two = StepLimits {
            messages: 2,
            ..StepLimits::NONE
        };
        let step = tree.walk("a/+", None, now, two);
        assert_eq!(step.messages.len(), 2);
        let next = step.next.expect("more to walk");
        assert_eq!(&*next, "a/3");
        tree.set(msg("a/2", "p"));
        tree.set(msg("a/4", "p"));
        tree.set(msg("a/3", ""));
        let step = tree.walk("a/+", Some(&next), now, StepLimits::NONE);
        let got: Vec<&str> = step.messages.iter().map(|m| &*m.topic).collect();
        assert_eq!(got, ["a/4", "a/5"]);
        assert!(step.next.is_none());
    }

    #[test]
    fn many_children_move_to_a_btree_and_stay_in_order() {
        let mut tree = RetainedTree::default();
        for i in (0..100).rev() {
            tree.set(msg(&format!("m/{i:03}"), "p"));
        }
        assert_eq!(tree.len(), 100);
        let got = walked(&tree, "m/+", 7, usize::MAX);
        let expected: Vec<String> = (0..100).map(|i| format!("m/{i:03}")).collect();
        assert_eq!(got, expected);
        for i in 0..100 {
            tree.set(msg(&format!("m/{i:03}"), ""));
        }
        assert!(tree.is_empty());
        assert!(tree.root.children.is_empty());
    }

    #[test]
    fn a_retained_payload_does_not_keep_its_receive_buffer() {
        let buffer = Bytes::from(vec![7u8; 65536]);
        let mut tree = RetainedTree::default();
        let m = Message {
            topic: "t".into(),
            payload: buffer.slice(0..4),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        };
        tree.set(Arc::new(m));
        let kept = tree.matching("t", Instant::now());
        assert_eq!(&kept[0].payload[..], &[7, 7, 7, 7]);
        assert_ne!(kept[0].payload.as_ptr(), buffer.as_ptr());
        assert_eq!(kept[0].qos, QoS::AtLeastOnce);
    }
}
