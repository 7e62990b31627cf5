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

use std::borrow::Cow;

/// One thing the stream said, borrowed from the decoder until its next call (events arrive per
/// token, so nothing is allocated or copied per event: an event's one `data` line, the norm, is
/// lent straight from the bytes read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A complete event: its `data` lines joined, and its `event:` name when it had one. `data` is
    /// owned only when invalid UTF-8 had to be replaced.
    Event { event: Option<&'a str>, data: Cow<'a, str> },
    /// A bare `error: ...` line (older llama.cpp), reported as soon as its line is complete.
    ErrorLine(Cow<'a, str>),
}

/// A line or an event passed the decoder's size limit; the stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub limit: usize,
}

/// UTF-8's byte-order mark, which the SSE rules skip at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Consumed bytes are dropped from the front of the buffer once this many accumulate (or at
/// once when nothing unread is left), so a long stream does not grow it.
const COMPACT_AFTER: usize = 64 * 1024;

/// The bytes as text, invalid UTF-8 replaced; valid text (the norm) takes the fast check.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// What [`SseDecoder::find_item`] found, by position.
enum Found {
    Nothing,
    Event,
    ErrorLine(usize, usize),
}

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
    /// Where in `buf` the current event's only `data` line so far is (not yet checked as UTF-8):
    /// lent as the event's data if no other comes. A second line, or the end of what was read
    /// before the event is complete, moves it into `data`.
    lent: Option<(usize, usize)>,
    /// The current event's `data` lines, joined, when not lent; reused from event to event.
    data: String,
    has_data: bool,
    /// The current event's `event:` name; reused from event to event.
    event: String,
    has_event: bool,
    /// The last call returned an event borrowing `data` and `event`: clear them first.
    dispatched: bool,
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
            lent: None,
            data: String::new(),
            has_data: false,
            event: String::new(),
            has_event: false,
            dispatched: false,
            limit,
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The end of the body: a last line without its line end still counts, and so does an event
    /// whose closing blank line never came (lenient: the last chunk before a clean end is kept).
    pub fn end(&mut self) {
        self.push(b"\n\n");
    }

    /// Bytes held for a line or an event not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start + self.data.len() + self.lent.map_or(0, |(from, to)| to - from)
    }

    /// The next complete item, if the bytes so far hold one. After an `Err`, always `None`.
    pub fn next_item(&mut self) -> Option<Result<SseItem<'_>, TooLong>> {
        if self.failed {
            return None;
        }
        if self.dispatched {
            self.dispatched = false;
            self.lent = None;
            self.data.clear();
            self.event.clear();
            self.has_event = false;
        }
        self.compact();
        // Found without borrowing, then borrowed: a borrow returned from inside the loop would
        // hold `self` for the whole loop.
        match self.find_item() {
            Ok(Found::Nothing) => None,
            Ok(Found::Event) => {
                // Decoded, invalid bytes grow up to threefold (each becomes a U+FFFD).
                if let Some((from, to)) = self.lent
                    && (to - from).saturating_mul(3) > self.limit
                    && text(&self.buf[from..to]).len() > self.limit
                {
                    return Some(Err(self.fail(TooLong { limit: self.limit })));
                }
                let event = self.has_event.then_some(self.event.as_str());
                let data = match self.lent {
                    Some((from, to)) => text(&self.buf[from..to]),
                    None => Cow::Borrowed(self.data.as_str()),
                };
                Some(Ok(SseItem::Event { event, data }))
            }
            Ok(Found::ErrorLine(from, to)) => {
                Some(Ok(SseItem::ErrorLine(String::from_utf8_lossy(&self.buf[from..to]))))
            }
            Err(err) => Some(Err(self.fail(err))),
        }
    }

    fn find_item(&mut self) -> Result<Found, TooLong> {
        loop {
            let Some((from, to)) = self.next_line()? else {
                // The lent line's bytes may be compacted away before the event is complete.
                self.keep_lent()?;
                return Ok(Found::Nothing);
            };
            let line = &self.buf[from..to];
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    self.dispatched = true;
                    return Ok(Found::Event);
                }
                self.event.clear();
                self.has_event = false;
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value, value_from) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let skip = usize::from(line.get(colon + 1) == Some(&b' '));
                    (&line[..colon], &line[colon + 1 + skip..], from + colon + 1 + skip)
                }
                None => (line, &b""[..], to),
            };
            // Only ASCII line ends split the bytes, so a complete line is whole UTF-8 unless the
            // server sent invalid bytes, which are replaced rather than failing the stream.
            match field {
                b"data" if !self.has_data => {
                    // No longer than the line, which is within the limit.
                    self.lent = Some((value_from, to));
                    self.has_data = true;
                }
                b"data" => {
                    self.keep_lent()?;
                    // Measured after decoding: each invalid byte becomes a three-byte U+FFFD.
                    let value = text(&self.buf[value_from..to]);
                    if self.data.len() + 1 + value.len() > self.limit {
                        return Err(TooLong { limit: self.limit });
                    }
                    self.data.push('\n');
                    self.data.push_str(&value);
                }
                b"event" => {
                    self.event.clear();
                    self.event.push_str(&text(value));
                    self.has_event = true;
                }
                b"error" => return Ok(Found::ErrorLine(value_from, to)),
                _ => {}
            }
        }
    }

    /// Moves the lent `data` line into `data`, decoded.
    fn keep_lent(&mut self) -> Result<(), TooLong> {
        if let Some((from, to)) = self.lent.take() {
            let value = text(&self.buf[from..to]);
            if value.len() > self.limit {
                return Err(TooLong { limit: self.limit });
            }
            self.data.push_str(&value);
        }
        Ok(())
    }

    fn fail(&mut self, err: TooLong) -> TooLong {
        self.failed = true;
        self.buf = Vec::new();
        self.lent = None;
        self.data = String::new();
        self.start = 0;
        self.scanned = 0;
        err
    }

    fn compact(&mut self) {
        if self.start > 0 && (self.start == self.buf.len() || self.start > COMPACT_AFTER) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// The bounds in `buf` of the next complete line (without its line end), now consumed.
    fn next_line(&mut self) -> Result<Option<(usize, usize)>, TooLong> {
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
        let Some(offset) = memchr::memchr2(b'\n', b'\r', &unread[from..]) else {
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
        let mut consumed = end + 1;
        if unread[end] == b'\r' {
            match unread.get(end + 1) {
                Some(b'\n') => consumed += 1,
                Some(_) => {}
                None => self.pending_cr = true,
            }
        }
        let line = (self.start, self.start + end);
        self.start += consumed;
        self.scanned = 0;
        Ok(Some(line))
    }
}

/// The body of an SSE chat stream as every SSE adapter's decoder holds it: the [`SseDecoder`],
/// whether the body ended, and whether the stream is over (after its `Done` or error nothing more
/// is read).
#[derive(Debug)]
pub struct SseBody {
    sse: SseDecoder,
    ended: bool,
    finished: bool,
}

impl SseBody {
    /// Lines and events of at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseBody { sse: SseDecoder::with_limit(limit), ended: false, finished: false }
    }

    /// The next piece of the body, unless the stream is over.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.finished {
            self.sse.push(bytes);
        }
    }

    /// The body ended cleanly (once; later calls do nothing).
    pub fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.sse.end();
        }
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The stream is over: its last event went out.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next complete item ([`SseDecoder::next_item`]).
    pub fn next_item(&mut self) -> Option<Result<SseItem<'_>, TooLong>> {
        self.sse.next_item()
    }

    /// Bytes held for a line or an event not yet complete.
    pub fn buffered(&self) -> usize {
        self.sse.buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned [`SseItem`], to collect them.
    #[derive(Debug, PartialEq)]
    enum Item {
        Event { event: Option<String>, data: String },
        ErrorLine(String),
    }

    fn owned(item: SseItem<'_>) -> Item {
        match item {
            SseItem::Event { event, data } => Item::Event { event: event.map(str::to_owned), data: data.into_owned() },
            SseItem::ErrorLine(text) => Item::ErrorLine(text.into_owned()),
        }
    }

    fn drain(decoder: &mut SseDecoder, items: &mut Vec<Item>) -> Option<TooLong> {
        while let Some(item) = decoder.next_item() {
            match item {
                Ok(item) => items.push(owned(item)),
                Err(err) => return Some(err),
            }
        }
        None
    }

    fn decode_with_limit(limit: usize, chunks: &[&[u8]]) -> Vec<Item> {
        let mut decoder = SseDecoder::with_limit(limit);
        let (items, err) = first_error(&mut decoder, chunks);
        assert_eq!(err, None);
        items
    }

    fn decode(chunks: &[&[u8]], end: bool) -> Vec<Item> {
        let mut decoder = SseDecoder::default();
        let mut items = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            assert_eq!(drain(&mut decoder, &mut items), None);
        }
        if end {
            decoder.end();
            assert_eq!(drain(&mut decoder, &mut items), None);
        }
        items
    }

    fn data(text: &str) -> Item {
        Item::Event { event: None, data: text.to_owned() }
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
        assert_eq!(items, [Item::Event { event: Some("error".into()), data: "{\"message\":\"x\"}".into() }, data("y")]);
    }

    #[test]
    fn bare_error_lines_are_reported_at_once() {
        let items = decode(&[b"data: a\n\nerror: {\"code\":500,\"message\":\"boom\"}\n"], false);
        assert_eq!(items, [data("a"), Item::ErrorLine("{\"code\":500,\"message\":\"boom\"}".into())]);
    }

    #[test]
    fn the_end_of_the_body_completes_a_last_line_and_event() {
        assert_eq!(decode(&[b"data: [DONE]"], true), [data("[DONE]")]);
        assert_eq!(decode(&[b"data: x\n"], true), [data("x")]);
        assert_eq!(decode(&[b"data: x\r"], true), [data("x")]);
        assert_eq!(decode(&[b"error: gone"], true), [Item::ErrorLine("gone".into())]);
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

    fn first_error(decoder: &mut SseDecoder, chunks: &[&[u8]]) -> (Vec<Item>, Option<TooLong>) {
        let mut items = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            if let Some(err) = drain(decoder, &mut items) {
                return (items, Some(err));
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

    /// Found by the `openai_sse` fuzz target: the limit was checked on the raw bytes, so data of
    /// invalid UTF-8 grew to three times the limit once decoded.
    #[test]
    fn invalid_utf8_counts_at_its_decoded_size() {
        let line = [&b"data: "[..], &[0xff; 12], b"\n"].concat();
        // 12 bytes on the wire, 36 once decoded.
        let mut decoder = SseDecoder::with_limit(30);
        assert_eq!(first_error(&mut decoder, &[&line]), (vec![], Some(TooLong { limit: 30 })));
        // The same as a whole event, its one line lent from the bytes read.
        let event = [&line[..], b"\n"].concat();
        assert_eq!(first_error(&mut SseDecoder::with_limit(30), &[&event]), (vec![], Some(TooLong { limit: 30 })));
        assert_eq!(decode(&[b"data: \xff\n\n"], false), [data("\u{FFFD}")]);
        // Within the limit once decoded.
        let ten = [&b"data: "[..], &[0xff; 10], b"\n\n"].concat();
        assert_eq!(decode_with_limit(30, &[&ten]), [data(&"\u{FFFD}".repeat(10))]);
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
