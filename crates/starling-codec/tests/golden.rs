//! Golden byte vectors, built by hand from the field layouts of the MQTT 3.1,
//! 3.1.1 (OASIS, sections 3.1 to 3.14) and 5.0 (OASIS, sections 3.1 to 3.15)
//! specifications. Each vector decodes to the expected packet and the packet
//! encodes back to exactly the same bytes.
//!
//! Notation in the comments: `len` is a two-byte big-endian length prefix, `RL` the
//! remaining length, `PL` a property length, and properties are written as
//! `id: value`.

use bytes::{Bytes, BytesMut};
use starling_codec::{
    Ack, Auth, ByteString, ConnAck, Connect, ConnectReturnCode, Decoder, Disconnect, Packet,
    Properties, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Concatenates the parts of a vector (written field by field for reading).
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn s(text: &'static str) -> ByteString {
    ByteString::from_static(text)
}

fn b(data: &'static [u8]) -> Bytes {
    Bytes::from_static(data)
}

/// Decodes `wire` (as a server for CONNECT, else with version `v`), compares with
/// `expected`, then encodes `expected` and compares with `wire`.
fn golden(v: ProtocolVersion, wire: &[u8], expected: Packet) {
    let mut dec = match expected {
        Packet::Connect(_) => Decoder::new(),
        _ => Decoder::with_version(v),
    };
    let mut buf = BytesMut::from(wire);
    let got = dec
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{v}: {wire:02X?} does not decode: {e}"))
        .unwrap_or_else(|| panic!("{v}: {wire:02X?} is incomplete"));
    assert_eq!(got, expected, "{v}: decoding {wire:02X?}");
    assert!(buf.is_empty(), "{v}: {} bytes left over", buf.len());
    assert_eq!(dec.version(), Some(v));

    let mut out = BytesMut::new();
    expected
        .encode(v, &mut out)
        .unwrap_or_else(|e| panic!("{v}: {expected:?} does not encode: {e}"));
    assert_eq!(&out[..], wire, "{v}: encoding {expected:?}");
    assert_eq!(expected.encoded_len(v), Ok(wire.len()));
}

/// Decodes a valid but non-canonical encoding; the canonical one is `canonical`.
fn decodes_to_canonical(v: ProtocolVersion, wire: &[u8], expected: Packet, canonical: &[u8]) {
    let mut buf = BytesMut::from(wire);
    let got = Decoder::with_version(v)
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{v}: {wire:02X?} does not decode: {e}"));
    assert_eq!(got, Some(expected.clone()), "{v}: decoding {wire:02X?}");
    assert!(buf.is_empty());
    golden(v, canonical, expected);
}

// ---------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------

#[test]
fn connect_v3_1_minimal() {
    let wire = cat(&[
        &[0x10, 16],               // CONNECT, RL 16
        b"\x00\x06MQIsdp",         // protocol name
        &[0x03],                   // level 3
        &[0x02],                   // flags: clean session
        &[0x00, 0x3C],             // keep alive 60
        &[0x00, 0x02, b'c', b'1'], // client id "c1"
    ]);
    golden(
        V3_1,
        &wire,
        Packet::Connect(Box::new(Connect::new(V3_1, "c1"))),
    );
}

#[test]
fn connect_v3_1_with_credentials() {
    let wire = cat(&[
        &[0x10, 22],
        b"\x00\x06MQIsdp",
        &[0x03],
        &[0xC2], // user name, password, clean session
        &[0x00, 0x3C],
        b"\x00\x02c1",
        b"\x00\x01u",
        b"\x00\x01p",
    ]);
    let mut c = Connect::new(V3_1, "c1");
    c.username = Some(s("u"));
    c.password = Some(b(b"p"));
    golden(V3_1, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v3_1_1_with_will_and_credentials() {
    let wire = cat(&[
        &[0x10, 41],
        b"\x00\x04MQTT",
        &[0x04],
        // user name 0x80, password 0x40, will retain 0x20, will QoS 1 (0x08),
        // will 0x04, clean session 0x02
        &[0xEE],
        &[0x00, 0x1E], // keep alive 30
        b"\x00\x06client",
        b"\x00\x03lwt",  // will topic
        b"\x00\x04gone", // will message
        b"\x00\x04user",
        b"\x00\x04pass",
    ]);
    let c = Connect {
        protocol: V3_1_1,
        clean_start: true,
        keep_alive: 30,
        properties: Properties::default(),
        client_id: s("client"),
        will: Some(Will {
            topic: s("lwt"),
            payload: b(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(b"pass")),
    };
    golden(V3_1_1, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v3_1_1_empty_client_id_no_clean_session() {
    let wire = cat(&[
        &[0x10, 12],
        b"\x00\x04MQTT",
        &[0x04],
        &[0x00],
        &[0x00, 0x00],
        &[0x00, 0x00],
    ]);
    let mut c = Connect::new(V3_1_1, "");
    c.clean_start = false;
    c.keep_alive = 0;
    golden(V3_1_1, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_with_will_credentials_and_properties() {
    let wire = cat(&[
        &[0x10, 107],
        b"\x00\x04MQTT",
        &[0x05],
        // user name 0x80, password 0x40, will QoS 2 (0x10), will 0x04, clean start 0x02
        &[0xD6],
        &[0x00, 0x0A],                               // keep alive 10
        &[36],                                       // PL
        &[0x11, 0x00, 0x00, 0x0E, 0x10],             // session expiry interval: 3600
        &[0x15, 0x00, 0x03, b't', b'o', b'k'],       // authentication method: "tok"
        &[0x16, 0x00, 0x02, 0x01, 0x02],             // authentication data: 01 02
        &[0x17, 0x00],                               // request problem information: 0
        &[0x21, 0x00, 0x14],                         // receive maximum: 20
        &[0x22, 0x00, 0x0A],                         // topic alias maximum: 10
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'], // user property: k=v
        &[0x27, 0x00, 0x00, 0x10, 0x00],             // maximum packet size: 4096
        b"\x00\x02c5",                               // client id
        &[38],                                       // will PL
        &[0x01, 0x01],                               // payload format indicator: UTF-8
        &[0x02, 0x00, 0x00, 0x00, 0x3C],             // message expiry interval: 60
        b"\x03\x00\x04text",                         // content type: "text"
        b"\x08\x00\x04resp",                         // response topic: "resp"
        &[0x09, 0x00, 0x02, 0xAB, 0xCD],             // correlation data: AB CD
        &[0x18, 0x00, 0x00, 0x00, 0x05],             // will delay interval: 5
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'], // user property: a=b
        b"\x00\x03lwt",                              // will topic
        b"\x00\x03bye",                              // will payload
        b"\x00\x01u",                                // user name
        &[0x00, 0x02, 0x00, 0xFF],                   // password: 00 FF
    ]);
    let c = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 10,
        properties: Properties {
            session_expiry_interval: Some(3600),
            authentication_method: Some(s("tok")),
            authentication_data: Some(b(&[1, 2])),
            request_problem_information: Some(false),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            user_properties: vec![(s("k"), s("v"))],
            maximum_packet_size: Some(4096),
            ..Properties::default()
        },
        client_id: s("c5"),
        will: Some(Will {
            topic: s("lwt"),
            payload: b(b"bye"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some(s("text")),
                response_topic: Some(s("resp")),
                correlation_data: Some(b(&[0xAB, 0xCD])),
                will_delay_interval: Some(5),
                user_properties: vec![(s("a"), s("b"))],
                ..Properties::default()
            },
        }),
        username: Some(s("u")),
        password: Some(b(&[0x00, 0xFF])),
    };
    golden(V5, &wire, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_minimal() {
    let wire = cat(&[
        &[0x10, 13],
        b"\x00\x04MQTT",
        &[0x05],
        &[0x02],
        &[0x00, 0x3C],
        &[0x00], // PL 0
        &[0x00, 0x00],
    ]);
    golden(V5, &wire, Packet::Connect(Box::new(Connect::new(V5, ""))));
}

// ---------------------------------------------------------------------------
// CONNACK
// ---------------------------------------------------------------------------

#[test]
fn connack_v3_1() {
    // 3.1: the first byte is reserved, the second the return code.
    golden(
        V3_1,
        &[0x20, 0x02, 0x00, 0x00],
        Packet::ConnAck(ConnAck::default()),
    );
    let refused = ConnAck {
        reason_code: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        ..ConnAck::default()
    };
    assert_eq!(refused.return_code(), ConnectReturnCode::IdentifierRejected);
    golden(V3_1, &[0x20, 0x02, 0x00, 0x02], Packet::ConnAck(refused));
}

#[test]
fn connack_v3_1_1() {
    let resumed = ConnAck {
        session_present: true,
        ..ConnAck::default()
    };
    golden(V3_1_1, &[0x20, 0x02, 0x01, 0x00], Packet::ConnAck(resumed));
    // Every 3.1.1 return code maps to one MQTT 5 reason code and back.
    let codes = [
        (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        (3, ReasonCode::SERVER_UNAVAILABLE),
        (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        (5, ReasonCode::NOT_AUTHORIZED),
    ];
    for (rc, reason_code) in codes {
        let p = ConnAck {
            reason_code,
            ..ConnAck::default()
        };
        golden(V3_1_1, &[0x20, 0x02, 0x00, rc], Packet::ConnAck(p));
    }
}

#[test]
fn connack_v5_with_properties() {
    let wire = cat(&[
        &[0x20, 33],
        &[0x01],                         // session present
        &[0x00],                         // success
        &[30],                           // PL
        b"\x12\x00\x03abc",              // assigned client identifier: "abc"
        &[0x13, 0x00, 0x3C],             // server keep alive: 60
        &[0x21, 0x00, 0x0A],             // receive maximum: 10
        &[0x22, 0x00, 0x05],             // topic alias maximum: 5
        &[0x24, 0x01],                   // maximum QoS: 1
        &[0x25, 0x00],                   // retain available: no
        &[0x27, 0x00, 0x01, 0x00, 0x00], // maximum packet size: 65536
        &[0x28, 0x01],                   // wildcard subscription available
        &[0x29, 0x00],                   // subscription identifiers not available
        &[0x2A, 0x01],                   // shared subscription available
    ]);
    let p = ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            assigned_client_identifier: Some(s("abc")),
            server_keep_alive: Some(60),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(5),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(65536),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
            ..Properties::default()
        },
    };
    golden(V5, &wire, Packet::ConnAck(p));
}

#[test]
fn connack_v5_refused() {
    let wire = cat(&[
        &[0x20, 16],
        &[0x00],
        &[0x9C], // use another server
        &[13],
        b"\x1C\x00\x05other", // server reference
        b"\x1F\x00\x02no",    // reason string
    ]);
    let p = ConnAck {
        session_present: false,
        reason_code: ReasonCode::USE_ANOTHER_SERVER,
        properties: Properties {
            server_reference: Some(s("other")),
            reason_string: Some(s("no")),
            ..Properties::default()
        },
    };
    golden(V5, &wire, Packet::ConnAck(p));
    golden(
        V5,
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        Packet::ConnAck(ConnAck::default()),
    );
}

// ---------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------

#[test]
fn publish_v3_qos0() {
    let wire = cat(&[&[0x30, 7], b"\x00\x03a/b", b"hi"]);
    for v in [V3_1, V3_1_1] {
        golden(v, &wire, Packet::Publish(Publish::new("a/b", b(b"hi"))));
    }
}

#[test]
fn publish_v3_1_1_qos1_dup_retain() {
    let wire = cat(&[
        &[0x3B, 8], // PUBLISH, DUP 0x08, QoS 1 0x02, RETAIN 0x01
        b"\x00\x03a/b",
        &[0x00, 0x0A], // packet id 10
        b"x",
    ]);
    let p = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        packet_id: 10,
        ..Publish::new("a/b", b(b"x"))
    };
    golden(V3_1_1, &wire, Packet::Publish(p));
}

#[test]
fn publish_v3_1_qos2_empty_payload() {
    let wire = [0x34, 5, 0x00, 0x01, b't', 0x12, 0x34];
    let p = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: 0x1234,
        ..Publish::new("t", Bytes::new())
    };
    golden(V3_1, &wire, Packet::Publish(p));
}

#[test]
fn publish_two_byte_remaining_length() {
    // RL 203 = 0xCB 0x01 (low 7 bits first, continuation bit set).
    let payload = [0x5A; 200];
    let wire = cat(&[&[0x30, 0xCB, 0x01], b"\x00\x01t", &payload]);
    golden(
        V3_1_1,
        &wire,
        Packet::Publish(Publish::new("t", Bytes::copy_from_slice(&payload))),
    );
}

#[test]
fn publish_v5_with_properties() {
    let wire = cat(&[
        &[0x32, 56], // QoS 1
        b"\x00\x03a/b",
        &[0x00, 0x01],                               // packet id 1
        &[43],                                       // PL
        &[0x01, 0x01],                               // payload format indicator: UTF-8
        &[0x02, 0x00, 0x00, 0x00, 0x0A],             // message expiry interval: 10
        b"\x03\x00\x0Atext/plain",                   // content type
        b"\x08\x00\x03r/t",                          // response topic
        &[0x09, 0x00, 0x01, 0x07],                   // correlation data: 07
        &[0x0B, 0x80, 0x01], // subscription identifier: 128 (two-byte varint)
        &[0x23, 0x00, 0x02], // topic alias: 2
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'], // user property
        b"hello",
    ]);
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: 1,
        properties: Properties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(10),
            content_type: Some(s("text/plain")),
            response_topic: Some(s("r/t")),
            correlation_data: Some(b(&[0x07])),
            subscription_identifiers: vec![128],
            topic_alias: Some(2),
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        },
        payload: b(b"hello"),
    };
    golden(V5, &wire, Packet::Publish(p));
}

#[test]
fn publish_v5_topic_alias_with_empty_topic() {
    let wire = [0x30, 7, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'z'];
    let mut p = Publish::new("", b(b"z"));
    p.properties.topic_alias = Some(7);
    golden(V5, &wire, Packet::Publish(p));
}

#[test]
fn publish_v5_several_subscription_identifiers() {
    let wire = [
        0x31, 9, 0x00, 0x01, b't', 0x04, 0x0B, 0x01, 0x0B, 0x02, b'!',
    ];
    let mut p = Publish::new("t", b(b"!"));
    p.retain = true;
    p.properties.subscription_identifiers = vec![1, 2];
    golden(V5, &wire, Packet::Publish(p));
}

// ---------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP
// ---------------------------------------------------------------------------

#[test]
fn acks_v3() {
    for v in [V3_1, V3_1_1] {
        golden(v, &[0x40, 0x02, 0x00, 0x01], Packet::PubAck(Ack::new(1)));
        golden(v, &[0x50, 0x02, 0x00, 0x02], Packet::PubRec(Ack::new(2)));
        golden(v, &[0x62, 0x02, 0x00, 0x03], Packet::PubRel(Ack::new(3)));
        golden(
            v,
            &[0x70, 0x02, 0xFF, 0xFF],
            Packet::PubComp(Ack::new(0xFFFF)),
        );
    }
}

#[test]
fn acks_v5() {
    // Success without properties: reason code and PL omitted.
    golden(
        V5,
        &[0x40, 0x02, 0x12, 0x34],
        Packet::PubAck(Ack::new(0x1234)),
    );
    // A reason code without properties: PL omitted.
    let no_match = Ack {
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..Ack::new(5)
    };
    golden(
        V5,
        &[0x40, 0x03, 0x00, 0x05, 0x10],
        Packet::PubAck(no_match),
    );
    // Reason code and properties.
    let wire = cat(&[
        &[0x50, 17],
        &[0x00, 0x06],
        &[0x80], // unspecified error
        &[13],
        b"\x1F\x00\x03bad",
        &[0x26, 0x00, 0x01, b'x', 0x00, 0x01, b'y'],
    ]);
    let rec = Ack {
        packet_id: 6,
        reason_code: ReasonCode::UNSPECIFIED_ERROR,
        properties: Properties {
            reason_string: Some(s("bad")),
            user_properties: vec![(s("x"), s("y"))],
            ..Properties::default()
        },
    };
    golden(V5, &wire, Packet::PubRec(rec));
    // Success with properties: the reason code must be written.
    let wire = [0x40, 0x08, 0x00, 0x09, 0x00, 0x04, 0x1F, 0x00, 0x01, b'r'];
    let mut ok = Ack::new(9);
    ok.properties.reason_string = Some(s("r"));
    golden(V5, &wire, Packet::PubAck(ok));
    let not_found = |id| Ack {
        reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        ..Ack::new(id)
    };
    golden(
        V5,
        &[0x62, 0x03, 0x00, 0x07, 0x92],
        Packet::PubRel(not_found(7)),
    );
    golden(
        V5,
        &[0x70, 0x03, 0x00, 0x08, 0x92],
        Packet::PubComp(not_found(8)),
    );
}

#[test]
fn acks_v5_long_forms_decode_to_the_short_form() {
    // Spec 3.4.2.1: the reason code 0 and an empty property list may be sent.
    decodes_to_canonical(
        V5,
        &[0x40, 0x04, 0x00, 0x01, 0x00, 0x00],
        Packet::PubAck(Ack::new(1)),
        &[0x40, 0x02, 0x00, 0x01],
    );
    decodes_to_canonical(
        V5,
        &[0x70, 0x03, 0x00, 0x01, 0x00],
        Packet::PubComp(Ack::new(1)),
        &[0x70, 0x02, 0x00, 0x01],
    );
    decodes_to_canonical(
        V5,
        &[0xE0, 0x02, 0x00, 0x00],
        Packet::Disconnect(Disconnect::default()),
        &[0xE0, 0x00],
    );
}

// ---------------------------------------------------------------------------
// SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK
// ---------------------------------------------------------------------------

fn sub(filter: &'static str, options: SubscriptionOptions) -> Subscription {
    Subscription {
        filter: s(filter),
        options,
    }
}

fn qos_only(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

#[test]
fn subscribe_v3() {
    let wire = cat(&[
        &[0x82, 14], // SUBSCRIBE, flags 0010
        &[0x00, 0x0A],
        b"\x00\x03a/+",
        &[0x01],
        b"\x00\x03b/#",
        &[0x02],
    ]);
    let p = Subscribe {
        packet_id: 10,
        properties: Properties::default(),
        subscriptions: vec![
            sub("a/+", qos_only(QoS::AtLeastOnce)),
            sub("b/#", qos_only(QoS::ExactlyOnce)),
        ],
    };
    golden(V3_1_1, &wire, Packet::Subscribe(p));
    let wire = cat(&[&[0x82, 8], &[0x00, 0x01], b"\x00\x03x/y", &[0x00]]);
    let p = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![sub("x/y", qos_only(QoS::AtMostOnce))],
    };
    golden(V3_1, &wire, Packet::Subscribe(p));
}

#[test]
fn subscribe_v5() {
    let wire = cat(&[
        &[0x82, 31],
        &[0x00, 0x0B],
        &[9],
        &[0x0B, 0x2A], // subscription identifier: 42
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        b"\x00\x03a/b",
        // QoS 1, No Local 0x04, Retain As Published 0x08, Retain Handling 1 (0x10)
        &[0x1D],
        b"\x00\x0A$share/g/c",
        &[0x22], // QoS 2, Retain Handling 2 (0x20)
    ]);
    let p = Subscribe {
        packet_id: 11,
        properties: Properties {
            subscription_identifiers: vec![42],
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        },
        subscriptions: vec![
            sub(
                "a/b",
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
            ),
            sub(
                "$share/g/c",
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
            ),
        ],
    };
    golden(V5, &wire, Packet::Subscribe(p));
}

#[test]
fn suback() {
    let p = SubAck {
        packet_id: 10,
        properties: Properties::default(),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::UNSPECIFIED_ERROR,
        ],
    };
    let wire = [0x90, 6, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80];
    for v in [V3_1, V3_1_1] {
        golden(v, &wire, Packet::SubAck(p.clone()));
    }
    let wire = cat(&[
        &[0x90, 12],
        &[0x00, 0x0B],
        &[5],
        b"\x1F\x00\x02ok",
        &[0x01, 0x02, 0x8F, 0xA2],
    ]);
    let p = SubAck {
        packet_id: 11,
        properties: Properties {
            reason_string: Some(s("ok")),
            ..Properties::default()
        },
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        ],
    };
    golden(V5, &wire, Packet::SubAck(p));
}

#[test]
fn suback_v3_sends_every_failure_as_0x80() {
    let p = SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::NOT_AUTHORIZED, ReasonCode::GRANTED_QOS_1],
    };
    let mut out = BytesMut::new();
    Packet::SubAck(p).encode(V3_1_1, &mut out).expect("encodes");
    assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x01, 0x80, 0x01]);
}

