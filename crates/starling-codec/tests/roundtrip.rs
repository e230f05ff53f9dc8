//! Property-based round trips: every packet type, for every protocol version it
//! exists in, encodes and decodes back to an equal packet. The same bytes fed one
//! at a time decode only at the last byte, and decoded payloads and strings are
//! slices of the receive buffer.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use starling_codec::{
    Ack, Auth, ByteString, ConnAck, Connect, Decoder, Disconnect, Packet, Properties,
    PropertyContext, PropertyId, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Cases per property test. Each case is a few encodes and `len` decodes.
const CASES: u32 = 128;

// Reason codes each MQTT 5 packet may carry (spec table 2-6), copied from the
// specification rather than from the crate so that a mistake there shows here.
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// The CONNACK reason codes that have an MQTT 3.x return code (0 to 5).
const CONNACK_V3_CODES: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
/// MQTT 3.x acknowledgements and DISCONNECT carry no reason code: always success.
const SUCCESS_ONLY: &[u8] = &[0x00];

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(codes).prop_map(ReasonCode)
}

/// Any MQTT string: well-formed UTF-8 without U+0000, including multi-byte
/// characters and U+FEFF.
fn string() -> impl Strategy<Value = ByteString> {
    prop_oneof![
        "[a-zA-Z0-9/_ .-]{0,12}",
        "[^\\x00]{0,8}",
        "\u{FEFF}[a-z\u{e9}\u{6f22}\u{1F600}]{0,6}",
    ]
    .prop_map(ByteString::from)
}

/// A topic name: non-empty, no wildcard.
fn topic_name() -> impl Strategy<Value = ByteString> {
    prop_oneof![
        "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}",
        "[^\\x00+#]{1,10}",
        Just("$SYS/broker/uptime".to_owned()),
        Just("/".to_owned()),
    ]
    .prop_map(ByteString::from)
}

/// A topic filter. The codec leaves filter validation to the receiver, so any
/// string goes, wildcards and shared subscriptions included.
fn topic_filter() -> impl Strategy<Value = ByteString> {
    prop_oneof![
        "[a-z0-9+#]{1,4}(/[a-z0-9+#]{1,4}){0,3}",
        "\\$share/[a-z]{1,4}/[a-z+#/]{1,8}",
        "[^\\x00]{0,8}",
    ]
    .prop_map(ByteString::from)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Every property with a random value that is valid on its own, each present
/// about half the time.
fn any_properties() -> impl Strategy<Value = Properties> {
    let a = (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(bytes(16)),
        vec(1..=268_435_455u32, 0..3),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(any::<u16>()),
    );
    let b = (
        option::of(string()),
        option::of(bytes(16)),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(string()),
        option::of(string()),
        option::of(string()),
        option::of(1..=u16::MAX),
    );
    let c = (
        option::of(any::<u16>()),
        option::of(1..=u16::MAX),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        vec((string(), string()), 0..3),
        option::of(1..=u32::MAX),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
    );
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: b.0,
        authentication_data: b.1,
        request_problem_information: b.2,
        will_delay_interval: b.3,
        request_response_information: b.4,
        response_information: b.5,
        server_reference: b.6,
        reason_string: b.7,
        receive_maximum: b.8,
        topic_alias_maximum: c.0,
        topic_alias: c.1,
        maximum_qos: c.2,
        retain_available: c.3,
        user_properties: c.4,
        maximum_packet_size: c.5,
        wildcard_subscription_available: c.6,
        subscription_identifier_available: c.7,
        shared_subscription_available: c.8,
    })
}

