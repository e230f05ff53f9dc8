//! The connection's driver state: the transport halves, the read buffer and
//! the decoder around the protocol [`Machine`], with the reads and the final
//! flush that the handshake and the main loop share.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use starling_codec::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{timeout, Instant};

use super::machine::Machine;
use crate::broker::BrokerState;
use crate::metrics::Metrics;

/// Room made in the read buffer before each read of the handshake.
const HANDSHAKE_CHUNK: usize = 256;
/// How long a final DISCONNECT may take to flush.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// An authorization fetch the connection waits on.
pub(crate) type Held = parking_lot::Mutex<crate::auth::PrepareFuture>;

/// A connection's driver: the transport halves, the read buffer and the
/// decoder around the protocol [`Machine`] (which it dereferences to).
pub(crate) struct Connection<S> {
    pub rd: ReadHalf<S>,
    pub wr: WriteHalf<S>,
    pub rbuf: BytesMut,
    pub decoder: Decoder,
    pub m: Machine,
    /// Packets handled since the task last yielded its thread (fairness).
    pub handled: u32,
    /// A packet held until its authorization answers are fetched
    /// (see [`super::authorize`]), with the fetch (in a mutex only to make
    /// the connection `Sync`; it is never locked, see [`super::held_ready`]).
    pub held: Option<(starling_codec::Packet, Held)>,
}

impl<S> std::ops::Deref for Connection<S> {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.m
    }
}

impl<S> std::ops::DerefMut for Connection<S> {
    fn deref_mut(&mut self) -> &mut Machine {
        &mut self.m
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    /// A connection over `stream`, with empty buffers and the broker's
    /// maximum packet size on `decoder`.
    pub(super) fn new(
        broker: Arc<BrokerState>,
        stream: S,
        peer: SocketAddr,
        conn_id: u64,
        mut decoder: Decoder,
        last_rx: Instant,
    ) -> Self {
        decoder.set_max_packet_size(broker.config.max_packet_size as usize);
        let (rd, wr) = tokio::io::split(stream);
        Connection {
            rd,
            wr,
            rbuf: BytesMut::new(),
            decoder,
            m: Machine::new(broker, peer, conn_id, last_rx),
            handled: 0,
            held: None,
        }
    }

    /// Reads one more chunk into the read buffer. `Ok(false)` on end of stream.
    pub(super) async fn fill(&mut self) -> std::io::Result<bool> {
        // CONNECT is small: the handshake reads in small steps, so thousands of
        // connections arriving at once do not each hold a full read chunk.
        self.rbuf.reserve(HANDSHAKE_CHUNK);
        let n = self.rd.read_buf(&mut self.rbuf).await?;
        Metrics::add(&self.broker.metrics.bytes_received, n as u64);
        Ok(n > 0)
    }

    /// Whether the peer closed the connection (or it failed) with nothing
    /// it sent left to read: one read that does not wait. What it reads
    /// (packets the client sent after its CONNECT) stays in the buffer.
    pub(super) async fn peer_gone(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        self.rbuf.reserve(HANDSHAKE_CHUNK);
        let read = self.rd.read_buf(&mut self.rbuf);
        match timeout(std::time::Duration::ZERO, read).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                Metrics::add(&self.broker.metrics.bytes_received, n as u64);
                false
            }
            Err(_) => false,
        }
    }

    /// Writes out the buffer (bounded by a timeout) and shuts the socket down.
    pub(crate) async fn flush_and_close(&mut self) {
        let wr = &mut self.wr;
        let buf = &mut self.m.wbuf;
        let _ = timeout(FLUSH_TIMEOUT, async {
            wr.write_all_buf(buf).await?;
            wr.shutdown().await
        })
        .await;
    }
}
