//! `[[bridge]]`: a store-and-forward link to another MQTT broker.
//!
//! Each bridge has two ends. Locally, it is a client of this broker over an
//! in-memory connection ([`LocalConnector::connect_internal`]), with a
//! persistent session that never expires: what the `out` topics match is
//! queued in that session, on disk like any persistent session's queue.
//! Remotely, it is a [`starling_client::Client`] with a persistent session and
//! reconnection that never gives up.
//!
//! A QoS 1/2 message goes out in order ([`Client::publish_queued`]), up to
//! [`IN_FLIGHT`] at a time and at most `max-rate` per second, and is
//! acknowledged to this broker (PUBACK, or PUBREC for QoS 2) only once the
//! remote broker acknowledged it. Until then it stays in the bridge's
//! session: a remote outage leaves it queued (the backlog drains at
//! `max-rate` once the remote is back), and a `kill -9` of this broker
//! leaves it on disk, sent again after the restart. Delivery is therefore at
//! least once: a message the remote acknowledged just before a crash may be
//! sent twice.
//!
//! `in` topics are subscribed on the remote broker and published here; the
//! remote broker's copy is acknowledged only once this broker acknowledged
//! it (manual acknowledgements), so a crash here loses nothing in that
//! direction either.
//!
//! Loops: both ends subscribe with No Local (MQTT 5), so a bridge never gets
//! back what it sent; each forwarded message carries the user property
//! `x-starling-bridge` with the bridge's name, and a bridge drops a message
//! that already carries its own name, or [`MAX_HOPS`] names, so that two
//! brokers bridged to each other cannot pass a message around forever.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use starling_broker::config::{BridgeConfig, BridgeTopic, Direction};
use starling_broker::LocalConnector;
use starling_client::{Client, ConnectOptions, ReconnectOptions};
use starling_codec::topic::matches;
use starling_codec::{
    Ack, ByteString, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, RetainHandling, Subscribe, Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most messages a bridge has in flight towards the remote broker.
pub const IN_FLIGHT: usize = 64;
/// Most bridges a message may cross.
pub const MAX_HOPS: usize = 8;
/// The user property that names the bridges a message crossed.
pub const HOP_PROPERTY: &str = "x-starling-bridge";
/// Longest wait between two attempts to reach the remote broker.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running bridges of a broker, restarted by [`Bridges::reload`].
pub struct Bridges {
    connector: LocalConnector,
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.running.lock().keys().cloned().collect();
        f.debug_struct("Bridges").field("running", &names).finish()
    }
}

struct Running {
    config: BridgeConfig,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Bridges {
    /// Starts `configs` against the broker behind `connector`. Each
    /// bridge's local session and subscriptions exist when this returns:
    /// call it before the broker serves its listeners, and nothing
    /// published for a bridge is missed, even while its remote broker is
    /// unreachable.
    pub async fn start(connector: LocalConnector, configs: &[BridgeConfig]) -> Arc<Bridges> {
        for config in configs {
            if let Err(why) = Link::new(config).prime(&connector).await {
                tracing::error!(bridge = %config.name, "local session not set up: {why}");
            }
        }
        let bridges = Arc::new(Bridges {
            connector,
            running: Mutex::new(HashMap::new()),
        });
        bridges.reload(configs);
        bridges
    }

    /// Makes the running bridges those of `configs`: new ones start,
    /// removed ones stop (their local session is discarded), changed ones
    /// restart (keeping their local session and its queue); the others run on.
    ///
    /// A new bridge's local session is set up by its task: messages
    /// published before it subscribed are not carried.
    pub fn reload(&self, configs: &[BridgeConfig]) {
        let mut running = self.running.lock();
        let wanted: HashSet<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                let _ = r.stop.send(true);
                let connector = self.connector.clone();
                tokio::spawn(async move {
                    let _ = r.task.await;
                    discard_local_session(&connector, &name).await;
                    tracing::info!(bridge = %name, "bridge removed");
                });
            }
        }
        for config in configs {
            if running
                .get(&config.name)
                .is_some_and(|r| &r.config == config)
            {
                continue;
            }
            if let Some(old) = running.remove(&config.name) {
                let _ = old.stop.send(true);
            }
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(run(config.clone(), self.connector.clone(), stopped));
            running.insert(
                config.name.clone(),
                Running {
                    config: config.clone(),
                    stop,
                    task,
                },
            );
        }
    }

    /// Stops every bridge (their sessions stay, with their queues).
    pub async fn stop(&self) {
        let all: Vec<Running> = self.running.lock().drain().map(|(_, r)| r).collect();
        for r in all {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }
}

