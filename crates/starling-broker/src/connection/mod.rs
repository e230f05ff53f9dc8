//! One task per connection: the CONNECT handshake, then a loop that reads and
//! decodes packets, drains the session's queue into one write buffer, writes it
//! with as few syscalls as possible, and watches the keep-alive deadline.
//!
//! Reading pauses while the write buffer is above its high-water mark, so a
//! client that does not read its socket cannot make the broker buffer without
//! bound; its own session queue fills and overflows instead.

//!
//! Dependencies point one way: this driver uses `conn` (its socket state),
//! `handshake`, `machine` (with `inbound`), `hibernate` and `client`; none of
//! them uses the driver.

mod authorize;
mod client;
mod conn;
mod enhanced;
mod handshake;
pub(crate) mod hibernate;
mod inbound;
mod machine;
mod mount;
mod retained;

pub(crate) use client::{Client, Close, Slots};
use conn::Connection;
use machine::{first_write, Machine, HIGH_WATER};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{Decoder, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::broker::BrokerState;
use crate::connection::hibernate::{Parked, Reactor};
use crate::events::Event;
use crate::metrics::Metrics;

/// Buffers larger than this are released when they empty.
const IDLE_BUFFER: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4096;
/// Packets a connection handles before it yields its thread to the others.
const FAIR_PACKETS: u32 = 256;

/// A page of a spilled queue being read back: completes with the packet
/// ids of in-flight messages to resend.
type PageRead = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u16>> + Send>>;

/// Completes when the page being read is in (never, when none is).
/// Waits for the authorization fetch of a held packet.
async fn held_ready(held: &mut Option<(Packet, conn::Held)>) {
    match held {
        Some((_, fetch)) => fetch.get_mut().await,
        None => std::future::pending().await,
    }
}

async fn page_read(page: &mut Option<PageRead>) -> Vec<u16> {
    match page {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// What a connection task holds on the broker's behalf: the shutdown barrier
/// (shutdown waits until every task has dropped its sender) and the
/// connection's slots. A parked connection keeps only its slots; the reactor
/// task holds the barrier for all of them.
pub(crate) struct Keep {
    pub done: tokio::sync::mpsc::Sender<()>,
    pub slots: Option<Box<Slots>>,
    /// Where the connection parks when idle (none: it never parks).
    pub reactor: Option<Arc<Reactor>>,
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
    over_limit: bool,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Some((mut conn, mut client)) = open(stream, peer, broker, &mut shutdown, over_limit).await
    else {
        return;
    };
    let close = conn.run(&mut client, &mut shutdown, None).await;
    conn.close(client, close).await;
}

/// Serves a plain TCP connection, which parks when idle (see [`crate::connection::hibernate`]).
pub(crate) async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
    over_limit: bool,
    keep: Keep,
) {
    let Some((conn, client)) = open(stream, peer, broker, &mut shutdown, over_limit).await else {
        return;
    };
    // A client that has said nothing since its CONNACK parks at once.
    serve_attached_tcp(conn, client, shutdown, keep, Duration::ZERO).await;
}

/// Serves a parked connection again (called by the reactor, in a new task).
pub(crate) async fn resume(
    broker: Arc<BrokerState>,
    reactor: Arc<Reactor>,
    parked: Parked,
    shutdown: watch::Receiver<bool>,
    done: tokio::sync::mpsc::Sender<()>,
) {
    if let Some((conn, client, keep)) = Connection::from_parked(broker, &reactor, parked, done) {
        let idle = conn.broker.config.hibernate_after();
        serve_attached_tcp(conn, client, shutdown, keep, idle).await;
    }
}

/// The CONNECT handshake: `None` when the connection ended in it.
async fn open<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    shutdown: &mut watch::Receiver<bool>,
    over_limit: bool,
) -> Option<(Connection<S>, Client)>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn_id = broker
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut conn = Connection::new(
        broker,
        stream,
        peer,
        conn_id,
        Decoder::new(),
        Instant::now(),
    );
    let connect_timeout = conn.broker.config.connect_timeout();
    let first = tokio::select! {
        r = timeout(connect_timeout, Box::pin(conn.read_connect())) => r,
        _ = shutdown.changed() => return None,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {connect_timeout:?}; closing");
            return None;
        }
        Ok(Err(close)) => {
            tracing::info!(%peer, reason = ?close, "refused malformed CONNECT");
            conn.flush_and_close().await;
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(connect))) => connect,
    };
    // The handshake's state (CONNECT, authentication) is boxed: it is freed
    // when the handshake ends instead of sizing the connection's task.
    let Some(client) = Box::pin(conn.accept(connect, over_limit)).await else {
        conn.flush_and_close().await;
        return None;
    };
    if conn.rbuf.is_empty() {
        // Release the handshake's read buffer: an idle connection keeps none.
        conn.rbuf = BytesMut::new();
    }
    conn.last_rx = Instant::now();
    Metrics::add(&conn.broker.metrics.clients_connected, 1);
    Metrics::add(&conn.broker.metrics.connects, 1);
    if let Some(l) = conn.broker.listener(client.listener) {
        l.connected.inc(client.version);
        l.connects.inc(client.version);
    }
    Some((conn, client))
}

