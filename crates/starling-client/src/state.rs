//! The client's side of the MQTT protocol, without I/O.
//!
//! [`MqttState`] keeps everything a connection needs to remember between packets:
//! outgoing QoS 1/2 publishes, subscribes and unsubscribes in flight (indexed by
//! packet identifier), incoming QoS 2 packet identifiers awaiting PUBREL, packet
//! identifier allocation, inbound topic aliases and keep-alive bookkeeping. Its
//! methods only change state and push the packets to send into a caller-provided
//! vector; time is passed in as [`Instant`]s. The tokio driver in
//! [`crate::Client`] feeds it packets from the socket and writes what it returns,
//! and the unit tests drive it directly.
//!
//! Every operation carries an opaque token `T` (the driver uses a oneshot sender);
//! the state hands it back in an [`Event`] when the operation completes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use starling_codec::{
    Ack, ByteString, ConnAck, Disconnect, Packet, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe,
};

/// A protocol violation by the server, or a local limit that stops an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// No PINGRESP arrived within the keep-alive interval after a PINGREQ.
    #[error("no PINGRESP within the keep-alive interval of {0:?}: the connection is dead")]
    PingTimeout(Duration),
    /// Every packet identifier is in use.
    #[error("[MQTT-2.2.1-3] no free packet identifier")]
    NoPacketId,
    /// The server's Receive Maximum is reached; wait for an acknowledgement.
    #[error("[MQTT-4.9.0-2] the server's receive maximum of {0} in-flight publishes is reached")]
    ReceiveMaximumReached(u16),
    /// An acknowledgement for a packet identifier that is not in flight.
    #[error("[MQTT-4.3.2] {packet} for packet identifier {packet_id}, which is not in flight")]
    UnknownPacketId {
        /// The packet's type name.
        packet: &'static str,
        /// The identifier it carried.
        packet_id: u16,
    },
    /// A packet a server never sends to a client, or sends only once (CONNACK).
    #[error("[MQTT-3.1.4] unexpected {0} from the server")]
    UnexpectedPacket(&'static str),
    /// A PUBLISH used a topic alias the server never defined.
    #[error("[MQTT-3.3.2-7] unknown topic alias {0}")]
    UnknownTopicAlias(u16),
    /// A PUBLISH used a topic alias above the maximum we announced.
    #[error("[MQTT-3.3.2-9] topic alias {0} exceeds our topic alias maximum")]
    TopicAliasTooLarge(u16),
    /// The server sent a QoS higher than any subscription allows.
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS {0:?} on a connection that forbids it")]
    InvalidQoS(QoS),
}

/// What an outgoing QoS 1/2 publish is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStage {
    /// QoS 1: PUBACK.
    AwaitPubAck,
    /// QoS 2: PUBREC.
    AwaitPubRec,
    /// QoS 2: PUBCOMP, after our PUBREL.
    AwaitPubComp,
}

/// One outgoing operation in flight.
#[derive(Debug)]
enum Pending<T> {
    Publish {
        publish: Publish,
        stage: PublishStage,
        token: T,
    },
    Subscribe {
        subscribe: Subscribe,
        token: T,
    },
    Unsubscribe {
        unsubscribe: Unsubscribe,
        token: T,
    },
}

/// Something the application must be told.
// Events live for one call; boxing the message would cost an allocation per PUBLISH.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event<T> {
    /// An application message arrived. `ack` is the PUBACK or PUBREC to send once
    /// the message has been handed to the application (acknowledging only then
    /// lets the server's flow control hold further messages back).
    Message {
        /// The message, with any topic alias resolved.
        publish: Publish,
        /// The acknowledgement to send after delivery, for QoS 1 and 2.
        ack: Option<Packet>,
    },
    /// A QoS 1/2 publish finished: PUBACK, PUBCOMP, or a PUBREC with an error code.
    PublishDone {
        /// The token given to [`MqttState::publish`].
        token: T,
        /// The reason code of the final acknowledgement.
        reason: ReasonCode,
    },
    /// SUBACK arrived.
    SubscribeDone {
        /// The token given to [`MqttState::subscribe`].
        token: T,
        /// The SUBACK.
        ack: SubAck,
    },
    /// UNSUBACK arrived.
    UnsubscribeDone {
        /// The token given to [`MqttState::unsubscribe`].
        token: T,
        /// The UNSUBACK.
        ack: UnsubAck,
    },
    /// The server sent DISCONNECT (MQTT 5) and will close the connection.
    ServerDisconnect(Disconnect),
    /// The server sent AUTH (MQTT 5 re-authentication).
    Auth(starling_codec::Auth),
}

