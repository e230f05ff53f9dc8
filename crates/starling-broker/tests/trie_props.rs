//! Property tests of the two tries against the codec's reference matcher
//! (`starling_codec::topic::matches`), and inputs tens of thousands of levels
//! deep walked, removed and dropped on a small stack.
//!
//! - `subscription_trie_matches_the_reference`: random subscriptions (plain
//!   and shared) and topics; `TopicTree::matches` returns exactly the
//!   subscribers and groups the reference accepts, before and after every
//!   single unsubscribe, and an emptied tree is reusable.
//! - `retained_trie_matches_the_reference`: random retained sets and deletes
//!   (empty payloads), some with an expiry; `RetainedTree::matching` returns
//!   exactly the unexpired messages the reference accepts, `sweep` removes
//!   exactly the expired ones, deleting everything leaves nothing.
//! - `deep_*` and `unsubscribing_beside_a_deep_plus_chain_*`: filters and
//!   topics of 10,000 to 70,000 levels subscribed, matched, unsubscribed (one
//!   at a time and side by side), retained, matched, swept, deleted, and
//!   dropped, on a thread with a 256 KiB stack.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use starling_broker::config::OverflowPolicy;
use starling_broker::message::Message;
use starling_broker::retained::{RetainedTree, StepLimits};
use starling_broker::session::{QueueLimits, Session};
use starling_broker::topic_tree::{Matches, Subscriber, TopicTree};
use starling_codec::topic::{matches as reference, parse_shared, validate_filter};
use starling_codec::{Properties, QoS, SubscriptionOptions};
use tokio::time::Instant;

/// Sessions the subscriptions are spread over.
const SESSIONS: usize = 5;
/// Share names.
const GROUPS: [&str; 2] = ["g", "h"];

fn sessions() -> Vec<Arc<Session>> {
    let limits = Arc::new(QueueLimits {
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
    });
    (0..SESSIONS)
        .map(|i| Arc::new(Session::new(format!("s{i}").into(), 0, limits.clone())))
        .collect()
}

fn sub(s: &Arc<Session>) -> Subscriber {
    Subscriber {
        session: s.clone(),
        options: SubscriptionOptions::default(),
        id: None,
    }
}

/// A valid filter: up to 11 levels from a small alphabet (`+` included) and
/// an optional trailing `#`.
fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(select(vec!["a", "b", "", "$SYS", "+"]), 0..12),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            // An empty filter is invalid (a single empty level): make it `#`.
            if hash || f.is_empty() {
                if !levels.is_empty() {
                    f.push('/');
                }
                f.push('#');
            }
            f
        })
}

/// A topic name: 1 to 11 levels from the same alphabet, without wildcards.
fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(select(vec!["a", "b", "", "$SYS"]), 1..12).prop_map(|l| l.join("/"))
}

