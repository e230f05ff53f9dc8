//! Handling of every packet a connected client sends.

use std::sync::Arc;

use starling_codec::topic::{self, parse_shared, validate_filter};
use starling_codec::{
    Ack, Disconnect, Packet, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};

use super::client::{Client, Close};
use super::machine::Machine;
use crate::auth::Access;
use crate::broker::{split_share, Refusal};
use crate::events::Event;
use crate::message::Message;
use crate::metrics::SubscribeRefusal;
use crate::session::{RetainedWalk, SubEntry};
use crate::topic_tree::Subscriber;

fn protocol_error(msg: impl Into<String>) -> Close {
    Close::Protocol(ReasonCode::PROTOCOL_ERROR, msg.into())
}

/// A topic name deeper than `max-topic-levels` closes the connection with
/// 0x90 Topic Name invalid (MQTT 5, spec 3.3.2.1; 3.x just closes).
pub(super) fn check_topic_levels(topic: &str, max: usize, max_len: usize) -> Result<(), Close> {
    if topic.len() > max_len {
        return Err(Close::Protocol(
            ReasonCode::TOPIC_NAME_INVALID,
            format!(
                "topic name is {} bytes, more than max-topic-length ({max_len})",
                topic.len()
            ),
        ));
    }
    let levels = topic::levels(topic);
    if levels > max {
        return Err(Close::Protocol(
            ReasonCode::TOPIC_NAME_INVALID,
            format!("topic name has {levels} levels, more than max-topic-levels ({max})"),
        ));
    }
    Ok(())
}

/// The Reason String of a SUBACK that refuses filters: which, and why.
fn suback_reason(codes: &[ReasonCode]) -> Option<String> {
    let refused: Vec<String> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_error())
        .map(|(i, c)| {
            let why = match *c {
                ReasonCode::NOT_AUTHORIZED => "not authorized",
                ReasonCode::QUOTA_EXCEEDED => "subscription quota exceeded",
                ReasonCode::TOPIC_FILTER_INVALID => "invalid filter",
                _ => "refused",
            };
            format!("filter {}: {why}", i + 1)
        })
        .collect();
    (!refused.is_empty()).then(|| refused.join("; "))
}

/// The Reason String of a refused PUBLISH.
fn publish_refusal(code: ReasonCode, why: Option<Refusal>) -> Option<&'static str> {
    match code {
        ReasonCode::NOT_AUTHORIZED => Some("not authorized to publish to this topic"),
        ReasonCode::QUOTA_EXCEEDED if why == Some(Refusal::RetainedFull) => {
            Some("the broker's retained-message limit is reached")
        }
        ReasonCode::QUOTA_EXCEEDED => Some("a persistent subscriber's queue is full"),
        ReasonCode::PAYLOAD_FORMAT_INVALID => Some("the payload is not UTF-8"),
        _ => None,
    }
}

