//! Borealis wire: the flatbuffers schema (`schema/borealis.fbs`), length-prefixed frames that
//! carry several messages each, builders for every message, and owned views of the messages
//! that non-hot-path peers (agent, CLI) read.
//!
//! Architecture invariant: only this crate knows the byte layout. The scheduler's shards read
//! messages through the generated zero-copy accessors (`wire::*`), never through intermediate
//! structs; the owned views in [`views`] exist for the agent and the CLI.

#[allow(warnings, clippy::all, clippy::pedantic)]
#[rustfmt::skip]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/borealis_generated.rs"));
}
pub use generated::borealis::wire;

pub mod codec;
pub mod frame;
pub mod tls;
pub mod views;

pub use codec::{decode_message, Encoder, WireError};
pub use frame::{
    FrameDecoder, FrameError, FrameWriter, FRAME_BYTES_MAX, MESSAGES_PER_FRAME_MAX,
    MESSAGE_BYTES_MAX,
};