/// Serves an attached TCP connection until it closes or parks. It parks when
/// it has been idle for `idle`, then for `hibernate-after-ms` after each time
/// it was refused (its queue gained a message meanwhile).
async fn serve_attached_tcp(
    mut conn: Connection<TcpStream>,
    mut client: Client,
    mut shutdown: watch::Receiver<bool>,
    mut keep: Keep,
    mut idle: Duration,
) {
    let reactor = keep.reactor.clone();
    loop {
        // Credentials that expire need the connection's own timer: never parked.
        let expiring = client
            .grant
            .as_ref()
            .is_some_and(|g| g.expires_at.is_some());
        let hibernate = (reactor.is_some() && !expiring).then_some(idle);
        let close = conn.run(&mut client, &mut shutdown, hibernate).await;
        let Some(reactor) = reactor.as_ref().filter(|_| close == Close::Hibernate) else {
            conn.close(client, close).await;
            return;
        };
        let broker = conn.broker.clone();
        let Keep { done, slots, .. } = keep;
        let Some(parked) = conn.into_parked(reactor, client, slots) else {
            return;
        };
        match reactor.park(parked) {
            Ok(()) => return,
            Err(parked) => match Connection::from_parked(broker, reactor, *parked, done) {
                Some(back) => (conn, client, keep) = back,
                None => return,
            },
        }
        idle = conn.broker.config.hibernate_after();
    }
}

/// Counts a connection that ended after its CONNACK, on `listener`.
fn disconnected(broker: &BrokerState, listener: u16, version: starling_codec::ProtocolVersion) {
    use std::sync::atomic::Ordering::Relaxed;
    broker.metrics.clients_connected.fetch_sub(1, Relaxed);
    if let Some(l) = broker.listener(listener) {
        l.connected.dec(version);
    }
}

/// Ends a connection whose socket was lost while parking or resuming.
fn finish_lost(broker: &Arc<BrokerState>, conn_id: u64, client: Client) {
    let (listener, version) = (client.listener, client.version);
    tracing::info!(client_id = %client.client_id(), "connection lost while parking");
    crate::lifecycle::detach(broker, conn_id, client.departure(&Close::PeerClosed));
    broker
        .metrics
        .disconnects
        .inc(Close::PeerClosed.metric_reason() as usize);
    disconnected(broker, listener, version);
}