#[test]
fn unsubscribe() {
    let wire = cat(&[&[0xA2, 10], &[0x00, 0x0C], b"\x00\x03a/b", b"\x00\x01#"]);
    let p = Unsubscribe {
        packet_id: 12,
        properties: Properties::default(),
        filters: vec![s("a/b"), s("#")],
    };
    for v in [V3_1, V3_1_1] {
        golden(v, &wire, Packet::Unsubscribe(p.clone()));
    }
    let wire = cat(&[
        &[0xA2, 15],
        &[0x00, 0x0D],
        &[7],
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        b"\x00\x03a/b",
    ]);
    let p = Unsubscribe {
        packet_id: 13,
        properties: Properties {
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        },
        filters: vec![s("a/b")],
    };
    golden(V5, &wire, Packet::Unsubscribe(p));
}

#[test]
fn unsuback() {
    let p = UnsubAck {
        packet_id: 12,
        properties: Properties::default(),
        reason_codes: vec![],
    };
    for v in [V3_1, V3_1_1] {
        golden(v, &[0xB0, 0x02, 0x00, 0x0C], Packet::UnsubAck(p.clone()));
    }
    let p = UnsubAck {
        packet_id: 13,
        properties: Properties::default(),
        reason_codes: vec![
            ReasonCode::SUCCESS,
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::NOT_AUTHORIZED,
        ],
    };
    golden(
        V5,
        &[0xB0, 0x06, 0x00, 0x0D, 0x00, 0x00, 0x11, 0x87],
        Packet::UnsubAck(p),
    );
}

