//! The private framing the gateway speaks to a supervised model over the model's Unix socket:
//! a preface, then one length-prefixed frame per inference request and one per answer, many
//! requests in flight on one connection, each answer naming its request by a tag.
//!
//! Both ends are warden. HTTP/1.1 on this hop cost a request head to write and parse, header
//! maps and hyper's dispatch on both sides of every request, only to carry a body, a request id
//! and a status back; and it carries one request at a time, so each call cost its own reads,
//! writes and wake-ups on both sides. Over one tagged connection the requests that arrive
//! together travel in one write and their answers come back in one. A socket connection that
//! does not open with [`PREFACE`] is served as HTTP (so `curl --unix-socket` still works for an
//! operator).
//!
//! Frames, all integers big-endian:
//! - request: `u32` length of the rest, `u32` tag, `u8` id length, the request id, the JSON
//!   body;
//! - answer: `u32` length of the rest, `u32` the request's tag, `u16` status, `u8` Retry-After
//!   length, its value, the JSON body.
//!
//! Answers come in the order their requests finish, not the order they were sent.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a framed connection opens with. No HTTP request starts with a NUL byte.
pub const PREFACE: &[u8; 8] = b"\0warden2";

/// Longest request id carried (longer ones are not forwarded, as over HTTP).
pub const MAX_REQUEST_ID: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// One inference request as it crosses the socket.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// Chosen by the sender; its answer carries it back.
    pub tag: u32,
    pub request_id: Bytes,
    pub body: Bytes,
}

/// One answer as it crosses the socket.
#[derive(Debug, Clone, PartialEq)]
pub struct InferAnswer {
    pub tag: u32,
    pub status: u16,
    pub retry_after: Option<Bytes>,
    pub body: Bytes,
}

/// Appends a request frame to `out`; an id longer than [`MAX_REQUEST_ID`] is left out.
pub fn encode_request(tag: u32, request_id: &[u8], body: &[u8], out: &mut Vec<u8>) {
    let id = if request_id.len() <= MAX_REQUEST_ID {
        request_id
    } else {
        &[]
    };
    out.reserve(9 + id.len() + body.len());
    out.put_u32((5 + id.len() + body.len()) as u32);
    out.put_u32(tag);
    out.put_u8(id.len() as u8);
    out.put_slice(id);
    out.put_slice(body);
}

/// Appends an answer frame to `out`; a Retry-After value longer than 255 bytes is left out.
pub fn encode_answer(
    tag: u32,
    status: u16,
    retry_after: Option<&[u8]>,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let retry = retry_after
        .filter(|v| v.len() <= u8::MAX as usize)
        .unwrap_or(&[]);
    out.reserve(11 + retry.len() + body.len());
    out.put_u32((7 + retry.len() + body.len()) as u32);
    out.put_u32(tag);
    out.put_u16(status);
    out.put_u8(retry.len() as u8);
    out.put_slice(retry);
    out.put_slice(body);
}

fn take_short(frame: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    if frame.is_empty() {
        return Err(WireError::Malformed(what));
    }
    let len = frame.get_u8() as usize;
    if frame.len() < len {
        return Err(WireError::Malformed(what));
    }
    Ok(frame.split_to(len))
}

fn take_tag(frame: &mut Bytes) -> Result<u32, WireError> {
    let tag = tag_of(frame).ok_or(WireError::Malformed("tag"))?;
    frame.advance(4);
    Ok(tag)
}

/// A request frame's parts (the frame as [`FrameReader::next`] returns it, without its length).
pub fn decode_request(mut frame: Bytes) -> Result<InferRequest, WireError> {
    let tag = take_tag(&mut frame)?;
    let request_id = take_short(&mut frame, "request id")?;
    Ok(InferRequest {
        tag,
        request_id,
        body: frame,
    })
}

