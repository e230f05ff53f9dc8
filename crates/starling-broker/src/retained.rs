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

/// The retained message store.
#[derive(Debug, Default)]
pub struct RetainedTree {
    root: Node,
    count: usize,
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
        let levels: Vec<&str> = msg.topic.split('/').collect();
        if msg.payload.is_empty() {
            if Self::remove(&mut self.root, &levels) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in levels {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(msg).is_none() {
            self.count += 1;
        }
    }

    fn remove(node: &mut Node, levels: &[&str]) -> bool {
        match levels.split_first() {
            None => node.message.take().is_some(),
            Some((level, rest)) => {
                let Some(child) = node.children.get_mut(*level) else {
                    return false;
                };
                let removed = Self::remove(child, rest);
                if child.message.is_none() && child.children.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }

    /// The unexpired retained messages whose topics match a valid `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        Self::walk(&self.root, &levels, true, now, &mut out);
        out
    }

    fn walk(node: &Node, levels: &[&str], root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
        let keep = |m: &Arc<Message>, out: &mut Vec<Arc<Message>>| {
            if !m.is_expired(now) {
                out.push(m.clone());
            }
        };
        match levels.split_first() {
            None => {
                if let Some(m) = &node.message {
                    keep(m, out);
                }
            }
            Some((&"#", _)) => {
                // `a/#` also matches `a` itself.
                if !root {
                    if let Some(m) = &node.message {
                        keep(m, out);
                    }
                }
                let mut stack: Vec<&Node> = node
                    .children
                    .iter()
                    .filter(|(name, _)| !(root && name.starts_with('$')))
                    .map(|(_, child)| child)
                    .collect();
                while let Some(n) = stack.pop() {
                    if let Some(m) = &n.message {
                        keep(m, out);
                    }
                    stack.extend(n.children.values());
                }
            }
            Some((&"+", rest)) => {
                for (name, child) in &node.children {
                    if root && name.starts_with('$') {
                        continue;
                    }
                    Self::walk(child, rest, false, now, out);
                }
            }
            Some((level, rest)) => {
                if let Some(child) = node.children.get(*level) {
                    Self::walk(child, rest, false, now, out);
                }
            }
        }
    }

    /// Removes expired messages; returns their topics.
    pub fn sweep(&mut self, now: Instant) -> Vec<starling_codec::ByteString> {
        fn sweep_node(node: &mut Node, now: Instant, out: &mut Vec<starling_codec::ByteString>) {
            if node.message.as_ref().is_some_and(|m| m.is_expired(now)) {
                if let Some(m) = node.message.take() {
                    out.push(m.topic.clone());
                }
            }
            node.children.retain(|_, child| {
                sweep_node(child, now, out);
                child.message.is_some() || !child.children.is_empty()
            });
        }
        let mut removed = Vec::new();
        sweep_node(&mut self.root, now, &mut removed);
        self.count -= removed.len();
        removed
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