// ---------------------------------------------------------------------------
// PINGREQ, PINGRESP, DISCONNECT, AUTH
// ---------------------------------------------------------------------------

#[test]
fn ping() {
    for v in [V3_1, V3_1_1, V5] {
        golden(v, &[0xC0, 0x00], Packet::PingReq);
        golden(v, &[0xD0, 0x00], Packet::PingResp);
    }
}

#[test]
fn disconnect() {
    for v in [V3_1, V3_1_1, V5] {
        golden(v, &[0xE0, 0x00], Packet::Disconnect(Disconnect::default()));
    }
    golden(
        V5,
        &[0xE0, 0x01, 0x04],
        Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
    );
    let wire = cat(&[
        &[0xE0, 20],
        &[0x8E], // session taken over
        &[18],
        &[0x11, 0x00, 0x00, 0x00, 0x00], // session expiry interval: 0
        b"\x1C\x00\x04host",             // server reference
        b"\x1F\x00\x03bye",              // reason string
    ]);
    let p = Disconnect {
        reason_code: ReasonCode::SESSION_TAKEN_OVER,
        properties: Properties {
            session_expiry_interval: Some(0),
            server_reference: Some(s("host")),
            reason_string: Some(s("bye")),
            ..Properties::default()
        },
    };
    golden(V5, &wire, Packet::Disconnect(p));
}

