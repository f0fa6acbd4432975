//! The simulated network: a connection's output as the shard writes it (a [`ConnOut`] the
//! simulation reads), and the real framing and verification on both directions.
//!
//! Inbound messages take the path the runtime's reader takes (`shards/src/conn.rs`): encoded
//! into frames by a [`FrameWriter`], reassembled by a [`FrameDecoder`], split with
//! [`split_messages`] and verified once with [`decode_message`]. Outbound bytes are decoded
//! the way the agent and the CLI decode them.

use std::cell::RefCell;
use std::rc::Rc;

use borealis_net::codec::to_owned;
use borealis_net::frame::split_messages;
use borealis_net::views::{JobStatusParts, OwnedMessage};
use borealis_net::{decode_message, wire, FrameDecoder, FrameWriter};
use borealis_shards::msg::ConnOut;
use bytes::Bytes;

/// What a shard wrote to one connection, and whether it dropped the connection.
#[derive(Debug, Default)]
pub struct Pipe {
    pub writes: Vec<Vec<u8>>,
    /// The shard dropped its end (protocol error, not-leader refusal, reset, crash).
    pub dropped: bool,
}

pub type SharedPipe = Rc<RefCell<Pipe>>;

/// The shard's end of a simulated connection. Dropping it is how a shard closes a
/// connection, exactly as dropping the runtime's writer channel closes the socket.
#[derive(Debug)]
pub struct SimConnOut {
    pipe: SharedPipe,
}

impl SimConnOut {
    pub fn new(pipe: SharedPipe) -> SimConnOut {
        SimConnOut { pipe }
    }
}

impl ConnOut for SimConnOut {
    fn is_full(&self) -> bool {
        false
    }

    fn try_send(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        self.pipe.borrow_mut().writes.push(bytes);
        Ok(())
    }
}

impl Drop for SimConnOut {
    fn drop(&mut self) {
        self.pipe.borrow_mut().dropped = true;
    }
}

/// Frames `messages` and returns them as the runtime's reader hands them to a shard: one
/// verified `Bytes` per message. A message that fails verification is a bug of the
/// simulation (it encodes with the real encoder), hence the panic.
pub fn verified(messages: &[Vec<u8>]) -> Vec<Bytes> {
    let mut writer = FrameWriter::new();
    for m in messages {
        writer
            .push(m)
            .expect("the simulation's messages fit a frame");
    }
    let mut decoder = FrameDecoder::new();
    decoder.extend(&writer.take());
    let mut out = Vec::with_capacity(messages.len());
    while let Some(frame) = decoder
        .next_frame()
        .expect("the simulation frames correctly")
    {
        for part in split_messages(frame).expect("the simulation frames correctly") {
            decode_message(&part).expect("the simulation encodes verifiable messages");
            out.push(part);
        }
    }
    out
}

/// One message a shard sent, decoded.
#[derive(Clone, Debug)]
pub struct Received {
    pub request_id: u64,
    pub message: OwnedMessage,
    /// A `KillTask`'s job key, read in place as the agent does (the owned view drops it).
    pub kill_job_key: Option<String>,
}

/// Reassembles and decodes what a shard wrote to a connection (the peer's reader). A job
/// status that came in parts is handed on once, whole, with its last part.
#[derive(Debug, Default)]
pub struct OutputReader {
    decoder: FrameDecoder,
    parts: JobStatusParts,
}

impl OutputReader {
    /// Decodes every complete message in `bytes`; an undecodable one is returned as `Err`
    /// (the shard wrote something its peers cannot read: a finding).
    pub fn read(&mut self, bytes: &[u8]) -> Result<Vec<Received>, String> {
        self.decoder.extend(bytes);
        let mut out = Vec::new();
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(out),
                Err(e) => return Err(format!("bad frame from a shard: {e}")),
            };
            let parts =
                split_messages(frame).map_err(|e| format!("bad frame from a shard: {e}"))?;
            for part in parts {
                let message =
                    decode_message(&part).map_err(|e| format!("bad message from a shard: {e}"))?;
                let kill_job_key = (message.payload_type() == wire::Payload::KillTask).then(|| {
                    message
                        .payload_as_kill_task()
                        .and_then(|k| k.job_key())
                        .unwrap_or_default()
                        .to_string()
                });
                let (request_id, message) = to_owned(message)
                    .map_err(|e| format!("undecodable message from a shard: {e}"))?;
                let Some(message) = self.parts.feed(request_id, message) else {
                    continue;
                };
                out.push(Received {
                    request_id,
                    message,
                    kill_job_key,
                });
            }
        }
    }
}
