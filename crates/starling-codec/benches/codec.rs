//! Encode and decode throughput of the packets a broker handles most: a small
//! PUBLISH (MQTT 3.1.1 and 5.0) and an MQTT 5 CONNECT with properties and a will.
//!
//! Run with `cargo bench -p starling-codec`. Each iteration is one packet, so the
//! reported throughput (elem/s) is packets per second.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling_codec::{
    ByteString, Connect, Decoder, Packet, Properties, ProtocolVersion, Publish, QoS, Will,
};

/// A QoS 1 PUBLISH with a short topic and a 64-byte payload; in 5.0 with a
/// message expiry and a content type, as a typical client sends.
fn small_publish(v: ProtocolVersion) -> Packet {
    let mut p = Publish {
        qos: QoS::AtLeastOnce,
        packet_id: 42,
        ..Publish::new("sensors/7/temp", Bytes::from(vec![0x5A; 64]))
    };
    if v.is_v5() {
        p.properties.message_expiry_interval = Some(3600);
        p.properties.content_type = Some(ByteString::from_static("application/json"));
    }
    Packet::Publish(p)
}

/// An MQTT 5 CONNECT with will, credentials and a realistic property set.
fn v5_connect() -> Packet {
    let s = ByteString::from_static;
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: Some(16),
            request_problem_information: Some(true),
            user_properties: vec![(s("region"), s("eu-west")), (s("fw"), s("1.4.2"))],
            ..Properties::default()
        },
        client_id: s("device-0001-abcdef"),
        will: Some(Will {
            topic: s("devices/0001/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(10),
                message_expiry_interval: Some(600),
                payload_format_indicator: Some(true),
                content_type: Some(s("text/plain")),
                ..Properties::default()
            },
        }),
        username: Some(s("device-0001")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
    }))
}

fn cases() -> Vec<(&'static str, ProtocolVersion, Packet)> {
    vec![
        (
            "publish_v3_1_1_64B",
            ProtocolVersion::V3_1_1,
            small_publish(ProtocolVersion::V3_1_1),
        ),
        (
            "publish_v5_64B",
            ProtocolVersion::V5,
            small_publish(ProtocolVersion::V5),
        ),
        ("connect_v5_props", ProtocolVersion::V5, v5_connect()),
    ]
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, v, packet) in cases() {
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_with_input(BenchmarkId::from_parameter(name), &packet, |b, p| {
            b.iter(|| {
                buf.clear();
                black_box(p).encode(v, &mut buf).expect("encodes");
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, v, packet) in cases() {
        let mut wire = BytesMut::new();
        packet.encode(v, &mut wire).expect("encodes");
        let wire = wire.freeze();
        let is_connect = matches!(packet, Packet::Connect(_));
        group.bench_with_input(BenchmarkId::from_parameter(name), &wire, |b, wire| {
            // As in a connection's read loop: the bytes land in a receive buffer that
            // is reused once the previous packet is dropped, and the decoder slices it.
            let mut buf = BytesMut::with_capacity(4096);
            let mut dec = Decoder::with_version(v);
            b.iter(|| {
                if is_connect {
                    dec = Decoder::new();
                }
                buf.extend_from_slice(wire);
                let p = dec.decode(&mut buf).expect("valid").expect("whole");
                black_box(p)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