#[test]
fn auth() {
    golden(V5, &[0xF0, 0x00], Packet::Auth(Auth::default()));
    let wire = cat(&[
        &[0xF0, 20],
        &[0x18], // continue authentication
        &[18],
        b"\x15\x00\x05SCRAM",                  // authentication method
        &[0x16, 0x00, 0x03, 0x01, 0x02, 0x03], // authentication data
        b"\x1F\x00\x01x",                      // reason string
    ]);
    let p = Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[1, 2, 3])),
            reason_string: Some(s("x")),
            ..Properties::default()
        },
    };
    golden(V5, &wire, Packet::Auth(p));
    // A reason code without properties still carries PL 0.
    golden(
        V5,
        &[0xF0, 0x02, 0x19, 0x00],
        Packet::Auth(Auth {
            reason_code: ReasonCode::RE_AUTHENTICATE,
            properties: Properties::default(),
        }),
    );
}

/// A CONNECT followed by packets of its version, as one stream: the decoder
/// takes the version from CONNECT and decodes the rest with it.
#[test]
fn server_stream_takes_the_version_from_connect() {
    let connect = cat(&[
        &[0x10, 13],
        b"\x00\x04MQTT",
        &[0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x00],
    ]);
    // In 5.0 this PUBLISH has PL 0 before the payload; in 3.1.1 the 0 would be payload.
    let publish = [0x30, 0x05, 0x00, 0x01, b't', 0x00, b'!'];
    let wire = cat(&[&connect, &publish, &[0xC0, 0x00]]);
    let mut dec = Decoder::new();
    assert_eq!(dec.version(), None);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(dec.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(dec.version(), Some(V5));
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Packet::Publish(Publish::new("t", b(b"!")))))
    );
    assert_eq!(dec.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(dec.decode(&mut buf), Ok(None));
}

