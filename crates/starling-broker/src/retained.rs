//! Retained messages: the latest retained message per topic, in a trie of their
//! own so that a wildcard subscribe walks only the branches its filter names.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// Dropping a deep branch must not recurse once per level: the children are
/// moved onto a heap stack and dropped one by one, each as a leaf.
impl Drop for Node {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// The retained message store.
#[derive(Default)]
pub struct RetainedTree {
    root: Node,
    count: usize,
}

/// Only the count: a derived `Debug` would recurse once per level.
impl std::fmt::Debug for RetainedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedTree")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
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

    /// Stores `msg` as the retained message of its topic, or deletes the retained
    /// message when the payload is empty.
    pub fn set(&mut self, msg: Arc<Message>) {
        if msg.payload.is_empty() {
            if self.remove(&msg.topic) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(msg).is_none() {
            self.count += 1;
        }
    }

    /// Removes the message retained on `topic` and the nodes left empty.
    /// Returns true if there was one. Iterative: a topic's depth is the
    /// client's to choose, the stack's is not.
    fn remove(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        // The depth of the last node on the path that must stay because it
        // holds something besides the path's next step.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            let Some(next) = node.children.get(*level) else {
                return false;
            };
            if node.message.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            node = next;
        }
        if node.message.is_none() {
            return false;
        }
        let cut = node.children.is_empty();
        let mut node = &mut self.root;
        for (depth, level) in levels.iter().enumerate() {
            if cut && depth == keep {
                // Dropping the branch is iterative too (`Node`'s `Drop`).
                node.children.remove(*level);
                return true;
            }
            let Some(next) = node.children.get_mut(*level) else {
                return false;
            };
            node = next;
        }
        node.message.take().is_some()
    }

    /// The unexpired retained messages whose topics match a valid `filter`.
    ///
    /// Depth-first with an explicit stack of (node, levels consumed): a node
    /// at depth `d` is only compared with the filter's level `d`, so every
    /// node is visited at most once and the cost is bounded by the size of the
    /// tree above the filter's depth, whatever its wildcards.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.matching_at_most(filter, now, usize::MAX)
    }

    /// Like [`RetainedTree::matching`], stopping after `limit` messages.
    pub fn matching_at_most(&self, filter: &str, now: Instant, limit: usize) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        let keep = |m: &Arc<Message>, out: &mut Vec<Arc<Message>>| {
            if !m.is_expired(now) && out.len() < limit {
                out.push(m.clone());
            }
        };
        // [MQTT-4.7.2-1]: wildcards at the first level do not match `$` topics.
        let visible = |depth: usize, name: &str| !(depth == 0 && name.starts_with('$'));
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            if out.len() >= limit {
                break;
            }
            match levels.get(depth).copied() {
                None => {
                    if let Some(m) = &node.message {
                        keep(m, &mut out);
                    }
                }
                Some("#") => {
                    // `a/#` also matches `a` itself.
                    if depth > 0 {
                        if let Some(m) = &node.message {
                            keep(m, &mut out);
                        }
                    }
                    let mut below: Vec<&Node> = node
                        .children
                        .iter()
                        .filter(|(name, _)| visible(depth, name))
                        .map(|(_, child)| child)
                        .collect();
                    while let Some(n) = below.pop() {
                        if out.len() >= limit {
                            break;
                        }
                        if let Some(m) = &n.message {
                            keep(m, &mut out);
                        }
                        below.extend(n.children.values());
                    }
                }
                Some("+") => {
                    for (name, child) in &node.children {
                        if visible(depth, name) {
                            stack.push((child, depth + 1));
                        }
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
        out
    }

    /// Removes expired messages; returns their topics.
    pub fn sweep(&mut self, now: Instant) -> Vec<starling_codec::ByteString> {
        let mut expired: Vec<starling_codec::ByteString> = Vec::new();
        let mut stack = vec![&self.root];
        while let Some(n) = stack.pop() {
            if let Some(m) = n.message.as_ref().filter(|m| m.is_expired(now)) {
                expired.push(m.topic.clone());
            }
            stack.extend(n.children.values());
        }
        for topic in &expired {
            if self.remove(topic) {
                self.count -= 1;
            }
        }
        expired
    }

    /// Every retained message, for persistence and `$SYS`.
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        let mut stack = vec![&self.root];
        while let Some(n) = stack.pop() {
            if let Some(m) = &n.message {
                out.push(m.clone());
            }
            stack.extend(n.children.values());
        }
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
    fn expired_are_not_returned_and_are_swept() {
        let mut tree = RetainedTree::default();
        let now = Instant::now();
        let mut m = Message {
            topic: "e".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: Some(now),
            publisher: None,
        };
        tree.set(Arc::new(m));
        assert!(tree.matching("e", now).is_empty());
        assert_eq!(tree.sweep(now).len(), 1);
        assert!(tree.is_empty());
        m = Message {
            topic: "f".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        };
        tree.set(Arc::new(m));
        assert_eq!(tree.len(), 1);
    }
}
