//! What the store holds per key: a prost message (declared here in Rust rather than in an
//! internal `.proto`: it is three messages, and the answers it holds are the API's own), with a
//! version, so that an entry written by another version of the format is a miss, not a wrong
//! answer.
//!
//! ```proto
//! message CacheEntry {
//!   uint32 version = 1;
//!   oneof answer { GenerateResponse generate = 2; ChatReplay chat = 3; EmbedResponse embed = 4; }
//! }
//! message ChatReplay { repeated ChatResponse chunks = 1; }
//! ```

use bytes::Bytes;
use prost::Message as _;

use crate::proto::v1 as pb;

/// The format's version: entries of any other are misses (and removed).
pub const ENTRY_VERSION: u32 = 1;

const VERSION_TAG: u32 = 1;
const GENERATE_TAG: u32 = 2;
const EMBED_TAG: u32 = 4;

#[derive(Clone, PartialEq, prost::Message)]
pub struct CacheEntry {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(oneof = "Answer", tags = "2, 3, 4")]
    pub answer: Option<Answer>,
}

// Decoded once per hit and taken apart at once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Answer {
    /// A `Generate` answer, as it was sent (`cached` false; its `timing` is replaced on a hit).
    #[prost(message, tag = "2")]
    Generate(pb::GenerateResponse),
    /// A `Chat` stream's messages, consecutive text-only ones merged; the last has the finish
    /// reason, usage and model.
    #[prost(message, tag = "3")]
    Chat(ChatReplay),
    /// An `Embed` answer, as it was sent.
    #[prost(message, tag = "4")]
    Embed(pb::EmbedResponse),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChatReplay {
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<pb::ChatResponse>,
}

/// The entry's answer, if `bytes` decode as an entry of this version.
pub fn decode(bytes: &[u8]) -> Option<Answer> {
    let entry = CacheEntry::decode(bytes).ok()?;
    (entry.version == ENTRY_VERSION).then_some(entry.answer).flatten()
}

/// The encoded length of an entry holding `message` as the answer with `tag`.
fn len_of(tag: u32, message: &impl prost::Message) -> usize {
    prost::encoding::uint32::encoded_len(VERSION_TAG, &ENTRY_VERSION)
        + prost::encoding::message::encoded_len(tag, message)
}

/// Writes the entry holding `message` as the answer with `tag`: what `CacheEntry`'s encoding
/// gives, without copying the answer into one.
fn encode(tag: u32, message: &impl prost::Message) -> Bytes {
    let mut buf = Vec::with_capacity(len_of(tag, message));
    prost::encoding::uint32::encode(VERSION_TAG, &ENTRY_VERSION, &mut buf);
    prost::encoding::message::encode(tag, message, &mut buf);
    buf.into()
}

pub fn generate_len(response: &pb::GenerateResponse) -> usize {
    len_of(GENERATE_TAG, response)
}

pub fn encode_generate(response: &pb::GenerateResponse) -> Bytes {
    encode(GENERATE_TAG, response)
}

pub fn embed_len(response: &pb::EmbedResponse) -> usize {
    len_of(EMBED_TAG, response)
}

pub fn encode_embed(response: &pb::EmbedResponse) -> Bytes {
    encode(EMBED_TAG, response)
}

pub fn encode_chat(chunks: Vec<pb::ChatResponse>) -> Bytes {
    CacheEntry { version: ENTRY_VERSION, answer: Some(Answer::Chat(ChatReplay { chunks })) }.encode_to_vec().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> pb::GenerateResponse {
        pb::GenerateResponse {
            text: "hello".into(),
            model: "ollama/m".into(),
            finish_reason: pb::FinishReason::Stop as i32,
            usage: Some(pb::Usage { input_tokens: 3, output_tokens: 1, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn entries_written_without_copying_are_cache_entries() {
        let bytes = encode_generate(&response());
        assert_eq!(bytes.len(), generate_len(&response()));
        let entry = CacheEntry::decode(&bytes[..]).unwrap();
        assert_eq!(entry, CacheEntry { version: ENTRY_VERSION, answer: Some(Answer::Generate(response())) });
        let embed = pb::EmbedResponse { model: "ollama/e".into(), dimensions: 2, ..Default::default() };
        assert_eq!(decode(&encode_embed(&embed)), Some(Answer::Embed(embed.clone())));
        assert_eq!(encode_embed(&embed).len(), embed_len(&embed));
        let chunks = vec![pb::ChatResponse { content: "hi".into(), ..Default::default() }];
        assert_eq!(decode(&encode_chat(chunks.clone())), Some(Answer::Chat(ChatReplay { chunks })));
    }

    #[test]
    fn another_version_or_garbage_is_no_entry() {
        let other = CacheEntry { version: ENTRY_VERSION + 1, answer: Some(Answer::Generate(response())) };
        assert_eq!(decode(&other.encode_to_vec()), None);
        assert_eq!(decode(b"\xff\xff\xff not an entry"), None);
        assert_eq!(decode(&CacheEntry { version: ENTRY_VERSION, answer: None }.encode_to_vec()), None);
    }
}