/// The remaining length boundaries of spec table 1.5.5 (and 2.1.4 in 3.1.1),
/// through PUBLISH packets whose body has exactly that size.
#[test]
fn remaining_length_boundaries() {
    let table: [(usize, &[u8]); 7] = [
        (5, &[0x05]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    ];
    for (remaining, encoded) in table {
        assert_eq!(starling_codec::varint_len(remaining), encoded.len());
        // Topic "t" takes 3 bytes of the body; the payload the rest.
        let payload = Bytes::from(vec![0x11; remaining - 3]);
        let wire = cat(&[&[0x30], encoded, b"\x00\x01t", &payload]);
        golden(V3_1_1, &wire, Packet::Publish(Publish::new("t", payload)));
    }
    assert_eq!(starling_codec::MAX_REMAINING_LENGTH, 268_435_455);
    assert_eq!(starling_codec::varint_len(268_435_455), 4);
}

/// A packet whose remaining length does not fit four bytes is not encoded.
#[test]
fn encode_refuses_a_packet_over_256_mb() {
    let payload = Bytes::from(vec![0u8; starling_codec::MAX_REMAINING_LENGTH]);
    let p = Packet::Publish(Publish::new("t", payload));
    let mut out = BytesMut::new();
    assert!(matches!(
        p.encode(V3_1_1, &mut out),
        Err(starling_codec::EncodeError::PacketTooLarge(n)) if n == 268_435_458
    ));
    assert!(out.is_empty());
}

/// An MQTT 5 reason code with no 3.x equivalent goes out as the closest return code.
#[test]
fn connack_v5_reasons_encoded_for_v3() {
    let cases = [
        (ReasonCode::SERVER_BUSY, 3),
        (ReasonCode::QUOTA_EXCEEDED, 3),
        (ReasonCode::BANNED, 5),
        (ReasonCode::BAD_AUTHENTICATION_METHOD, 4),
        (ReasonCode::NOT_AUTHORIZED, 5),
        (ReasonCode::SUCCESS, 0),
    ];
    for (reason_code, rc) in cases {
        let p = Packet::ConnAck(ConnAck {
            reason_code,
            ..ConnAck::default()
        });
        for v in [V3_1, V3_1_1] {
            let mut out = BytesMut::new();
            p.encode(v, &mut out).expect("encodes");
            assert_eq!(&out[..], &[0x20, 0x02, 0x00, rc], "{reason_code:?} in {v}");
        }
    }
    // 3.1 has no session present flag: it is never written.
    let resumed = Packet::ConnAck(ConnAck {
        session_present: true,
        ..ConnAck::default()
    });
    let mut out = BytesMut::new();
    resumed.encode(V3_1, &mut out).expect("encodes");
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x00]);
}