impl Machine {
    /// Handles one packet; an `Err` ends the connection.
    pub(crate) fn handle(&mut self, client: &mut Client, packet: Packet) -> Result<(), Close> {
        let v = client.version;
        tracing::trace!(client_id = %client.client_id(), packet = ?packet.packet_type(), "received");
        match packet {
            Packet::Publish(publish) => self.on_publish(client, publish),
            Packet::PubAck(ack) => {
                let done = client.session.state.lock().acknowledge(ack.packet_id);
                self.acked(client, done);
                Ok(())
            }
            Packet::PubRec(ack) => {
                let journal_len = self.journal.len();
                let (code, forget) = {
                    let mut st = client.session.state.lock();
                    let not_found = (Some(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND), None);
                    if ack.reason_code.is_error() {
                        // The receiver refused the message: the exchange ends here.
                        match st.take_inflight(ack.packet_id) {
                            Some(i) => (None, i.delivery.stored.seq()),
                            None => not_found,
                        }
                    } else {
                        match st.inflight_mut(ack.packet_id) {
                            Some(i) => {
                                i.released = true;
                                if let Some(seq) = i.delivery.stored.seq() {
                                    self.journal.in_flight(client.client_id(), seq, i);
                                }
                                (Some(ReasonCode::SUCCESS), None)
                            }
                            None => not_found,
                        }
                    }
                };
                self.forget(client, forget);
                if let Some(code) = code {
                    let rel = Ack {
                        packet_id: ack.packet_id,
                        reason_code: code,
                        ..Ack::default()
                    };
                    // [MQTT-4.3.3]: once PUBREL is out, only PUBREL may be
                    // resent; with durability "always" the released state is
                    // on disk first, so a restart cannot resend the PUBLISH.
                    let wait = self.journal.len() > journal_len && self.acks_wait();
                    self.send_ack(Packet::PubRel(rel), wait, v);
                }
                Ok(())
            }
            Packet::PubRel(ack) => {
                let found = client.session.state.lock().released_qos2(ack.packet_id);
                if found
                    && client
                        .session
                        .persistent
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    self.journal
                        .qos2_released(client.client_id().clone(), ack.packet_id);
                }
                let comp = Ack {
                    packet_id: ack.packet_id,
                    reason_code: if found {
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                    },
                    ..Ack::default()
                };
                self.send_ack(Packet::PubComp(comp), false, v);
                Ok(())
            }
            Packet::PubComp(ack) => {
                let done = client.session.state.lock().take_inflight(ack.packet_id);
                self.acked(client, done);
                Ok(())
            }
            Packet::Subscribe(sub) => {
                self.on_subscribe(client, sub);
                Ok(())
            }
            Packet::Unsubscribe(unsub) => {
                self.on_unsubscribe(client, unsub);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp, v);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(client, d),
            Packet::Auth(a) => self.on_auth(client, a),
            Packet::Connect(_) => Err(protocol_error("[MQTT-3.1.0-2] second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => Err(
                protocol_error(format!("{:?} from a client", packet.packet_type())),
            ),
        }
    }

    /// A QoS 1/2 delivery the client acknowledged (PUBACK, PUBCOMP): told to
    /// observers, and its record removed from the store.
    fn acked(&mut self, client: &Client, done: Option<crate::session::Inflight>) {
        let Some(done) = done else { return };
        self.broker
            .events
            .emit(crate::events::EventKind::MessageAcked, || {
                Event::MessageAcked {
                    client_id: client.client_id().clone(),
                    topic: done.delivery.msg.topic.clone(),
                    qos: done.delivery.qos,
                }
            });
        self.forget(client, done.delivery.stored.seq());
    }

