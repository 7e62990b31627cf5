//! The gRPC message frames of a request body, followed through its chunks wherever the chunks
//! split them: each frame's header is checked as soon as it is complete (the size limit, the
//! compressed flag), and the reader knows how much of an incomplete message has arrived.

/// A gRPC message frame starts with a compression flag and a big-endian 32-bit length.
pub const FRAME_HEADER: usize = 5;

/// What is wrong with a frame, read from its header.
#[derive(Debug, PartialEq)]
pub enum FrameError {
    /// The message's size, over the limit.
    TooLarge(u64),
    /// The compressed flag, set (or not 0 or 1) in a call without an encoding.
    CompressedWithoutEncoding(u8),
}

/// Follows the message frames through the body's chunks, wherever the chunks split them.
pub struct FrameReader {
    max_bytes: usize,
    /// Whether the call named an encoding, so that frames may have the compressed flag (1).
    compression: bool,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// The current message's size, once its header is complete.
    body_len: usize,
    /// Bytes of the current message still to come.
    body_left: usize,
    /// Whole messages read so far.
    messages: u64,
}

impl FrameReader {
    /// `compression`: whether the call named an encoding.
    pub fn new(max_bytes: usize, compression: bool) -> Self {
        Self {
            max_bytes,
            compression,
            header: [0; FRAME_HEADER],
            header_len: 0,
            body_len: 0,
            body_left: 0,
            messages: 0,
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whole messages read so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The size of the message being received, frame header included, once its header is in.
    pub fn current_frame_len(&self) -> Option<usize> {
        (self.body_left > 0).then_some(FRAME_HEADER + self.body_len)
    }

    /// Bytes of the message being received (its frame header included) that have arrived, while
    /// it is incomplete; 0 between messages.
    pub fn partial(&self) -> usize {
        if self.body_left > 0 { FRAME_HEADER + self.body_len - self.body_left } else { self.header_len }
    }

    /// Reads one chunk; `Err` says what is wrong with the frame whose header it completed.
    pub fn read(&mut self, mut chunk: &[u8]) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(chunk.len());
                self.body_left -= n;
                chunk = &chunk[n..];
                if self.body_left == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let n = (FRAME_HEADER - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            if self.header_len == FRAME_HEADER {
                self.header_len = 0;
                let [flag, a, b, c, d] = self.header;
                if flag != 0 && !(flag == 1 && self.compression) {
                    return Err(FrameError::CompressedWithoutEncoding(flag));
                }
                let size = u32::from_be_bytes([a, b, c, d]);
                if size as usize > self.max_bytes {
                    return Err(FrameError::TooLarge(u64::from(size)));
                }
                self.body_len = size as usize;
                self.body_left = size as usize;
                if size == 0 {
                    self.messages += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(b'x', len as usize));
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_however_the_chunks_split_them() {
        let stream: Vec<u8> = [frame(10), frame(0), frame(7)].concat();
        for split in 1..stream.len() {
            let mut reader = FrameReader::new(10, false);
            for chunk in stream.chunks(split) {
                assert_eq!(reader.read(chunk), Ok(()), "chunks of {split}");
            }
        }
    }

    #[test]
    fn a_message_over_the_limit_is_caught_at_its_header() {
        let stream: Vec<u8> = [frame(3), frame(11)].concat();
        for split in 1..stream.len() {
            let mut reader = FrameReader::new(10, false);
            let result = stream.chunks(split).try_for_each(|chunk| reader.read(chunk));
            assert_eq!(result, Err(FrameError::TooLarge(11)), "chunks of {split}");
        }
        // Only the header is needed to refuse it.
        assert_eq!(FrameReader::new(10, false).read(&[0, 0, 0, 1, 0]), Err(FrameError::TooLarge(256)));
    }

    #[test]
    fn a_compressed_flag_needs_an_encoding() {
        let compressed = [1, 0, 0, 0, 1, b'x'];
        assert_eq!(FrameReader::new(10, false).read(&compressed), Err(FrameError::CompressedWithoutEncoding(1)));
        let mut reader = FrameReader::new(10, true);
        assert_eq!(reader.read(&compressed), Ok(()));
        assert_eq!(reader.read(&[2, 0, 0, 0, 0]), Err(FrameError::CompressedWithoutEncoding(2)));
    }

    #[test]
    fn the_partial_message_is_what_has_arrived_of_it() {
        let mut reader = FrameReader::new(100, false);
        assert_eq!(reader.partial(), 0);
        reader.read(&[0, 0, 0]).unwrap();
        assert_eq!(reader.partial(), 3);
        reader.read(&[0, 10, b'x']).unwrap();
        assert_eq!(reader.partial(), 6);
        // The rest of it, a whole empty message, then part of the next one's header.
        reader.read(&[b'x'; 9]).unwrap();
        assert_eq!(reader.partial(), 0);
        reader.read(&[0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(reader.partial(), 2);
        assert_eq!(reader.messages(), 2, "the 10-byte message and the empty one");
    }
}