/// An answer frame's parts (the frame as [`FrameReader::next`] returns it, without its length).
pub fn decode_answer(mut frame: Bytes) -> Result<InferAnswer, WireError> {
    let tag = take_tag(&mut frame)?;
    if frame.len() < 2 {
        return Err(WireError::Malformed("status"));
    }
    let status = frame.get_u16();
    if !(100..=999).contains(&status) {
        return Err(WireError::Malformed("status"));
    }
    let retry = take_short(&mut frame, "retry-after")?;
    Ok(InferAnswer {
        tag,
        status,
        retry_after: (!retry.is_empty()).then_some(retry),
        body: frame,
    })
}

/// How much of a frame over the limit [`FrameReader::next`] keeps.
pub const TOO_LARGE_HEAD: usize = 8;

/// The tag at the start of a frame (or of a [`Next::TooLarge`] frame's head).
pub fn tag_of(frame: &[u8]) -> Option<u32> {
    let tag: [u8; 4] = frame.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(tag))
}

/// What [`FrameReader::next`] found.
#[derive(Debug)]
pub enum Next {
    /// A whole frame, without its length prefix.
    Frame(Bytes),
    /// A frame longer than the reader's limit: its bytes were read and dropped, all but its
    /// first [`TOO_LARGE_HEAD`] (enough to name its tag).
    TooLarge { len: usize, head: Bytes },
    /// The peer closed the connection between frames.
    Closed,
}

/// Reads frames off a stream, with as few reads as the data allows.
///
/// Cancel-safe: everything read is kept in the reader, so a [`FrameReader::next`] dropped
/// halfway (a `select!` that took another branch) loses nothing; the next call goes on.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: BytesMut,
    /// A frame over the limit being read past: bytes still to drop, then what to report.
    skipping: Option<(usize, Next)>,
}

