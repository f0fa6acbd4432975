//! The wire's framing and codec on arbitrary bytes: `FrameDecoder` fed the input in chunkings
//! the input chooses (through `extend`, or `spare` + `commit` as the connection readers do),
//! every frame split with `split_messages`, every message through `decode_message` and the
//! owned conversion (`to_owned`, what the agent and CLI read). Properties:
//! - nothing panics, and the decoder never buffers a frame over `FRAME_BYTES_MAX`;
//! - frames: `FrameWriter` of the messages carved out of the input decodes, in any chunking,
//!   to exactly those messages, with nothing left over;
//! - codec: a decoded message the encoder can carry losslessly, re-encoded with the real
//!   `Encoder`, decodes to the same owned message.
#![no_main]

use borealis_fuzz::reencode;
use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::{decode_message, Encoder, FrameDecoder, FrameWriter, FRAME_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

/// A small deterministic stream of chunk sizes and modes from the input's first bytes.
struct Chunker(u64);

impl Chunker {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 1..=max, mostly small.
    fn size(&mut self, max: usize) -> usize {
        let r = self.next();
        let cap = match r & 3 {
            0 => 1,
            1 => 7,
            2 => 64,
            _ => max,
        };
        1 + (r >> 8) as usize % cap.max(1)
    }
}

/// Feeds `bytes` to `decoder` in the chunker's pieces; returns every message of every frame,
/// or stops at the first framing error (as the readers disconnect there).
fn feed(decoder: &mut FrameDecoder, bytes: &[u8], chunker: &mut Chunker) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = chunker.size(4096).min(bytes.len() - at);
        if chunker.next() & 1 == 0 {
            decoder.extend(&bytes[at..at + n]);
        } else {
            // A reader asks for at least `min` and may get fewer bytes.
            let min = n + (chunker.next() % 16) as usize;
            let spare = decoder.spare(min);
            assert!(spare.len() >= min, "spare gave less than asked");
            spare[..n].copy_from_slice(&bytes[at..at + n]);
            decoder.commit(n);
        }
        at += n;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= FRAME_BYTES_MAX);
                    match split_messages(frame) {
                        Ok(parts) => out.extend(parts),
                        Err(_) => return out,
                    }
                }
                Ok(None) => break,
                Err(_) => return out,
            }
        }
        decoder.shrink_if_empty(8192);
    }
    out
}

fn check_message(encoder: &mut Encoder, bytes: &[u8]) {
    let Ok(message) = decode_message(bytes) else {
        return;
    };
    // Whatever the verifier passed must be readable in place without panicking.
    let _ = message.route_key();
    let Ok((request_id, owned)) = to_owned(message) else {
        return;
    };
    let Some((again, carries_id)) = reencode(encoder, request_id, &owned) else {
        return;
    };
    let decoded = decode_message(&again).expect("the encoder's output verifies");
    let (id2, owned2) = to_owned(decoded).expect("the encoder's output decodes");
    if carries_id {
        assert_eq!(id2, request_id, "request id lost in the round trip");
    }
    assert_eq!(owned2, owned, "message changed in the round trip");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let seed = u64::from_le_bytes(data[..8].try_into().unwrap());
    let stream = &data[8..];
    let mut encoder = Encoder::new();

    // 1. Arbitrary bytes as a peer's stream.
    let mut chunker = Chunker(seed);
    let mut decoder = FrameDecoder::new();
    for m in feed(&mut decoder, stream, &mut chunker) {
        check_message(&mut encoder, &m);
    }
    // A message on its own (the stream minus framing): the verifier on every byte string.
    check_message(&mut encoder, stream);

    // 2. Frame round trip: the stream cut into non-empty messages the chunker chooses.
    let mut messages: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    let mut cut = Chunker(seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
    while at < stream.len() && messages.len() < 512 {
        let n = cut.size(1024).min(stream.len() - at);
        messages.push(&stream[at..at + n]);
        at += n;
    }
    let mut writer = FrameWriter::new();
    for m in &messages {
        writer
            .push(m)
            .expect("a non-empty message under the limit is framed");
    }
    // Refused, and nothing of it written.
    assert!(writer.push(&[]).is_err(), "an empty message was framed");
    let framed = writer.finish().to_vec();
    let mut decoder = FrameDecoder::new();
    let mut chunker = Chunker(seed ^ 0x5555_5555_5555_5555);
    let back = feed(&mut decoder, &framed, &mut chunker);
    assert_eq!(
        back.len(),
        messages.len(),
        "message count changed in framing"
    );
    for (a, b) in back.iter().zip(&messages) {
        assert_eq!(&a[..], *b, "message bytes changed in framing");
    }
    assert_eq!(decoder.buffered(), 0, "bytes left over after whole frames");
    writer.clear();
    assert!(writer.is_empty());
});
