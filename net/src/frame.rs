//! Length-prefixed frames.
//!
//! A frame is `u32 LE body_len` then the body; the body is a sequence of messages, each
//! `u32 LE message_len` then that many bytes of one flatbuffer `Message`. Batching several
//! messages into one frame is what makes loopback TCP (~60 µs a round trip) fast enough.

use bytes::{Buf, Bytes, BytesMut};

/// Largest frame body a peer may send. A larger length prefix is a protocol error: the peer is
/// disconnected before anything is buffered.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// Most messages a frame may hold.
pub const MESSAGES_PER_FRAME_MAX: usize = 65_536;
const LEN_BYTES: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {FRAME_BYTES_MAX} bytes")]
    FrameTooLarge { len: usize },
    #[error("message length {len} overruns its frame ({left} bytes left)")]
    MessageOverrun { len: usize, left: usize },
    #[error("frame holds more than {MESSAGES_PER_FRAME_MAX} messages")]
    TooManyMessages,
    #[error("empty message in frame")]
    EmptyMessage,
    #[error("message of {len} bytes exceeds the limit of {MESSAGE_BYTES_MAX} bytes")]
    MessageTooLarge { len: usize },
}

/// Largest message a frame can carry (a frame holding it alone).
pub const MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX - LEN_BYTES;

/// Accumulates messages into frames. Reused across frames so steady state allocates nothing.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    frame_start: usize,
    messages: usize,
}

impl Default for FrameWriter {
    fn default() -> Self {
        FrameWriter::new()
    }
}

impl FrameWriter {
    /// Allocates nothing until the first message: an idle connection costs no buffer.
    pub fn new() -> FrameWriter {
        FrameWriter {
            buf: Vec::new(),
            frame_start: 0,
            messages: 0,
        }
    }

    /// Bytes a frame would occupy if `message_len` more bytes were pushed into the open frame.
    fn open_frame_len_with(&self, message_len: usize) -> usize {
        let body = if self.messages == 0 {
            0
        } else {
            self.buf.len() - self.frame_start - LEN_BYTES
        };
        body + LEN_BYTES + message_len
    }

    /// Appends one message. Starts a new frame when the open one would exceed the limits, so
    /// callers may push any number of messages and flush once. A message that can never fit a
    /// frame (over [`MESSAGE_BYTES_MAX`]), or an empty one, is refused and nothing is written:
    /// the caller answers with an error instead (a peer must never be able to make a reply
    /// that panics the encoder).
    pub fn push(&mut self, message: &[u8]) -> Result<(), FrameError> {
        if message.is_empty() {
            return Err(FrameError::EmptyMessage);
        }
        if message.len() > MESSAGE_BYTES_MAX {
            return Err(FrameError::MessageTooLarge { len: message.len() });
        }
        if self.messages > 0
            && (self.open_frame_len_with(message.len()) > FRAME_BYTES_MAX
                || self.messages == MESSAGES_PER_FRAME_MAX)
        {
            self.close_frame();
        }
        if self.messages == 0 {
            self.frame_start = self.buf.len();
            self.buf.extend_from_slice(&[0; LEN_BYTES]);
        }
        self.buf
            .extend_from_slice(&(message.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(message);
        self.messages += 1;
        Ok(())
    }

    fn close_frame(&mut self) {
        if self.messages == 0 {
            return;
        }
        let body_len = self.buf.len() - self.frame_start - LEN_BYTES;
        debug_assert!(body_len <= FRAME_BYTES_MAX);
        self.buf[self.frame_start..self.frame_start + LEN_BYTES]
            .copy_from_slice(&(body_len as u32).to_le_bytes());
        self.messages = 0;
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes waiting to be written (closed and open frames).
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Closes the open frame and returns every complete frame's bytes, ready for one write.
    /// Call [`FrameWriter::clear`] once they are written.
    pub fn finish(&mut self) -> &[u8] {
        self.close_frame();
        &self.buf
    }

    /// Closes the open frame and hands the bytes over (for an owned write buffer).
    pub fn take(&mut self) -> Vec<u8> {
        self.close_frame();
        std::mem::take(&mut self.buf)
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.messages = 0;
        self.frame_start = 0;
    }
}

/// Reassembles frames from a byte stream and splits them into messages without copying: each
/// message is a [`Bytes`] slice of the read buffer.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// Length of the buffered data while a `spare` slice is out.
    filled: usize,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            filled: 0,
        }
    }