/// A subscription: session, share name (one in five shared), filter.
type Sub = (usize, Option<&'static str>, String);

fn subscription() -> impl Strategy<Value = Sub> {
    (
        0..SESSIONS,
        prop_oneof![4 => Just(None), 1 => select(GROUPS.to_vec()).prop_map(Some)],
        filter(),
    )
}

/// Subscriptions (duplicates likely), topics, and an order to unsubscribe
/// the subscriptions in.
fn sub_case() -> impl Strategy<Value = (Vec<Sub>, Vec<String>, Vec<usize>)> {
    prop::collection::vec(subscription(), 1..40).prop_flat_map(|subs| {
        let order: Vec<usize> = (0..subs.len()).collect();
        (
            Just(subs),
            prop::collection::vec(topic(), 1..20),
            Just(order).prop_shuffle(),
        )
    })
}

/// What `matches` returned: plain subscribers' session ids (a multiset, sorted)
/// and every group by key with its members' ids.
type Found = (Vec<String>, Vec<(String, BTreeSet<String>)>);

fn found(tree: &TopicTree, topic: &str) -> Found {
    let mut m = Matches::default();
    tree.matches(topic, &mut m);
    let mut plain: Vec<String> = m
        .subscribers
        .iter()
        .map(|s| s.session.client_id.to_string())
        .collect();
    plain.sort();
    let mut groups: Vec<(String, BTreeSet<String>)> = m
        .groups
        .iter()
        .map(|g| {
            let key = g.key.as_deref().expect("a group has its key").to_string();
            let members = g
                .members
                .iter()
                .map(|s| s.session.client_id.to_string())
                .collect();
            (key, members)
        })
        .collect();
    groups.sort();
    (plain, groups)
}

/// The same, from the reference matcher over the subscriptions in `model`.
fn expected(model: &BTreeSet<Sub>, topic: &str) -> Found {
    let mut plain = Vec::new();
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (s, share, filter) in model {
        if !reference(filter, topic) {
            continue;
        }
        match share {
            None => plain.push(format!("s{s}")),
            Some(g) => {
                groups
                    .entry(format!("$share/{g}/{filter}"))
                    .or_default()
                    .insert(format!("s{s}"));
            }
        }
    }
    plain.sort();
    (plain, groups.into_iter().collect())
}

fn check_all(tree: &TopicTree, model: &BTreeSet<Sub>, topics: &[String]) {
    assert_eq!(tree.len(), model.len());
    assert_eq!(tree.is_empty(), model.is_empty());
    for t in topics {
        assert_eq!(found(tree, t), expected(model, t), "topic {t:?}");
    }
    // Every group is found by its filter, with exactly its members.
    let mut groups: BTreeMap<(&str, &str), BTreeSet<String>> = BTreeMap::new();
    for (s, share, filter) in model {
        if let Some(g) = share {
            groups
                .entry((g, filter))
                .or_default()
                .insert(format!("s{s}"));
        }
    }
    for ((g, filter), members) in groups {
        let group = tree.shared_group(g, filter).expect("group exists");
        let got: BTreeSet<String> = group
            .members
            .iter()
            .map(|s| s.session.client_id.to_string())
            .collect();
        assert_eq!(got, members, "$share/{g}/{filter}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn subscription_trie_matches_the_reference((subs, topics, order) in sub_case()) {
        let sessions = sessions();
        let mut tree = TopicTree::default();
        let mut model: BTreeSet<Sub> = BTreeSet::new();
        // The topics probed: the random ones, and each filter with its
        // wildcards filled in, so that most filters match something.
        let mut probes = topics.clone();
        for (_, _, f) in &subs {
            assert!(validate_filter(f).is_ok(), "{f}");
            let t = f.strip_suffix('#').map_or(f.as_str(), |r| r.strip_suffix('/').unwrap_or(r));
            if !t.is_empty() || f == "#" {
                probes.push(t.replace('+', "x"));
            }
        }
        for entry in &subs {
            let (s, share, f) = entry;
            let existed = tree.subscribe(*share, f, sub(&sessions[*s]));
            prop_assert_eq!(existed, !model.insert(entry.clone()), "subscribe {:?}", entry);
            prop_assert_eq!(tree.len(), model.len());
        }
        check_all(&tree, &model, &probes);
        // A filter nobody subscribed to removes nothing.
        prop_assert!(!tree.unsubscribe(None, "never/subscribed", &sessions[0]));
        prop_assert!(!tree.unsubscribe(Some("g"), "never/+/#", &sessions[0]));
        for i in order {
            let entry = &subs[i];
            let (s, share, f) = entry;
            let removed = tree.unsubscribe(*share, f, &sessions[*s]);
            prop_assert_eq!(removed, model.remove(entry), "unsubscribe {:?}", entry);
            check_all(&tree, &model, &probes);
        }
        prop_assert_eq!(tree.len(), 0);
        prop_assert!(tree.is_empty());
        for t in &probes {
            let (plain, groups) = found(&tree, t);
            prop_assert!(plain.is_empty() && groups.is_empty(), "{} still matches", t);
        }
        // The emptied tree works like a new one.
        for entry in &subs {
            let (s, share, f) = entry;
            tree.subscribe(*share, f, sub(&sessions[*s]));
            model.insert(entry.clone());
        }
        check_all(&tree, &model, &probes);
    }
}

/// A retained message; `expires_at` as given.
fn message(topic: &str, payload: &[u8], expires_at: Option<Instant>) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties::default(),
        expires_at,
        publisher: None,
    })
}

