//! The OpenAI-compatible SSE chat stream: arbitrary bytes, cut into reads the input chooses, through the
//! adapter's own decoder, under the checks of `copilot_http::stream_check`. Thinking is passed on,
//! so the reasoning paths run too; tool-call pieces and refusals need no setting.
#![no_main]

use copilot_http::stream_check::{FUZZ_LINE_LIMIT, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    check(input, FUZZ_LINE_LIMIT, || {
        copilot_openai::StreamDecoder::with_line_limit("http://fuzz".into(), None, FUZZ_LINE_LIMIT).with_thoughts(true)
    });
});
