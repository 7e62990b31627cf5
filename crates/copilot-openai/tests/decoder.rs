//! The SSE stream decoder under the fuzz target's checks (`fuzz/`, `scripts/fuzz`): its seed
//! corpus, cut into reads in several ways, and a line that never ends.

use copilot_http::stream_check;

#[test]
fn the_seed_corpus_decodes_the_same_however_it_is_cut() {
    stream_check::replay_seeds("openai_sse", |limit| {
        copilot_openai::StreamDecoder::with_line_limit("http://seed".into(), None, limit).with_thoughts(true)
    });
}

#[test]
fn a_line_that_never_ends_fails_at_the_limit() {
    stream_check::assert_line_limit(b"data: ", copilot_openai::StreamDecoder::new("http://seed".into(), None));
}