/// A retained set: topic, payload (empty deletes), whether it expires soon.
type Set = (String, Vec<u8>, bool);

/// Sets, filters, topics to delete in passing, and an order to delete every
/// set's topic in at the end.
type RetainedCase = (Vec<Set>, Vec<String>, Vec<String>, Vec<usize>);

fn retained_case() -> impl Strategy<Value = RetainedCase> {
    let set = (
        topic(),
        prop_oneof![1 => Just(Vec::new()), 3 => prop::collection::vec(any::<u8>(), 1..4)],
        prop::bool::weighted(0.2),
    );
    prop::collection::vec(set, 1..40).prop_flat_map(|sets| {
        let order: Vec<usize> = (0..sets.len()).collect();
        (
            Just(sets),
            prop::collection::vec(filter(), 1..20),
            prop::collection::vec(topic(), 0..10),
            Just(order).prop_shuffle(),
        )
    })
}

/// Topics and payloads `matching` returned, sorted.
fn retained(tree: &RetainedTree, filter: &str, now: Instant) -> Vec<(String, Vec<u8>)> {
    let mut got: Vec<(String, Vec<u8>)> = tree
        .matching(filter, now)
        .iter()
        .map(|m| (m.topic.to_string(), m.payload.to_vec()))
        .collect();
    got.sort();
    got
}

/// Topics and payloads a walk resumed after every step of two messages or
/// `budget` nodes returned, checked to come in topic order, then sorted.
fn walked(
    tree: &RetainedTree,
    filter: &str,
    now: Instant,
    budget: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut got: Vec<(String, Vec<u8>)> = Vec::new();
    let mut after: Option<starling_codec::ByteString> = None;
    let mut done = false;
    for _ in 0..10_000 {
        let limits = StepLimits {
            messages: 2,
            bytes: usize::MAX,
            nodes: budget,
        };
        let step = tree.walk(filter, after.as_deref(), now, limits);
        got.extend(
            step.messages
                .iter()
                .map(|m| (m.topic.to_string(), m.payload.to_vec())),
        );
        match step.next {
            Some(next) => after = Some(next),
            None => {
                done = true;
                break;
            }
        }
    }
    assert!(done, "the walk of {filter:?} did not end at {after:?}");
    assert!(
        got.windows(2)
            .all(|w| w[0].0.split('/').lt(w[1].0.split('/'))),
        "topic order: {got:?}"
    );
    got.sort();
    got
}

/// What the reference says `filter` matches in `model`; the messages that
/// expire soon only with `include_expiring`.
fn retained_expected(
    model: &BTreeMap<String, (Vec<u8>, bool)>,
    filter: &str,
    include_expiring: bool,
) -> Vec<(String, Vec<u8>)> {
    model
        .iter()
        .filter(|(t, (_, expiring))| reference(filter, t) && (include_expiring || !expiring))
        .map(|(t, (p, _))| (t.clone(), p.clone()))
        .collect()
}

