//! The subscription index: a trie over topic levels.
//!
//! A lookup walks the levels of the topic and follows, at each node, the exact
//! child, the `+` child and the `#` subscribers, so its cost depends on the depth
//! of the topic and the branches that match, never on how many subscriptions
//! exist. Shared subscriptions (`$share/group/filter`) hang off the node of
//! their filter, one group per share name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use starling_codec::SubscriptionOptions;

use crate::session::Session;

/// A subscriber at a node.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// Options granted.
    pub options: SubscriptionOptions,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

/// The members of one shared subscription group.
#[derive(Debug, Default)]
pub struct SharedGroup {
    /// The whole shared filter, `$share/{group}/{filter}`.
    pub key: Option<Arc<str>>,
    /// Members, in subscribe order.
    pub members: Vec<Subscriber>,
    /// Round-robin cursor.
    pub next: AtomicUsize,
}

/// A level of the trie. Most nodes of a large tree are leaves with one
/// subscriber, so everything but the exact subscribers is allocated on first
/// use: a node is 40 bytes.
#[derive(Debug, Default)]
struct Node {
    /// Children by level name. Boxed on purpose: an empty map is 48 bytes
    /// inline, and most nodes are leaves.
    #[allow(clippy::box_collection)]
    children: Option<Box<HashMap<Box<str>, Node>>>,
    /// Subscribers whose filter ends here.
    exact: Vec<Subscriber>,
    /// The `+` child and `#` subscribers, when there are any.
    wild: Option<Box<Wild>>,
}

/// The wildcard parts of a node.
#[derive(Debug, Default)]
struct Wild {
    plus: Option<Box<Node>>,
    /// Subscribers whose filter ends with `#` after this node.
    hash: Vec<Subscriber>,
    /// Shared groups ending here, when there are any.
    shared: Option<Box<Shared>>,
}

/// The shared groups of a node, by share name.
#[derive(Debug, Default)]
struct Shared {
    /// Groups whose filter ends here.
    exact: HashMap<Box<str>, SharedGroup>,
    /// Groups whose filter ends with `#` after this node.
    hash: HashMap<Box<str>, SharedGroup>,
}

impl Node {
    /// Whether the node holds nothing. Shallow on purpose (a recursive check
    /// would recurse once per level): a node below the root that holds
    /// nothing is always cut off (see [`TopicTree::unsubscribe`]), so a
    /// child that exists is never empty.
    fn is_empty(&self) -> bool {
        self.children.as_ref().is_none_or(|c| c.is_empty())
            && self.exact.is_empty()
            && self.wild.as_ref().is_none_or(|w| w.is_empty())
    }

    fn child(&self, level: &str) -> Option<&Node> {
        self.children.as_ref()?.get(level)
    }

    fn plus(&self) -> Option<&Node> {
        self.wild.as_ref()?.plus.as_deref()
    }

    fn hash(&self) -> &[Subscriber] {
        self.wild.as_ref().map_or(&[], |w| &w.hash)
    }

    fn shared(&self) -> Option<&Shared> {
        self.wild.as_ref()?.shared.as_deref()
    }

    fn wild_mut(&mut self) -> &mut Wild {
        self.wild.get_or_insert_with(Default::default)
    }

    /// The child a filter level leads to (`+` is the wildcard child).
    fn step(&self, level: &str) -> Option<&Node> {
        if level == "+" {
            self.plus()
        } else {
            self.child(level)
        }
    }

    fn step_mut(&mut self, level: &str) -> Option<&mut Node> {
        if level == "+" {
            self.wild.as_mut()?.plus.as_deref_mut()
        } else {
            self.children.as_mut()?.get_mut(level)
        }
    }

    /// Drops the child a filter level leads to, with its whole branch.
    fn remove_step(&mut self, level: &str) {
        if level == "+" {
            if let Some(w) = self.wild.as_mut() {
                w.plus = None;
            }
        } else if let Some(c) = self.children.as_mut() {
            c.remove(level);
        }
    }

    /// Whether the node holds anything besides the child `level` leads to.
    fn holds_more_than(&self, level: &str) -> bool {
        let children = self.children.as_ref().map_or(0, |c| c.len());
        let other_children = if level == "+" {
            children
        } else {
            children.saturating_sub(1)
        };
        let wild = self.wild.as_ref().is_some_and(|w| {
            !w.hash.is_empty()
                || w.shared
                    .as_ref()
                    .is_some_and(|s| !s.exact.is_empty() || !s.hash.is_empty())
                || (level != "+" && w.plus.is_some())
        });
        other_children > 0 || !self.exact.is_empty() || wild
    }

