//! One measured `Chat` call: the building block every benchmark mode runs, alone or many at once.

use std::time::{Duration, Instant};

use copilot::proto::v1::{ChatRequest, GenerateRequest, GenerationOptions, Message, Role};
use serde::Serialize;

use crate::GrpcClient;

/// What one request asks for.
#[derive(Clone, Debug)]
pub struct ChatParams {
    /// `provider/model`, or empty for the server's default model.
    pub model: String,
    /// The single user message.
    pub prompt: String,
    pub temperature: f32,
    pub max_tokens: u32,
}

impl ChatParams {
    pub fn request(&self) -> ChatRequest {
        ChatRequest {
            model: self.model.clone(),
            messages: vec![Message { role: Role::User.into(), content: self.prompt.clone(), ..Default::default() }],
            options: Some(self.options()),
            ..Default::default()
        }
    }

    /// The same prompt and options as a unary `Generate` request.
    pub fn generate_request(&self) -> GenerateRequest {
        GenerateRequest {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            system: String::new(),
            options: Some(self.options()),
            ..Default::default()
        }
    }

    fn options(&self) -> GenerationOptions {
        GenerationOptions {
            temperature: Some(self.temperature),
            max_tokens: Some(self.max_tokens),
            ..GenerationOptions::default()
        }
    }
}

/// What the client measured for one successful request, and what the server reported in its final
/// message. Durations are in seconds (`f64`) so they serialize as plain numbers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// From sending the request to the first message with non-empty content; `None` if none came.
    pub ttft_s: Option<f64>,
    /// From sending the request to the end of the stream.
    pub total_s: f64,
    /// Messages with non-empty content.
    pub chunks: u32,
    /// The model that answered, as the server named it.
    pub model: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// The server's `timing.prompt_duration`, when the provider reports it.
    pub server_prompt_s: Option<f64>,
    /// The server's `timing.generation_duration`, when the provider reports it.
    pub server_generation_s: Option<f64>,
    /// The server's `timing.output_tokens_per_second`.
    pub server_output_tps: f64,
}

impl Sample {
    /// Generation speed seen by the client: the tokens after the first one, over the time after the
    /// first content chunk. `None` when that is not measurable (fewer than 2 tokens, no first chunk).
    pub fn client_generation_tps(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        let generating = self.total_s - ttft;
        (self.output_tokens >= 2 && generating > 0.0).then(|| f64::from(self.output_tokens - 1) / generating)
    }

    /// Prompt processing speed from the server's prompt duration.
    pub fn server_prompt_tps(&self) -> Option<f64> {
        let prompt = self.server_prompt_s.filter(|s| *s > 0.0)?;
        Some(f64::from(self.input_tokens) / prompt)
    }

    /// Prompt processing speed from the client's time to first token (an upper bound on the time
    /// the prompt took, so a lower bound on the speed).
    pub fn client_prompt_tps(&self) -> Option<f64> {
        let ttft = self.ttft_s.filter(|s| *s > 0.0)?;
        Some(f64::from(self.input_tokens) / ttft)
    }
}

/// Sends one streaming `Chat` call and reads it to the end. A stream that ends without its final
/// message (`usage` set) is an error, as the API promises that never happens on success.
pub async fn chat_once(client: &mut GrpcClient, params: &ChatParams) -> Result<Sample, tonic::Status> {
    let start = Instant::now();
    let mut stream = client.chat(params.request()).await?.into_inner();
    let mut sample = Sample::default();
    let mut finished = false;
    while let Some(message) = stream.message().await? {
        if !message.content.is_empty() {
            sample.chunks += 1;
            if sample.ttft_s.is_none() {
                sample.ttft_s = Some(start.elapsed().as_secs_f64());
            }
        }
        if let Some(usage) = message.usage {
            finished = true;
            sample.model = message.model;
            sample.input_tokens = usage.input_tokens;
            sample.output_tokens = usage.output_tokens;
            if let Some(timing) = message.timing {
                sample.server_prompt_s = timing.prompt_duration.and_then(seconds);
                sample.server_generation_s = timing.generation_duration.and_then(seconds);
                sample.server_output_tps = timing.output_tokens_per_second;
            }
        }
    }
    sample.total_s = start.elapsed().as_secs_f64();
    if !finished {
        return Err(tonic::Status::unknown("the stream ended without a final message (no usage)"));
    }
    Ok(sample)
}

fn seconds<D: TryInto<Duration>>(d: D) -> Option<f64> {
    d.try_into().ok().map(|d| d.as_secs_f64())
}

/// The canonical upper-case name of a gRPC status code, as the server's traces write it.
pub fn code_name(code: tonic::Code) -> &'static str {
    copilot::telemetry::rpc_trace::code_name(code as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ttft: Option<f64>, total: f64, input: u32, output: u32) -> Sample {
        Sample { ttft_s: ttft, total_s: total, input_tokens: input, output_tokens: output, ..Sample::default() }
    }

    #[test]
    fn client_generation_rate_excludes_the_first_token() {
        // 11 tokens: the first at 0.5 s, the other 10 over the next 2 s.
        let s = sample(Some(0.5), 2.5, 5, 11);
        assert_eq!(s.client_generation_tps(), Some(5.0));
    }

    #[test]
    fn client_generation_rate_needs_two_tokens_and_a_first_chunk() {
        assert_eq!(sample(Some(0.5), 2.5, 5, 1).client_generation_tps(), None);
        assert_eq!(sample(None, 2.5, 5, 10).client_generation_tps(), None);
        assert_eq!(sample(Some(2.5), 2.5, 5, 10).client_generation_tps(), None);
    }

    #[test]
    fn prompt_rates() {
        let mut s = sample(Some(0.2), 0.25, 400, 1);
        assert_eq!(s.client_prompt_tps(), Some(2000.0));
        assert_eq!(s.server_prompt_tps(), None);
        s.server_prompt_s = Some(0.1);
        assert_eq!(s.server_prompt_tps(), Some(4000.0));
        s.server_prompt_s = Some(0.0);
        assert_eq!(s.server_prompt_tps(), None);
    }

    #[test]
    fn request_carries_the_options() {
        let params = ChatParams { model: "m".into(), prompt: "hi".into(), temperature: 0.0, max_tokens: 7 };
        let request = params.request();
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].role(), Role::User);
        let options = request.options.unwrap();
        assert_eq!((options.temperature, options.max_tokens), (Some(0.0), Some(7)));
        let generate = params.generate_request();
        assert_eq!((generate.model.as_str(), generate.prompt.as_str()), ("m", "hi"));
        assert_eq!(generate.options, Some(options));
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