/// The protocol state of one client session, across reconnections.
#[derive(Debug)]
pub struct MqttState<T> {
    version: ProtocolVersion,
    next_packet_id: u16,
    pending: HashMap<u16, Pending<T>>,
    /// QoS 1/2 publishes in `pending`, limited by the server's receive maximum.
    inflight_publishes: u16,
    /// Incoming QoS 2 packet identifiers we sent PUBREC for and await PUBREL on.
    incoming_qos2: HashSet<u16>,
    /// Inbound topic aliases the server defined on this connection.
    topic_aliases: HashMap<u16, ByteString>,
    /// The largest inbound topic alias we accept (our CONNECT's Topic Alias Maximum).
    topic_alias_maximum: u16,
    /// The server's Receive Maximum (65,535 when it sets none).
    server_receive_maximum: u16,
    keep_alive: Duration,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    /// Every subscription acknowledged with success, to restore when a new session starts.
    subscriptions: Vec<Subscription>,
    /// Packet identifiers of SUBSCRIBEs sent to restore subscriptions, which no caller awaits.
    restoring: HashSet<u16>,
}

impl<T> MqttState<T> {
    /// A new state for `version`, with `keep_alive` (zero disables it) and the
    /// Topic Alias Maximum this client announces in CONNECT.
    pub fn new(
        version: ProtocolVersion,
        keep_alive: Duration,
        topic_alias_maximum: u16,
        now: Instant,
    ) -> Self {
        MqttState {
            version,
            next_packet_id: 1,
            pending: HashMap::new(),
            inflight_publishes: 0,
            incoming_qos2: HashSet::new(),
            topic_aliases: HashMap::new(),
            topic_alias_maximum,
            server_receive_maximum: u16::MAX,
            keep_alive,
            last_sent: now,
            ping_sent: None,
            subscriptions: Vec::new(),
            restoring: HashSet::new(),
        }
    }

    /// The protocol version.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The keep-alive interval in force (the server's, if it set one).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Number of outgoing operations awaiting an acknowledgement.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Number of incoming QoS 2 messages awaiting PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// The subscriptions the server acknowledged, in the order they were made.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// True while another QoS 1/2 publish may be sent without exceeding the
    /// server's Receive Maximum.
    pub fn can_publish(&self) -> bool {
        self.inflight_publishes < self.server_receive_maximum
    }