/// Clears every property that `ctx` may not carry, as [`PropertyId::allowed_in`] says.
fn restrict(mut p: Properties, ctx: PropertyContext) -> Properties {
    use PropertyId::*;
    macro_rules! keep {
        ($($field:ident: $id:ident),* $(,)?) => {
            $(if !$id.allowed_in(ctx) {
                p.$field = Default::default();
            })*
        };
    }
    keep!(
        payload_format_indicator: PayloadFormatIndicator,
        message_expiry_interval: MessageExpiryInterval,
        content_type: ContentType,
        response_topic: ResponseTopic,
        correlation_data: CorrelationData,
        subscription_identifiers: SubscriptionIdentifier,
        session_expiry_interval: SessionExpiryInterval,
        assigned_client_identifier: AssignedClientIdentifier,
        server_keep_alive: ServerKeepAlive,
        authentication_method: AuthenticationMethod,
        authentication_data: AuthenticationData,
        request_problem_information: RequestProblemInformation,
        will_delay_interval: WillDelayInterval,
        request_response_information: RequestResponseInformation,
        response_information: ResponseInformation,
        server_reference: ServerReference,
        reason_string: ReasonString,
        receive_maximum: ReceiveMaximum,
        topic_alias_maximum: TopicAliasMaximum,
        topic_alias: TopicAlias,
        maximum_qos: MaximumQoS,
        retain_available: RetainAvailable,
        user_properties: UserProperty,
        maximum_packet_size: MaximumPacketSize,
        wildcard_subscription_available: WildcardSubscriptionAvailable,
        subscription_identifier_available: SubscriptionIdentifierAvailable,
        shared_subscription_available: SharedSubscriptionAvailable,
    );
    // Authentication Data needs an Authentication Method.
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    // SUBSCRIBE carries at most one Subscription Identifier.
    if ctx == PropertyContext::Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    p
}

/// Properties for `ctx` in version `v`: always empty before MQTT 5.
fn properties(v: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        any_properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes(32),
        qos(),
        any::<bool>(),
        properties(v, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        properties(v, PropertyContext::Connect),
        string(),
        option::of(will(v)),
        option::of(string()),
        option::of(bytes(16)),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // MQTT 3.x: a password needs a user name. MQTT 5 allows it alone.
                let username = match (&username, &password) {
                    (None, Some(_)) if !v.is_v5() => Some(ByteString::from_static("user")),
                    _ => username,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() {
        CONNACK_CODES
    } else {
        CONNACK_V3_CODES
    };
    (
        any::<bool>(),
        reason(codes),
        properties(v, PropertyContext::ConnAck),
    )
        .prop_map(move |(present, reason_code, properties)| {
            // Session present only on success, and never in 3.1, which has no such flag.
            let session_present = present && !reason_code.is_error() && v != V3_1;
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        prop_oneof![3 => topic_name(), 1 => Just(ByteString::new())],
        packet_id(),
        properties(v, PropertyContext::Publish),
        bytes(300),
    )
        .prop_map(
            move |(dup, qos, retain, mut topic, id, mut properties, payload)| {
                // An empty topic name needs a topic alias, which only MQTT 5 has.
                if topic.is_empty() {
                    if v.is_v5() {
                        properties.topic_alias.get_or_insert(1);
                    } else {
                        topic = ByteString::from_static("t");
                    }
                }
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { 0 } else { id },
                    properties,
                    payload,
                })
            },
        )
}

#[derive(Debug, Clone, Copy)]
enum AckKind {
    Ack,
    Rec,
    Rel,
    Comp,
}

fn ack(v: ProtocolVersion, kind: AckKind) -> impl Strategy<Value = Packet> {
    let codes = match kind {
        AckKind::Ack | AckKind::Rec => PUBACK_CODES,
        AckKind::Rel | AckKind::Comp => PUBREL_CODES,
    };
    let codes = if v.is_v5() { codes } else { SUCCESS_ONLY };
    (
        packet_id(),
        reason(codes),
        properties(v, PropertyContext::Ack),
    )
        .prop_map(move |(packet_id, reason_code, properties)| {
            let ack = Ack {
                packet_id,
                reason_code,
                properties,
            };
            match kind {
                AckKind::Ack => Packet::PubAck(ack),
                AckKind::Rec => Packet::PubRec(ack),
                AckKind::Rel => Packet::PubRel(ack),
                AckKind::Comp => Packet::PubComp(ack),
            }
        })
}

fn subscription(v: ProtocolVersion) -> impl Strategy<Value = Subscription> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling,
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = if v.is_v5() {
                    SubscriptionOptions {
                        qos,
                        // No Local is a protocol error on a shared subscription.
                        no_local: no_local && !filter.starts_with("$share/"),
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    // 3.x has only the QoS bits.
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                };
                Subscription { filter, options }
            },
        )
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        properties(v, PropertyContext::Subscribe),
        vec(subscription(v), 1..6),
    )
        .prop_map(|(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                subscriptions,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() {
        SUBACK_CODES
    } else {
        SUBACK_V3_CODES
    };
    (
        packet_id(),
        properties(v, PropertyContext::SubAck),
        vec(reason(codes), 0..8),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        properties(v, PropertyContext::Unsubscribe),
        vec(topic_filter(), 1..6),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // 3.x UNSUBACK has no reason codes at all.
    let count = if v.is_v5() { 0..8 } else { 0..1 };
    (
        packet_id(),
        properties(v, PropertyContext::UnsubAck),
        vec(reason(UNSUBACK_CODES), count),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() {
        DISCONNECT_CODES
    } else {
        SUCCESS_ONLY
    };
    (reason(codes), properties(v, PropertyContext::Disconnect)).prop_map(
        |(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        },
    )
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason(AUTH_CODES), properties(V5, PropertyContext::Auth)).prop_map(
        |(reason_code, properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        },
    )
}

/// Any packet that exists in `v` (no CONNECT: that one fixes the version).
fn any_packet_after_connect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut all = vec![
        connack(v).boxed(),
        publish(v).boxed(),
        ack(v, AckKind::Ack).boxed(),
        ack(v, AckKind::Rec).boxed(),
        ack(v, AckKind::Rel).boxed(),
        ack(v, AckKind::Comp).boxed(),
        subscribe(v).boxed(),
        suback(v).boxed(),
        unsubscribe(v).boxed(),
        unsuback(v).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v).boxed(),
    ];
    if v.is_v5() {
        all.push(auth().boxed());
    }
    prop::strategy::Union::new(all).boxed()
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

fn decoder_for(packet: &Packet, v: ProtocolVersion) -> Decoder {
    match packet {
        // The server side learns the version from CONNECT itself.
        Packet::Connect(_) => Decoder::new(),
        _ => Decoder::with_version(v),
    }
}

fn encode(packet: &Packet, v: ProtocolVersion) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    packet
        .encode(v, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("encode failed: {e}")))?;
    Ok(buf)
}