    /// A zeroed slice of at least `min` bytes to read socket data into; call
    /// [`FrameDecoder::commit`] with the count read. Reading straight into the decoder saves a
    /// per-connection read buffer and a copy.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.filled = self.buf.len();
        self.buf.resize(self.filled + min, 0);
        &mut self.buf[self.filled..]
    }

    /// Keeps the first `n` bytes of the last [`FrameDecoder::spare`] slice.
    pub fn commit(&mut self, n: usize) {
        assert!(
            self.filled + n <= self.buf.len(),
            "commit past the spare slice"
        );
        self.buf.truncate(self.filled + n);
    }

    /// Releases the buffer's memory when it holds nothing (an idle connection keeps none).
    pub fn shrink_if_empty(&mut self, keep_bytes: usize) {
        if self.buf.is_empty() && self.buf.capacity() > keep_bytes {
            self.buf = BytesMut::new();
        }
    }

    /// Space to read into: the caller reads socket bytes into `read_buf()` then `commit`s them.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the buffer holds allocated (what an idle or stalled connection costs).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next complete frame body, `Ok(None)` when more bytes are needed, or an error for a
    /// length prefix over the limit (checked before anything of the frame is buffered).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..LEN_BYTES].try_into().expect("4 bytes")) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::FrameTooLarge { len });
        }
        if self.buf.len() < LEN_BYTES + len {
            // Nothing is reserved for the rest of the frame: the buffer grows only as bytes
            // arrive, so a length prefix alone costs its peer's connection nothing.
            return Ok(None);
        }
        self.buf.advance(LEN_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// Splits a frame body into its messages (zero-copy slices).
pub fn split_messages(mut body: Bytes) -> Result<Vec<Bytes>, FrameError> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        if body.len() < LEN_BYTES {
            return Err(FrameError::MessageOverrun {
                len: LEN_BYTES,
                left: body.len(),
            });
        }
        let len = u32::from_le_bytes(body[..LEN_BYTES].try_into().expect("4 bytes")) as usize;
        body.advance(LEN_BYTES);
        if len == 0 {
            return Err(FrameError::EmptyMessage);
        }
        if len > body.len() {
            return Err(FrameError::MessageOverrun {
                len,
                left: body.len(),
            });
        }
        if messages.len() == MESSAGES_PER_FRAME_MAX {
            return Err(FrameError::TooManyMessages);
        }
        messages.push(body.split_to(len));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(messages: &[Vec<u8>], chunk: usize) -> Vec<Vec<u8>> {
        let mut writer = FrameWriter::new();
        for m in messages {
            writer.push(m).unwrap();
        }
        let bytes = writer.finish().to_vec();
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            decoder.extend(piece);
            while let Some(frame) = decoder.next_frame().unwrap() {
                out.extend(
                    split_messages(frame)
                        .unwrap()
                        .into_iter()
                        .map(|b| b.to_vec()),
                );
            }
        }
        assert_eq!(decoder.buffered(), 0);
        out
    }

    proptest! {
        #[test]
        fn frames_roundtrip_any_chunking(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..50),
            chunk in 1usize..512,
        ) {
            prop_assert_eq!(roundtrip(&messages, chunk), messages);
        }

        #[test]
        fn garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut decoder = FrameDecoder::new();
            decoder.extend(&garbage);
            while let Ok(Some(frame)) = decoder.next_frame() {
                let _ = split_messages(frame);
            }
        }
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_buffering() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&((FRAME_BYTES_MAX as u32) + 1).to_le_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::FrameTooLarge {
                len: FRAME_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn a_length_prefix_alone_reserves_nothing() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&(FRAME_BYTES_MAX as u32).to_le_bytes());
        assert_eq!(decoder.next_frame(), Ok(None));
        assert!(
            decoder.capacity() < 64 << 10,
            "a 16 MiB length prefix reserved {} bytes",
            decoder.capacity()
        );
    }

    #[test]
    fn a_message_too_large_for_any_frame_is_refused_not_a_panic() {
        let mut writer = FrameWriter::new();
        writer.push(&[1]).unwrap();
        assert_eq!(
            writer.push(&vec![0; MESSAGE_BYTES_MAX + 1]),
            Err(FrameError::MessageTooLarge {
                len: MESSAGE_BYTES_MAX + 1
            })
        );
        assert_eq!(writer.push(&[]), Err(FrameError::EmptyMessage));
        // Nothing of the refused messages was written; the largest message still fits.
        writer.push(&vec![2; MESSAGE_BYTES_MAX]).unwrap();
        let bytes = writer.finish().to_vec();
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes);
        let first = split_messages(decoder.next_frame().unwrap().unwrap()).unwrap();
        let second = split_messages(decoder.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(second[0].len(), MESSAGE_BYTES_MAX);
    }

    #[test]
    fn message_overrunning_its_frame_is_rejected() {
        let mut body = Vec::new();
        body.extend_from_slice(&100u32.to_le_bytes());
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            split_messages(Bytes::from(body)),
            Err(FrameError::MessageOverrun { len: 100, left: 3 })
        );
    }

    #[test]
    fn writer_splits_frames_at_message_limit() {
        let mut writer = FrameWriter::new();
        for _ in 0..MESSAGES_PER_FRAME_MAX + 1 {
            writer.push(&[7]).unwrap();
        }
        let bytes = writer.finish().to_vec();
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes);
        let first = split_messages(decoder.next_frame().unwrap().unwrap()).unwrap();
        let second = split_messages(decoder.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(first.len(), MESSAGES_PER_FRAME_MAX);
        assert_eq!(second.len(), 1);
    }
}
