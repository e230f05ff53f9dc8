//! Feeds arbitrary bytes to every kind of decoder. Anything that decodes must
//! re-encode, and the re-encoded bytes must decode to an equal packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_codec::{Decoder, Packet, ProtocolVersion};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    // Server side: the first packet must be CONNECT and fixes the version.
    drain(Decoder::new(), data);
    // The same, with a small maximum size and BOM stripping.
    let mut dec = Decoder::new();
    dec.set_max_packet_size(4096);
    dec.set_strip_bom(true);
    drain(dec, data);
    // Client side, for each version.
    for v in VERSIONS {
        drain(Decoder::with_version(v), data);
    }
});

/// Decodes packets from `data` until it runs out or an error.
fn drain(mut dec: Decoder, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(packet)) => {
                // Every decoded packet consumes its fixed header at least.
                assert!(buf.len() + 2 <= before, "decode consumed too little");
                let version = dec.version().expect("version is known after a packet");
                reencode(&packet, version);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must not consume input");
                break;
            }
            Err(err) => {
                // Every error maps to a reason code and formats.
                let _ = err.reason_code();
                let _ = err.to_string();
                break;
            }
        }
    }
}

/// Encodes `packet` again and checks that it decodes to an equal packet.
fn reencode(packet: &Packet, version: ProtocolVersion) {
    let (version, mut dec) = match packet {
        Packet::Connect(c) => (c.protocol, Decoder::new()),
        _ => (version, Decoder::with_version(version)),
    };
    let mut out = BytesMut::new();
    packet
        .encode(version, &mut out)
        .unwrap_or_else(|e| panic!("decoded {packet:?} does not re-encode: {e}"));
    assert_eq!(Ok(out.len()), packet.encoded_len(version));
    let again = dec
        .decode(&mut out)
        .unwrap_or_else(|e| panic!("re-encoded {packet:?} does not decode: {e}"))
        .expect("a whole packet was encoded");
    assert_eq!(&again, packet, "round trip changed the packet");
    assert!(out.is_empty(), "bytes left after the re-encoded packet");
}