impl FrameReader {
    /// Bytes already read past the frames returned so far.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// Reads until one frame is whole; one longer than `limit` is consumed and reported.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
    ) -> Result<Next, WireError> {
        if self.skipping.is_some() {
            return self.skip(io).await;
        }
        while self.buffer.len() < 4 {
            if !self.fill(io).await? {
                return if self.buffer.is_empty() {
                    Ok(Next::Closed)
                } else {
                    Err(WireError::Truncated)
                };
            }
        }
        let len = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if len > limit {
            let kept = len.min(TOO_LARGE_HEAD);
            while self.buffer.len() < 4 + kept {
                if !self.fill(io).await? {
                    return Err(WireError::Truncated);
                }
            }
            let head = Bytes::copy_from_slice(&self.buffer[4..4 + kept]);
            self.skipping = Some((4 + len, Next::TooLarge { len, head }));
            return self.skip(io).await;
        }
        self.buffer.reserve(4 + len);
        while self.buffer.len() < 4 + len {
            if !self.fill(io).await? {
                return Err(WireError::Truncated);
            }
        }
        self.buffer.advance(4);
        Ok(Next::Frame(self.buffer.split_to(len).freeze()))
    }

    /// Reads what is available; `false` at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<bool, WireError> {
        if self.buffer.capacity() - self.buffer.len() < 4096 {
            self.buffer.reserve(16 * 1024);
        }
        Ok(io.read_buf(&mut self.buffer).await? > 0)
    }

    /// Drops the rest of the frame being skipped; then reports it.
    async fn skip<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<Next, WireError> {
        loop {
            let Some((remaining, _)) = &mut self.skipping else {
                return Ok(Next::Closed);
            };
            let here = (*remaining).min(self.buffer.len());
            self.buffer.advance(here);
            *remaining -= here;
            if *remaining == 0 {
                let (_, report) = self.skipping.take().unwrap_or((0, Next::Closed));
                return Ok(report);
            }
            if !self.fill(io).await? {
                return Err(WireError::Truncated);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(bytes: Vec<u8>, limit: usize) -> Vec<Result<Next, String>> {
        let mut io = std::io::Cursor::new(bytes);
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        loop {
            match reader.next(&mut io, limit).await {
                Ok(Next::Closed) => return out,
                Ok(next) => out.push(Ok(next)),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn requests_and_answers_round_trip_back_to_back() {
        let mut wire = Vec::new();
        encode_request(7, b"req-1", br#"{"a":1}"#, &mut wire);
        encode_answer(9, 503, Some(b"1"), br#"{"error":{}}"#, &mut wire);
        encode_answer(u32::MAX, 200, None, b"", &mut wire);
        let got = frames(wire, 1 << 20).await;
        let [Ok(Next::Frame(r)), Ok(Next::Frame(a)), Ok(Next::Frame(b))] = &got[..] else {
            panic!("{got:?}");
        };
        assert_eq!(
            decode_request(r.clone()).unwrap(),
            InferRequest {
                tag: 7,
                request_id: Bytes::from_static(b"req-1"),
                body: Bytes::from_static(br#"{"a":1}"#),
            }
        );
        let a = decode_answer(a.clone()).unwrap();
        assert_eq!(
            (a.tag, a.status, a.retry_after.as_deref()),
            (9, 503, Some(&b"1"[..]))
        );
        assert_eq!(&a.body[..], br#"{"error":{}}"#);
        let b = decode_answer(b.clone()).unwrap();
        assert_eq!(
            (b.tag, b.status, b.retry_after, b.body.len()),
            (u32::MAX, 200, None, 0)
        );
    }

    #[tokio::test]
    async fn an_overlong_request_id_is_left_out_not_truncated() {
        let mut wire = Vec::new();
        encode_request(1, &[b'x'; MAX_REQUEST_ID + 1], b"{}", &mut wire);
        let got = frames(wire, 1 << 20).await;
        let [Ok(Next::Frame(r))] = &got[..] else {
            panic!("{got:?}")
        };
        let r = decode_request(r.clone()).unwrap();
        assert!(r.request_id.is_empty());
        assert_eq!(&r.body[..], b"{}");
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_skipped_and_the_next_one_still_read() {
        let mut wire = Vec::new();
        encode_request(1, b"big", &vec![b' '; 200_000], &mut wire);
        encode_request(2, b"small", b"{}", &mut wire);
        let got = frames(wire, 1024).await;
        assert!(
            matches!(&got[0], Ok(Next::TooLarge { len: 200_008, head }) if tag_of(head) == Some(1)),
            "{got:?}"
        );
        let Ok(Next::Frame(f)) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(&decode_request(f.clone()).unwrap().request_id[..], b"small");
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_error_not_a_short_frame() {
        let mut wire = Vec::new();
        encode_request(3, b"id", b"{\"inputs\":[1,2,3]}", &mut wire);
        wire.truncate(wire.len() - 3);
        let got = frames(wire, 1 << 20).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("middle of a frame")),
            "{got:?}"
        );
    }

    #[test]
    fn malformed_frames_are_named() {
        for (frame, what) in [
            (&b"\x00\x00"[..], "tag"),
            (&b"\x00\x00\x00\x01"[..], "status"),
            (&b"\x00\x00\x00\x01\x00\xc8"[..], "retry-after"),
            (&b"\x00\x00\x00\x01\x00\xc8\x05ab"[..], "retry-after"),
            (&b"\x00\x00\x00\x01\x00\x05\x00"[..], "status"),
        ] {
            let e = decode_answer(Bytes::copy_from_slice(frame)).unwrap_err();
            assert!(e.to_string().contains(what), "{frame:?}: {e}");
        }
        let e = decode_request(Bytes::from_static(b"\x00\x00\x00\x01\x09id")).unwrap_err();
        assert!(e.to_string().contains("request id"), "{e}");
        let e = decode_request(Bytes::from_static(b"\x00")).unwrap_err();
        assert!(e.to_string().contains("tag"), "{e}");
    }
}
