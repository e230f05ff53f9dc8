//! What this node's NATS subscriptions brought, taken together and put
//! back in the order each node sent it.
//!
//! The NATS client hands each subscription's messages to its own channel,
//! in the order they came off the connection, and the routing task takes
//! from whichever channel is ready: a node's message 1956 on `b.y` can be
//! taken before its 1955 on `a.x`. A session leaving this node's index
//! records the highest number routed to it per node (its *cut*), and this
//! node's receipt the highest stored; the node that takes over replays
//! only what is higher. So the routing task takes everything the channels
//! hold at once: a message that came off the connection before another is
//! in its channel by the time that other one is taken, so the batch holds
//! it (or an earlier batch did). Within the batch each node's messages
//! are put back in number order (a node sends them in that order, see
//! `inorder`), in the places its messages occupy, so the interleaving of
//! different nodes' messages is kept.

use std::collections::HashMap;

use futures_util::{FutureExt, Stream, StreamExt};

use crate::envelope;

/// Messages taken in one batch, at most: past it, what is left waits for
/// the next (and may come after later numbers of its node).
const MAX_BATCH: usize = 65_536;

/// `first` and what the subscriptions hold now, each node's messages in
/// number order.
pub fn batch<S>(first: (u64, async_nats::Message), subs: &mut S) -> Vec<(u64, async_nats::Message)>
where
    S: Stream<Item = (u64, async_nats::Message)> + Unpin,
{
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match subs.next().now_or_never() {
            Some(Some(m)) => batch.push(m),
            _ => break,
        }
    }
    if batch.len() > 1 {
        per_run_order(&mut batch, |(_, m)| {
            envelope::header(&m.payload).map(|(s, _)| (s.origin, s.seq))
        });
    }
    batch
}

/// Sorts, for each run, the items that `stamp` says are of it by their
/// number, each run's items staying in the places its items occupy.
fn per_run_order<T>(items: &mut Vec<T>, stamp: impl Fn(&T) -> Option<(u64, u64)>) {
    let mut places: HashMap<u64, Vec<(usize, u64)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some((origin, seq)) = stamp(item) {
            places.entry(origin).or_default().push((i, seq));
        }
    }
    let out_of_order = |p: &Vec<(usize, u64)>| p.windows(2).any(|w| w[0].1 > w[1].1);
    if !places.values().any(out_of_order) {
        return;
    }
    let mut slots: Vec<Option<T>> = items.drain(..).map(Some).collect();
    for p in places.values().filter(|p| out_of_order(p)) {
        let mut by_seq = p.clone();
        by_seq.sort_by_key(|&(_, seq)| seq);
        let moved: Vec<Option<T>> = by_seq.iter().map(|&(i, _)| slots[i].take()).collect();
        for (&(place, _), item) in p.iter().zip(moved) {
            slots[place] = item;
        }
    }
    items.extend(slots.into_iter().flatten());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(v: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut items = v.to_vec();
        per_run_order(&mut items, |&(o, s)| (o != 0).then_some((o, s)));
        items
    }

    #[test]
    fn each_runs_messages_go_back_to_number_order_in_their_places() {
        // Run 1 out of order, run 2 in order, 0: not an envelope (kept).
        let got = order(&[(1, 6), (2, 1), (0, 9), (1, 5), (2, 2), (1, 7)]);
        assert_eq!(got, vec![(1, 5), (2, 1), (0, 9), (1, 6), (2, 2), (1, 7)]);
    }

    #[test]
    fn copies_of_one_message_and_ordered_batches_stay_as_they_are() {
        let items = [(1, 1), (1, 1), (2, 4), (1, 2)];
        assert_eq!(order(&items), items.to_vec());
        assert_eq!(
            order(&[(1, 2), (1, 1), (1, 1)]),
            vec![(1, 1), (1, 1), (1, 2)]
        );
    }

    #[tokio::test]
    async fn a_batch_takes_what_every_subscription_holds_in_each_runs_order() {
        let msg = |topic: &str, origin: u64, seq: u64| {
            let payload = envelope::sample(topic, envelope::Stamp { origin, seq });
            async_nats::Message {
                subject: topic.into(),
                reply: None,
                length: payload.len(),
                payload,
                headers: None,
                status: None,
                description: None,
            }
        };
        // Subscription 2 is taken first: run 9's 1956 before its 1955.
        let a = futures_util::stream::iter(vec![(1, msg("a", 9, 1955)), (1, msg("a", 4, 3))]);
        let b = futures_util::stream::iter(vec![(2, msg("b", 9, 1956))]);
        let mut subs = futures_util::stream::select_all(vec![b.boxed(), a.boxed()]);
        let first = subs.next().await.expect("a first message");
        let got: Vec<(u64, u64)> = batch(first, &mut subs)
            .iter()
            .filter_map(|(_, m)| envelope::header(&m.payload).map(|(s, _)| (s.origin, s.seq)))
            .collect();
        assert_eq!(got.len(), 3);
        let run_9: Vec<u64> = got.iter().filter(|s| s.0 == 9).map(|s| s.1).collect();
        assert_eq!(run_9, vec![1955, 1956]);
    }
}