fn check_retained(
    tree: &RetainedTree,
    model: &BTreeMap<String, (Vec<u8>, bool)>,
    filters: &[String],
    now: Instant,
    later: Instant,
) {
    assert_eq!(tree.len(), model.len());
    assert_eq!(tree.is_empty(), model.is_empty());
    for f in filters {
        assert_eq!(
            retained(tree, f, now),
            retained_expected(model, f, true),
            "{f:?}"
        );
        // Deep trees in steps of a few nodes would take a descent per step.
        let deep = model.keys().any(|t| t.len() > 1000);
        let budget = if deep { 8192 } else { 3 };
        assert_eq!(
            walked(tree, f, now, budget),
            retained(tree, f, now),
            "{f:?} walked"
        );
        assert_eq!(
            retained(tree, f, later),
            retained_expected(model, f, false),
            "{f:?} after the expiry"
        );
    }
    let mut all: Vec<String> = tree.all().iter().map(|m| m.topic.to_string()).collect();
    all.sort();
    assert_eq!(all, model.keys().cloned().collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn retained_trie_matches_the_reference((sets, filters, deletes, order) in retained_case()) {
        let now = Instant::now();
        let soon = now + Duration::from_secs(5);
        let later = now + Duration::from_secs(10);
        let mut tree = RetainedTree::default();
        // Topic -> (payload, expires at `soon`).
        let mut model: BTreeMap<String, (Vec<u8>, bool)> = BTreeMap::new();
        // Probe with the filters, every topic as a filter, and `#`.
        let mut probes = filters.clone();
        probes.extend(sets.iter().map(|(t, _, _)| t.clone()));
        probes.push("#".into());
        for (t, payload, expiring) in &sets {
            tree.set(message(t, payload, expiring.then_some(soon)));
            if payload.is_empty() {
                model.remove(t);
            } else {
                model.insert(t.clone(), (payload.clone(), *expiring));
            }
            prop_assert_eq!(tree.len(), model.len());
        }
        check_retained(&tree, &model, &probes, now, later);
        // Deleting topics that may or may not hold a message.
        for t in &deletes {
            tree.set(message(t, b"", None));
            model.remove(t);
            prop_assert_eq!(tree.len(), model.len());
        }
        check_retained(&tree, &model, &probes, now, later);
        // The sweep takes exactly the expired ones.
        let mut swept: Vec<String> = tree.sweep(later).iter().map(|t| t.to_string()).collect();
        swept.sort();
        let expired: Vec<String> =
            model.iter().filter(|(_, (_, e))| *e).map(|(t, _)| t.clone()).collect();
        prop_assert_eq!(swept, expired);
        model.retain(|_, (_, e)| !*e);
        check_retained(&tree, &model, &probes, now, later);
        // Delete every topic in a random order.
        for i in order {
            let t = &sets[i].0;
            tree.set(message(t, b"", None));
            model.remove(t);
            prop_assert_eq!(tree.len(), model.len());
            for f in &probes {
                prop_assert_eq!(retained(&tree, f, now), retained_expected(&model, f, true));
            }
        }
        prop_assert_eq!(tree.len(), 0);
        prop_assert!(tree.is_empty());
        prop_assert!(tree.all().is_empty());
    }
}

/// Runs `f` on a thread with a 256 KiB stack: a walk that recursed once per
/// level would overflow it thousands of levels before the inputs' depth.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no stack overflow, no panic");
}

const DEPTHS: [usize; 2] = [10_000, 70_000];

/// Deep filters: "+/"*n + "#", "/"*n, "a/"*n + "a", "+/"*n + "+", "a/"*(n/2) + "#".
fn deep_filters(n: usize) -> Vec<String> {
    vec![
        "+/".repeat(n) + "#",
        "/".repeat(n),
        "a/".repeat(n) + "a",
        "+/".repeat(n) + "+",
        "a/".repeat(n / 2) + "#",
        "a/+/".repeat(n / 2) + "a",
    ]
}

/// Deep topics: "/"*n, "a/"*n + "a", "a/"*(n/2) + "a", and the same one level deeper.
fn deep_topics(n: usize) -> Vec<String> {
    vec![
        "/".repeat(n),
        "a/".repeat(n) + "a",
        "a/".repeat(n / 2) + "a",
        "/".repeat(n + 1),
        "a/".repeat(n + 1) + "a",
        "$SYS/".to_string() + &"a/".repeat(n),
    ]
}

