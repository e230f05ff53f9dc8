//! The hot loops: publishers, subscribers and idle holders, on raw TCP through
//! the codec, with `starling-client` versions for the other transports.
//!
//! Raw publishers encode one PUBLISH template with the codec and then, per
//! message, copy it into the write buffer and patch the packet id and the
//! timestamp in place: no allocation per message, one `write` per batch.
//! Raw subscribers decode with the codec, answer QoS 1/2 in batches and take
//! the clock once per read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use starling_client::Client;
use starling_codec::{ByteString, Packet, ProtocolVersion, Publish, QoS};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::net::{Conn, RawConn};
use super::report::{self, unix_nanos, Counters, Latency};

/// Write at most this much per batch.
const WRITE_BATCH: usize = 64 * 1024;
/// Keep at least this much room in the receive buffer before reading.
const READ_ROOM: usize = 16 * 1024;
/// A timestamp older than this is not one of ours.
const MAX_PLAUSIBLE_NS: u64 = 3_600_000_000_000;
/// PINGREQ, in every version.
const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// What every worker shares.
pub struct Ctx {
    pub counters: Arc<Counters>,
    /// End-to-end latency, from timestamps in payloads.
    pub latency: Arc<Latency>,
    /// PUBLISH to PUBACK/PUBCOMP latency.
    pub ack_latency: Arc<Latency>,
    /// When the measured phase started.
    pub start: Instant,
    pub keep_alive: Duration,
}

impl Ctx {
    fn since_start_ns(&self) -> u64 {
        self.start
            .elapsed()
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX)
    }
}

/// Stop signals: `publish` ends publishing (workers still drain acks),
/// `all` ends every worker.
#[derive(Clone)]
pub struct Stops {
    pub publish: watch::Receiver<bool>,
    pub all: watch::Receiver<bool>,
}

fn is_set(rx: &mut watch::Receiver<bool>) -> bool {
    // A dropped sender means the run is over.
    *rx.borrow_and_update() || rx.has_changed().is_err()
}

/// What one publisher does.
#[derive(Debug, Clone)]
pub struct PubPlan {
    pub index: usize,
    pub topic: String,
    pub qos: QoS,
    pub payload_size: usize,
    /// Time between messages; `None` for flat out.
    pub interval: Option<Duration>,
    /// How many messages to send; `None` until stopped.
    pub quota: Option<u64>,
    /// QoS 1/2 messages in flight at once.
    pub inflight: usize,
}

/// Runs a publisher until its quota is sent and acknowledged, or it is stopped.
pub async fn publisher(conn: Conn, plan: PubPlan, ctx: Arc<Ctx>, stops: Stops) {
    let index = plan.index;
    let result = match conn {
        Conn::Raw(raw) => raw_publisher(raw, plan, &ctx, stops).await,
        Conn::Client(client) => client_publisher(client, plan, &ctx, stops).await,
    };
    ctx.counters
        .last_sent_ns
        .fetch_max(ctx.since_start_ns(), Ordering::Relaxed);
    ctx.counters.connected.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        ctx.counters.error(format!("publisher {index}: {e:#}"));
    }
}

/// Runs a subscriber until stopped.
pub async fn subscriber(conn: Conn, index: usize, ctx: Arc<Ctx>, stops: Stops) {
    let result = match conn {
        Conn::Raw(raw) => raw_subscriber(raw, index, &ctx, stops).await,
        Conn::Client(client) => client_subscriber(client, index, &ctx, stops).await,
    };
    ctx.counters.connected.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        ctx.counters.error(format!("subscriber {index}: {e:#}"));
    }
}

