//! A server-sent-events decoder for chat streams, shared by the SSE adapters (OpenAI-compatible,
//! Anthropic, Gemini).
//!
//! Hand-rolled rather than a generic SSE crate because the servers the adapters talk to do not
//! all follow the spec: older llama.cpp builds report a mid-stream failure as a non-standard
//! `error: {json}` line, which a generic parser silently drops (the stream would then look like
//! it merely ended early); and an upstream is untrusted input, so a line or an event that never
//! ends must fail the stream at a fixed size rather than grow without bound. Everything else
//! follows the SSE rules: a leading byte-order mark is skipped; lines end in `\n`, `\r\n` or
//! `\r`; a blank line ends an event; `data:` lines of one event are joined with `\n`; lines
//! starting with `:` are comments (keep-alives such as `: ping`); one space after the colon is
//! dropped; unknown fields are ignored.

/// One thing the stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event: its `data` lines joined, and its `event:` name when it had one.
    Event { event: Option<String>, data: String },
    /// A bare `error: ...` line (older llama.cpp), reported as soon as its line is complete.
    ErrorLine(String),
}

/// A line or an event passed the decoder's size limit; the stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub limit: usize,
}

/// UTF-8's byte-order mark, which the SSE rules skip at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Turns body chunks into [`SseItem`]s. Chunk boundaries may fall anywhere: mid-line, between a
/// `\r` and its `\n`, or inside a multi-byte character.
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`; consumed bytes are dropped in bulk, not per line.
    start: usize,
    /// How far past `start` is known to hold no line end, so a long line arriving in many chunks
    /// is scanned once.
    scanned: usize,
    /// The previous line ended with `\r` at the very end of the buffer: a `\n` arriving first
    /// in the next chunk belongs to that line end.
    pending_cr: bool,
    /// Whether the start of the stream was checked for a byte-order mark.
    bom_checked: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    /// The longest line, and the most `data` one event may gather.
    limit: usize,
    /// A limit was passed: nothing more is decoded.
    failed: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::with_limit(crate::MAX_LINE_BYTES)
    }
}

impl SseDecoder {
    /// A decoder whose lines and events may hold at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseDecoder {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            pending_cr: false,
            bom_checked: false,
            data: String::new(),
            has_data: false,
            event: None,
            limit,
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The end of the body: a last line without its line end still counts, and so does an event
    /// whose closing blank line never came (lenient: the last chunk before a clean end is kept).
    pub fn end(&mut self) {
        self.push(b"\n\n");
    }

    /// Bytes held for a line or an event not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start + self.data.len()
    }

    /// The next complete item, if the bytes so far hold one. After an `Err`, always `None`.
    pub fn next_item(&mut self) -> Option<Result<SseItem, TooLong>> {
        if self.failed {
            return None;
        }
        loop {
            let line = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(err) => return Some(Err(self.fail(err))),
            };
            match self.process_line(&line) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(err) => return Some(Err(self.fail(err))),
            }
        }
    }

    fn fail(&mut self, err: TooLong) -> TooLong {
        self.failed = true;
        self.buf = Vec::new();
        self.data = String::new();
        self.start = 0;
        self.scanned = 0;
        err
    }

    fn next_line(&mut self) -> Result<Option<String>, TooLong> {
        if !self.bom_checked {
            let unread = &self.buf[self.start..];
            if unread.len() < BOM.len() && BOM.starts_with(unread) {
                return Ok(None);
            }
            self.bom_checked = true;
            if unread.starts_with(BOM) {
                self.start += BOM.len();
            }
        }
        if self.pending_cr && self.start < self.buf.len() {
            self.pending_cr = false;
            if self.buf[self.start] == b'\n' {
                self.start += 1;
            }
        }
        let unread = &self.buf[self.start..];
        let from = self.scanned.min(unread.len());
        let Some(offset) = unread[from..].iter().position(|&b| b == b'\n' || b == b'\r') else {
            self.scanned = unread.len();
            if unread.len() > self.limit {
                return Err(TooLong { limit: self.limit });
            }
            return Ok(None);
        };
        let end = from + offset;
        if end > self.limit {
            return Err(TooLong { limit: self.limit });
        }
        // Only ASCII line ends split the bytes, so a complete line is whole UTF-8 unless the
        // server sent invalid bytes, which are replaced rather than failing the stream.
        let line = String::from_utf8_lossy(&unread[..end]).into_owned();
        let mut consumed = end + 1;
        if unread[end] == b'\r' {
            match unread.get(end + 1) {
                Some(b'\n') => consumed += 1,
                Some(_) => {}
                None => self.pending_cr = true,
            }
        }
        self.start += consumed;
        self.scanned = 0;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(line))
    }

    fn process_line(&mut self, line: &str) -> Result<Option<SseItem>, TooLong> {
        if line.is_empty() {
            let event = self.event.take();
            if !self.has_data {
                return Ok(None);
            }
            self.has_data = false;
            return Ok(Some(SseItem::Event { event, data: std::mem::take(&mut self.data) }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + usize::from(self.has_data) + value.len() > self.limit {
                    return Err(TooLong { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "error" => return Ok(Some(SseItem::ErrorLine(value.to_owned()))),
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]], end: bool) -> Vec<SseItem> {
        let mut decoder = SseDecoder::default();
        let mut items = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            items.extend(std::iter::from_fn(|| decoder.next_item()).map(Result::unwrap));
        }
        if end {
            decoder.end();
            items.extend(std::iter::from_fn(|| decoder.next_item()).map(Result::unwrap));
        }
        items
    }

    fn data(text: &str) -> SseItem {
        SseItem::Event { event: None, data: text.to_owned() }
    }

    #[test]
    fn events_end_at_a_blank_line() {
        assert_eq!(decode(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"], false), [data("{\"a\":1}"), data("[DONE]")]);
        // Not released before its blank line.
        assert!(decode(&[b"data: {\"a\":1}\n"], false).is_empty());
    }

    #[test]
    fn lines_and_events_split_across_chunks() {
        let items = decode(&[b"da", b"ta: {\"a\"", b":1}", b"\n", b"\nda", b"ta: x\n\n"], false);
        assert_eq!(items, [data("{\"a\":1}"), data("x")]);
    }

    #[test]
    fn crlf_and_lone_cr_line_ends() {
        assert_eq!(decode(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"], false), [data("a"), data("b"), data("c")]);
        // A CRLF split between two chunks is one line end, not a line end and a blank line.
        assert_eq!(decode(&[b"data: a\r", b"\ndata: b\r\n", b"\r\n"], false), [data("a\nb")]);
        assert_eq!(decode(&[b"data: a\r", b"\r\n"], false), [data("a")]);
    }

    #[test]
    fn multiple_data_lines_join_with_newlines() {
        assert_eq!(decode(&[b"data: {\"a\":\ndata: 1}\n\n"], false), [data("{\"a\":\n1}")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let items = decode(&[b": ping\n\n:\nid: 7\nretry: 1000\nfoo\ndata: x\n\n: keep-alive\n\n"], false);
        assert_eq!(items, [data("x")]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_dropped() {
        assert_eq!(decode(&[b"data:[DONE]\n\ndata:  two\n\n"], false), [data("[DONE]"), data(" two")]);
        assert_eq!(decode(&[b"data\n\n"], false), [data("")]);
    }

    #[test]
    fn event_names_are_kept_with_their_event() {
        let items = decode(&[b"event: error\ndata: {\"message\":\"x\"}\n\ndata: y\n\n"], false);
        assert_eq!(
            items,
            [SseItem::Event { event: Some("error".into()), data: "{\"message\":\"x\"}".into() }, data("y")]
        );
    }

    #[test]
    fn bare_error_lines_are_reported_at_once() {
        let items = decode(&[b"data: a\n\nerror: {\"code\":500,\"message\":\"boom\"}\n"], false);
        assert_eq!(items, [data("a"), SseItem::ErrorLine("{\"code\":500,\"message\":\"boom\"}".into())]);
    }

    #[test]
    fn the_end_of_the_body_completes_a_last_line_and_event() {
        assert_eq!(decode(&[b"data: [DONE]"], true), [data("[DONE]")]);
        assert_eq!(decode(&[b"data: x\n"], true), [data("x")]);
        assert_eq!(decode(&[b"data: x\r"], true), [data("x")]);
        assert_eq!(decode(&[b"error: gone"], true), [SseItem::ErrorLine("gone".into())]);
        assert!(decode(&[b": ping\n"], true).is_empty());
    }

    #[test]
    fn multibyte_characters_split_across_chunks() {
        let bytes = "data: {\"c\":\"héllo ✓\"}\n\n".as_bytes();
        for cut in 1..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode(&[a, b], false), [data("{\"c\":\"héllo ✓\"}")], "cut at {cut}");
        }
    }

    #[test]
    fn long_streams_do_not_grow_the_buffer() {
        let mut decoder = SseDecoder::default();
        for _ in 0..10_000 {
            decoder.push(b"data: {\"choices\":[]}\n\ndata: {\"ch");
            while decoder.next_item().transpose().unwrap().is_some() {}
            decoder.push(b"oices\":[]}\n\n");
            while decoder.next_item().transpose().unwrap().is_some() {}
        }
        assert!(decoder.buf.capacity() < 4096, "buffer grew to {}", decoder.buf.capacity());
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        assert_eq!(decode(&[b"\xEF\xBB\xBFdata: a\n\n"], false), [data("a")]);
        assert_eq!(decode(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"], false), [data("a")]);
        // Only at the start of the stream.
        assert_eq!(decode(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"], false), [data("a")]);
    }

    fn first_error(decoder: &mut SseDecoder, chunks: &[&[u8]]) -> (Vec<SseItem>, Option<TooLong>) {
        let mut items = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            while let Some(item) = decoder.next_item() {
                match item {
                    Ok(item) => items.push(item),
                    Err(err) => return (items, Some(err)),
                }
            }
        }
        (items, None)
    }

    #[test]
    fn a_line_past_the_limit_fails_however_it_arrives() {
        let long = format!("data: {}\n\n", "x".repeat(20));
        // Whole, in one chunk, with its line end.
        let (items, err) = first_error(&mut SseDecoder::with_limit(16), &[b"data: a\n\n", long.as_bytes()]);
        assert_eq!((items, err), (vec![data("a")], Some(TooLong { limit: 16 })));
        // A byte at a time, its line end never sent: it fails once it passes the limit, holding no more.
        let mut decoder = SseDecoder::with_limit(16);
        let (items, err) = first_error(&mut decoder, &long.as_bytes()[..24].chunks(1).collect::<Vec<_>>());
        assert_eq!((items, err), (vec![], Some(TooLong { limit: 16 })));
        assert_eq!(decoder.buffered(), 0);
        // Nothing more once failed.
        decoder.push(b"data: b\n\n");
        assert_eq!(decoder.next_item(), None);
        // Up to the limit is fine.
        assert_eq!(decode(&[format!("data: {}\n\n", "y".repeat(10)).as_bytes()], false), [data(&"y".repeat(10))]);
    }

    #[test]
    fn an_event_gathering_data_past_the_limit_fails() {
        let lines = "data: 0123456789\n".repeat(3);
        let (items, err) = first_error(&mut SseDecoder::with_limit(30), &[lines.as_bytes()]);
        assert_eq!((items, err), (vec![], Some(TooLong { limit: 30 })));
        let (items, err) = first_error(&mut SseDecoder::with_limit(32), &[lines.as_bytes(), b"\n"]);
        assert_eq!((items, err), (vec![data("0123456789\n0123456789\n0123456789")], None));
    }
}
