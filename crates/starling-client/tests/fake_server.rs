//! The client against scripted servers: connect timeout, keep alive, and
//! servers that misbehave.

use std::time::Duration;

use bytes::BytesMut;
use starling_client::{Client, ConnectError, ConnectOptions, ConnectionStatus, ProtocolVersion};
use starling_codec::{ConnAck, Decoder, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn listener() -> (TcpListener, ConnectOptions) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.client_id = "fake".into();
    (l, o)
}

/// Reads one packet from a client stream (the server side).
async fn read_packet(s: &mut TcpStream, d: &mut Decoder, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = d.decode(buf).expect("valid packet") {
            return Some(p);
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn send(s: &mut TcpStream, p: Packet, v: ProtocolVersion) {
    let mut out = BytesMut::new();
    p.encode(v, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
}

#[tokio::test]
async fn connect_times_out_when_no_connack_comes() {
    let (l, mut o) = listener().await;
    // Accept and never answer.
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(s);
    });
    o.connect_timeout = Duration::from_millis(300);
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_defaults_to_30_seconds() {
    let (l, o) = listener().await;
    assert_eq!(o.connect_timeout, Duration::from_secs(30));
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(s);
    });
    // With the clock paused, the runtime jumps to the deadline once everything is idle.
    let err = Client::connect(o).await.unwrap_err();
    match err {
        ConnectError::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_secs(30)),
        other => panic!("expected a timeout, got {other}"),
    }
    server.abort();
}

#[tokio::test]
async fn server_closing_before_connack_is_a_typed_error() {
    let (l, o) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        read_packet(&mut s, &mut d, &mut buf).await;
        drop(s);
    });
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::ClosedBeforeConnAck), "{err}");
}

#[tokio::test]
async fn a_packet_other_than_connack_first_is_refused() {
    let (l, o) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        read_packet(&mut s, &mut d, &mut buf).await;
        send(&mut s, Packet::PingResp, ProtocolVersion::V5).await;
        std::future::pending::<()>().await;
    });
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, ConnectError::UnexpectedPacket(_)), "{err}");
}

#[tokio::test]
async fn refused_connection_is_not_an_io_error() {
    let (l, mut o) = listener().await;
    o.version = ProtocolVersion::V3_1_1;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        read_packet(&mut s, &mut d, &mut buf).await;
        let ack = ConnAck {
            reason_code: starling_codec::ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ..ConnAck::default()
        };
        send(&mut s, Packet::ConnAck(ack), ProtocolVersion::V3_1_1).await;
    });
    let err = Client::connect(o).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection refused: bad user name or password (return code 4)"
    );
}

#[tokio::test]
async fn keep_alive_pings_and_detects_a_dead_server() {
    let (l, mut o) = listener().await;
    o.keep_alive = Duration::from_secs(1);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        let Some(Packet::Connect(c)) = read_packet(&mut s, &mut d, &mut buf).await else {
            panic!("expected CONNECT");
        };
        assert_eq!(c.keep_alive, 1);
        send(
            &mut s,
            Packet::ConnAck(ConnAck::default()),
            ProtocolVersion::V5,
        )
        .await;
        let mut pings = 0;
        while let Some(p) = read_packet(&mut s, &mut d, &mut buf).await {
            if p == Packet::PingReq {
                pings += 1;
                let _ = seen_tx.send(pings);
                // Answer the first ping only; then play dead (keep the socket open).
                if pings == 1 {
                    send(&mut s, Packet::PingResp, ProtocolVersion::V5).await;
                }
            }
        }
    });
    let (c, _) = Client::connect(o).await.unwrap();
    let wait = Duration::from_secs(10);
    assert_eq!(
        tokio::time::timeout(wait, seen_rx.recv()).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        tokio::time::timeout(wait, seen_rx.recv()).await.unwrap(),
        Some(2)
    );
    let mut status = c.status();
    let closed = tokio::time::timeout(
        wait,
        status.wait_for(|s| matches!(s, ConnectionStatus::Closed { .. })),
    )
    .await
    .expect("the dead connection was noticed")
    .unwrap()
    .clone();
    let ConnectionStatus::Closed { reason } = closed else {
        unreachable!()
    };
    assert!(reason.contains("PINGRESP"), "{reason}");
    assert!(c.recv().await.is_none());
}