fn local_client_id(name: &str) -> String {
    format!("starling-bridge-{name}-local")
}

/// Ends a removed bridge's local session, so that nothing queues for it.
async fn discard_local_session(connector: &LocalConnector, name: &str) {
    let mut c = Connect::new(ProtocolVersion::V5, local_client_id(name).as_str());
    c.clean_start = true;
    let stream = connector.connect_internal(&format!("$bridge/{name}"));
    let Ok(mut local) = Local::open(stream, c).await else {
        return;
    };
    local.send(Packet::Disconnect(Disconnect::default()));
    let _ = local.flush().await;
}

/// One bridge, until `stop`: reconnects its local end when it closes.
async fn run(config: BridgeConfig, connector: LocalConnector, mut stop: watch::Receiver<bool>) {
    let name = config.name.clone();
    let Some(remote) = connect_remote(&config, &mut stop).await else {
        return;
    };
    let remote = Arc::new(remote);
    let link = Link::new(&config);
    let (in_tx, mut in_rx) = mpsc::channel::<starling_client::Message>(IN_FLIGHT);
    let receiver = {
        let remote = remote.clone();
        tokio::spawn(async move {
            while let Some(msg) = remote.recv().await {
                if in_tx.send(msg).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        match link.serve(&connector, &remote, &mut in_rx, &mut stop).await {
            Ok(()) => break,
            Err(why) => {
                tracing::warn!(bridge = %name, "local link ended: {why}; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    receiver.abort();
    let _ = remote.disconnect().await;
}

/// Connects to the remote broker, retrying with backoff until it answers
/// or the bridge stops.
async fn connect_remote(config: &BridgeConfig, stop: &mut watch::Receiver<bool>) -> Option<Client> {
    let opts = match remote_options(config) {
        Ok(o) => o,
        Err(why) => {
            tracing::error!(bridge = %config.name, "bridge not started: {why}");
            return None;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match Client::connect(opts.clone()).await {
            Ok((client, info)) => {
                tracing::info!(bridge = %config.name, url = %config.url, session_present = info.session_present, "bridge connected");
                let link = Link::new(config);
                if let Err(e) = link.subscribe_remote(&client).await {
                    tracing::warn!(bridge = %config.name, "remote subscriptions failed: {e}");
                }
                return Some(client);
            }
            Err(e) => {
                tracing::warn!(bridge = %config.name, url = %config.url, "remote broker not reached: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn remote_options(config: &BridgeConfig) -> Result<ConnectOptions, String> {
    let mut o = ConnectOptions::from_url(&config.url).map_err(|e| e.to_string())?;
    o.client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("starling-bridge-{}", config.name));
    o.version = if config.protocol == "3.1.1" {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V5
    };
    o.clean_start = false;
    o.session_expiry = Some(u32::MAX);
    if let Some(u) = &config.username {
        o.username = Some(u.clone());
    }
    if let Some(p) = &config.password {
        o.password = Some(p.clone().into());
    }
    o.tls.ca_file = config.tls_ca.clone();
    o.tls.client_cert = config.tls_cert.clone();
    o.tls.client_key = config.tls_key.clone();
    o.reconnect = Some(ReconnectOptions {
        max_attempts: None,
        max_delay: MAX_BACKOFF,
        ..ReconnectOptions::default()
    });
    o.message_capacity = IN_FLIGHT;
    // A message from the remote broker is acknowledged there only once this
    // broker has it.
    o.manual_acks = true;
    Ok(o)
}

/// What a bridge carries, and how its topics map.
struct Link {
    name: String,
    topics: Vec<BridgeTopic>,
    /// Time between two messages sent out (`max-rate`).
    every: Option<Duration>,
}

impl Link {
    fn new(config: &BridgeConfig) -> Link {
        Link {
            name: config.name.clone(),
            topics: config.topic.clone(),
            every: (config.max_rate > 0)
                .then(|| Duration::from_nanos(1_000_000_000 / config.max_rate)),
        }
    }

    fn going(&self, out: bool) -> impl Iterator<Item = &BridgeTopic> {
        self.topics.iter().filter(move |t| {
            matches!(
                (t.direction, out),
                (Direction::Both, _) | (Direction::Out, true) | (Direction::In, false)
            )
        })
    }

    async fn subscribe_remote(&self, remote: &Client) -> Result<(), starling_client::ClientError> {
        let filters: Vec<(String, SubscriptionOptions)> = self
            .going(false)
            .map(|t| (format!("{}{}", t.remote_prefix, t.filter), options(t.qos)))
            .collect();
        if !filters.is_empty() {
            remote
                .subscribe_many(filters, Properties::default())
                .await?;
        }
        Ok(())
    }

    /// The remote topic of a local one, if an `out` topic carries it.
    fn outward(&self, topic: &str) -> Option<String> {
        self.going(true).find_map(|t| {
            let rest = topic.strip_prefix(&t.local_prefix)?;
            matches(&t.filter, rest).then(|| format!("{}{rest}", t.remote_prefix))
        })
    }

    /// The local topic of a remote one, if an `in` topic carries it.
    fn inward(&self, topic: &str) -> Option<(String, QoS)> {
        self.going(false).find_map(|t| {
            let rest = topic.strip_prefix(&t.remote_prefix)?;
            matches(&t.filter, rest).then(|| (format!("{}{rest}", t.local_prefix), qos(t.qos)))
        })
    }

    /// Whether a message must not cross this bridge (it did already, or
    /// crossed too many).
    fn looped(&self, properties: &Properties) -> bool {
        let hops: Vec<&ByteString> = properties
            .user_properties
            .iter()
            .filter(|(k, _)| &**k == HOP_PROPERTY)
            .map(|(_, v)| v)
            .collect();
        hops.len() >= MAX_HOPS || hops.iter().any(|h| ***h == *self.name)
    }

    /// Properties to send on: what the message had, with our name added.
    fn carried(&self, mut properties: Properties) -> Properties {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        properties
            .user_properties
            .push((HOP_PROPERTY.into(), self.name.as_str().into()));
        properties
    }

    /// Opens the local end: a persistent session with the `out` subscriptions.
    async fn open_local(&self, connector: &LocalConnector) -> Result<Local, String> {
        let mut c = Connect::new(ProtocolVersion::V5, local_client_id(&self.name).as_str());
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(u32::MAX);
        c.properties.receive_maximum = Some(IN_FLIGHT as u16);
        let stream = connector.connect_internal(&format!("$bridge/{}", self.name));
        let mut local = Local::open(stream, c).await?;
        let subscriptions: Vec<Subscription> = self
            .going(true)
            .map(|t| Subscription {
                filter: format!("{}{}", t.local_prefix, t.filter).as_str().into(),
                options: options(t.qos),
            })
            .collect();
        if !subscriptions.is_empty() {
            local.send(Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                subscriptions,
            }));
        }
        local.flush().await?;
        Ok(local)
    }

    /// Makes sure the local session and its subscriptions exist (before
    /// the remote broker is reached): waits for the SUBACK, then leaves.
    async fn prime(&self, connector: &LocalConnector) -> Result<(), String> {
        let mut local = self.open_local(connector).await?;
        if self.going(true).next().is_some() {
            let wait = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Packet::SubAck(_) = local.next().await? {
                        return Ok::<(), String>(());
                    }
                }
            });
            wait.await.map_err(|_| "no SUBACK".to_string())??;
        }
        local.send(Packet::Disconnect(Disconnect::default()));
        local.flush().await
    }

    /// Serves the local end until it closes (`Err`) or the bridge stops (`Ok`).
    async fn serve(
        &self,
        connector: &LocalConnector,
        remote: &Arc<Client>,
        in_rx: &mut mpsc::Receiver<starling_client::Message>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut local = self.open_local(connector).await?;
        let mut forwarding = FuturesUnordered::new();
        let mut next_slot = Instant::now();
        // QoS 2 messages forwarded or being forwarded, by local packet id.
        let mut qos2: HashSet<u16> = HashSet::new();
        let mut local_ids = PacketIds::default();
        loop {
            let room = forwarding.len() < IN_FLIGHT;
            tokio::select! {
                _ = stop.changed() => {
                    local.send(Packet::Disconnect(Disconnect::default()));
                    let _ = local.flush().await;
                    return Ok(());
                }
                packet = local.next(), if room => {
                    match packet? {
                        Packet::Publish(p) => {
                            if let Some(ack) = self.forward(p, remote, &mut next_slot, &mut qos2).await? {
                                forwarding.push(ack);
                            }
                        }
                        Packet::PubRel(a) => {
                            qos2.remove(&a.packet_id);
                            local.send(Packet::PubComp(Ack::new(a.packet_id)));
                        }
                        Packet::PubAck(a) | Packet::PubComp(a) => {
                            // Brought in and safe here: the remote broker may forget it.
                            if let Some(msg) = local_ids.release(a.packet_id) {
                                let _ = remote.ack(&msg).await;
                            }
                        }
                        Packet::PubRec(a) => local.send(Packet::PubRel(Ack::new(a.packet_id))),
                        Packet::SubAck(_) | Packet::PingResp => {}
                        Packet::Disconnect(d) => return Err(format!("the broker ended the link: {}", d.reason_code)),
                        other => return Err(format!("unexpected {:?}", other.packet_type())),
                    }
                }
                Some(done) = forwarding.next(), if !forwarding.is_empty() => {
                    let (packet_id, qos, result): (u16, QoS, Result<ReasonCode, starling_client::ClientError>) = done;
                    match result {
                        Ok(code) => {
                            if code.is_error() {
                                tracing::warn!(bridge = %self.name, %code, "the remote broker refused a message; it is dropped");
                            }
                            local.send(match qos {
                                QoS::ExactlyOnce => Packet::PubRec(Ack::new(packet_id)),
                                _ => Packet::PubAck(Ack::new(packet_id)),
                            });
                        }
                        // The remote client is closed: the message stays
                        // queued here, the link starts again.
                        Err(e) => return Err(format!("remote publish failed: {e}")),
                    }
                }
                Some(msg) = in_rx.recv(), if local_ids.has_room() => {
                    if let Some(done) = self.bring_in(msg, &mut local, &mut local_ids) {
                        let _ = remote.ack(&done).await;
                    }
                }
            }
            local.flush().await?;
        }
    }

    /// Starts forwarding a local message; its acknowledgement, if it has one
    /// to wait for. A message that must not go out is acknowledged at once.
    async fn forward(
        &self,
        p: Publish,
        remote: &Arc<Client>,
        next_slot: &mut Instant,
        qos2: &mut HashSet<u16>,
    ) -> Result<Option<Forwarded>, String> {
        let (id, qos) = (p.packet_id, p.qos);
        let done = |code| -> Forwarded { Box::pin(async move { (id, qos, Ok(code)) }) };
        // A QoS 2 message sent again (DUP) while we forward it: once is enough.
        if qos == QoS::ExactlyOnce && !qos2.insert(id) {
            return Ok(None);
        }
        let target = self.outward(&p.topic);
        let (Some(topic), false) = (target, self.looped(&p.properties)) else {
            return Ok((qos != QoS::AtMostOnce).then(|| done(ReasonCode::SUCCESS)));
        };
        if let Some(every) = self.every {
            let now = Instant::now();
            if *next_slot > now {
                tokio::time::sleep_until(*next_slot).await;
            }
            *next_slot = (*next_slot).max(now) + every;
        }
        let properties = self.carried(p.properties);
        let ack = remote
            .publish_queued(topic, p.payload, qos, p.retain, properties)
            .await
            .map_err(|e| e.to_string())?;
        if qos == QoS::AtMostOnce {
            return Ok(None);
        }
        Ok(Some(Box::pin(async move { (id, qos, ack.await) })))
    }

    /// Publishes a message from the remote broker here (at QoS 1 at most).
    /// The remote message is acknowledged when this broker acknowledged it
    /// (the remote client uses manual acknowledgements); one that is not
    /// carried, or goes on at QoS 0, is returned to be acknowledged now.
    fn bring_in(
        &self,
        msg: starling_client::Message,
        local: &mut Local,
        ids: &mut PacketIds,
    ) -> Option<starling_client::Message> {
        let Some((topic, max)) = self.inward(&msg.topic) else {
            return Some(msg);
        };
        if self.looped(&msg.properties) {
            return Some(msg);
        }
        let qos = msg.qos.min(max).min(QoS::AtLeastOnce);
        let mut p = Publish::new(topic.as_str(), msg.payload.clone());
        p.qos = qos;
        p.retain = msg.retain;
        p.properties = self.carried(msg.properties.clone());
        let done = if qos == QoS::AtMostOnce {
            Some(msg)
        } else {
            p.packet_id = ids.take(Some(msg));
            None
        };
        local.send(Packet::Publish(p));
        done
    }
}

type Forwarded = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (u16, QoS, Result<ReasonCode, starling_client::ClientError>),
            > + Send,
    >,
>;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn options(q: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: qos(q),
        no_local: true,
        retain_as_published: true,
        // Retained messages once, when the subscription is new: not again
        // each time the bridge restarts.
        retain_handling: RetainHandling::SendIfNew,
    }
}

/// Packet ids of the messages brought in, not yet acknowledged here, with
/// the remote message each one acknowledges once it is.
#[derive(Default)]
struct PacketIds {
    used: HashMap<u16, Option<starling_client::Message>>,
    next: u16,
}

impl PacketIds {
    fn has_room(&self) -> bool {
        self.used.len() < IN_FLIGHT
    }

    fn take(&mut self, remote: Option<starling_client::Message>) -> u16 {
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.used.entry(self.next) {
                e.insert(remote);
                return self.next;
            }
        }
    }

    /// The remote message to acknowledge now that `id` was acknowledged here.
    fn release(&mut self, id: u16) -> Option<starling_client::Message> {
        self.used.remove(&id).flatten()
    }
}

/// The local end: MQTT 5 over an in-memory connection to this broker.
struct Local {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
}

impl Local {
    /// Connects with `connect`; fails unless the CONNACK is a success.
    async fn open(stream: DuplexStream, connect: Connect) -> Result<Local, String> {
        let (rd, wr) = tokio::io::split(stream);
        let mut local = Local {
            rd,
            wr,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            decoder: Decoder::with_version(ProtocolVersion::V5),
        };
        local.send(Packet::Connect(Box::new(connect)));
        local.flush().await?;
        match local.next().await? {
            Packet::ConnAck(ack) if !ack.reason_code.is_error() => Ok(local),
            other => Err(format!("the broker refused the bridge: {other:?}")),
        }
    }

    fn send(&mut self, packet: Packet) {
        if let Err(e) = packet.encode(ProtocolVersion::V5, &mut self.wbuf) {
            tracing::warn!("bridge: cannot encode {:?}: {e}", packet.packet_type());
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.wr
            .write_all(&self.wbuf)
            .await
            .map_err(|e| e.to_string())?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next packet from the broker. Cancel-safe: bytes read stay in the buffer.
    async fn next(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.rbuf)
                .map_err(|e| e.to_string())?
            {
                return Ok(p);
            }
            let n = self
                .rd
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the broker closed the link".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::new(&BridgeConfig {
            name: "edge".into(),
            url: "mqtt://127.0.0.1:1883".into(),
            max_rate: 1000,
            topic: vec![
                BridgeTopic {
                    direction: Direction::Out,
                    filter: "sensors/#".into(),
                    local_prefix: "site/".into(),
                    remote_prefix: "fleet/a/".into(),
                    ..BridgeTopic::default()
                },
                BridgeTopic {
                    direction: Direction::Both,
                    filter: "shared/+".into(),
                    qos: 2,
                    ..BridgeTopic::default()
                },
                BridgeTopic {
                    direction: Direction::In,
                    filter: "cmd/#".into(),
                    qos: 0,
                    local_prefix: "in/".into(),
                    remote_prefix: "fleet/a/".into(),
                },
            ],
            ..BridgeConfig::default()
        })
    }

    #[test]
    fn topics_map_through_their_prefixes_and_directions() {
        let l = link();
        assert_eq!(
            l.outward("site/sensors/t").as_deref(),
            Some("fleet/a/sensors/t")
        );
        assert_eq!(l.outward("sensors/t"), None);
        assert_eq!(l.outward("shared/x").as_deref(), Some("shared/x"));
        assert_eq!(l.outward("in/cmd/x"), None);
        assert_eq!(
            l.inward("fleet/a/cmd/reboot"),
            Some(("in/cmd/reboot".into(), QoS::AtMostOnce))
        );
        assert_eq!(
            l.inward("shared/y"),
            Some(("shared/y".into(), QoS::ExactlyOnce))
        );
        assert_eq!(l.inward("fleet/a/sensors/t"), None);
        assert_eq!(l.every, Some(Duration::from_millis(1)));
    }

    #[test]
    fn a_message_that_crossed_this_bridge_or_too_many_does_not_cross_again() {
        let l = link();
        let mut p = Properties::default();
        assert!(!l.looped(&p));
        p = l.carried(p);
        assert!(l.looped(&p), "it carries our name now");
        let mut other = Properties::default();
        for i in 0..MAX_HOPS {
            other
                .user_properties
                .push((HOP_PROPERTY.into(), format!("b{i}").as_str().into()));
        }
        assert!(l.looped(&other));
        other.user_properties.pop();
        assert!(!l.looped(&other));
    }

    #[test]
    fn local_packet_ids_skip_those_in_use() {
        let mut ids = PacketIds::default();
        let a = ids.take(None);
        let b = ids.take(None);
        assert_ne!(a, b);
        ids.next = u16::MAX;
        assert_eq!((a, b, ids.take(None)), (1, 2, 3), "1 and 2 are in use");
        assert!(ids.release(a).is_none());
        assert!(ids.has_room());
    }
}
