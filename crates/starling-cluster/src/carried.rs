//! The cut each session came to this node with, kept until it leaves:
//! its next handover's cut claims no less of any run than that one did.
//!
//! A cut says what a session had of each run's messages when it left a
//! node's subscription index, as that node's routing task had seen them.
//! A node that lags behind (its NATS server just back from a cut) has seen
//! less of some run than the node the session came from, while the session
//! holds what that node gave it. Cut by the lagging node alone, the
//! session's next node would replay it messages it had already had, and
//! those it had delivered and forgotten would go out again (seen: a
//! session went from node 1 to a node just back from a cut and back
//! within half a second, and node 1 replayed its own messages to it from
//! the other node's stale mark: a QoS 2 message delivered twice).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::receipt::Receipt;

/// How long a cut is kept (a session that stays longer has been cut by
/// this node's own routing past it, or its runs have left the receipts).
const KEPT: Duration = crate::receipt::FORGET_ORIGIN;

/// Every this many arrivals, the cuts kept too long are dropped.
const PRUNE_EVERY: usize = 256;

/// The cuts sessions came here with.
#[derive(Default)]
pub struct Carried {
    by_client: HashMap<String, (HashMap<u64, u64>, Instant)>,
    arrivals: usize,
}

impl Carried {
    /// `client_id`'s session was installed here from another node's
    /// handover with `cut` (`None`: no cut, nothing is kept).
    pub fn arrived(&mut self, client_id: &str, cut: Option<&Receipt>) {
        let Some(cut) = cut else {
            self.by_client.remove(client_id);
            return;
        };
        self.arrivals += 1;
        if self.arrivals.is_multiple_of(PRUNE_EVERY) {
            self.by_client.retain(|_, (_, at)| at.elapsed() < KEPT);
        }
        let entry = (cut.high.clone(), Instant::now());
        self.by_client.insert(client_id.to_string(), entry);
    }

    /// `client_id`'s session was installed here otherwise (rebuilt from
    /// its replica): what an earlier one came with is not this one's.
    pub fn forget(&mut self, client_id: &str) {
        self.by_client.remove(client_id);
    }

    /// `client_id`'s session leaves with `high`, this node's cut: raised
    /// to what the session came with, per run, and the kept cut dropped.
    pub fn raise(&mut self, client_id: &str, high: &mut HashMap<u64, u64>) {
        let Some((came_with, at)) = self.by_client.remove(client_id) else {
            return;
        };
        if at.elapsed() >= KEPT {
            return;
        }
        for (origin, seq) in came_with {
            let mine = high.entry(origin).or_default();
            if seq > *mine {
                tracing::debug!(%client_id, origin, seq, mine = *mine, "a handover's cut raised to what the session came with");
                *mine = seq;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_is_raised_to_what_its_session_came_with_once() {
        let mut carried = Carried::default();
        let came = Receipt {
            at_ms: 1,
            own: 9,
            high: [(1, 100), (2, 50)].into_iter().collect(),
        };
        carried.arrived("c", Some(&came));
        let mut high: HashMap<u64, u64> = [(1, 80), (2, 70), (3, 5)].into_iter().collect();
        carried.raise("c", &mut high);
        let want: HashMap<u64, u64> = [(1, 100), (2, 70), (3, 5)].into_iter().collect();
        assert_eq!(high, want, "each run's mark is the higher of the two");
        let mut again: HashMap<u64, u64> = [(1, 80)].into_iter().collect();
        carried.raise("c", &mut again);
        assert_eq!(again[&1], 80, "used once: the session left");

        carried.arrived("d", Some(&came));
        carried.forget("d");
        let mut high: HashMap<u64, u64> = [(1, 80)].into_iter().collect();
        carried.raise("d", &mut high);
        assert_eq!(high[&1], 80, "forgotten: not raised");

        carried.arrived("e", Some(&came));
        carried.arrived("e", None);
        let mut high: HashMap<u64, u64> = HashMap::new();
        carried.raise("e", &mut high);
        assert!(
            high.is_empty(),
            "a handover without a cut forgets the earlier one"
        );
    }
}