/// The bytes of a string (`ByteString::as_bytes` gives a `Bytes`, not a slice).
fn text(s: &str) -> &[u8] {
    s.as_bytes()
}

/// Byte slices of a decoded packet that must point into the receive buffer:
/// payloads, topics, strings and binary properties.
fn shared_slices(packet: &Packet) -> Vec<&[u8]> {
    fn props<'a>(p: &'a Properties, out: &mut Vec<&'a [u8]>) {
        let strings = [
            &p.content_type,
            &p.response_topic,
            &p.assigned_client_identifier,
            &p.authentication_method,
            &p.response_information,
            &p.server_reference,
            &p.reason_string,
        ];
        out.extend(strings.into_iter().flatten().map(|s| text(s)));
        out.extend(p.correlation_data.as_deref());
        out.extend(p.authentication_data.as_deref());
        for (k, v) in &p.user_properties {
            out.push(text(k));
            out.push(text(v));
        }
    }
    let mut out: Vec<&[u8]> = Vec::new();
    match packet {
        Packet::Connect(c) => {
            out.push(text(&c.client_id));
            props(&c.properties, &mut out);
            if let Some(w) = &c.will {
                out.push(text(&w.topic));
                out.push(&w.payload[..]);
                props(&w.properties, &mut out);
            }
            out.extend(c.username.as_ref().map(|u| text(u)));
            out.extend(c.password.as_deref());
        }
        Packet::ConnAck(p) => props(&p.properties, &mut out),
        Packet::Publish(p) => {
            out.push(text(&p.topic));
            out.push(&p.payload[..]);
            props(&p.properties, &mut out);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            props(&a.properties, &mut out)
        }
        Packet::Subscribe(s) => {
            props(&s.properties, &mut out);
            out.extend(s.subscriptions.iter().map(|s| text(&s.filter)));
        }
        Packet::SubAck(s) => props(&s.properties, &mut out),
        Packet::Unsubscribe(u) => {
            props(&u.properties, &mut out);
            out.extend(u.filters.iter().map(|f| text(f)));
        }
        Packet::UnsubAck(u) => props(&u.properties, &mut out),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => props(&d.properties, &mut out),
        Packet::Auth(a) => props(&a.properties, &mut out),
    }
    // An empty slice may point anywhere (a static empty buffer).
    out.retain(|s| !s.is_empty());
    out
}

