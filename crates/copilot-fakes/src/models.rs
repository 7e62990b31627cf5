//! Scripted models the fake binaries serve besides their echoing ones: streams of thinking and of
//! tool-call pieces for `copilot-bench` (the gateway's cost per chunk, measured for them as for
//! text), and the `weather` and `intent` models of the README's tools session and the examples.

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

/// `weather`: calls `get_weather` for Paris (id `call_w1`); once the conversation ends with the
/// tool's result, repeats it (`"You said: <result>"`).
pub fn weather() -> FakeModel {
    let call = FakeToolCall::new("call_w1", "get_weather", r#"{"city":"Paris"}"#);
    let mut model = FakeModel::new("weather")
        .with_reply(Reply::Turn(vec![Piece::ToolCalls(vec![call])]))
        .with_reply_after_tool_result(Reply::Echo);
    model.capabilities.push("tools".into());
    model
}

/// `intent`: answers `{"intent":"weather","city":"Paris"}` in two chunks, as a model asked for
/// that schema would.
pub fn intent() -> FakeModel {
    let json = [r#"{"intent":"weather","#, r#""city":"Paris"}"#];
    FakeModel::new("intent").with_reply(Reply::Tokens(json.map(String::from).to_vec()))
}

/// `embedder`: an embedding model of 768 dimensions (`nomic-embed-text`'s), for `copilot-bench
/// overhead --rpc embed`.
pub fn embedder() -> FakeModel {
    FakeModel::embedding("embedder", 768)
}
