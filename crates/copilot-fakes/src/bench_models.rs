//! Models the fake binaries serve for `copilot-bench`: streams of thinking and of tool-call pieces,
//! so the gateway's cost per chunk can be measured for them as for text.

use crate::script::{FakeModel, FakeToolCall, Piece, Reply};

/// Pieces in each benchmark stream (the request's `max_tokens` stops it earlier).
pub const BENCH_PIECES: usize = 256;

/// `thinking`: a stream of thinking pieces (`" tok"` each), then one word of text.
pub fn thinking() -> FakeModel {
    let mut pieces: Vec<Piece> = (0..BENCH_PIECES).map(|_| Piece::Thinking(" tok".into())).collect();
    pieces.push(Piece::Text("done".into()));
    FakeModel::new("thinking").with_reply(Reply::Turn(pieces))
}

/// `tool-calls`: a stream of tool calls, one per piece, each with a small arguments object; a
/// provider that streams arguments sends each in two fragments.
pub fn tool_calls() -> FakeModel {
    let pieces = (0..BENCH_PIECES)
        .map(|i| {
            let arguments = format!(r#"{{"city":"Zürich","n":{i}}}"#);
            Piece::ToolCalls(vec![FakeToolCall::new(&format!("call_{i}"), "get_weather", &arguments).split_at(&[9])])
        })
        .collect();
    FakeModel::new("tool-calls").with_reply(Reply::Turn(pieces))
}