/// Asserts that every non-empty slice of `packet` lies inside `region`.
fn assert_zero_copy(packet: &Packet, region: std::ops::Range<usize>) -> Result<(), TestCaseError> {
    for slice in shared_slices(packet) {
        let start = slice.as_ptr() as usize;
        let end = start + slice.len();
        prop_assert!(
            region.start <= start && end <= region.end,
            "slice {:x}..{:x} ({} bytes) was copied out of the receive buffer {:x}..{:x}",
            start,
            end,
            slice.len(),
            region.start,
            region.end
        );
    }
    Ok(())
}

fn region(buf: &BytesMut) -> std::ops::Range<usize> {
    let start = buf.as_ptr() as usize;
    start..start + buf.len()
}

/// Encode, decode whole, decode byte by byte, and check zero-copy.
fn check_roundtrip(packet: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let wire = encode(packet, v)?;
    prop_assert_eq!(packet.encoded_len(v), Ok(wire.len()));

    // Whole buffer at once, with a byte of the next packet after it.
    let mut buf = wire.clone();
    buf.extend_from_slice(&[0xC0]);
    let before = region(&buf);
    let mut dec = decoder_for(packet, v);
    let decoded = dec.decode(&mut buf);
    prop_assert_eq!(decoded.as_ref(), Ok(&Some(packet.clone())));
    prop_assert_eq!(&buf[..], &[0xC0][..], "decode consumed exactly one packet");
    prop_assert_eq!(dec.version(), Some(v));
    if let Ok(Some(p)) = &decoded {
        assert_zero_copy(p, before)?;
    }

    // Encoding the decoded packet gives the same bytes.
    if let Ok(Some(p)) = &decoded {
        prop_assert_eq!(encode(p, v)?, wire.clone());
    }

    // One byte at a time: nothing until the last byte.
    let mut dec = decoder_for(packet, v);
    let mut buf = BytesMut::new();
    for (i, byte) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        if i + 1 < wire.len() {
            let got = dec.decode(&mut buf);
            prop_assert_eq!(
                got,
                Ok(None),
                "decoded early at byte {} of {}",
                i + 1,
                wire.len()
            );
            prop_assert_eq!(buf.len(), i + 1, "Ok(None) consumed input");
        } else {
            let before = region(&buf);
            let got = dec.decode(&mut buf);
            prop_assert_eq!(got.as_ref(), Ok(&Some(packet.clone())));
            prop_assert!(buf.is_empty());
            if let Ok(Some(p)) = &got {
                assert_zero_copy(p, before)?;
            }
        }
    }
    Ok(())
}

macro_rules! roundtrip_tests {
    ($($name:ident: $strategy:expr, $version:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            $(
                #[test]
                fn $name(packet in $strategy) {
                    check_roundtrip(&packet, $version)?;
                }
            )*
        }
    };
}

roundtrip_tests! {
    connect_v3_1: connect(V3_1), V3_1;
    connect_v3_1_1: connect(V3_1_1), V3_1_1;
    connect_v5: connect(V5), V5;
    connack_v3_1: connack(V3_1), V3_1;
    connack_v3_1_1: connack(V3_1_1), V3_1_1;
    connack_v5: connack(V5), V5;
    publish_v3_1: publish(V3_1), V3_1;
    publish_v3_1_1: publish(V3_1_1), V3_1_1;
    publish_v5: publish(V5), V5;
    puback_v3_1: ack(V3_1, AckKind::Ack), V3_1;
    puback_v3_1_1: ack(V3_1_1, AckKind::Ack), V3_1_1;
    puback_v5: ack(V5, AckKind::Ack), V5;
    pubrec_v3_1: ack(V3_1, AckKind::Rec), V3_1;
    pubrec_v3_1_1: ack(V3_1_1, AckKind::Rec), V3_1_1;
    pubrec_v5: ack(V5, AckKind::Rec), V5;
    pubrel_v3_1: ack(V3_1, AckKind::Rel), V3_1;
    pubrel_v3_1_1: ack(V3_1_1, AckKind::Rel), V3_1_1;
    pubrel_v5: ack(V5, AckKind::Rel), V5;
    pubcomp_v3_1: ack(V3_1, AckKind::Comp), V3_1;
    pubcomp_v3_1_1: ack(V3_1_1, AckKind::Comp), V3_1_1;
    pubcomp_v5: ack(V5, AckKind::Comp), V5;
    subscribe_v3_1: subscribe(V3_1), V3_1;
    subscribe_v3_1_1: subscribe(V3_1_1), V3_1_1;
    subscribe_v5: subscribe(V5), V5;
    suback_v3_1: suback(V3_1), V3_1;
    suback_v3_1_1: suback(V3_1_1), V3_1_1;
    suback_v5: suback(V5), V5;
    unsubscribe_v3_1: unsubscribe(V3_1), V3_1;
    unsubscribe_v3_1_1: unsubscribe(V3_1_1), V3_1_1;
    unsubscribe_v5: unsubscribe(V5), V5;
    unsuback_v3_1: unsuback(V3_1), V3_1;
    unsuback_v3_1_1: unsuback(V3_1_1), V3_1_1;
    unsuback_v5: unsuback(V5), V5;
    pingreq_v3_1: Just(Packet::PingReq), V3_1;
    pingreq_v3_1_1: Just(Packet::PingReq), V3_1_1;
    pingreq_v5: Just(Packet::PingReq), V5;
    pingresp_v3_1: Just(Packet::PingResp), V3_1;
    pingresp_v3_1_1: Just(Packet::PingResp), V3_1_1;
    pingresp_v5: Just(Packet::PingResp), V5;
    disconnect_v3_1: disconnect(V3_1), V3_1;
    disconnect_v3_1_1: disconnect(V3_1_1), V3_1_1;
    disconnect_v5: disconnect(V5), V5;
    auth_v5: auth(), V5;
}

