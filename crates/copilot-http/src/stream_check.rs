//! What every chat-stream decoder promises, checked on one input: the fuzz targets (`fuzz/`) and
//! each adapter's seed-corpus test run the same check, so what CI runs is what the fuzzer runs.
//!
//! The promises: no panic; the stream ends with exactly one `Done` or error and nothing after
//! it; deltas are never empty; a decoder still reading holds at most about its line limit, so an
//! upstream that never ends a line cannot grow memory without bound; and the events do not
//! depend on how the body was cut into reads.

use copilot_provider::{ChatEvent, ProviderError};

use crate::ChatStreamDecoder;

pub type Event = Result<ChatEvent, ProviderError>;

/// The line limit the fuzz targets give their decoders: above the longest seed line, and small
/// enough that the fuzzer's inputs pass it.
pub const FUZZ_LINE_LIMIT: usize = 1024;

/// The seed corpus of one fuzz target (`fuzz/seeds/<target>/`), by file name.
pub fn seed_corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a readable directory").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Decodes `reads` as the adapter does (every event taken after each read, then the end of the
/// body), asserting the promises that hold whatever the input; returns the events.
pub fn decode<D: ChatStreamDecoder>(mut decoder: D, reads: &[&[u8]], limit: usize) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    // Tool-call and thinking pieces go on like text: only `Done` or an error ends a stream.
    let ended = |events: &[Event]| events.last().is_some_and(|e| matches!(e, Ok(ChatEvent::Done(_)) | Err(_)));
    let take = |decoder: &mut D, events: &mut Vec<Event>| {
        while let Some(event) = decoder.next_event() {
            assert!(!ended(events), "an event after the end of the stream: {event:?} after {:?}", events.last());
            if let Ok(ChatEvent::Delta(text)) = &event {
                assert!(!text.is_empty(), "an empty delta");
            }
            events.push(event);
        }
        if !ended(events) {
            // A partial line, plus the data of an event not yet complete.
            assert!(decoder.buffered() <= 2 * limit, "{} bytes held with a limit of {limit}", decoder.buffered());
        }
    };
    for read in reads {
        decoder.push(read);
        take(&mut decoder, &mut events);
    }
    decoder.end();
    take(&mut decoder, &mut events);
    assert!(ended(&events), "the body ended but the stream did not: {:?}", events.last());
    events
}

/// The fuzz input: its first byte says how many of the bytes after it are read sizes (cycled
/// over the body); the rest is the body.
pub fn split_input(input: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = input.split_first() else { return (vec![], input) };
    let (sizes, body) = rest.split_at(usize::from(count % 16).min(rest.len()));
    (sizes.iter().map(|&s| usize::from(s) + 1).collect(), body)
}

/// `body` cut into reads of `sizes`, cycled; one read when `sizes` is empty.
pub fn cut<'a>(body: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![body];
    }
    let mut reads = Vec::new();
    let mut rest = body;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at(size.min(rest.len()));
        reads.push(read);
        rest = tail;
    }
    reads
}

/// The whole check on one fuzz input: the body decoded in one read, in the reads the input
/// chose, and a byte at a time must give the same events. Returns them.
pub fn check<D: ChatStreamDecoder>(input: &[u8], limit: usize, new: impl Fn() -> D) -> Vec<Event> {
    let (sizes, body) = split_input(input);
    let whole = decode(new(), &[body], limit);
    let split = decode(new(), &cut(body, &sizes), limit);
    assert_eq!(whole, split, "split into reads of {sizes:?}");
    let bytewise = decode(new(), &cut(body, &[1]), limit);
    assert_eq!(whole, bytewise, "split into single bytes");
    whole
}

/// The prompt the fakes echo in the `fake-*` seeds (`copilot-fakes`' `wire_samples` example).
pub const SEED_PROMPT: &str = "héllo \"quoted\" ✓ 🦀\nsecond line\twith a tab";

/// Runs every seed of `target` through [`check`], with its own read sizes and a few others, at the
/// fuzz targets' limit and the real one; the `fake-*` seeds must also tell their scripted story.
/// `new` makes a decoder with the given line limit.
pub fn replay_seeds<D: ChatStreamDecoder>(target: &str, new: impl Fn(usize) -> D) {
    for (name, input) in seed_corpus(target) {
        let (_, body) = split_input(&input);
        for limit in [FUZZ_LINE_LIMIT, crate::MAX_LINE_BYTES] {
            let events = check(&input, limit, || new(limit));
            for sizes in [&b"\x00"[..], b"\x01\x00", b"\x03\x06\x1f\xff", b"\x02\x02\x00"] {
                let recut = [sizes, body].concat();
                assert_eq!(check(&recut, limit, || new(limit)), events, "{target}/{name} read as {sizes:?}");
            }
            assert_seed_story(&format!("{target}/{name}"), &events);
        }
    }
}

fn assert_seed_story(seed: &str, events: &[Event]) {
    let text: String =
        events.iter().filter_map(|e| if let Ok(ChatEvent::Delta(t)) = e { Some(t.as_str()) } else { None }).collect();
    let last = events.last();
    if seed.contains("/fake-") && seed.contains("-normal.") {
        assert_eq!(text, format!("You said: {SEED_PROMPT}"), "{seed}");
        assert!(matches!(last, Some(Ok(ChatEvent::Done(_)))), "{seed}: {last:?}");
    } else if seed.contains("/fake-") && seed.contains("-error-after-2.") {
        assert_eq!(text, "You said:", "{seed}");
        assert!(
            matches!(last, Some(Err(ProviderError::MidStream(m))) if m.contains("runner crashed")),
            "{seed}: {last:?}"
        );
    } else if seed.contains("/fake-") && seed.contains("-end-without-done.") {
        assert!(matches!(last, Some(Err(ProviderError::Interrupted(_)))), "{seed}: {last:?}");
    }
}

/// A line that never ends, fed in 64 KiB reads to a decoder with the real limit: the stream
/// fails with the line-limit error once the line passes it, holding no more than that meanwhile.
/// `start` is how such a line begins in the format (`b"data: "`, `b"{"`).
pub fn assert_line_limit<D: ChatStreamDecoder>(start: &[u8], decoder: D) {
    let limit = crate::MAX_LINE_BYTES;
    let line = [start, &vec![b'x'; limit + 1]].concat();
    let reads: Vec<&[u8]> = line.chunks(64 * 1024).collect();
    let events = decode(decoder, &reads, limit);
    match events.as_slice() {
        [Err(ProviderError::Protocol(message))] => {
            assert!(message.contains(&format!("sent a line longer than {limit} bytes")), "{message}")
        }
        other => panic!("expected the line-limit error, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_choose_their_read_sizes() {
        assert_eq!(split_input(b""), (vec![], &b""[..]));
        assert_eq!(split_input(b"\x00body"), (vec![], &b"body"[..]));
        assert_eq!(split_input(b"\x02\x00\x02body"), (vec![1, 3], &b"body"[..]));
        assert_eq!(cut(b"abcdefg", &[1, 3]), [&b"a"[..], b"bcd", b"e", b"fg"]);
        assert_eq!(cut(b"abc", &[]), [&b"abc"[..]]);
    }
}