/// Holds an idle connection (sending PINGREQ on keep alive) until stopped.
pub async fn holder(conn: Conn, index: usize, ctx: Arc<Ctx>, stops: Stops) {
    let result = match conn {
        Conn::Raw(raw) => raw_holder(raw, &ctx, stops).await,
        Conn::Client(client) => {
            let mut all = stops.all;
            let mut status = client.status();
            loop {
                if is_set(&mut all) {
                    let _ = client.disconnect().await;
                    break Ok(());
                }
                if let starling_client::ConnectionStatus::Closed { reason } = &*status.borrow() {
                    break Err(anyhow::anyhow!("connection closed: {reason}"));
                }
                tokio::select! {
                    _ = all.changed() => {}
                    _ = status.changed() => {}
                }
            }
        }
    };
    ctx.counters.connected.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        ctx.counters.error(format!("connection {index}: {e:#}"));
    }
}

/// The encoded PUBLISH every message of a publisher is copied from.
struct Template {
    bytes: Vec<u8>,
    /// Offset of the packet identifier (QoS 1/2).
    pid_at: usize,
    /// Offset of the payload.
    payload_at: usize,
}

impl Template {
    fn new(version: ProtocolVersion, plan: &PubPlan) -> anyhow::Result<Template> {
        let qos1 = plan.qos != QoS::AtMostOnce;
        let publish = Publish {
            qos: plan.qos,
            topic: ByteString::from(plan.topic.as_str()),
            packet_id: u16::from(qos1),
            payload: Bytes::from(vec![0u8; plan.payload_size]),
            ..Publish::default()
        };
        let mut buf = BytesMut::new();
        Packet::Publish(publish)
            .encode(version, &mut buf)
            .with_context(|| format!("cannot encode a PUBLISH to {:?}", plan.topic))?;
        let payload_at = buf.len() - plan.payload_size;
        // Between the packet id and the payload: the (empty) property length in MQTT 5.
        let props = if version.is_v5() { 1 } else { 0 };
        let pid_at = payload_at - props - 2;
        if qos1 {
            debug_assert_eq!(&buf[pid_at..pid_at + 2], &[0, 1]);
        }
        Ok(Template {
            bytes: buf.to_vec(),
            pid_at,
            payload_at,
        })
    }
}

/// Packet identifiers of the in-flight window, with send times.
struct Window {
    free: Vec<u16>,
    sent_ns: Vec<u64>,
    busy: Vec<bool>,
}

impl Window {
    fn new(size: usize) -> Window {
        Window {
            free: (1..=size as u16).rev().collect(),
            sent_ns: vec![0; size + 1],
            busy: vec![false; size + 1],
        }
    }

    fn in_flight(&self) -> usize {
        self.busy.len() - 1 - self.free.len()
    }

    fn take(&mut self, ts: u64) -> Option<u16> {
        let id = self.free.pop()?;
        self.busy[id as usize] = true;
        self.sent_ns[id as usize] = ts;
        Some(id)
    }

    /// Releases an acknowledged id; returns when it was sent.
    fn release(&mut self, id: u16) -> anyhow::Result<u64> {
        match self.busy.get_mut(id as usize) {
            Some(b) if *b => {
                *b = false;
                self.free.push(id);
                Ok(self.sent_ns[id as usize])
            }
            _ => bail!("acknowledgement for packet id {id}, which is not in flight"),
        }
    }
}

fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(4 * READ_ROOM);
    }
}

