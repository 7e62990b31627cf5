//! The protobuf codec of the generated server and client: prost's, with small per-call buffers.
//!
//! tonic's default gives every call an 8 KiB encode buffer and an 8 KiB decode buffer up front.
//! Copilot's messages are a few hundred bytes (a chunk of text, a prompt), and a gateway holds
//! thousands of streams open, so each call starts with 1 KiB and the buffers grow only for the
//! calls that need more.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The initial encode/decode buffer of a call.
const INITIAL_BUFFER: usize = 1024;
/// Encoded messages ready together are sent as one write up to this size (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }
}
