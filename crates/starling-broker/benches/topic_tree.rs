//! Topic-index lookup cost against the number of subscriptions: 10 versus
//! 1,000,000 (mixed exact and wildcard, spread over 10,000 sessions). A trie
//! lookup depends on the topic's depth and the branches that match, so the two
//! should cost about the same.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling_broker::config::OverflowPolicy;
use starling_broker::session::{QueueLimits, Session};
use starling_broker::topic_tree::{Matches, Subscriber, TopicTree};
use starling_codec::SubscriptionOptions;

fn sessions(n: usize) -> Vec<Arc<Session>> {
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
    (0..n)
        .map(|i| {
            Arc::new(Session::new(
                format!("c{i}").into(),
                0,
                Arc::new(limits.clone()),
            ))
        })
        .collect()
}

/// The i-th filter: three exact filters for every wildcard one.
fn filter(i: usize) -> String {
    match i % 4 {
        0 => format!("site/{}/dev/{}/temp", i % 1000, i),
        1 => format!("site/{}/dev/{}/hum", i % 1000, i),
        2 => format!("fleet/{}/truck/{}/gps", i % 500, i),
        _ => format!("site/{}/dev/+/alarm/#", i % 1000),
    }
}

fn tree(subscriptions: usize, sessions: &[Arc<Session>]) -> TopicTree {
    let mut tree = TopicTree::default();
    for i in 0..subscriptions {
        let session = sessions[i % sessions.len()].clone();
        tree.subscribe(
            None,
            &filter(i),
            Subscriber {
                session,
                options: SubscriptionOptions::default(),
                id: None,
            },
        );
    }
    // The subscriptions every lookup below hits, present in both trees.
    for f in [
        "site/7/dev/7/temp",
        "site/7/dev/+/alarm/#",
        "site/+/dev/7/temp",
    ] {
        tree.subscribe(
            None,
            f,
            Subscriber {
                session: sessions[0].clone(),
                options: SubscriptionOptions::default(),
                id: None,
            },
        );
    }
    tree
}

fn lookup(c: &mut Criterion) {
    let pool = sessions(10_000);
    let mut group = c.benchmark_group("topic_tree_lookup");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000_000] {
        let tree = tree(n, &pool);
        for topic in [
            "site/7/dev/7/temp",
            "site/7/dev/3/alarm/fire",
            "nobody/listens/here",
        ] {
            group.bench_with_input(
                BenchmarkId::new(format!("{n}_subs"), topic),
                &topic,
                |b, topic| {
                    b.iter(|| {
                        let mut m = Matches::default();
                        tree.matches(topic, &mut m);
                        std::hint::black_box(m.subscribers.len())
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