async fn raw_publisher(
    mut c: RawConn,
    plan: PubPlan,
    ctx: &Ctx,
    mut stops: Stops,
) -> anyhow::Result<()> {
    let qos = plan.qos;
    let template = Template::new(c.version, &plan)?;
    let window_size = if qos == QoS::AtMostOnce {
        0
    } else {
        plan.inflight
            .clamp(1, usize::from(c.receive_maximum).max(1))
    };
    let mut window = Window::new(window_size);
    let stamp = plan.payload_size >= 8;
    let ka = ctx.keep_alive;
    let mut wbuf = BytesMut::with_capacity(WRITE_BATCH + template.bytes.len());
    let mut sent: u64 = 0;
    let mut sending = true;
    let mut next_due = Instant::now();
    let mut last_write = Instant::now();
    let mut lat: Vec<u64> = Vec::with_capacity(window_size);
    let far = Duration::from_secs(86_400);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    loop {
        if is_set(&mut stops.all) {
            break;
        }
        if sending && (is_set(&mut stops.publish) || plan.quota.is_some_and(|q| sent >= q)) {
            sending = false;
            ctx.counters
                .last_sent_ns
                .fetch_max(ctx.since_start_ns(), Ordering::Relaxed);
        }
        if !sending && window.in_flight() == 0 {
            break;
        }
        let now = Instant::now();
        let mut n = 0u64;
        if sending {
            let ts = if stamp { unix_nanos() } else { 0 };
            let budget = plan.quota.map_or(u64::MAX, |q| q - sent);
            while n < budget && wbuf.len() < WRITE_BATCH {
                if qos != QoS::AtMostOnce && window.free.is_empty() {
                    break;
                }
                if let Some(iv) = plan.interval {
                    if now < next_due {
                        break;
                    }
                    next_due += iv;
                }
                let at = wbuf.len();
                if qos != QoS::AtMostOnce {
                    let Some(id) = window.take(ts) else { break };
                    wbuf.extend_from_slice(&template.bytes);
                    wbuf[at + template.pid_at..at + template.pid_at + 2]
                        .copy_from_slice(&id.to_be_bytes());
                } else {
                    wbuf.extend_from_slice(&template.bytes);
                }
                if stamp {
                    let p = at + template.payload_at;
                    wbuf[p..p + 8].copy_from_slice(&ts.to_be_bytes());
                }
                n += 1;
            }
            sent += n;
        }
        if !ka.is_zero() && now.duration_since(last_write) >= ka {
            wbuf.extend_from_slice(&PINGREQ);
        }
        if !wbuf.is_empty() {
            c.stream.write_all(&wbuf).await?;
            wbuf.clear();
            last_write = now;
            if n > 0 {
                ctx.counters.sent.fetch_add(n, Ordering::Relaxed);
            }
        }
        reserve_read(&mut c.rbuf);
        let window_full = qos != QoS::AtMostOnce && window.free.is_empty();
        let rate_wait = sending && plan.interval.is_some() && Instant::now() < next_due;
        if !sending || window_full || rate_wait {
            let mut deadline = if ka.is_zero() {
                now + far
            } else {
                last_write + ka
            };
            if rate_wait {
                deadline = deadline.min(next_due);
            }
            sleep.as_mut().reset(deadline.into());
            tokio::select! {
                r = tokio::io::AsyncReadExt::read_buf(&mut c.stream, &mut c.rbuf) => {
                    if r? == 0 {
                        bail!("the server closed the connection");
                    }
                }
                _ = &mut sleep => {}
                _ = stops.all.changed() => {}
                _ = stops.publish.changed(), if sending => {}
            }
        } else {
            match c.stream.try_read_buf(&mut c.rbuf) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if c.rbuf.is_empty() {
            continue;
        }
        let mut acked = 0u64;
        while let Some(p) = c.decoder.decode(&mut c.rbuf)? {
            match p {
                Packet::PubAck(a) if qos == QoS::AtLeastOnce => {
                    lat.push(window.release(a.packet_id)?);
                    if a.reason_code.is_error() {
                        ctx.counters.error(format!("PUBACK {}", a.reason_code));
                    } else {
                        acked += 1;
                    }
                }
                Packet::PubRec(a) if qos == QoS::ExactlyOnce => {
                    if a.reason_code.is_error() {
                        lat.push(window.release(a.packet_id)?);
                        ctx.counters.error(format!("PUBREC {}", a.reason_code));
                    } else {
                        // PUBREL: fixed header 0x62, remaining length 2, packet id.
                        wbuf.extend_from_slice(&[0x62, 0x02]);
                        wbuf.extend_from_slice(&a.packet_id.to_be_bytes());
                    }
                }
                Packet::PubComp(a) if qos == QoS::ExactlyOnce => {
                    lat.push(window.release(a.packet_id)?);
                    acked += 1;
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => bail!("the server disconnected: {}", d.reason_code),
                other => bail!("unexpected {:?} from the server", other.packet_type()),
            }
        }
        if !lat.is_empty() {
            ctx.counters.acked.fetch_add(acked, Ordering::Relaxed);
            let now_ns = unix_nanos();
            let mut h = ctx.ack_latency.shard(plan.index);
            for sent_ns in lat.drain(..) {
                if stamp {
                    report::record(&mut h, now_ns.saturating_sub(sent_ns));
                }
            }
        }
    }
    if !wbuf.is_empty() {
        c.stream.write_all(&wbuf).await?;
    }
    Conn::Raw(c).disconnect().await;
    Ok(())
}

/// The latency of a message received at `now_ns`, if its payload carries a
/// plausible timestamp.
#[inline]
fn latency_of(payload: &[u8], now_ns: u64) -> Option<u64> {
    let ts = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let lat = now_ns.checked_sub(ts)?;
    (lat < MAX_PLAUSIBLE_NS).then_some(lat)
}

async fn raw_subscriber(
    mut c: RawConn,
    index: usize,
    ctx: &Ctx,
    mut stops: Stops,
) -> anyhow::Result<()> {
    let ka = ctx.keep_alive;
    let far = Duration::from_secs(86_400);
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut lat: Vec<u64> = Vec::with_capacity(1024);
    let mut last_write = Instant::now();
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    loop {
        reserve_read(&mut c.rbuf);
        let deadline = if ka.is_zero() {
            Instant::now() + far
        } else {
            last_write + ka
        };
        if sleep.deadline() != deadline.into() {
            sleep.as_mut().reset(deadline.into());
        }
        tokio::select! {
            biased;
            _ = stops.all.changed() => {}
            r = tokio::io::AsyncReadExt::read_buf(&mut c.stream, &mut c.rbuf) => {
                if r? == 0 {
                    bail!("the server closed the connection");
                }
            }
            _ = &mut sleep => {}
        }
        if is_set(&mut stops.all) {
            break;
        }
        let now_ns = unix_nanos();
        let mut n = 0u64;
        while let Some(p) = c.decoder.decode(&mut c.rbuf)? {
            match p {
                Packet::Publish(p) => {
                    n += 1;
                    if let Some(l) = latency_of(&p.payload, now_ns) {
                        lat.push(l);
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        // PUBACK / PUBREC: type, remaining length 2, packet id.
                        QoS::AtLeastOnce => wbuf.extend_from_slice(&[0x40, 0x02]),
                        QoS::ExactlyOnce => wbuf.extend_from_slice(&[0x50, 0x02]),
                    }
                    if p.qos != QoS::AtMostOnce {
                        wbuf.extend_from_slice(&p.packet_id.to_be_bytes());
                    }
                }
                Packet::PubRel(a) => {
                    wbuf.extend_from_slice(&[0x70, 0x02]);
                    wbuf.extend_from_slice(&a.packet_id.to_be_bytes());
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => bail!("the server disconnected: {}", d.reason_code),
                other => bail!("unexpected {:?} from the server", other.packet_type()),
            }
        }
        if n > 0 {
            ctx.counters.received.fetch_add(n, Ordering::Relaxed);
            ctx.counters
                .last_recv_ns
                .fetch_max(ctx.since_start_ns(), Ordering::Relaxed);
        }
        if !lat.is_empty() {
            let mut h = ctx.latency.shard(index);
            for l in lat.drain(..) {
                report::record(&mut h, l);
            }
        }
        let now = Instant::now();
        if !ka.is_zero() && now.duration_since(last_write) >= ka {
            wbuf.extend_from_slice(&PINGREQ);
        }
        if !wbuf.is_empty() {
            c.stream.write_all(&wbuf).await?;
            wbuf.clear();
            last_write = now;
        }
    }
    Conn::Raw(c).disconnect().await;
    Ok(())
}

async fn raw_holder(mut c: RawConn, ctx: &Ctx, mut stops: Stops) -> anyhow::Result<()> {
    let ka = ctx.keep_alive;
    let far = Duration::from_secs(86_400);
    let mut last_write = Instant::now();
    loop {
        let deadline = if ka.is_zero() {
            Instant::now() + far
        } else {
            last_write + ka
        };
        tokio::select! {
            _ = stops.all.changed() => {}
            r = tokio::io::AsyncReadExt::read_buf(&mut c.stream, &mut c.rbuf) => {
                if r? == 0 {
                    bail!("the server closed the connection");
                }
                while let Some(p) = c.decoder.decode(&mut c.rbuf)? {
                    match p {
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => bail!("the server disconnected: {}", d.reason_code),
                        other => bail!("unexpected {:?} from the server", other.packet_type()),
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                c.stream.write_all(&PINGREQ).await?;
                last_write = Instant::now();
            }
        }
        if is_set(&mut stops.all) {
            break;
        }
    }
    Conn::Raw(c).disconnect().await;
    Ok(())
}

async fn client_publisher(
    client: Client,
    plan: PubPlan,
    ctx: &Ctx,
    mut stops: Stops,
) -> anyhow::Result<()> {
    let window = plan.inflight.max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(window));
    let stamp = plan.payload_size >= 8;
    let template = vec![0u8; plan.payload_size];
    let mut sent = 0u64;
    let mut next_due = tokio::time::Instant::now();
    let mut failed: Option<anyhow::Error> = None;
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        if is_set(&mut stops.all)
            || is_set(&mut stops.publish)
            || plan.quota.is_some_and(|q| sent >= q)
        {
            break;
        }
        if let Ok(e) = err_rx.try_recv() {
            failed = Some(anyhow::anyhow!(e));
            break;
        }
        if let Some(iv) = plan.interval {
            tokio::select! {
                _ = tokio::time::sleep_until(next_due) => {}
                _ = stops.all.changed() => continue,
                _ = stops.publish.changed() => continue,
            }
            next_due += iv;
        }
        let ts = unix_nanos();
        let mut payload = template.clone();
        if stamp {
            payload[..8].copy_from_slice(&ts.to_be_bytes());
        }
        if plan.qos == QoS::AtMostOnce {
            client
                .publish(plan.topic.as_str(), payload, plan.qos, false)
                .await?;
            sent += 1;
            ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore open"),
            _ = stops.all.changed() => continue,
        };
        sent += 1;
        ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
        let client = client.clone();
        let topic = plan.topic.clone();
        let qos = plan.qos;
        let counters = ctx.counters.clone();
        let ack_latency = ctx.ack_latency.clone();
        let index = plan.index;
        let err_tx = err_tx.clone();
        tokio::spawn(async move {
            match client.publish(topic, payload, qos, false).await {
                Ok(code) if code.is_error() => counters.error(format!("PUBACK {code}")),
                Ok(_) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    if stamp {
                        let l = unix_nanos().saturating_sub(ts);
                        report::record(&mut ack_latency.shard(index), l);
                    }
                }
                Err(e) => {
                    let _ = err_tx.send(e.to_string());
                }
            }
            drop(permit);
        });
    }
    ctx.counters
        .last_sent_ns
        .fetch_max(ctx.since_start_ns(), Ordering::Relaxed);
    // Wait for the window to drain.
    tokio::select! {
        _ = sem.acquire_many(window as u32) => {}
        _ = stops.all.changed() => {}
    }
    if failed.is_none() {
        if let Ok(e) = err_rx.try_recv() {
            failed = Some(anyhow::anyhow!(e));
        }
    }
    let _ = client.disconnect().await;
    failed.map_or(Ok(()), Err)
}

async fn client_subscriber(
    client: Client,
    index: usize,
    ctx: &Ctx,
    mut stops: Stops,
) -> anyhow::Result<()> {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stops.all.changed() => None,
            m = client.recv() => match m {
                Some(m) => Some(m),
                None => bail!("the connection was closed"),
            },
        };
        if is_set(&mut stops.all) {
            break;
        }
        let Some(m) = msg else { continue };
        ctx.counters.received.fetch_add(1, Ordering::Relaxed);
        ctx.counters
            .last_recv_ns
            .fetch_max(ctx.since_start_ns(), Ordering::Relaxed);
        if let Some(l) = latency_of(&m.payload, unix_nanos()) {
            report::record(&mut ctx.latency.shard(index), l);
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::Decoder;

    /// A patched template decodes as the PUBLISH it should be.
    #[test]
    fn template_patching() {
        for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let plan = PubPlan {
                    index: 0,
                    topic: "bench/7".into(),
                    qos,
                    payload_size: 300,
                    interval: None,
                    quota: None,
                    inflight: 1,
                };
                let t = Template::new(v, &plan).unwrap();
                let mut b = t.bytes.clone();
                if qos != QoS::AtMostOnce {
                    b[t.pid_at..t.pid_at + 2].copy_from_slice(&513u16.to_be_bytes());
                }
                b[t.payload_at..t.payload_at + 8].copy_from_slice(&42u64.to_be_bytes());
                let mut buf = BytesMut::from(&b[..]);
                let Some(Packet::Publish(p)) = Decoder::with_version(v).decode(&mut buf).unwrap()
                else {
                    panic!("not a PUBLISH")
                };
                assert_eq!(&p.topic[..], "bench/7");
                assert_eq!(p.qos, qos);
                assert_eq!(p.payload.len(), 300);
                assert_eq!(&p.payload[..8], &42u64.to_be_bytes());
                if qos != QoS::AtMostOnce {
                    assert_eq!(p.packet_id, 513);
                }
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn window_ids() {
        let mut w = Window::new(3);
        assert_eq!(w.take(10), Some(1));
        assert_eq!(w.take(11), Some(2));
        assert_eq!(w.take(12), Some(3));
        assert_eq!(w.take(13), None);
        assert_eq!(w.in_flight(), 3);
        assert_eq!(w.release(2).unwrap(), 11);
        assert!(w.release(2).is_err());
        assert!(w.release(9).is_err());
        assert_eq!(w.take(14), Some(2));
    }

    #[test]
    fn latency_from_payload() {
        let now = unix_nanos();
        let mut p = (now - 5000).to_be_bytes().to_vec();
        p.extend_from_slice(b"rest");
        assert_eq!(latency_of(&p, now), Some(5000));
        assert_eq!(latency_of(b"short", now), None);
        assert_eq!(latency_of(&(now + 10).to_be_bytes(), now), None);
        assert_eq!(latency_of(&[0u8; 8], now), None);
    }

    /// Hand-written acknowledgements decode as the packets they claim to be.
    #[test]
    fn literal_packets_decode() {
        for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let mut buf = BytesMut::from(
                &[
                    0x40, 0x02, 0x00, 0x07, 0x50, 0x02, 0x00, 0x08, 0x62, 0x02, 0x00, 0x09, 0x70,
                    0x02, 0x00, 0x0A, 0xC0, 0x00, 0xE0, 0x00,
                ][..],
            );
            let mut d = Decoder::with_version(v);
            let mut types = Vec::new();
            while let Some(p) = d.decode(&mut buf).unwrap() {
                types.push(format!("{:?}", p.packet_type()));
            }
            assert_eq!(
                types,
                [
                    "PubAck",
                    "PubRec",
                    "PubRel",
                    "PubComp",
                    "PingReq",
                    "Disconnect"
                ]
            );
        }
    }
}