    /// Removes `session` from the list a filter ending here names (`hash`: it
    /// ends with `#` after this node). Returns true if it was there.
    fn take(&mut self, share: Option<&str>, hash: bool, session: &Arc<Session>) -> bool {
        let take = |list: &mut Vec<Subscriber>| {
            let before = list.len();
            list.retain(|s| !same(s, session));
            before != list.len()
        };
        let take_shared = |groups: &mut HashMap<Box<str>, SharedGroup>, group: &str| {
            let Some(g) = groups.get_mut(group) else {
                return false;
            };
            let removed = take(&mut g.members);
            if g.members.is_empty() {
                groups.remove(group);
            }
            removed
        };
        match (share, hash) {
            (None, false) => take(&mut self.exact),
            (None, true) => self.wild.as_mut().is_some_and(|w| take(&mut w.hash)),
            (Some(g), hash) => self
                .wild
                .as_mut()
                .and_then(|w| w.shared.as_mut())
                .is_some_and(|s| {
                    let groups = if hash { &mut s.hash } else { &mut s.exact };
                    take_shared(groups, g)
                }),
        }
    }

    /// Moves the node's children (plain and `+`) onto `out`.
    fn take_children(&mut self, out: &mut Vec<Node>) {
        if let Some(children) = self.children.take() {
            out.extend((*children).into_values());
        }
        if let Some(plus) = self.wild.as_mut().and_then(|w| w.plus.take()) {
            out.push(*plus);
        }
    }

    /// Frees the parts that have become empty.
    fn shrink(&mut self) {
        if self.children.as_ref().is_some_and(|c| c.is_empty()) {
            self.children = None;
        }
        if let Some(w) = self.wild.as_mut() {
            if w.shared
                .as_ref()
                .is_some_and(|s| s.exact.is_empty() && s.hash.is_empty())
            {
                w.shared = None;
            }
            if w.plus.as_ref().is_some_and(|p| p.is_empty()) {
                w.plus = None;
            }
        }
        if self.wild.as_ref().is_some_and(|w| w.is_empty()) {
            self.wild = None;
        }
    }
}

/// Dropping a deep branch must not recurse once per level: the children are
/// moved onto a heap stack and dropped one by one, each as a leaf.
impl Drop for Node {
    fn drop(&mut self) {
        let leaf = self.children.is_none() && self.wild.as_ref().is_none_or(|w| w.plus.is_none());
        if leaf {
            return;
        }
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
        }
    }
}

impl Wild {
    /// Shallow, like [`Node::is_empty`].
    fn is_empty(&self) -> bool {
        self.plus.is_none()
            && self.hash.is_empty()
            && self
                .shared
                .as_ref()
                .is_none_or(|s| s.exact.is_empty() && s.hash.is_empty())
    }

    fn shared_mut(&mut self) -> &mut Shared {
        self.shared.get_or_insert_with(Default::default)
    }
}

/// Everything a topic matched.
#[derive(Debug, Default)]
pub struct Matches<'a> {
    /// Ordinary subscribers (a session may appear more than once).
    pub subscribers: Vec<&'a Subscriber>,
    /// Shared groups, each of which delivers to one member.
    pub groups: Vec<&'a SharedGroup>,
}

/// The subscription trie.
#[derive(Default)]
pub struct TopicTree {
    root: Node,
    count: usize,
}

/// Only the count: a derived `Debug` would recurse once per level.
impl std::fmt::Debug for TopicTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicTree")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

fn same(a: &Subscriber, session: &Arc<Session>) -> bool {
    Arc::ptr_eq(&a.session, session)
}

impl TopicTree {
    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces `session`'s subscription to a valid `filter`, in the group
    /// `share` if it is a shared subscription. Returns true if it already existed.
    pub fn subscribe(&mut self, share: Option<&str>, filter: &str, sub: Subscriber) -> bool {
        let (node, hash) = self.node_mut(filter);
        let list = match (share, hash) {
            (None, false) => &mut node.exact,
            (None, true) => &mut node.wild_mut().hash,
            (Some(group), hash) => {
                let shared = node.wild_mut().shared_mut();
                let groups = if hash {
                    &mut shared.hash
                } else {
                    &mut shared.exact
                };
                let g = groups.entry(group.into()).or_default();
                g.key
                    .get_or_insert_with(|| Arc::from(format!("$share/{group}/{filter}")));
                &mut g.members
            }
        };
        if let Some(existing) = list.iter_mut().find(|s| same(s, &sub.session)) {
            *existing = sub;
            true
        } else {
            list.push(sub);
            self.count += 1;
            false
        }
    }