/// A whole session's stream: CONNECT then any packets of that version, cut into
/// random chunks. Every packet comes out, in order, and nothing is left over.
fn session() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>, Vec<usize>)> {
    prop_oneof![Just(V3_1), Just(V3_1_1), Just(V5)].prop_flat_map(|v| {
        (
            Just(v),
            connect(v),
            vec(any_packet_after_connect(v), 0..12),
            vec(1..40usize, 1..64),
        )
            .prop_map(|(v, first, mut rest, chunks)| {
                rest.insert(0, first);
                (v, rest, chunks)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn stream_in_random_chunks((v, packets, chunks) in session()) {
        let mut wire = BytesMut::new();
        for p in &packets {
            p.encode(v, &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let wire = wire.freeze();
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut sizes = chunks.iter().cycle();
        while pos < wire.len() {
            let n = (*sizes.next().unwrap_or(&1)).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(p) = dec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                out.push(p);
            }
        }
        prop_assert_eq!(out, packets);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(dec.version(), Some(v));
    }

    /// Decoding never panics on arbitrary bytes, for any decoder.
    #[test]
    fn arbitrary_bytes_do_not_panic(data in vec(any::<u8>(), 0..128)) {
        for mut dec in [
            Decoder::new(),
            Decoder::with_version(V3_1),
            Decoder::with_version(V3_1_1),
            Decoder::with_version(V5),
        ] {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------

/// The payload of a decoded PUBLISH is the very bytes of the receive buffer.
#[test]
fn publish_payload_is_a_slice_of_the_receive_buffer() {
    let payload = Bytes::from(vec![0xA5; 1000]);
    let packet = Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        packet_id: 7,
        ..Publish::new("sensors/1", payload.clone())
    });
    let mut buf = BytesMut::new();
    packet.encode(V3_1_1, &mut buf).expect("encodes");
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let decoded = Decoder::with_version(V3_1_1)
        .decode(&mut buf)
        .expect("valid")
        .expect("whole");
    let Packet::Publish(p) = &decoded else {
        panic!("not a PUBLISH: {decoded:?}");
    };
    assert_eq!(p.payload, payload);
    let p_start = p.payload.as_ptr() as usize;
    assert!(start <= p_start && p_start + p.payload.len() <= end);
    // The payload is at the end of the frame: header (2 + 2 bytes of length),
    // topic (2 + 9), packet id (2).
    assert_eq!(p_start - start, 3 + 2 + 9 + 2);
    let t_start = p.topic.as_ptr() as usize;
    assert_eq!(t_start - start, 3 + 2);
}

/// Packet types that exist in every version encode to the same bytes in 3.1 and
/// 3.1.1 (CONNECT and CONNACK aside, the two differ only in their handshake).
#[test]
fn v3_1_and_v3_1_1_share_their_encoding() {
    let packets = [
        Packet::Publish(Publish::new("a/b", &b"x"[..])),
        Packet::PubAck(Ack::new(1)),
        Packet::Subscribe(Subscribe {
            packet_id: 2,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: "a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..SubscriptionOptions::default()
                },
            }],
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::default()),
    ];
    for p in packets {
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        p.encode(V3_1, &mut a).expect("encodes");
        p.encode(V3_1_1, &mut b).expect("encodes");
        assert_eq!(a, b, "{p:?}");
    }
}

/// A partial fixed header, then a partial body, are both "need more bytes".
#[test]
fn partial_input_is_not_an_error() {
    let mut dec = Decoder::with_version(V5);
    let mut buf = BytesMut::new();
    assert_eq!(dec.decode(&mut buf), Ok(None));
    // PUBLISH with a two-byte remaining length of 200, cut inside the length.
    buf.extend_from_slice(&[0x30, 0xC8]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(&[0x01]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 3);
    let body: Vec<u8> = [&[0x00, 0x01, b't', 0x00][..], &[0x55; 196][..]].concat();
    buf.extend_from_slice(&body[..100]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(&body[100..]);
    let Some(Packet::Publish(p)) = dec.decode(&mut buf).expect("valid") else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(&*p.topic, "t");
    assert_eq!(p.payload.len(), 196);
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// Encoder refusals: what the decoder would reject is not put on the wire.
// ---------------------------------------------------------------------------

/// Every packet that carries a packet identifier refuses to encode with 0.
#[test]
fn encode_refuses_packet_id_zero() {
    let props = Properties::default;
    let packets = [
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            ..Publish::new("t", &b""[..])
        }),
        Packet::PubAck(Ack::new(0)),
        Packet::PubRec(Ack::new(0)),
        Packet::PubRel(Ack::new(0)),
        Packet::PubComp(Ack::new(0)),
        Packet::Subscribe(Subscribe {
            packet_id: 0,
            properties: props(),
            subscriptions: vec![Subscription {
                filter: "a".into(),
                options: SubscriptionOptions::default(),
            }],
        }),
        Packet::SubAck(SubAck {
            packet_id: 0,
            properties: props(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_0],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 0,
            properties: props(),
            filters: vec!["a".into()],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 0,
            properties: props(),
            reason_codes: vec![],
        }),
    ];
    for v in [V3_1, V3_1_1, V5] {
        for p in &packets {
            let mut buf = BytesMut::new();
            assert!(
                matches!(
                    p.encode(v, &mut buf),
                    Err(starling_codec::EncodeError::InvalidValue(_))
                ),
                "{v}: {p:?} encoded with packet id 0"
            );
            assert!(buf.is_empty(), "{v}: bytes written on error for {p:?}");
        }
    }
}

#[test]
fn encode_refuses_auth_before_v5() {
    for v in [V3_1, V3_1_1] {
        let mut buf = BytesMut::new();
        assert_eq!(
            Packet::Auth(Auth::default()).encode(v, &mut buf),
            Err(starling_codec::EncodeError::NotInVersion(
                starling_codec::PacketType::Auth
            ))
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn encode_refuses_properties_outside_their_packet() {
    let mut publish = Publish::new("t", &b""[..]);
    publish.properties.session_expiry_interval = Some(1);
    let mut buf = BytesMut::new();
    assert!(Packet::Publish(publish).encode(V5, &mut buf).is_err());
    assert!(buf.is_empty());
}

#[test]
fn encode_refuses_password_without_user_name_before_v5() {
    let mut connect = Connect::new(V3_1_1, "c");
    connect.password = Some(Bytes::from_static(b"secret"));
    let mut buf = BytesMut::new();
    assert!(Packet::Connect(Box::new(connect.clone()))
        .encode(V3_1_1, &mut buf)
        .is_err());
    connect.protocol = V5;
    assert!(Packet::Connect(Box::new(connect))
        .encode(V5, &mut buf)
        .is_ok());
}

#[test]
fn encode_refuses_oversized_fields() {
    let long = "x".repeat(65_536);
    let mut buf = BytesMut::new();
    let p = Packet::Publish(Publish::new(long.as_str(), &b""[..]));
    assert_eq!(
        p.encode(V3_1_1, &mut buf),
        Err(starling_codec::EncodeError::FieldTooLong("topic name"))
    );
    let ok = "x".repeat(65_535);
    let p = Packet::Publish(Publish::new(ok.as_str(), &b""[..]));
    assert!(p.encode(V3_1_1, &mut buf).is_ok());
}