/// Subscribes every filter of `filters` (two sessions each, one of them in a
/// shared group for every other filter) beside a shallow "a/a", checks
/// `matches` against the reference for deep `topics`, unsubscribes the deep
/// ones one by one (checking after each), then drops a tree that still holds
/// them all.
fn deep_subscriptions(filters: &[String], topics: &[String]) {
    let sessions = sessions();
    let mut tree = TopicTree::default();
    let mut model = BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        assert!(validate_filter(f).is_ok());
        let share = (i % 2 == 1).then_some("g");
        assert!(!tree.subscribe(share, f, sub(&sessions[i % SESSIONS])));
        model.insert((i % SESSIONS, share, f.clone()));
        tree.subscribe(None, f, sub(&sessions[(i + 1) % SESSIONS]));
        model.insert(((i + 1) % SESSIONS, None, f.clone()));
    }
    // A shallow filter beside the deep branches, which must survive their removal.
    tree.subscribe(None, "a/a", sub(&sessions[0]));
    model.insert((0, None, "a/a".to_string()));
    check_all(&tree, &model, topics);
    for (i, f) in filters.iter().enumerate() {
        let share = (i % 2 == 1).then_some("g");
        assert!(tree.unsubscribe(share, f, &sessions[i % SESSIONS]));
        assert!(!tree.unsubscribe(share, f, &sessions[i % SESSIONS]));
        model.remove(&(i % SESSIONS, share, f.clone()));
        assert!(tree.unsubscribe(None, f, &sessions[(i + 1) % SESSIONS]));
        model.remove(&((i + 1) % SESSIONS, None, f.clone()));
        check_all(&tree, &model, topics);
    }
    assert_eq!(tree.len(), 1);
    assert_eq!(found(&tree, "a/a").0, ["s0"]);
    assert!(tree.unsubscribe(None, "a/a", &sessions[0]));
    assert!(tree.is_empty());
    for t in topics {
        assert_eq!(found(&tree, t), (Vec::new(), Vec::new()));
    }
    // Drop a tree that still holds every deep branch.
    let mut full = TopicTree::default();
    for (i, f) in filters.iter().enumerate() {
        full.subscribe(None, f, sub(&sessions[i % SESSIONS]));
        full.subscribe(Some("g"), f, sub(&sessions[i % SESSIONS]));
    }
    assert_eq!(full.len(), 2 * filters.len());
    drop(full);
}

#[test]
fn deep_subscriptions_one_filter_at_a_time_on_a_small_stack() {
    on_small_stack(|| {
        for n in DEPTHS {
            let topics = deep_topics(n);
            for f in deep_filters(n) {
                let mut tree = TopicTree::default();
                let sessions = sessions();
                let mut model = BTreeSet::new();
                tree.subscribe(None, &f, sub(&sessions[0]));
                tree.subscribe(None, &f, sub(&sessions[1]));
                tree.subscribe(Some("g"), &f, sub(&sessions[2]));
                model.insert((0, None, f.clone()));
                model.insert((1, None, f.clone()));
                model.insert((2, Some("g"), f.clone()));
                check_all(&tree, &model, &topics);
                for (s, share, _) in model.clone() {
                    assert!(tree.unsubscribe(share, &f, &sessions[s]));
                    assert!(!tree.unsubscribe(share, &f, &sessions[s]));
                    model.remove(&(s, share, f.clone()));
                    check_all(&tree, &model, &topics);
                }
                assert!(tree.is_empty());
                // And dropped while it holds the branch.
                tree.subscribe(None, &f, sub(&sessions[0]));
                drop(tree);
            }
        }
    });
}