impl Connection<TcpStream> {
    /// Takes the connection out of tokio's hands, for parking. `None` when
    /// that failed; the connection is then closed and detached.
    fn into_parked(
        self,
        reactor: &Reactor,
        client: Client,
        slots: Option<Box<Slots>>,
    ) -> Option<Box<Parked>> {
        let Connection { rd, wr, m, .. } = self;
        let Machine {
            broker,
            conn_id,
            last_rx,
            ..
        } = m;
        match rd.unsplit(wr).into_std() {
            Ok(stream) => Some(Box::new(Parked {
                stream,
                conn_id,
                client,
                last_rx: reactor.millis(last_rx),
                slots,
            })),
            Err(err) => {
                tracing::warn!(?err, "could not park a connection");
                finish_lost(&broker, conn_id, client);
                None
            }
        }
    }

    /// Gives a parked connection back to tokio. `None` when that failed; the
    /// connection is then closed and detached.
    fn from_parked(
        broker: Arc<BrokerState>,
        reactor: &Arc<Reactor>,
        p: Parked,
        done: tokio::sync::mpsc::Sender<()>,
    ) -> Option<(Self, Client, Keep)> {
        {
            let mut st = p.client.session.state.lock();
            if let Some(link) = st.link_of(p.conn_id) {
                link.parked = None;
            }
        }
        let stream = match TcpStream::from_std(p.stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(?err, "could not resume a parked connection");
                finish_lost(&broker, p.conn_id, p.client);
                return None;
            }
        };
        // Not kept while parked: the socket knows it.
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let decoder = Decoder::with_version(p.client.version);
        let last_rx = reactor.instant(p.last_rx);
        let conn = Connection::new(broker, stream, peer, p.conn_id, decoder, last_rx);
        let keep = Keep {
            done,
            slots: p.slots,
            reactor: Some(reactor.clone()),
        };
        Some((conn, p.client, keep))
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    /// Ends an attached connection (see [`Connection::finish`]).
    async fn close(mut self, client: Client, close: Close) {
        let reason = close.metric_reason();
        let (listener, version) = (client.listener, client.version);
        // Boxed: the closing path is larger than the loop and runs once.
        Box::pin(self.finish(client, close)).await;
        self.broker.metrics.disconnects.inc(reason as usize);
        disconnected(&self.broker, listener, version);
    }

