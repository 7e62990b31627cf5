//! The protobuf codec of the generated server and client: prost's, with small per-call buffers.
//!
//! tonic's default gives every call an 8 KiB encode buffer and an 8 KiB decode buffer up front.
//! Copilot's messages are a few hundred bytes (a chunk of text, a prompt), and a gateway holds
//! thousands of streams open, so each call starts with 1 KiB and the buffers grow only for the
//! calls that need more.
//!
//! Its decoder also says what is wrong with a request that is not protobuf, or whose strings are
//! not UTF-8: prost's codec answers INTERNAL ("failed to decode Protobuf message"), a code the API
//! keeps for upstream replies the server cannot read; the caller gets INVALID_ARGUMENT with
//! `MALFORMED_REQUEST` instead (`GatewayError::MalformedRequest`).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::error::GatewayError;

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
    type Decoder = LeanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanDecoder(PhantomData)
    }
}

/// prost's decoding, with a request that cannot be decoded answered as the caller's error.
#[derive(Debug)]
pub struct LeanDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for LeanDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            let message_type = std::any::type_name::<U>().rsplit("::").next().unwrap_or_default();
            // The generated client decodes the server's replies with this codec too; an unreadable
            // reply stays INTERNAL. Request messages are the `*Request` ones (buf's STANDARD lint).
            if message_type.ends_with("Request") {
                GatewayError::MalformedRequest {
                    message_type: format!("copilot.v1.{message_type}"),
                    detail: error.to_string(),
                }
                .into()
            } else {
                Status::internal(error.to_string())
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
    }
}