/// Every deep filter in one tree, beside each other and a shallow one.
/// (Before 9768c80, `Node::is_empty` recursed through `Wild::is_empty` once
/// per node of a chain of `+` children, via `holds_more_than`, `prune` and
/// `shrink`: this overflowed in a debug build.)
#[test]
fn deep_subscriptions_side_by_side_on_a_small_stack() {
    on_small_stack(|| {
        for n in DEPTHS {
            deep_subscriptions(&deep_filters(n), &deep_topics(n));
        }
    });
}

/// The smallest case of that overflow: a deep `+` chain, and the removal of
/// an unrelated subscription. `prune` asks the root whether it holds more
/// than the "x" branch, which asked whether the `+` child was empty, which
/// recursed down the whole chain.
#[test]
fn unsubscribing_beside_a_deep_plus_chain_on_a_small_stack() {
    on_small_stack(|| {
        let sessions = sessions();
        let mut tree = TopicTree::default();
        let deep = "+/".repeat(10_000) + "#";
        tree.subscribe(None, &deep, sub(&sessions[0]));
        tree.subscribe(None, "x", sub(&sessions[0]));
        assert!(tree.unsubscribe(None, "x", &sessions[0]));
        assert!(tree.unsubscribe(None, &deep, &sessions[0]));
        assert!(tree.is_empty());
    });
}

#[test]
fn deep_shared_filter_parses_and_matches() {
    // A `$share/` prefix on a deep filter: parse_shared splits it without
    // walking per level on the stack either.
    on_small_stack(|| {
        let sessions = sessions();
        let deep = "$share/g/".to_string() + &"+/".repeat(70_000) + "#";
        let shared = parse_shared(&deep).expect("valid").expect("shared");
        let mut tree = TopicTree::default();
        tree.subscribe(Some(shared.group), shared.filter, sub(&sessions[0]));
        let topic = "x/".repeat(70_001);
        let (plain, groups) = found(&tree, &topic);
        assert!(plain.is_empty());
        assert_eq!(groups.len(), 1);
        assert!(tree
            .shared_group(shared.group, shared.filter)
            .is_some_and(|g| g.members.len() == 1));
        assert!(tree.unsubscribe(Some(shared.group), shared.filter, &sessions[0]));
        assert!(tree.is_empty());
    });
}

#[test]
fn deep_retained_messages_match_delete_sweep_and_drop_on_a_small_stack() {
    on_small_stack(|| {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        for n in DEPTHS {
            let topics = deep_topics(n);
            let mut filters = deep_filters(n);
            filters.extend(topics.iter().cloned());
            filters.extend(["#".to_string(), "+/#".into(), "$SYS/#".into(), "a/#".into()]);
            let mut tree = RetainedTree::default();
            let mut model = BTreeMap::new();
            for (i, t) in topics.iter().enumerate() {
                // Every other one expires at `now + 5s`.
                let expiring = i % 2 == 1;
                let at = expiring.then_some(now + Duration::from_secs(5));
                tree.set(message(t, b"p", at));
                model.insert(t.clone(), (b"p".to_vec(), expiring));
                // Replacing keeps one message per topic.
                tree.set(message(t, &[i as u8 + 1], at));
                model.insert(t.clone(), (vec![i as u8 + 1], expiring));
            }
            check_retained(&tree, &model, &filters, now, later);
            // Sweep the expiring ones, then delete the rest.
            let swept = tree.sweep(later);
            assert_eq!(swept.len(), model.values().filter(|(_, e)| *e).count());
            model.retain(|_, (_, e)| !*e);
            check_retained(&tree, &model, &filters, now, later);
            for t in &topics {
                tree.set(message(t, b"", None));
                model.remove(t);
                assert_eq!(tree.len(), model.len());
            }
            assert!(tree.is_empty());
            assert!(tree.matching("#", now).is_empty());
            assert!(tree.all().is_empty());
            // Drop a tree that still holds every deep topic.
            let mut full = RetainedTree::default();
            for t in &topics {
                full.set(message(t, b"p", None));
            }
            assert_eq!(full.len(), topics.len());
            drop(full);
        }
    });
}
