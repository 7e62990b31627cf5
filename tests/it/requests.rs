//! The requests the tests send, built one way everywhere: a Generate or Chat call with only what
//! a test cares about, an API key on a call, and the reason a refusal gives.

use copilot::proto::v1::{ChatRequest, GenerateRequest, Message, Role};
use tonic::Request;
use tonic_types::StatusExt;

/// What a test says when what is said does not matter.
pub const HELLO: &str = "hello there";

/// A user's message.
pub fn user(content: &str) -> Message {
    Message { role: Role::User as i32, content: content.into() }
}

/// A Generate call for `model` with `prompt` and no options.
pub fn prompt(model: &str, prompt: &str) -> GenerateRequest {
    GenerateRequest { model: model.into(), prompt: prompt.into(), ..Default::default() }
}

/// A Chat call for `model` with one user message and no options.
pub fn chat(model: &str, content: &str) -> ChatRequest {
    ChatRequest { model: model.into(), messages: vec![user(content)], options: None }
}

/// `message` as a call that presents `key` (`authorization: Bearer <key>`).
pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// The `ErrorInfo` reason a refusal carries, empty when it has none.
pub fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}
