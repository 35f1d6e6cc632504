//! WebSocket framing, the part the floor needs (RFC 6455 §5): building a server's text and close
//! frames (unmasked, so one frame's bytes serve every viewer) and reading a client's frames
//! (always masked) out of a read buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest client frame the floor reads; a client's commands are a few hundred bytes.
pub(crate) const CLIENT_FRAME_BYTES_MAX: usize = 64 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One whole server frame: FIN set, no mask, header and payload in one buffer.
fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

pub(crate) fn text(payload: &str) -> Bytes {
    server_frame(OP_TEXT, payload.as_bytes())
}

pub(crate) fn pong(payload: &[u8]) -> Bytes {
    server_frame(OP_PONG, payload)
}

/// A close frame with `code` (1000 normal, 1002 protocol error, 1009 too big).
pub(crate) fn close(code: u16) -> Bytes {
    server_frame(OP_CLOSE, &code.to_be_bytes())
}

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientFrame {
    Text(String),
    Ping(Vec<u8>),
    Pong,
    Close,
}

/// Why a client's bytes cannot be read as frames; the connection ends with the close code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) u16);

/// Takes one whole frame off the front of `buf`; `Ok(None)` while more bytes are needed.
/// Fragmented and binary messages are refused: giftd's clients send whole text frames.
pub(crate) fn read_client_frame(buf: &mut BytesMut) -> Result<Option<ClientFrame>, Refused> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (fin, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x0F, b1 & 0x80 != 0);
    if !masked || b0 & 0x70 != 0 {
        return Err(Refused(1002));
    }
    let (len, header) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > CLIENT_FRAME_BYTES_MAX as u64 {
        return Err(Refused(1009));
    }
    let len = len as usize;
    if buf.len() < header + 4 + len {
        return Ok(None);
    }
    let mask = [
        buf[header],
        buf[header + 1],
        buf[header + 2],
        buf[header + 3],
    ];
    buf.advance(header + 4);
    let mut payload = buf.split_to(len).to_vec();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    if !fin || opcode == OP_CONTINUATION || opcode == OP_BINARY {
        return Err(Refused(1003));
    }
    match opcode {
        OP_TEXT => String::from_utf8(payload)
            .map(|t| Some(ClientFrame::Text(t)))
            .map_err(|_| Refused(1007)),
        OP_PING => Ok(Some(ClientFrame::Ping(payload))),
        OP_PONG => Ok(Some(ClientFrame::Pong)),
        OP_CLOSE => Ok(Some(ClientFrame::Close)),
        _ => Err(Refused(1002)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> BytesMut {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = BytesMut::new();
        out.put_u8(0x80 | opcode);
        if payload.len() < 126 {
            out.put_u8(0x80 | payload.len() as u8);
        } else {
            out.put_u8(0x80 | 126);
            out.put_u16(payload.len() as u16);
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn reads_masked_text_frames_whole_and_in_pieces() {
        let long = "x".repeat(300);
        let mut wire = masked(OP_TEXT, b"{\"type\":\"ping\",\"id\":1}");
        wire.extend_from_slice(&masked(OP_TEXT, long.as_bytes()));
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(f) = read_client_frame(&mut buf).unwrap() {
                seen.push(f);
            }
        }
        assert_eq!(
            seen,
            vec![
                ClientFrame::Text("{\"type\":\"ping\",\"id\":1}".into()),
                ClientFrame::Text(long)
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_unmasked_oversized_and_binary_frames() {
        let mut unmasked = BytesMut::from(&[0x81u8, 0x01, b'a'][..]);
        assert_eq!(read_client_frame(&mut unmasked), Err(Refused(1002)));
        let mut big = BytesMut::from(&[0x81u8, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0][..]);
        assert_eq!(read_client_frame(&mut big), Err(Refused(1009)));
        assert_eq!(
            read_client_frame(&mut masked(OP_BINARY, b"ab")),
            Err(Refused(1003))
        );
        assert_eq!(
            read_client_frame(&mut masked(OP_CLOSE, &1000u16.to_be_bytes())),
            Ok(Some(ClientFrame::Close))
        );
    }

    #[test]
    fn builds_server_frames_with_every_length_form() {
        assert_eq!(&text("hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text(&"y".repeat(200));
        assert_eq!(&medium[..4], &[0x81, 126, 0, 200]);
        assert_eq!(medium.len(), 204);
        let large = text(&"z".repeat(70_000));
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(large.len(), 70_010);
        assert_eq!(&close(1000)[..], &[0x88, 2, 0x03, 0xE8]);
    }
}