    /// Removes a delivered message's record from the store.
    fn forget(&mut self, client: &Client, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.journal.forget(client.client_id(), seq);
        }
    }

    /// Counts a refused SUBSCRIBE filter; its reason code.
    fn refuse(&self, why: SubscribeRefusal) -> ReasonCode {
        self.broker.metrics.subscribe_refusals.inc(why as usize);
        match why {
            SubscribeRefusal::Invalid => ReasonCode::TOPIC_FILTER_INVALID,
            SubscribeRefusal::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            SubscribeRefusal::QuotaExceeded => ReasonCode::QUOTA_EXCEEDED,
        }
    }

    /// Whether acknowledgements wait until what they acknowledge is written
    /// (durability "always").
    pub(super) fn acks_wait(&self) -> bool {
        self.broker.store().is_some_and(|s| s.acks_wait())
    }

    fn on_disconnect(&mut self, client: &mut Client, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2]: a session that ended with the connection cannot be revived.
            if client.expiry_interval == 0 && expiry != 0 {
                return Err(protocol_error(
                    "[MQTT-3.14.2-2] session expiry changed from 0",
                ));
            }
            client.expiry_interval = expiry;
        }
        if d.reason_code == ReasonCode::DISCONNECT_WITH_WILL {
            Err(Close::NormalWithWill)
        } else {
            Err(Close::Normal)
        }
    }

    fn on_publish(&mut self, client: &mut Client, mut publish: Publish) -> Result<(), Close> {
        let v = client.version;
        let config = &self.broker.config;
        let m = &self.broker.metrics;
        m.received.add(publish.qos, 1);
        m.received_payload
            .add(publish.qos, publish.payload.len() as u64);
        if v.is_v5() {
            if !publish.properties.subscription_identifiers.is_empty() {
                return Err(protocol_error(
                    "[MQTT-3.3.4-6] subscription identifier from a client",
                ));
            }
            if let Some(alias) = publish.properties.topic_alias {
                let idx = usize::from(alias) - 1;
                if idx >= usize::from(client.alias_max) {
                    return Err(Close::Protocol(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        format!("[MQTT-3.3.2-9] topic alias {alias} above the maximum"),
                    ));
                }
                if publish.topic.is_empty() {
                    let known = client.aliases.as_ref().and_then(|a| a.inbound.get(idx));
                    publish.topic = known.cloned().flatten().ok_or_else(|| {
                        protocol_error(format!("[MQTT-3.3.2-12] unknown topic alias {alias}"))
                    })?;
                } else {
                    let inbound = &mut client.aliases_mut().inbound;
                    if inbound.len() <= idx {
                        inbound.resize(idx + 1, None);
                    }
                    inbound[idx] = Some(crate::message::owned(&publish.topic));
                }
            }
            if publish.retain && !config.retain_available {
                return Err(Close::Protocol(
                    ReasonCode::RETAIN_NOT_SUPPORTED,
                    "retain".into(),
                ));
            }
        }
        if let Some(m) = &client.mountpoint {
            publish.topic = super::mount::topic(m, &publish.topic);
            if publish.topic.len() > usize::from(u16::MAX) {
                return Err(Close::Protocol(
                    ReasonCode::TOPIC_NAME_INVALID,
                    "topic name too long with the mountpoint".into(),
                ));
            }
        }
        check_topic_levels(
            &publish.topic,
            config.max_topic_levels,
            config.max_topic_length,
        )?;
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        // Exactly once: a resent QoS 2 PUBLISH whose PUBREC we sent is not routed again.
        if qos == QoS::ExactlyOnce {
            let st = client.session.state.lock();
            if st.awaits_release(packet_id) {
                drop(st);
                self.send_ack(Packet::PubRec(Ack::new(packet_id)), false, v);
                return Ok(());
            }
            // Only an MQTT 5 client has been told the Receive Maximum; an
            // older one is bounded by the packet id space alone.
            let limit = if v.is_v5() {
                config.receive_maximum
            } else {
                u16::MAX
            };
            if st.incoming_qos2_len() >= usize::from(limit) {
                return Err(Close::Protocol(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "[MQTT-3.3.4-9] receive maximum exceeded".into(),
                ));
            }
        }
        let mut code = ReasonCode::SUCCESS;
        let mut refusal = None;
        let mut cluster_wait = None;
        let journal_len = self.journal.len();
        if publish.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            if qos == QoS::AtMostOnce {
                return Err(Close::Protocol(
                    ReasonCode::PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8".into(),
                ));
            }
            code = ReasonCode::PAYLOAD_FORMAT_INVALID;
        } else if !self.broker.allowed_with(
            client.acl.as_deref(),
            client.grant.as_deref(),
            client.username.as_deref(),
            client.client_id(),
            &publish.topic,
            Access::Write,
        ) {
            tracing::debug!(client_id = %client.client_id(), topic = %publish.topic, "publish denied by ACL");
            code = ReasonCode::NOT_AUTHORIZED;
        } else {
            // Expiry counts from when the packet was read (no clock read
            // per message).
            let msg = Arc::new(Message::from_publish(
                publish,
                Some(client.client_id().clone()),
                self.last_rx,
            ));
            let mut routed = crate::broker::Routed {
                congested: std::mem::take(&mut self.congested),
                // Only MQTT 5 can be told; QoS 0 has nothing to refuse.
                may_refuse: v.is_v5() && qos != QoS::AtMostOnce,
                refused: None,
                cluster_wait: None,
                // Unacknowledged when its connection ends, a QoS 1 message
                // is sent again (and routed anew), a session ending with
                // the connection owes nothing; a lasting session's QoS 2
                // one is not routed again once its packet id is recorded
                // (below), with a store or without.
                withdrawable: qos == QoS::AtLeastOnce || client.expiry_interval == 0,
            };
            let offered =
                self.broker
                    .publish_from_client(&msg, &mut self.journal, Some(&mut routed));
            self.congested = routed.congested;
            cluster_wait = routed.cluster_wait;
            if let Some(why) = routed.refused {
                code = ReasonCode::QUOTA_EXCEEDED;
                refusal = Some(why);
                if why == Refusal::QueueFull {
                    tracing::debug!(client_id = %client.client_id(), topic = %msg.topic, "publish refused: a persistent subscriber's queue is full");
                    crate::metrics::Metrics::add(&self.broker.metrics.publishes_refused, 1);
                } else {
                    tracing::debug!(client_id = %client.client_id(), topic = %msg.topic, "publish refused: the retained-message limit is reached");
                }
            } else if offered == 0 && !self.broker.cluster().shares_across_nodes() {
                // (In a cluster the subscribers may be on other nodes.)
                code = ReasonCode::NO_MATCHING_SUBSCRIBERS;
            }
        }
        // 3.x cannot report a refusal: the message is acknowledged and dropped.
        if !v.is_v5() {
            code = ReasonCode::SUCCESS;
        }
        let mut ack = Ack {
            packet_id,
            reason_code: code,
            ..Ack::default()
        };
        if code.is_error() && client.problem_info {
            ack.properties.reason_string = publish_refusal(code, refusal).map(Into::into);
        }
        let persistent = client
            .session
            .persistent
            .load(std::sync::atomic::Ordering::Relaxed);
        let packet = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                if !code.is_error() {
                    client.session.state.lock().received_qos2(packet_id);
                    if persistent {
                        self.journal
                            .qos2_received(client.client_id().clone(), packet_id);
                    }
                }
                Some(Packet::PubRec(ack))
            }
        };
        // With durability "always", the acknowledgement waits until what it
        // acknowledges is on disk; acknowledgements keep their order.
        if let Some(packet) = packet {
            let wait = self.journal.len() > journal_len && self.acks_wait();
            self.send_ack_after(packet, wait, cluster_wait, v);
        }
        Ok(())
    }

    fn on_subscribe(&mut self, client: &mut Client, sub: Subscribe) {
        let v = client.version;
        let sub_id = sub.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(sub.subscriptions.len());
        let mut retained: Vec<RetainedWalk> = Vec::new();
        for s in &sub.subscriptions {
            let filter = &s.filter;
            let shared = parse_shared(filter);
            let valid = match &shared {
                Ok(Some(_)) => true,
                Ok(None) => validate_filter(filter).is_ok(),
                Err(_) => false,
            };
            if !valid {
                codes.push(self.refuse(SubscribeRefusal::Invalid));
                continue;
            }
            // Under a mountpoint the filter gets the prefix (inside `$share/group/`).
            let filter = &super::mount::filter_for(client.mountpoint.as_deref(), filter);
            if !super::mount::valid_filter(filter) {
                codes.push(self.refuse(SubscribeRefusal::Invalid));
                continue;
            }
            let (share, inner) = split_share(filter);
            if topic::levels(inner) > self.broker.config.max_topic_levels
                || inner.len() > self.broker.config.max_topic_length
            {
                codes.push(self.refuse(SubscribeRefusal::Invalid));
                continue;
            }
            // A new filter past the session's quota is refused; replacing one
            // it holds is not.
            let quota = self.broker.config.max_subscriptions_per_client;
            let full = {
                let st = client.session.state.lock();
                st.subscription_count() >= quota && st.subscription(filter).is_none()
            };
            if full {
                codes.push(self.refuse(SubscribeRefusal::QuotaExceeded));
                continue;
            }
            if !self.broker.allowed_with(
                client.acl.as_deref(),
                client.grant.as_deref(),
                client.username.as_deref(),
                client.client_id(),
                inner,
                Access::Read,
            ) {
                codes.push(self.refuse(SubscribeRefusal::NotAuthorized));
                continue;
            }
            let granted = s.options.qos.min(QoS::ExactlyOnce);
            let mut options = s.options;
            options.qos = granted;
            let existed = self.broker.topics.write().subscribe(
                share,
                inner,
                Subscriber {
                    session: client.session.clone(),
                    options,
                    id: sub_id,
                },
            );
            if !existed {
                self.broker.cluster().interest(filter, true);
            }
            client.session.state.lock().subscribe(
                crate::message::owned(filter),
                SubEntry {
                    options,
                    id: sub_id,
                },
            );
            codes.push(ReasonCode(granted as u8));
            // Retained messages: never for shared subscriptions (spec 4.8.2), and
            // as Retain Handling says.
            let send_retained = share.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            // Streamed after the SUBACK as the queue drains (`Machine::drain`).
            if send_retained {
                retained.push(RetainedWalk {
                    filter: crate::message::owned(filter),
                    after: None,
                    granted,
                    sub_id,
                });
            }
        }
        let mut ack = SubAck {
            packet_id: sub.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        };
        if client.problem_info {
            ack.properties.reason_string = suback_reason(&ack.reason_codes).map(Into::into);
        }
        // In a cluster, the SUBACK waits until the other nodes' NATS servers
        // have the new interest: what they publish from then on arrives.
        match self.broker.cluster().interest_ready() {
            Some(ready) => {
                let (done, wait) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    ready.await;
                    let _ = done.send(());
                });
                self.send_ack_after(Packet::SubAck(ack), false, Some(wait), v);
            }
            None => self.send(&Packet::SubAck(ack), v),
        }
        let journal = &mut self.journal;
        if client
            .session
            .persistent
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let st = client.session.state.lock();
            for s in &sub.subscriptions {
                let filter = super::mount::filter_for(client.mountpoint.as_deref(), &s.filter);
                if let Some(entry) = st.subscription(&filter) {
                    journal.subscribed(client.client_id(), &filter, entry.options, entry.id);
                }
            }
        }
        if !retained.is_empty() {
            let mut st = client.session.state.lock();
            for walk in retained {
                st.retained_walks().start(walk);
            }
        }
    }

    fn on_unsubscribe(&mut self, client: &mut Client, unsub: Unsubscribe) {
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for filter in &unsub.filters {
            let filter = &super::mount::filter_for(client.mountpoint.as_deref(), filter);
            let (share, inner) = split_share(filter);
            // No filter this deep, or invalid, can have been granted.
            if topic::levels(inner) > self.broker.config.max_topic_levels
                || !super::mount::valid_filter(filter)
            {
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let removed = self
                .broker
                .topics
                .write()
                .unsubscribe(share, inner, &client.session);
            if removed {
                self.broker.cluster().interest(filter, false);
            }
            let existed = client.session.state.lock().unsubscribe(filter);
            if existed
                && client
                    .session
                    .persistent
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.journal
                    .unsubscribed(client.client_id().clone(), filter.clone());
            }
            codes.push(if removed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        let ack = UnsubAck {
            packet_id: unsub.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        };
        self.send(&Packet::UnsubAck(ack), client.version);
    }
}
