//! The requests the tests send, built one way everywhere: a Generate or Chat call with only what
//! a test cares about, an API key on a call; and what came back: the reason a refusal gives, the
//! text and model of a streamed chat.

use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{ChatRequest, GenerateRequest, Message, Role};
use futures::StreamExt;
use tonic::Request;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(20);

/// What a test says when what is said does not matter.
pub const HELLO: &str = "hello there";

/// A user's message.
pub fn user(content: &str) -> Message {
    Message { role: Role::User as i32, content: content.into(), ..Default::default() }
}

/// A Generate call for `model` with `prompt` and no options.
pub fn prompt(model: &str, prompt: &str) -> GenerateRequest {
    GenerateRequest { model: model.into(), prompt: prompt.into(), ..Default::default() }
}

/// A Chat call for `model` with one user message and no options.
pub fn chat(model: &str, content: &str) -> ChatRequest {
    ChatRequest { model: model.into(), messages: vec![user(content)], options: None, ..Default::default() }
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

/// Streams `request` on `client` to its end: the text, and the model the server answered with. A
/// failed call panics with `copilot`'s log.
pub async fn chat_text_and_model(
    copilot: &Copilot,
    client: &mut CopilotClient<Channel>,
    request: ChatRequest,
) -> (String, String) {
    let mut stream = within(LIMIT, client.chat(request)).await.expect("chat").into_inner();
    let (mut text, mut model) = (String::new(), String::new());
    while let Some(message) = within(LIMIT, stream.next()).await {
        let message = message.unwrap_or_else(|status| panic!("{status:?}\nlog:\n{}", copilot.logs()));
        text.push_str(&message.content);
        if !message.model.is_empty() {
            model = message.model;
        }
    }
    (text, model)
}
