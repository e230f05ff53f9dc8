//! Primitive data types of the wire format (spec section 1.5): integers, variable
//! byte integers, UTF-8 strings and binary data, read zero-copy from a frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};

/// The largest value a variable byte integer can carry, and so the largest remaining length.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Reads fields from the body of one frame. Slices share the frame's allocation.
pub(crate) struct Reader {
    buf: Bytes,
    strip_bom: bool,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, strip_bom: bool) -> Self {
        Self { buf, strip_bom }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::UnexpectedEnd(what));
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::UnexpectedEnd(what));
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::UnexpectedEnd(what));
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::UnexpectedEnd(what)),
        }
    }

    /// Takes exactly `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::UnexpectedEnd(what));
        }
        Ok(self.buf.split_to(n))
    }

    /// A reader over the next `n` bytes, with the same string rules.
    pub(crate) fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader, DecodeError> {
        let buf = self.take(n, what)?;
        Ok(Reader::new(buf, self.strip_bom))
    }

    /// Binary data: a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)? as usize;
        self.take(len, what)
    }

    /// A UTF-8 encoded string: a two-byte length, then well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let mut raw = self.binary(what)?;
        if self.strip_bom && raw.starts_with("\u{FEFF}".as_bytes()) {
            raw.advance(3);
        }
        to_string(raw, what)
    }

    /// Everything left in the frame.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte of the frame was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Validates raw bytes as an MQTT UTF-8 string (spec 1.5.4).
///
/// Rust's UTF-8 validation already rejects encoded surrogates (U+D800..U+DFFF) and
/// overlong forms; U+0000 is checked here. U+FEFF is kept, as [MQTT-1.5.4-3] demands.
pub(crate) fn to_string(raw: Bytes, what: &'static str) -> Result<ByteString, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter(what));
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8(what))
}

/// Parses a variable byte integer from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, and the value with its length
/// otherwise. A fifth byte, or an encoding longer than the minimum, is malformed.
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after a continuation byte is a non-minimal encoding.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVarInt);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedVarInt)
    } else {
        Ok(None)
    }
}

/// The number of bytes a variable byte integer takes on the wire.
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Checks that a string or binary field fits its two-byte length.
pub(crate) fn check_len(len: usize, what: &'static str) -> Result<(), EncodeError> {
    if len > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong(what))
    } else {
        Ok(())
    }
}

/// Writes a length-prefixed field; its length must have been checked with [`check_len`].
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        for value in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value));
            assert_eq!(parse_varint(&buf).unwrap(), Some((value as u32, buf.len())));
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_non_minimal() {
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(
            parse_varint(&[0x80, 0x00]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(parse_varint(&[0x80, 0x80]), Ok(None));
    }

    #[test]
    fn strings_reject_null_and_surrogates_and_keep_bom() {
        assert!(to_string(Bytes::from_static(b"a\0b"), "t").is_err());
        assert!(to_string(Bytes::from_static(&[0xED, 0xA0, 0x80]), "t").is_err());
        let bom = to_string(Bytes::from_static("\u{FEFF}x".as_bytes()), "t").unwrap();
        assert_eq!(&*bom, "\u{FEFF}x");
    }
}
