//! Broker events: what happened to clients, sessions and messages, for
//! observers (metrics, webhooks, the admin API) that must not slow the
//! publish path down.
//!
//! [`Events::subscribe`] returns a receiver with a bounded buffer. Emitting
//! costs one atomic load while nobody observes (the event is not even built);
//! with observers, one bounded broadcast send. An observer that falls behind
//! loses the oldest events (it is told how many), never slows the broker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use starling_codec::{ByteString, ProtocolVersion, QoS};
use tokio::sync::broadcast;

use crate::message::Message;

/// How many events an observer may fall behind before it loses some.
pub const OBSERVER_BUFFER: usize = 4096;

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's queue was full.
    QueueFull,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
    /// Expired before it could be delivered.
    Expired,
}

/// One thing that happened in the broker.
#[derive(Debug, Clone)]
pub enum Event {
    /// A client completed CONNECT (CONNACK 0x00 sent).
    ClientConnected {
        /// Its client id.
        client_id: ByteString,
        /// Its user name, if any.
        username: Option<ByteString>,
        /// Where it connects from.
        peer: SocketAddr,
        /// Its protocol version.
        protocol: ProtocolVersion,
        /// Whether a stored session was resumed.
        session_present: bool,
    },
    /// A CONNECT was refused for its credentials (0x86, 0x87) or by the
    /// failed-login limiter (0x9F).
    AuthFailed {
        /// The client id it gave.
        client_id: ByteString,
        /// The user name it gave, if any (never the password).
        username: Option<ByteString>,
        /// Where it connected from.
        peer: SocketAddr,
        /// The CONNACK reason it got.
        reason: starling_codec::ReasonCode,
    },
    /// A client's connection ended.
    ClientDisconnected {
        /// Its client id.
        client_id: ByteString,
        /// Why, in words (the close reason).
        reason: String,
    },
    /// A new session was created for a client id.
    SessionCreated {
        /// The client id.
        client_id: ByteString,
    },
    /// A session ended: expired, ended with its connection, or discarded by a
    /// clean start.
    SessionEnded {
        /// The client id.
        client_id: ByteString,
    },
    /// A message was accepted for routing (from a client or a will).
    MessagePublished {
        /// The message (its payload is shared, not copied).
        message: Arc<Message>,
        /// How many sessions it was offered to.
        receivers: usize,
    },
    /// A message was written to a subscriber's connection.
    MessageDelivered {
        /// The subscriber's client id.
        client_id: ByteString,
        /// The topic.
        topic: ByteString,
        /// The QoS it was delivered at.
        qos: QoS,
    },
    /// A subscriber acknowledged a QoS 1 (PUBACK) or QoS 2 (PUBCOMP) delivery.
    MessageAcked {
        /// The subscriber's client id.
        client_id: ByteString,
        /// The topic.
        topic: ByteString,
        /// The QoS it was delivered at.
        qos: QoS,
    },
    /// A message was not delivered to a subscriber.
    MessageDropped {
        /// The subscriber's client id.
        client_id: ByteString,
        /// The topic.
        topic: ByteString,
        /// Why.
        reason: DropReason,
    },
}

/// The kinds of [`Event`], for observers that want only some: a kind
/// nobody wants is never built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum EventKind {
    ClientConnected,
    AuthFailed,
    ClientDisconnected,
    SessionCreated,
    SessionEnded,
    MessagePublished,
    MessageDelivered,
    MessageAcked,
    MessageDropped,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::ClientConnected,
        EventKind::AuthFailed,
        EventKind::ClientDisconnected,
        EventKind::SessionCreated,
        EventKind::SessionEnded,
        EventKind::MessagePublished,
        EventKind::MessageDelivered,
        EventKind::MessageAcked,
        EventKind::MessageDropped,
    ];
}

/// How many observers want each kind.
type Interest = Arc<[AtomicUsize; 9]>;

/// Where events are emitted and observed.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    interest: Interest,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(OBSERVER_BUFFER);
        Events {
            tx,
            interest: Arc::new(Default::default()),
        }
    }
}

/// An observer's end: events from the moment it subscribed.
#[derive(Debug)]
pub struct Observer {
    rx: broadcast::Receiver<Event>,
    interest: Interest,
    kinds: Vec<EventKind>,
}