    /// Removes `session`'s subscription to `filter`. Returns true if it existed.
    ///
    /// Iterative, like every walk of the tree: a filter's depth is the
    /// client's to choose, the stack's is not.
    pub fn unsubscribe(
        &mut self,
        share: Option<&str>,
        filter: &str,
        session: &Arc<Session>,
    ) -> bool {
        let (levels, hash) = match filter.strip_suffix("#") {
            Some(rest) if rest.is_empty() || rest.ends_with('/') => {
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                let levels: Vec<&str> = if filter == "#" {
                    Vec::new()
                } else {
                    rest.split('/').collect()
                };
                (levels, true)
            }
            _ => (filter.split('/').collect(), false),
        };
        let Some(node) = self.find_mut(&levels) else {
            return false;
        };
        let removed = node.take(share, hash, session);
        node.shrink();
        if !removed {
            return false;
        }
        self.count -= 1;
        self.prune(&levels);
        true
    }

    /// The node at the end of a filter's `levels`, if it exists.
    fn find_mut(&mut self, levels: &[&str]) -> Option<&mut Node> {
        let mut node = &mut self.root;
        for level in levels {
            node = node.step_mut(level)?;
        }
        Some(node)
    }

    /// Cuts the branch of `levels` below the deepest node that still holds
    /// something else, after a removal at the end of that branch.
    fn prune(&mut self, levels: &[&str]) {
        // The depth of the last node that must stay: one with content beside
        // the path's next step (the root always stays).
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            let Some(next) = node.step(level) else {
                return;
            };
            if node.holds_more_than(level) {
                keep = depth;
            }
            node = next;
        }
        if levels.is_empty() || !node.is_empty() {
            return;
        }
        let Some(parent) = self.find_mut(&levels[..keep]) else {
            return;
        };
        // Dropping the cut branch is iterative too (`Node`'s `Drop`).
        parent.remove_step(levels[keep]);
        parent.shrink();
    }
    /// The node a filter ends at, and whether it ends with `#`.
    fn node_mut(&mut self, filter: &str) -> (&mut Node, bool) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return (node, true);
            }
            node = if level == "+" {
                node.wild_mut().plus.get_or_insert_with(Default::default)
            } else {
                node.children
                    .get_or_insert_with(Default::default)
                    .entry(level.into())
                    .or_default()
            };
        }
        (node, false)
    }

    /// The group of a shared subscription, if it has members.
    pub fn shared_group(&self, group: &str, filter: &str) -> Option<&SharedGroup> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return node.shared()?.hash.get(group);
            }
            node = if level == "+" {
                node.plus()?
            } else {
                node.child(level)?
            };
        }
        node.shared()?.exact.get(group)
    }

    /// Collects everything that matches `topic`.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Matches<'a>) {
        let levels: Vec<&str> = topic.split('/').collect();
        // [MQTT-4.7.2-1]: wildcards at the first level do not match `$` topics.
        let dollar = topic.starts_with('$');
        // Depth-first with an explicit stack: each entry is a node and the
        // number of levels it has consumed. Every node is visited at most once,
        // so the cost is bounded by the depth of the topic times the branches
        // that match, and the stack lives on the heap.
        let mut stack: Vec<(&'a Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            let skip_wild = dollar && depth == 0;
            if !skip_wild {
                out.subscribers.extend(node.hash().iter());
                if let Some(shared) = node.shared() {
                    out.groups.extend(shared.hash.values());
                }
            }
            match levels.get(depth) {
                None => {
                    out.subscribers.extend(node.exact.iter());
                    if let Some(shared) = node.shared() {
                        out.groups.extend(shared.exact.values());
                    }
                }
                Some(level) => {
                    if !skip_wild {
                        if let Some(child) = node.plus() {
                            stack.push((child, depth + 1));
                        }
                    }
                    if let Some(child) = node.child(level) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
    }
}

impl SharedGroup {
    /// Picks the member that gets the next message: round robin (or a fixed
    /// `seed`), preferring members with a connection attached.
    pub fn pick(&self, seed: Option<usize>) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = seed.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed)) % n;
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.state.lock().is_connected())
            .or(Some(&self.members[start]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::session::QueueLimits;

    fn session(id: &str) -> Arc<Session> {
        let limits = QueueLimits {
            max_messages: 10,
            max_bytes: 1000,
            max_memory_bytes: 1000,
            spilled: Default::default(),
            max_spilled: 0,
            high_water: 10,
            high_water_bytes: 1000,
            policy: OverflowPolicy::DropOldest,
            qos0_offline: false,
            spill: false,
            first_seq: 1,
        };
        Arc::new(Session::new(id.into(), 0, Arc::new(limits)))
    }

    fn sub(s: &Arc<Session>) -> Subscriber {
        Subscriber {
            session: s.clone(),
            options: SubscriptionOptions::default(),
            id: None,
        }
    }

    fn matched(tree: &TopicTree, topic: &str) -> Vec<String> {
        let mut m = Matches::default();
        tree.matches(topic, &mut m);
        let mut ids: Vec<String> = m
            .subscribers
            .iter()
            .map(|s| s.session.client_id.to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn table() {
        // (filter, topic, matches)
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "b", false),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("+/+", "a/b", true),
            ("+/+", "/b", true),
            ("+/+", "a", false),
            ("+", "", true),
            ("/+", "/a", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/+/#", "a/x", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("a/b/c", "a/b", false),
        ];
        for (filter, topic, expect) in cases {
            let mut tree = TopicTree::default();
            let s = session("c");
            tree.subscribe(None, filter, sub(&s));
            assert_eq!(
                !matched(&tree, topic).is_empty(),
                *expect,
                "{filter:?} vs {topic:?}"
            );
            assert!(tree.unsubscribe(None, filter, &s), "{filter}");
            assert!(tree.root.is_empty(), "{filter} leaves no nodes");
        }
    }

    #[test]
    fn overlapping_and_replace() {
        let mut tree = TopicTree::default();
        let a = session("a");
        let b = session("b");
        assert!(!tree.subscribe(None, "x/+", sub(&a)));
        assert!(!tree.subscribe(None, "x/#", sub(&a)));
        assert!(tree.subscribe(None, "x/#", sub(&a)));
        tree.subscribe(None, "x/y", sub(&b));
        assert_eq!(matched(&tree, "x/y"), ["a", "a", "b"]);
        assert_eq!(tree.len(), 3);
        assert!(tree.unsubscribe(None, "x/+", &a));
        assert!(!tree.unsubscribe(None, "x/+", &a));
        assert_eq!(matched(&tree, "x/y"), ["a", "b"]);
    }

    #[test]
    fn shared_groups_round_robin() {
        let mut tree = TopicTree::default();
        let a = session("a");
        let b = session("b");
        tree.subscribe(Some("g"), "s/+", sub(&a));
        tree.subscribe(Some("g"), "s/+", sub(&b));
        let mut picks = Vec::new();
        for _ in 0..4 {
            let mut m = Matches::default();
            tree.matches("s/1", &mut m);
            assert!(m.subscribers.is_empty());
            assert_eq!(m.groups.len(), 1);
            picks.push(
                m.groups[0]
                    .pick(None)
                    .unwrap()
                    .session
                    .client_id
                    .to_string(),
            );
        }
        assert_eq!(picks, ["a", "b", "a", "b"]);
        assert!(tree.unsubscribe(Some("g"), "s/+", &a));
        assert!(tree.unsubscribe(Some("g"), "s/+", &b));
        assert!(tree.root.is_empty());
    }

    #[test]
    fn a_node_is_small_and_unsubscribing_frees_every_part() {
        // A large tree is mostly leaves: a node must stay small.
        assert!(
            std::mem::size_of::<Node>() <= 40,
            "{}",
            std::mem::size_of::<Node>()
        );
        let mut tree = TopicTree::default();
        let a = session("a");
        let filters = ["x/y", "x/+/z", "x/#", "+/y", "#", "x/y/#"];
        for f in filters {
            tree.subscribe(None, f, sub(&a));
            tree.subscribe(Some("g"), f, sub(&a));
        }
        assert_eq!(tree.len(), 12);
        assert_eq!(matched(&tree, "x/y"), ["a", "a", "a", "a", "a"]);
        for f in filters {
            assert!(tree.unsubscribe(None, f, &a), "{f}");
            assert!(tree.unsubscribe(Some("g"), f, &a), "{f}");
        }
        assert!(tree.is_empty());
        assert!(tree.root.children.is_none() && tree.root.wild.is_none());
    }
}