    /// The main loop of an attached connection. With `hibernate`, it returns
    /// [`Close::Hibernate`] once nothing has happened for that long and nothing
    /// is buffered.
    async fn run(
        &mut self,
        client: &mut Client,
        shutdown: &mut watch::Receiver<bool>,
        hibernate: Option<Duration>,
    ) -> Close {
        if *shutdown.borrow() {
            return Close::Shutdown;
        }
        let mut busy = false;
        let mut last_active = Instant::now();
        let session = client.session.clone();
        // One timer for the keep-alive and idle deadlines, moved only when a
        // deadline comes earlier than the one it is set for. Activity moves
        // both later, so usually it is left alone, and when it fires early the
        // loop checks the real deadlines and sets it again: no timer-wheel
        // work per packet or per wakeup.
        let timer = tokio::time::sleep_until(last_active);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // The page of a spilled queue being read back, if any.
        let mut reading_page: Option<PageRead> = None;
        // When the client's credentials expire (a token's `exp`).
        let expires = client.grant.as_ref().and_then(|g| g.expires_at).map(|at| {
            let left = at.duration_since(std::time::SystemTime::now());
            Instant::now() + left.unwrap_or_default()
        });
        loop {
            // Enabled before the attachment check, so that a takeover between
            // the two still wakes this loop.
            let notified = session.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let attached = self.m.drain(client);
            self.submit_journal();
            if reading_page.is_none() {
                reading_page = self.next_page(&session);
            }
            if !self.m.pending_acks.is_empty() && !self.m.awaits_store() {
                if let Err(close) = self.m.release_acks(client.client_id(), client.version) {
                    return close;
                }
            }
            if !attached {
                let close = self.m.detached(client);
                if close == Close::TakenOver {
                    // Pass on any wakeup meant for the connection that took over.
                    session.notify.notify_one();
                }
                return close;
            }
            // Backpressure: while subscribers this client's messages
            // congested drain (bounded by `stall_until`), it is not read.
            let holding = !self.m.congested.is_empty();
            let reading = self.m.wbuf.len() < HIGH_WATER
                && !holding
                && self.m.throttled_until.is_none()
                && self.held.is_none();
            let held = if holding {
                self.m.congested.clone()
            } else {
                Vec::new()
            };
            let drained = async {
                for s in &held {
                    s.wait_drained().await;
                }
            };
            tokio::pin!(drained);
            // An idle connection waits with no read buffer to speak of (the
            // first read takes what fits in a minimal one); a busy one, whose
            // last read filled its buffer, reads in full chunks.
            if reading && (busy || !self.rbuf.is_empty()) {
                self.rbuf.reserve(READ_CHUNK);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            // Not read on purpose (backpressure, publish rate): what the
            // client sends meanwhile is in the socket, so no keep-alive
            // verdict until it is read again.
            let ka_deadline = if holding || self.m.throttled_until.is_some() || self.held.is_some()
            {
                None
            } else {
                self.m.keep_alive_deadline(client)
            };
            // `checked_add`: a huge `hibernate-after-ms` means never, not a panic.
            let idle_deadline = hibernate.and_then(|d| last_active.checked_add(d));
            let next = [
                ka_deadline,
                idle_deadline,
                self.m.stall_until,
                self.m.throttled_until,
                self.m.replica_retry,
                expires,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(next) = next {
                if armed.is_none_or(|at| next < at) {
                    timer.as_mut().reset(next);
                    armed = Some(next);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Close::Shutdown,
                res = self.wr.write_buf(&mut self.m.wbuf), if !self.m.wbuf.is_empty() => {
                    match res {
                        Ok(0) | Err(_) => return Close::PeerClosed,
                        Ok(n) => {
                            last_active = Instant::now();
                            Metrics::add(&self.m.broker.metrics.bytes_sent, n as u64);
                            if self.m.wbuf.is_empty() && self.m.wbuf.capacity() > IDLE_BUFFER {
                                self.m.wbuf = BytesMut::new();
                            }
                        }
                    }
                }
                res = self.rd.read_buf(&mut self.rbuf), if reading => {
                    match res {
                        Ok(0) | Err(_) => return Close::PeerClosed,
                        Ok(n) => {
                            Metrics::add(&self.m.broker.metrics.bytes_received, n as u64);
                            busy = n >= spare.max(64);
                        }
                    }
                    self.m.last_rx = Instant::now();
                    last_active = self.m.last_rx;
                    if let Err(close) = self.handle_read(client) {
                        return close;
                    }
                    if self.rbuf.is_empty() && (!busy || self.rbuf.capacity() > IDLE_BUFFER) {
                        self.rbuf = BytesMut::new();
                    }
                    // Fairness: a client that keeps sending gives the other
                    // connections on its thread a turn every FAIR_PACKETS
                    // packets, instead of once per tokio budget of reads
                    // (which a flood of small PUBLISHes makes long).
                    if self.handled >= FAIR_PACKETS {
                        self.handled = 0;
                        tokio::task::yield_now().await;
                    }
                }
                written = first_write(&mut self.m.writes), if self.m.awaits_store() => {
                    if let Err(close) = self.m.write_done(written, client.client_id(), client.version) {
                        self.m.pending_acks.clear();
                        return close;
                    }
                }
                _ = &mut notified => last_active = Instant::now(),
                resend = page_read(&mut reading_page), if reading_page.is_some() => {
                    reading_page = None;
                    if !resend.is_empty() {
                        self.m.resend_only(client, Some(&resend));
                    }
                }
                _ = held_ready(&mut self.held), if self.held.is_some() => {
                    if let Some((packet, _)) = self.held.take() {
                        match self.handle_packet(client, packet) {
                            Err(close) => return close,
                            Ok(true) => {
                                if let Err(close) = self.handle_read(client) {
                                    return close;
                                }
                            }
                            Ok(false) => {}
                        }
                    }
                }
                _ = &mut drained, if holding => {
                    self.m.congestion_cleared();
                    self.m.last_rx = Instant::now();
                    // What was read past the packet that congested them.
                    if let Err(close) = self.handle_read(client) {
                        return close;
                    }
                }
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    if expires.is_some_and(|at| now >= at) {
                        return Close::CredentialsExpired;
                    }
                    if self.m.stall_until.is_some_and(|d| now >= d) {
                        self.m.stall_expired();
                        self.m.last_rx = now;
                        if let Err(close) = self.handle_read(client) {
                            return close;
                        }
                    }
                    if self.m.throttled_until.is_some_and(|d| now >= d) {
                        self.m.throttled_until = None;
                        self.m.last_rx = now;
                        if let Err(close) = self.handle_read(client) {
                            return close;
                        }
                    }
                    if ka_deadline.is_some_and(|d| now >= d) {
                        return Close::KeepAlive;
                    }
                    if idle_deadline.is_some_and(|d| now >= d) {
                        if self.m.wbuf.is_empty()
                            && self.rbuf.is_empty()
                            && !self.m.awaits_store()
                            && self.m.pending_acks.is_empty()
                            && self.m.congested.is_empty()
                            && self.m.throttled_until.is_none()
                            && reading_page.is_none()
                            && self.held.is_none()
                            && self.m.reauth.is_none()
                        {
                            return Close::Hibernate;
                        }
                        last_active = now;
                    }
                }
            }
        }
    }

    /// Starts reading the next page of the session's spilled queue back
    /// from the store, if one is due.
    fn next_page(&self, session: &Arc<crate::session::Session>) -> Option<PageRead> {
        let store = self.broker.store().filter(|s| s.reads_queues())?.clone();
        let req = session.state.lock().page_request()?;
        let session = session.clone();
        Some(Box::pin(async move {
            session.read_requested(&store, req).await
        }))
    }

    /// Handles every whole packet in the read buffer, submitting what they
    /// changed to the store after each one (see [`Connection::submit_journal`]).
    /// It stops after a PUBLISH that took a subscriber's queue past its
    /// high-water mark: the rest waits in the buffer until that queue drains
    /// (or the wait's bound), so that publishers overshoot a high-water mark
    /// by one message each, not by a read's worth.
    fn handle_read(&mut self, client: &mut Client) -> Result<(), Close> {
        // Held back (congestion, the publish rate, an authorization fetch):
        // the rest waits.
        if !self.m.congested.is_empty() || self.m.throttled_until.is_some() || self.held.is_some() {
            return Ok(());
        }
        loop {
            let packet = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(err) => return Err(Close::Protocol(err.reason_code(), err.to_string())),
            };
            if let Some(fetch) = authorize::prepare(client, &packet) {
                self.held = Some((packet, parking_lot::Mutex::new(fetch)));
                return Ok(());
            }
            if !self.handle_packet(client, packet)? {
                return Ok(());
            }
        }
    }

    /// Handles one packet and submits what it changed. `Ok(false)` when
    /// reading must stop for now (the publish rate, or a congested subscriber).
    fn handle_packet(&mut self, client: &mut Client, packet: Packet) -> Result<bool, Close> {
        let publish = matches!(packet, Packet::Publish(_));
        if let Packet::Publish(p) = &packet {
            self.m.throttle(p.payload.len());
        }
        let handled = self.m.handle(client, packet);
        self.handled += 1;
        self.submit_journal();
        handled?;
        // Messages wait to cross to other nodes: this publisher pauses.
        if publish && self.m.throttled_until.is_none() && self.broker.cluster().congested() {
            self.m.throttled_until = Some(Instant::now() + CLUSTER_PAUSE);
        }
        if self.m.throttled_until.is_some() {
            return Ok(false);
        }
        if !self.m.congested.is_empty() {
            self.m.hold_for_congestion(&client.session);
            if !self.m.congested.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Hands the machine's journal to the store. Done after every packet,
    /// not once per read: a subscriber on another thread may already be
    /// sending what a PUBLISH queued for it, and the store must see the
    /// message before that subscriber's in-flight or delete records.
    fn submit_journal(&mut self) {
        let Some((journal, awaited)) = self.m.take_journal() else {
            return;
        };
        let (store_awaited, cluster) = self.m.take_waits();
        let store = self.m.broker.store();
        let write = match store {
            Some(store) if store_awaited => Some(crate::journal::commit_and_wait(store, journal)),
            _ => {
                if !journal.is_empty() {
                    crate::journal::commit(store, journal);
                }
                None
            }
        };
        if awaited {
            self.m.awaiting(all_of(write, cluster));
        }
    }

    /// Ends an attached connection: final DISCONNECT, will, session detach.
    async fn finish(&mut self, client: Client, close: Close) {
        self.m.disconnect(&client, &close);
        self.broker
            .events
            .emit(crate::events::EventKind::ClientDisconnected, || {
                Event::ClientDisconnected {
                    client_id: client.client_id().clone(),
                    reason: format!("{close:?}"),
                }
            });
        tracing::info!(
            client_id = %client.client_id(),
            peer = %self.peer,
            reason = ?close,
            "client disconnected"
        );
        self.flush_and_close().await;
        crate::lifecycle::detach(&self.broker, self.conn_id, client.departure(&close));
    }
}

/// How long a publisher pauses while the cluster's outbox is past its
/// high-water mark (then it checks again).
const CLUSTER_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// One receiver for a store write (if any) and the cluster's waits: done
/// once they all are, failed if one failed.
fn all_of(
    write: Option<tokio::sync::oneshot::Receiver<()>>,
    mut cluster: Vec<tokio::sync::oneshot::Receiver<()>>,
) -> tokio::sync::oneshot::Receiver<()> {
    match (write, cluster.len()) {
        (Some(write), 0) => write,
        (None, 1) => match cluster.pop() {
            Some(wait) => wait,
            None => all_of_spawned(None, cluster),
        },
        (write, _) => all_of_spawned(write, cluster),
    }
}

/// [`all_of`] on a task of its own, which ends (dropping the receivers it
/// waits on) as soon as its own receiver is dropped: the cluster withdraws
/// a message whose publisher's connection went unacknowledged (see
/// [`crate::cluster::Cluster::forward`]), and it tells by that.
fn all_of_spawned(
    write: Option<tokio::sync::oneshot::Receiver<()>>,
    cluster: Vec<tokio::sync::oneshot::Receiver<()>>,
) -> tokio::sync::oneshot::Receiver<()> {
    let (mut done, all) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let waits = async move {
            if let Some(write) = write {
                write.await?;
            }
            for wait in cluster {
                wait.await?;
            }
            Ok::<(), tokio::sync::oneshot::error::RecvError>(())
        };
        let finished = tokio::select! {
            _ = done.closed() => false,
            result = waits => result.is_ok(),
        };
        if finished {
            let _ = done.send(());
        }
    });
    all
}

#[cfg(test)]
mod all_of_tests {
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn done_once_the_write_and_every_wait_are() {
        let (write_done, write) = oneshot::channel();
        let (kept, wait) = oneshot::channel();
        let all = super::all_of(Some(write), vec![wait]);
        write_done.send(()).unwrap();
        kept.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("done in time")
            .expect("done, not failed");
    }

    #[tokio::test]
    async fn a_dropped_receiver_lets_go_of_what_it_waited_on() {
        let (write_done, write) = oneshot::channel();
        let (mut kept, wait) = oneshot::channel::<()>();
        let all = super::all_of(Some(write), vec![wait]);
        write_done.send(()).unwrap();
        assert!(!kept.is_closed());
        // The connection went: the cluster sees its wait dropped too.
        drop(all);
        tokio::time::timeout(Duration::from_secs(5), kept.closed())
            .await
            .expect("the cluster's receiver dropped");
    }
}