impl Observer {
    /// The next event; `Err(Lagged(n))` when `n` were lost because this
    /// observer fell behind (it can go on receiving).
    pub async fn recv(&mut self) -> Result<Event, broadcast::error::RecvError> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<Event, broadcast::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for k in &self.kinds {
            self.interest[*k as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Events {
    /// Starts observing every kind of event.
    pub fn subscribe(&self) -> Observer {
        self.subscribe_to(&EventKind::ALL)
    }

    /// Starts observing the events of `kinds` (others may arrive too, when
    /// another observer wants them).
    pub fn subscribe_to(&self, kinds: &[EventKind]) -> Observer {
        for k in kinds {
            self.interest[*k as usize].fetch_add(1, Ordering::Relaxed);
        }
        Observer {
            rx: self.tx.subscribe(),
            interest: self.interest.clone(),
            kinds: kinds.to_vec(),
        }
    }

    /// Whether anybody observes (so that events are worth building).
    pub fn observed(&self) -> bool {
        self.interest.iter().any(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Whether anybody observes events of `kind`.
    pub fn wanted(&self, kind: EventKind) -> bool {
        self.interest[kind as usize].load(Ordering::Relaxed) > 0
    }

    /// Emits the event `make` builds, if anybody observes its kind.
    pub(crate) fn emit(&self, kind: EventKind, make: impl FnOnce() -> Event) {
        if self.wanted(kind) {
            let _ = self.tx.send(make());
        }
    }
}

/// Something outside the broker that wants to know what happens in it (a
/// webhook, an audit log). Each observer gets its own task and its own
/// bounded buffer ([`OBSERVER_BUFFER`]): a slow one loses events, counted
/// in [`EventObserver::lagged`], and never slows the broker.
pub trait EventObserver: Send + Sync + 'static {
    /// One event, in the order they happened.
    fn observe(&self, event: &Event);
    /// `n` events were lost because [`EventObserver::observe`] fell behind.
    fn lagged(&self, _n: u64) {}
    /// Whether it wants events of `kind` (default: all). Kinds no observer
    /// wants are never built: an observer of connections costs the publish
    /// path nothing.
    fn wants(&self, _kind: EventKind) -> bool {
        true
    }
}

/// Feeds `observer` from `events` on a task of its own, until the broker's
/// events end.
pub fn spawn_observer(
    events: &Events,
    observer: Arc<dyn EventObserver>,
) -> tokio::task::JoinHandle<()> {
    let kinds: Vec<EventKind> = EventKind::ALL
        .into_iter()
        .filter(|k| observer.wants(*k))
        .collect();
    let mut rx = events.subscribe_to(&kinds);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => observer.observe(&event),
                Err(broadcast::error::RecvError::Lagged(n)) => observer.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_built_without_observers_and_a_slow_observer_only_lags() {
        let events = Events::default();
        let mut built = 0;
        events.emit(EventKind::SessionCreated, || {
            built += 1;
            Event::SessionCreated {
                client_id: "a".into(),
            }
        });
        assert_eq!(built, 0);
        let mut obs = events.subscribe();
        for i in 0..(OBSERVER_BUFFER + 10) {
            events.emit(EventKind::SessionEnded, || Event::SessionEnded {
                client_id: format!("c{i}").as_str().into(),
            });
        }
        assert!(matches!(
            obs.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        match obs.recv().await {
            Ok(Event::SessionEnded { client_id }) => assert_eq!(&*client_id, "c10"),
            other => panic!("{other:?}"),
        }
        drop(obs);
        assert!(!events.observed());
    }

    #[test]
    fn a_kind_nobody_wants_is_never_built() {
        let events = Events::default();
        let obs = events.subscribe_to(&[EventKind::ClientConnected]);
        let mut built = 0;
        events.emit(EventKind::MessagePublished, || {
            built += 1;
            Event::SessionCreated {
                client_id: "a".into(),
            }
        });
        assert_eq!(built, 0);
        assert!(events.wanted(EventKind::ClientConnected) && events.observed());
        drop(obs);
        assert!(!events.observed());
    }
}
