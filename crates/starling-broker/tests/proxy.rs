//! The PROXY protocol on TCP listeners: v1 and v2 headers make the address they
//! name the connection's peer (seen by the failed-login limiter and in the
//! logs), LOCAL and UNKNOWN keep the socket's address, and a missing,
//! malformed or late header closes the connection with one log line.

mod common;
mod transport_support;

use std::net::SocketAddr;

use starling_broker::config::ListenerConfig;
use starling_broker::{Config, ListenerUrl};
use starling_codec::{Connect, Packet, ProtocolVersion as V, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use transport_support::{log_lines, logs, raw, Pki, Running};

fn login(id: &str, password: &[u8]) -> Connect {
    let mut c = Connect::new(V::V5, id);
    c.username = Some("bob".into());
    c.password = Some(bytes::Bytes::copy_from_slice(password));
    c
}

fn v1(client: &str) -> Vec<u8> {
    let a: SocketAddr = client.parse().unwrap();
    let family = if a.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if a.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!("PROXY {family} {} {dst} {} 1883\r\n", a.ip(), a.port()).into_bytes()
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header over TCP/IPv4, with one NOOP TLV.
fn v2(client: &str) -> Vec<u8> {
    let a: SocketAddr = client.parse().unwrap();
    let SocketAddr::V4(a) = a else { panic!() };
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // IPv4, stream
    h.extend_from_slice(&(12u16 + 4).to_be_bytes());
    h.extend_from_slice(&a.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&a.port().to_be_bytes());
    h.extend_from_slice(&1883u16.to_be_bytes());
    h.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // PP2_TYPE_NOOP
    h
}

/// A v2 LOCAL header (a health check by the proxy itself).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// Connects, sends `header` and `connect` in one write (as a proxy forwarding
/// a client does), and returns the CONNACK's reason code.
async fn attempt(addr: SocketAddr, header: &[u8], connect: Connect) -> u8 {
    let mut bytes = bytes::BytesMut::from(header);
    Packet::Connect(Box::new(connect.clone()))
        .encode(connect.protocol, &mut bytes)
        .unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut r = raw(s, connect.protocol);
    match r.recv().await {
        Packet::ConnAck(ack) => ack.reason_code.0,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Whether the broker closes the connection without answering after `bytes`.
async fn refused(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut r = raw(s, V::V5);
    r.closed().await.is_empty()
}

async fn broker(dir: &Pki, limit: u32) -> Running {
    logs();
    let passwords = dir.path("passwd");
    let hash = starling_broker::auth::hash_password("right").unwrap();
    std::fs::write(&passwords, format!("bob:{hash}\n")).unwrap();
    Running::start(Config {
        // A `listen` URL with the query parameter, a table with the key, and a
        // plain listener.
        listen: vec!["mqtt://127.0.0.1:0?proxy-protocol=true".into()],
        listener: vec![
            ListenerConfig {
                url: "mqtt://127.0.0.1:0".into(),
                proxy_protocol: true,
                ..ListenerConfig::default()
            },
            ListenerConfig {
                url: "mqtt://127.0.0.1:0".into(),
                ..ListenerConfig::default()
            },
        ],
        allow_anonymous: false,
        password_file: Some(passwords),
        auth_failure_limit: limit,
        handshake_timeout: 1,
        ..Config::default()
    })
    .await
}

const OK: u8 = 0;
const BAD: u8 = ReasonCode::BAD_USER_NAME_OR_PASSWORD.0;
const LIMITED: u8 = ReasonCode::CONNECTION_RATE_EXCEEDED.0;

/// Two wrong-password attempts of bob at once, with their headers, after the
/// limit: one is checked (after a wait of at least 100 ms), the other refused
/// unchecked while it waits. Returns the two codes, sorted.
async fn two_at_once(addr: SocketAddr, a: &[u8], b: &[u8]) -> [u8; 2] {
    let (x, y) = tokio::join!(
        attempt(addr, a, login("x1", b"wrong")),
        attempt(addr, b, login("x2", b"wrong"))
    );
    let mut codes = [x, y];
    codes.sort();
    codes
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client() {
    let dir = Pki::new("proxy-addr");
    let b = broker(&dir, 2).await;
    for (i, addr) in [b.addrs[0], b.addrs[1]].into_iter().enumerate() {
        // The failed-authentication limit (2 a minute) counts per header address.
        let one = format!("192.0.2.{}:5000", i + 1);
        let two = format!("198.51.100.{}:6000", i + 1);
        assert_eq!(attempt(addr, &v1(&one), login("a", b"wrong")).await, BAD);
        assert_eq!(attempt(addr, &v2(&one), login("a", b"wrong")).await, BAD);
        // Past it, attempts of that address (through v1 or v2) are taken one
        // at a time: the second of two at once is refused.
        assert_eq!(
            two_at_once(addr, &v1(&one), &v2(&one)).await,
            [BAD, LIMITED]
        );
        // Another address, and the socket's own (127.0.0.1), are not limited.
        assert_eq!(two_at_once(addr, &v2(&two), &v1(&two)).await, [BAD, BAD]);
        assert_eq!(attempt(addr, &v2_local(), login("e", b"right")).await, OK);
        assert_eq!(
            attempt(addr, b"PROXY UNKNOWN\r\n", login("f", b"right")).await,
            OK
        );
        // The right password still gets in from the limited address.
        assert_eq!(attempt(addr, &v1(&one), login("g", b"right")).await, OK);
        // The logs name the client, not the proxy.
        let connected = log_lines(&format!("peer={one}"));
        assert!(
            connected.iter().any(|l| l.contains("client connected")),
            "{connected:?}"
        );
    }
    // IPv6 through v1.
    let six = "[2001:db8::42]:7000";
    assert_eq!(
        attempt(b.addrs[0], &v1(six), login("i", b"right")).await,
        OK
    );
    assert!(!log_lines(&format!("peer={six}")).is_empty());
    b.stop().await;
}

#[tokio::test]
async fn local_and_unknown_keep_the_socket_address() {
    let dir = Pki::new("proxy-local");
    let b = broker(&dir, 2).await;
    let addr = b.addrs[1];
    // Failures through LOCAL count against 127.0.0.1 ...
    assert_eq!(attempt(addr, &v2_local(), login("a", b"wrong")).await, BAD);
    assert_eq!(attempt(addr, &v2_local(), login("a", b"wrong")).await, BAD);
    // ... so UNKNOWN (also 127.0.0.1) and the plain listener share its limit,
    assert_eq!(
        two_at_once(addr, b"PROXY UNKNOWN\r\n", &v2_local()).await,
        [BAD, LIMITED]
    );
    let (x, y) = tokio::join!(
        attempt(addr, b"PROXY UNKNOWN\r\n", login("b", b"wrong")),
        attempt(b.addrs[2], b"", login("c", b"wrong"))
    );
    let mut codes = [x, y];
    codes.sort();
    assert_eq!(codes, [BAD, LIMITED]);
    // ... while a client named by a header is not.
    assert_eq!(
        two_at_once(addr, &v1("203.0.113.5:1234"), &v1("203.0.113.5:1235")).await,
        [BAD, BAD]
    );
    b.stop().await;
}

#[tokio::test]
async fn missing_or_malformed_headers_close_the_connection() {
    let dir = Pki::new("proxy-bad");
    let b = broker(&dir, 0).await;
    let mut connect = bytes::BytesMut::new();
    Packet::Connect(Box::new(login("x", b"right")))
        .encode(V::V5, &mut connect)
        .unwrap();
    for addr in [b.addrs[0], b.addrs[1]] {
        // No header: the CONNECT where it should be.
        assert!(refused(addr, &connect).await);
        for bad in [
            &b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"[..],
            b"PROXY TCP9 192.0.2.1 127.0.0.1 1 2\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            // v2 signature with version 1.
            b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02",
        ] {
            let mut bytes = bad.to_vec();
            bytes.extend_from_slice(&connect);
            assert!(
                refused(addr, &bytes).await,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A header that never completes: closed at the handshake timeout.
        assert!(refused(addr, b"PROXY TCP4 192.0.2.1").await);
    }
    // Each refusal is one log line naming the socket's address.
    let lines = log_lines("PROXY header");
    assert!(
        lines.iter().any(|l| l.contains("handshake failed")),
        "{lines:?}"
    );
    assert!(!log_lines("no handshake within").is_empty());
    // A plain listener is untouched; a header sent to it is not MQTT.
    assert_eq!(attempt(b.addrs[2], b"", login("p", b"right")).await, OK);
    assert!(refused(b.addrs[2], &v1("192.0.2.9:1")).await);
    b.stop().await;
}

#[test]
fn url_parameter() {
    let url = ListenerUrl::parse("mqtt://0.0.0.0:1883?proxy-protocol=true").unwrap();
    assert!(url.proxy_protocol);
    assert_eq!(url.addr, "0.0.0.0:1883");
    assert!(
        !ListenerUrl::parse("mqtt://0.0.0.0:1883")
            .unwrap()
            .proxy_protocol
    );
    assert!(
        ListenerUrl::parse("ws://0.0.0.0:80/mqtt?proxy-protocol=true")
            .unwrap()
            .proxy_protocol
    );
    for bad in [
        "quic://0.0.0.0:1?proxy-protocol=true",
        "mqtt://0.0.0.0:1?proxy-protocol=maybe",
        "mqtt://0.0.0.0:1?proxy=true",
    ] {
        assert!(ListenerUrl::parse(bad).is_err(), "{bad}");
    }
}
