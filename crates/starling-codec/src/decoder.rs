//! Incremental framing and decoding from a receive buffer.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{Connect, Packet, PacketType};
use crate::version::ProtocolVersion;
use crate::wire::{parse_varint, Reader, MAX_REMAINING_LENGTH};

/// The default maximum packet size: the largest packet the wire format allows.
pub const DEFAULT_MAX_PACKET_SIZE: usize = MAX_REMAINING_LENGTH + 5;

/// The most [`Decoder::decode`] reserves ahead for a body that has not arrived yet.
const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// Decodes a stream of packets, one connection's worth.
///
/// A decoder made with [`Decoder::new`] expects CONNECT first and takes the
/// protocol version from it; [`Decoder::with_version`] is for the client side,
/// which knows the version it asked for.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
    strip_bom: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A server-side decoder: the first packet must be CONNECT.
    pub fn new() -> Self {
        Decoder {
            version: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            strip_bom: false,
        }
    }

    /// A decoder for a stream whose version is already known.
    pub fn with_version(version: ProtocolVersion) -> Self {
        Decoder {
            version: Some(version),
            ..Self::new()
        }
    }

    /// Sets the largest packet accepted, fixed header included.
    pub fn set_max_packet_size(&mut self, max: usize) {
        self.max_packet_size = max;
    }

    /// The largest packet accepted.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Whether a leading U+FEFF is stripped from decoded strings. The default,
    /// `false`, keeps it, as [MQTT-1.5.4-3] requires.
    pub fn set_strip_bom(&mut self, strip: bool) {
        self.strip_bom = strip;
    }

    /// The protocol version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Sets the protocol version (the client side learns it from its own CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// Decodes the next packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole packet. The size is
    /// checked against the maximum as soon as the fixed header is complete, so an
    /// oversized packet is refused before its body arrives. On error the stream
    /// cannot be resynchronised and the connection should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let Some((remaining, len_bytes)) = parse_varint(&buf[1..])? else {
            return Ok(None);
        };
        let header_len = 1 + len_bytes;
        let total = header_len + remaining as usize;
        if total > self.max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        // Check the type before waiting for the body: a reserved type is refused early.
        let ptype = self.packet_type(first >> 4)?;
        if buf.len() < total {
            // Reserve for the body, but not more than a bounded step ahead: a peer
            // must not make us allocate a maximum-size packet with five bytes.
            buf.reserve((total - buf.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(header_len);
        let mut r = Reader::new(frame, self.strip_bom);
        let flags = first & 0x0F;
        match self.version {
            Some(v) => Packet::decode_body(ptype, flags, r, v).map(Some),
            None => {
                if flags != 0 {
                    return Err(DecodeError::InvalidFixedHeaderFlags {
                        packet: ptype,
                        flags,
                    });
                }
                let v = Connect::read_protocol(&mut r)?;
                self.version = Some(v);
                let connect = Connect::decode_rest(v, &mut r)?;
                Ok(Some(Packet::Connect(Box::new(connect))))
            }
        }
    }

    fn packet_type(&self, nibble: u8) -> Result<PacketType, DecodeError> {
        let ptype = PacketType::from_u8(nibble).ok_or(DecodeError::ReservedPacketType(nibble))?;
        match self.version {
            None if ptype != PacketType::Connect => Err(DecodeError::FirstPacketNotConnect(ptype)),
            Some(v) if ptype == PacketType::Auth && !v.is_v5() => {
                Err(DecodeError::ReservedPacketType(nibble))
            }
            _ => Ok(ptype),
        }
    }
}