    /// Records that a packet was written at `now`: keep alive counts idleness from here.
    pub fn note_sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// Applies a successful CONNACK: the server's limits and keep alive, and the
    /// packets to send again.
    ///
    /// With `session_present`, in-flight publishes are resent with DUP (or their
    /// PUBREL, once PUBREC came), as [MQTT-4.4.0-1] requires. Without it, the
    /// server has forgotten everything: incoming QoS 2 state is dropped,
    /// unacknowledged publishes are sent again as new messages, and every
    /// subscription is restored. Pending subscribes and unsubscribes are resent
    /// in both cases.
    pub fn on_connack(&mut self, connack: &ConnAck, now: Instant, out: &mut Vec<Packet>) {
        let props = &connack.properties;
        self.server_receive_maximum = props.receive_maximum.unwrap_or(u16::MAX);
        if let Some(ka) = props.server_keep_alive {
            self.keep_alive = Duration::from_secs(u64::from(ka));
        }
        self.topic_aliases.clear();
        // SUBSCRIBEs restoring subscriptions on the previous connection are void now.
        self.restoring.clear();
        self.ping_sent = None;
        self.last_sent = now;
        if !connack.session_present {
            self.incoming_qos2.clear();
            if !self.subscriptions.is_empty() {
                // Restore in one SUBSCRIBE per filter so one refusal does not hide the others.
                let subs = std::mem::take(&mut self.subscriptions);
                for sub in &subs {
                    if let Some(packet_id) = self.allocate_id() {
                        out.push(Packet::Subscribe(Subscribe {
                            packet_id,
                            properties: Default::default(),
                            subscriptions: vec![sub.clone()],
                        }));
                        // Restoring needs no answer: mark it as an id in use without a token.
                        self.restoring.insert(packet_id);
                    }
                }
                self.subscriptions = subs;
            }
        }
        let mut ids: Vec<u16> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            match p {
                Pending::Publish { publish, stage, .. } => {
                    if connack.session_present {
                        match stage {
                            PublishStage::AwaitPubComp => {
                                out.push(Packet::PubRel(Ack::new(id)));
                            }
                            _ => {
                                let mut p = publish.clone();
                                p.dup = true;
                                out.push(Packet::Publish(p));
                            }
                        }
                    } else {
                        // A new session: start the exchange over.
                        if publish.qos == QoS::ExactlyOnce {
                            *stage = PublishStage::AwaitPubRec;
                        }
                        let mut p = publish.clone();
                        p.dup = false;
                        out.push(Packet::Publish(p));
                    }
                }
                Pending::Subscribe { subscribe, .. } => {
                    out.push(Packet::Subscribe(subscribe.clone()));
                }
                Pending::Unsubscribe { unsubscribe, .. } => {
                    out.push(Packet::Unsubscribe(unsubscribe.clone()));
                }
            }
        }
    }

    fn allocate_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.pending.contains_key(&id) && !self.restoring.contains(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Starts a publish. QoS 0 completes at once and gives `token` back; QoS 1/2
    /// get a packet identifier and wait for their acknowledgements.
    ///
    /// The packet to send is pushed into `out`.
    pub fn publish(
        &mut self,
        mut publish: Publish,
        token: T,
        out: &mut Vec<Packet>,
    ) -> Result<Option<T>, (StateError, T)> {
        if publish.qos == QoS::AtMostOnce {
            publish.packet_id = 0;
            publish.dup = false;
            out.push(Packet::Publish(publish));
            return Ok(Some(token));
        }
        if !self.can_publish() {
            return Err((
                StateError::ReceiveMaximumReached(self.server_receive_maximum),
                token,
            ));
        }
        let Some(id) = self.allocate_id() else {
            return Err((StateError::NoPacketId, token));
        };
        publish.packet_id = id;
        publish.dup = false;
        let stage = if publish.qos == QoS::AtLeastOnce {
            PublishStage::AwaitPubAck
        } else {
            PublishStage::AwaitPubRec
        };
        out.push(Packet::Publish(publish.clone()));
        self.pending.insert(
            id,
            Pending::Publish {
                publish,
                stage,
                token,
            },
        );
        self.inflight_publishes += 1;
        Ok(None)
    }

    /// Starts a subscribe; its packet identifier is assigned here.
    pub fn subscribe(
        &mut self,
        mut subscribe: Subscribe,
        token: T,
        out: &mut Vec<Packet>,
    ) -> Result<(), (StateError, T)> {
        let Some(id) = self.allocate_id() else {
            return Err((StateError::NoPacketId, token));
        };
        subscribe.packet_id = id;
        out.push(Packet::Subscribe(subscribe.clone()));
        self.pending
            .insert(id, Pending::Subscribe { subscribe, token });
        Ok(())
    }

    /// Starts an unsubscribe; its packet identifier is assigned here.
    pub fn unsubscribe(
        &mut self,
        mut unsubscribe: Unsubscribe,
        token: T,
        out: &mut Vec<Packet>,
    ) -> Result<(), (StateError, T)> {
        let Some(id) = self.allocate_id() else {
            return Err((StateError::NoPacketId, token));
        };
        unsubscribe.packet_id = id;
        out.push(Packet::Unsubscribe(unsubscribe.clone()));
        self.pending
            .insert(id, Pending::Unsubscribe { unsubscribe, token });
        Ok(())
    }

    /// Handles one packet from the server, pushing any reply into `out`.
    pub fn handle(
        &mut self,
        packet: Packet,
        out: &mut Vec<Packet>,
    ) -> Result<Option<Event<T>>, StateError> {
        match packet {
            Packet::Publish(p) => self.handle_publish(p, out),
            Packet::PubAck(ack) => self.finish_publish(&ack, PublishStage::AwaitPubAck, "PUBACK"),
            Packet::PubRec(ack) => {
                let id = ack.packet_id;
                match self.pending.get_mut(&id) {
                    Some(Pending::Publish { stage, .. }) if *stage == PublishStage::AwaitPubRec => {
                        if ack.reason_code.is_error() {
                            // [MQTT-4.3.3] an error PUBREC ends the exchange.
                            let Some(Pending::Publish { token, .. }) = self.pending.remove(&id)
                            else {
                                return Ok(None);
                            };
                            self.inflight_publishes -= 1;
                            return Ok(Some(Event::PublishDone {
                                token,
                                reason: ack.reason_code,
                            }));
                        }
                        *stage = PublishStage::AwaitPubComp;
                        out.push(Packet::PubRel(Ack::new(id)));
                        Ok(None)
                    }
                    Some(Pending::Publish {
                        stage: PublishStage::AwaitPubComp,
                        ..
                    }) => {
                        // A repeated PUBREC: answer with PUBREL again.
                        out.push(Packet::PubRel(Ack::new(id)));
                        Ok(None)
                    }
                    _ => {
                        // [MQTT-4.3.3] answer an unknown PUBREC so the server can finish.
                        if self.version.is_v5() {
                            let mut rel = Ack::new(id);
                            rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                            out.push(Packet::PubRel(rel));
                            Ok(None)
                        } else {
                            Err(StateError::UnknownPacketId {
                                packet: "PUBREC",
                                packet_id: id,
                            })
                        }
                    }
                }
            }
            Packet::PubComp(ack) => {
                self.finish_publish(&ack, PublishStage::AwaitPubComp, "PUBCOMP")
            }
            Packet::PubRel(ack) => {
                let id = ack.packet_id;
                let mut comp = Ack::new(id);
                if !self.incoming_qos2.remove(&id) && self.version.is_v5() {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                out.push(Packet::PubComp(comp));
                Ok(None)
            }
            Packet::SubAck(ack) => {
                if self.restoring.remove(&ack.packet_id) {
                    return Ok(None);
                }
                match self.pending.remove(&ack.packet_id) {
                    Some(Pending::Subscribe { subscribe, token }) => {
                        for (i, sub) in subscribe.subscriptions.iter().enumerate() {
                            let ok = ack.reason_codes.get(i).is_some_and(|c| !c.is_error());
                            if ok {
                                self.remember(sub.clone());
                            }
                        }
                        Ok(Some(Event::SubscribeDone { token, ack }))
                    }
                    other => {
                        self.put_back(ack.packet_id, other);
                        Err(StateError::UnknownPacketId {
                            packet: "SUBACK",
                            packet_id: ack.packet_id,
                        })
                    }
                }
            }
            Packet::UnsubAck(ack) => match self.pending.remove(&ack.packet_id) {
                Some(Pending::Unsubscribe { unsubscribe, token }) => {
                    self.subscriptions
                        .retain(|s| !unsubscribe.filters.contains(&s.filter));
                    Ok(Some(Event::UnsubscribeDone { token, ack }))
                }
                other => {
                    self.put_back(ack.packet_id, other);
                    Err(StateError::UnknownPacketId {
                        packet: "UNSUBACK",
                        packet_id: ack.packet_id,
                    })
                }
            },
            Packet::PingResp => {
                self.ping_sent = None;
                Ok(None)
            }
            Packet::Disconnect(d) => Ok(Some(Event::ServerDisconnect(d))),
            Packet::Connect(_) => Err(StateError::UnexpectedPacket("CONNECT")),
            Packet::ConnAck(_) => Err(StateError::UnexpectedPacket("CONNACK")),
            Packet::Subscribe(_) => Err(StateError::UnexpectedPacket("SUBSCRIBE")),
            Packet::Unsubscribe(_) => Err(StateError::UnexpectedPacket("UNSUBSCRIBE")),
            Packet::PingReq => Err(StateError::UnexpectedPacket("PINGREQ")),
            Packet::Auth(a) => Ok(Some(Event::Auth(a))),
        }
    }

    /// Ends the outgoing publish that `ack` (a PUBACK or PUBCOMP, named
    /// `packet`) completes, if it was waiting at `stage`; an acknowledgement
    /// for anything else is an unknown packet id.
    fn finish_publish(
        &mut self,
        ack: &Ack,
        stage: PublishStage,
        packet: &'static str,
    ) -> Result<Option<Event<T>>, StateError> {
        match self.pending.remove(&ack.packet_id) {
            Some(Pending::Publish {
                stage: at, token, ..
            }) if at == stage => {
                self.inflight_publishes -= 1;
                Ok(Some(Event::PublishDone {
                    token,
                    reason: ack.reason_code,
                }))
            }
            other => {
                self.put_back(ack.packet_id, other);
                Err(StateError::UnknownPacketId {
                    packet,
                    packet_id: ack.packet_id,
                })
            }
        }
    }

    fn put_back(&mut self, id: u16, pending: Option<Pending<T>>) {
        if let Some(p) = pending {
            self.pending.insert(id, p);
        }
    }

    fn remember(&mut self, sub: Subscription) {
        if let Some(existing) = self
            .subscriptions
            .iter_mut()
            .find(|s| s.filter == sub.filter)
        {
            *existing = sub;
        } else {
            self.subscriptions.push(sub);
        }
    }

    fn handle_publish(
        &mut self,
        mut publish: Publish,
        out: &mut Vec<Packet>,
    ) -> Result<Option<Event<T>>, StateError> {
        if let Some(alias) = publish.properties.topic_alias {
            if alias > self.topic_alias_maximum {
                return Err(StateError::TopicAliasTooLarge(alias));
            }
            if publish.topic.is_empty() {
                publish.topic = self
                    .topic_aliases
                    .get(&alias)
                    .cloned()
                    .ok_or(StateError::UnknownTopicAlias(alias))?;
            } else {
                self.topic_aliases.insert(alias, publish.topic.clone());
            }
        }
        match publish.qos {
            QoS::AtMostOnce => Ok(Some(Event::Message { publish, ack: None })),
            QoS::AtLeastOnce => {
                let ack = Some(Packet::PubAck(Ack::new(publish.packet_id)));
                Ok(Some(Event::Message { publish, ack }))
            }
            QoS::ExactlyOnce => {
                let id = publish.packet_id;
                if self.incoming_qos2.contains(&id) {
                    // A redelivery of a message we already hold: acknowledge, don't deliver twice.
                    out.push(Packet::PubRec(Ack::new(id)));
                    return Ok(None);
                }
                self.incoming_qos2.insert(id);
                let ack = Some(Packet::PubRec(Ack::new(id)));
                Ok(Some(Event::Message { publish, ack }))
            }
        }
    }

    /// When the driver must next call [`Self::poll_keep_alive`], if keep alive is on.
    pub fn next_keep_alive_deadline(&self) -> Option<Instant> {
        if self.keep_alive.is_zero() {
            return None;
        }
        Some(match self.ping_sent {
            Some(sent) => sent + self.keep_alive,
            None => self.last_sent + self.keep_alive,
        })
    }

    /// Keep-alive work due at `now`: pushes a PINGREQ once the link has been idle
    /// for the keep-alive interval, and fails when a PINGREQ went unanswered for
    /// as long.
    pub fn poll_keep_alive(
        &mut self,
        now: Instant,
        out: &mut Vec<Packet>,
    ) -> Result<(), StateError> {
        if self.keep_alive.is_zero() {
            return Ok(());
        }
        if let Some(sent) = self.ping_sent {
            if now >= sent + self.keep_alive {
                return Err(StateError::PingTimeout(self.keep_alive));
            }
            return Ok(());
        }
        if now >= self.last_sent + self.keep_alive {
            out.push(Packet::PingReq);
            self.ping_sent = Some(now);
            self.last_sent = now;
        }
        Ok(())
    }

    /// Removes every pending operation, giving back their tokens (for failing
    /// them when the connection is gone for good).
    pub fn drain_pending(&mut self) -> Vec<T> {
        self.inflight_publishes = 0;
        self.restoring.clear();
        let mut ids: Vec<u16> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| match p {
                Pending::Publish { token, .. }
                | Pending::Subscribe { token, .. }
                | Pending::Unsubscribe { token, .. } => token,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::{SubscriptionOptions, UnsubAck};

    type State = MqttState<&'static str>;

    fn state(v: ProtocolVersion, keep_alive_secs: u64, now: Instant) -> State {
        MqttState::new(v, Duration::from_secs(keep_alive_secs), 10, now)
    }

    fn publish(qos: QoS) -> Publish {
        let mut p = Publish::new("a/b", "payload");
        p.qos = qos;
        p
    }

    fn connack(session_present: bool) -> ConnAck {
        ConnAck {
            session_present,
            ..ConnAck::default()
        }
    }

    fn ack_with(id: u16, code: ReasonCode) -> Ack {
        let mut a = Ack::new(id);
        a.reason_code = code;
        a
    }

    #[test]
    fn qos0_completes_at_once() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        let token = s.publish(publish(QoS::AtMostOnce), "t", &mut out).unwrap();
        assert_eq!(token, Some("t"));
        assert!(matches!(&out[..], [Packet::Publish(p)] if p.packet_id == 0));
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn qos1_publish_completes_on_puback() {
        let mut s = state(ProtocolVersion::V3_1_1, 0, Instant::now());
        let mut out = vec![];
        assert_eq!(
            s.publish(publish(QoS::AtLeastOnce), "t", &mut out).unwrap(),
            None
        );
        let Packet::Publish(p) = &out[0] else {
            panic!()
        };
        assert_eq!(p.packet_id, 1);
        assert_eq!(s.pending_len(), 1);
        out.clear();
        let ev = s.handle(Packet::PubAck(Ack::new(1)), &mut out).unwrap();
        assert!(
            matches!(ev, Some(Event::PublishDone { token: "t", reason }) if reason == ReasonCode::SUCCESS)
        );
        assert_eq!(s.pending_len(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn qos2_publish_full_flow() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        s.publish(publish(QoS::ExactlyOnce), "t", &mut out).unwrap();
        out.clear();
        // PUBACK is the wrong acknowledgement for QoS 2.
        assert!(s.handle(Packet::PubAck(Ack::new(1)), &mut out).is_err());
        assert_eq!(s.pending_len(), 1);
        assert!(s
            .handle(Packet::PubRec(Ack::new(1)), &mut out)
            .unwrap()
            .is_none());
        assert_eq!(out, vec![Packet::PubRel(Ack::new(1))]);
        out.clear();
        // A repeated PUBREC gets PUBREL again.
        s.handle(Packet::PubRec(Ack::new(1)), &mut out).unwrap();
        assert_eq!(out, vec![Packet::PubRel(Ack::new(1))]);
        out.clear();
        let ev = s.handle(Packet::PubComp(Ack::new(1)), &mut out).unwrap();
        assert!(matches!(ev, Some(Event::PublishDone { token: "t", .. })));
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn qos2_error_pubrec_ends_the_exchange() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        s.publish(publish(QoS::ExactlyOnce), "t", &mut out).unwrap();
        out.clear();
        let ev = s
            .handle(
                Packet::PubRec(ack_with(1, ReasonCode::NOT_AUTHORIZED)),
                &mut out,
            )
            .unwrap();
        assert!(
            matches!(ev, Some(Event::PublishDone { reason, .. }) if reason == ReasonCode::NOT_AUTHORIZED)
        );
        assert!(out.is_empty());
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn unknown_acks_are_errors() {
        let mut s = state(ProtocolVersion::V3_1_1, 0, Instant::now());
        let mut out = vec![];
        assert_eq!(
            s.handle(Packet::PubAck(Ack::new(7)), &mut out).unwrap_err(),
            StateError::UnknownPacketId {
                packet: "PUBACK",
                packet_id: 7
            }
        );
        assert!(s.handle(Packet::PubComp(Ack::new(7)), &mut out).is_err());
        assert!(s.handle(Packet::PingReq, &mut out).is_err());
        assert!(s
            .handle(Packet::ConnAck(ConnAck::default()), &mut out)
            .is_err());
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        s.next_packet_id = u16::MAX;
        s.publish(publish(QoS::AtLeastOnce), "a", &mut out).unwrap();
        s.publish(publish(QoS::AtLeastOnce), "b", &mut out).unwrap();
        let ids: Vec<u16> = out
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.packet_id,
                _ => 0,
            })
            .collect();
        assert_eq!(ids, vec![u16::MAX, 1]);
        // 1 is in use, so the next allocation after wrapping again skips it.
        s.next_packet_id = 1;
        out.clear();
        s.publish(publish(QoS::AtLeastOnce), "c", &mut out).unwrap();
        assert!(matches!(&out[0], Packet::Publish(p) if p.packet_id == 2));
    }

    #[test]
    fn receive_maximum_limits_inflight() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        let mut ca = connack(false);
        ca.properties.receive_maximum = Some(2);
        s.on_connack(&ca, Instant::now(), &mut out);
        s.publish(publish(QoS::AtLeastOnce), "a", &mut out).unwrap();
        s.publish(publish(QoS::ExactlyOnce), "b", &mut out).unwrap();
        assert!(!s.can_publish());
        let (err, token) = s
            .publish(publish(QoS::AtLeastOnce), "c", &mut out)
            .unwrap_err();
        assert_eq!((err, token), (StateError::ReceiveMaximumReached(2), "c"));
        // QoS 0 is not limited.
        assert!(s.publish(publish(QoS::AtMostOnce), "d", &mut out).is_ok());
        s.handle(Packet::PubAck(Ack::new(1)), &mut out).unwrap();
        assert!(s.can_publish());
    }

    #[test]
    fn incoming_qos1_acked_after_delivery() {
        let mut s = state(ProtocolVersion::V3_1_1, 0, Instant::now());
        let mut out = vec![];
        let mut p = publish(QoS::AtLeastOnce);
        p.packet_id = 9;
        let ev = s.handle(Packet::Publish(p), &mut out).unwrap();
        let Some(Event::Message { publish, ack }) = ev else {
            panic!()
        };
        assert_eq!(&*publish.topic, "a/b");
        assert_eq!(ack, Some(Packet::PubAck(Ack::new(9))));
        assert!(out.is_empty(), "the ack waits for delivery");
    }

    #[test]
    fn incoming_qos2_delivered_once() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        let mut p = publish(QoS::ExactlyOnce);
        p.packet_id = 3;
        let ev = s.handle(Packet::Publish(p.clone()), &mut out).unwrap();
        assert!(matches!(
            ev,
            Some(Event::Message {
                ack: Some(Packet::PubRec(_)),
                ..
            })
        ));
        assert_eq!(s.incoming_qos2_len(), 1);
        // A redelivery before PUBREL: PUBREC again, no second message.
        p.dup = true;
        assert!(s.handle(Packet::Publish(p), &mut out).unwrap().is_none());
        assert_eq!(out, vec![Packet::PubRec(Ack::new(3))]);
        out.clear();
        s.handle(Packet::PubRel(Ack::new(3)), &mut out).unwrap();
        assert_eq!(out, vec![Packet::PubComp(Ack::new(3))]);
        assert_eq!(s.incoming_qos2_len(), 0);
        out.clear();
        // PUBREL for an unknown id: PUBCOMP with "packet identifier not found".
        s.handle(Packet::PubRel(Ack::new(4)), &mut out).unwrap();
        assert_eq!(
            out,
            vec![Packet::PubComp(ack_with(
                4,
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            ))]
        );
    }

    #[test]
    fn topic_aliases_resolve() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        let mut p = publish(QoS::AtMostOnce);
        p.properties.topic_alias = Some(2);
        s.handle(Packet::Publish(p), &mut out).unwrap();
        let mut p = Publish::new("", "x");
        p.properties.topic_alias = Some(2);
        let Some(Event::Message { publish, .. }) = s.handle(Packet::Publish(p), &mut out).unwrap()
        else {
            panic!()
        };
        assert_eq!(&*publish.topic, "a/b");
        let mut p = Publish::new("", "x");
        p.properties.topic_alias = Some(3);
        assert_eq!(
            s.handle(Packet::Publish(p), &mut out).unwrap_err(),
            StateError::UnknownTopicAlias(3)
        );
        let mut p = Publish::new("t", "x");
        p.properties.topic_alias = Some(11);
        assert_eq!(
            s.handle(Packet::Publish(p), &mut out).unwrap_err(),
            StateError::TopicAliasTooLarge(11)
        );
    }

    #[test]
    fn subscribe_and_unsubscribe_track_subscriptions() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        let sub = |f: &str| Subscription {
            filter: f.into(),
            options: SubscriptionOptions::default(),
        };
        let subscribe = Subscribe {
            packet_id: 0,
            properties: Default::default(),
            subscriptions: vec![sub("a/#"), sub("bad")],
        };
        s.subscribe(subscribe, "s", &mut out).unwrap();
        let Packet::Subscribe(sent) = &out[0] else {
            panic!()
        };
        let id = sent.packet_id;
        assert_ne!(id, 0);
        let ev = s
            .handle(
                Packet::SubAck(SubAck {
                    packet_id: id,
                    properties: Default::default(),
                    reason_codes: vec![ReasonCode::GRANTED_QOS_0, ReasonCode::NOT_AUTHORIZED],
                }),
                &mut out,
            )
            .unwrap();
        assert!(matches!(ev, Some(Event::SubscribeDone { token: "s", .. })));
        assert_eq!(
            s.subscriptions().len(),
            1,
            "only the granted filter is remembered"
        );
        out.clear();
        let unsub = Unsubscribe {
            packet_id: 0,
            properties: Default::default(),
            filters: vec!["a/#".into()],
        };
        s.unsubscribe(unsub, "u", &mut out).unwrap();
        let Packet::Unsubscribe(sent) = &out[0] else {
            panic!()
        };
        let ev = s
            .handle(
                Packet::UnsubAck(UnsubAck {
                    packet_id: sent.packet_id,
                    properties: Default::default(),
                    reason_codes: vec![ReasonCode::SUCCESS],
                }),
                &mut out,
            )
            .unwrap();
        assert!(matches!(
            ev,
            Some(Event::UnsubscribeDone { token: "u", .. })
        ));
        assert!(s.subscriptions().is_empty());
    }

    #[test]
    fn reconnect_with_session_resends_with_dup_and_pubrel() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        s.publish(publish(QoS::AtLeastOnce), "a", &mut out).unwrap();
        s.publish(publish(QoS::ExactlyOnce), "b", &mut out).unwrap();
        s.publish(publish(QoS::ExactlyOnce), "c", &mut out).unwrap();
        s.handle(Packet::PubRec(Ack::new(3)), &mut out).unwrap();
        out.clear();
        s.on_connack(&connack(true), Instant::now(), &mut out);
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], Packet::Publish(p) if p.dup && p.packet_id == 1));
        assert!(matches!(&out[1], Packet::Publish(p) if p.dup && p.packet_id == 2));
        assert_eq!(out[2], Packet::PubRel(Ack::new(3)));
    }

    #[test]
    fn reconnect_without_session_restarts_and_resubscribes() {
        let mut s = state(ProtocolVersion::V3_1_1, 0, Instant::now());
        let mut out = vec![];
        let subscribe = Subscribe {
            packet_id: 0,
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: "x/+".into(),
                options: SubscriptionOptions::default(),
            }],
        };
        s.subscribe(subscribe, "s", &mut out).unwrap();
        s.handle(
            Packet::SubAck(SubAck {
                packet_id: 1,
                properties: Default::default(),
                reason_codes: vec![ReasonCode::GRANTED_QOS_0],
            }),
            &mut out,
        )
        .unwrap();
        s.publish(publish(QoS::ExactlyOnce), "p", &mut out).unwrap();
        s.handle(Packet::PubRec(Ack::new(2)), &mut out).unwrap();
        let mut incoming = publish(QoS::ExactlyOnce);
        incoming.packet_id = 5;
        s.handle(Packet::Publish(incoming), &mut out).unwrap();
        out.clear();
        s.on_connack(&connack(false), Instant::now(), &mut out);
        assert_eq!(s.incoming_qos2_len(), 0);
        // The subscription is restored and the QoS 2 publish starts over, without DUP.
        assert!(matches!(&out[0], Packet::Subscribe(sub) if sub.subscriptions[0].filter == "x/+"));
        let restore_id = match &out[0] {
            Packet::Subscribe(sub) => sub.packet_id,
            _ => 0,
        };
        assert!(matches!(&out[1], Packet::Publish(p) if !p.dup && p.packet_id == 2));
        // The restoring SUBACK completes nothing; PUBREC then gets PUBREL.
        let ev = s
            .handle(
                Packet::SubAck(SubAck {
                    packet_id: restore_id,
                    properties: Default::default(),
                    reason_codes: vec![ReasonCode::GRANTED_QOS_0],
                }),
                &mut out,
            )
            .unwrap();
        assert!(ev.is_none());
        out.clear();
        s.handle(Packet::PubRec(Ack::new(2)), &mut out).unwrap();
        assert_eq!(out, vec![Packet::PubRel(Ack::new(2))]);
    }

    #[test]
    fn keep_alive_pings_when_idle_and_detects_dead_link() {
        let t0 = Instant::now();
        let mut s = state(ProtocolVersion::V5, 10, t0);
        let mut out = vec![];
        assert_eq!(
            s.next_keep_alive_deadline(),
            Some(t0 + Duration::from_secs(10))
        );
        s.poll_keep_alive(t0 + Duration::from_secs(5), &mut out)
            .unwrap();
        assert!(out.is_empty());
        // Traffic pushes the deadline back.
        s.note_sent(t0 + Duration::from_secs(5));
        s.poll_keep_alive(t0 + Duration::from_secs(12), &mut out)
            .unwrap();
        assert!(out.is_empty());
        s.poll_keep_alive(t0 + Duration::from_secs(15), &mut out)
            .unwrap();
        assert_eq!(out, vec![Packet::PingReq]);
        out.clear();
        s.handle(Packet::PingResp, &mut out).unwrap();
        assert_eq!(
            s.next_keep_alive_deadline(),
            Some(t0 + Duration::from_secs(25))
        );
        s.poll_keep_alive(t0 + Duration::from_secs(25), &mut out)
            .unwrap();
        assert_eq!(out, vec![Packet::PingReq]);
        // No PINGRESP within the keep alive: dead.
        s.poll_keep_alive(t0 + Duration::from_secs(34), &mut out)
            .unwrap();
        assert_eq!(
            s.poll_keep_alive(t0 + Duration::from_secs(35), &mut out),
            Err(StateError::PingTimeout(Duration::from_secs(10)))
        );
    }

    #[test]
    fn server_keep_alive_overrides_ours_and_zero_disables() {
        let t0 = Instant::now();
        let mut s = state(ProtocolVersion::V5, 10, t0);
        let mut ca = connack(false);
        ca.properties.server_keep_alive = Some(0);
        s.on_connack(&ca, t0, &mut vec![]);
        assert_eq!(s.next_keep_alive_deadline(), None);
        let mut out = vec![];
        s.poll_keep_alive(t0 + Duration::from_secs(1000), &mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn drain_pending_returns_every_token() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let mut out = vec![];
        s.publish(publish(QoS::AtLeastOnce), "a", &mut out).unwrap();
        s.publish(publish(QoS::ExactlyOnce), "b", &mut out).unwrap();
        assert_eq!(s.drain_pending(), vec!["a", "b"]);
        assert!(s.can_publish());
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn server_disconnect_is_an_event() {
        let mut s = state(ProtocolVersion::V5, 0, Instant::now());
        let ev = s
            .handle(
                Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER)),
                &mut vec![],
            )
            .unwrap();
        assert!(
            matches!(ev, Some(Event::ServerDisconnect(d)) if d.reason_code == ReasonCode::SESSION_TAKEN_OVER)
        );
    }
}
