//! `CountTokens` through the real binary (issue 17): Gemini (AI Studio and Vertex AI) and Anthropic
//! count with their own endpoints — the fakes count words, turns and tools, so a count proves the
//! system prompt and the tools reached the upstream — exactly or as an estimate; Ollama and
//! OpenAI-compatible servers refuse precisely without being asked; aliases skip what cannot count;
//! keys limit the models and spend a request but no tokens; bad requests never leave the server;
//! upstream errors keep their meaning.

use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{
    CountTokensRequest, CountTokensResponse, GenerateRequest, Image, Message, Part, Role, Tool, image, part,
};
use copilot_fakes::google::TEST_PRIVATE_KEY_PEM;
use copilot_fakes::{
    FakeAnthropic, FakeGemini, FakeGoogleAuth, FakeModel, FakeOllama, FakeOpenAi, Flavour, fake_llama_cpp_tokens,
    fake_token_count,
};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};
use crate::requests::with_key;

const LIMIT: Duration = Duration::from_secs(20);

const SYSTEM: &str = "You answer in one short sentence";
const QUESTION: &str = "what is the weather like in Paris today";
const TOOL_DESCRIPTION: &str = "Looks up the current weather of a city";

fn message(role: Role, content: &str) -> Message {
    Message { role: role as i32, content: content.into(), ..Default::default() }
}

fn weather_tool() -> Tool {
    Tool {
        name: "weather".into(),
        description: TOOL_DESCRIPTION.into(),
        parameters_json_schema: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
        ..Default::default()
    }
}

/// A system prompt, a question and a tool.
fn full_request(model: &str) -> CountTokensRequest {
    CountTokensRequest {
        model: model.into(),
        messages: vec![message(Role::System, SYSTEM), message(Role::User, QUESTION)],
        tools: vec![weather_tool()],
    }
}

/// The question alone.
fn bare_request(model: &str) -> CountTokensRequest {
    CountTokensRequest { model: model.into(), messages: vec![message(Role::User, QUESTION)], tools: vec![] }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// What the fakes count for [`full_request`]: the system prompt's words and the question's, one
/// turn (the system prompt is no turn on either wire), and the tool with its description.
fn full_count() -> u32 {
    fake_token_count(words(SYSTEM) + words(QUESTION), 1, [TOOL_DESCRIPTION]) as u32
}

fn bare_count() -> u32 {
    fake_token_count(words(QUESTION), 1, []) as u32
}

async fn count(
    client: &mut CopilotClient<Channel>,
    request: CountTokensRequest,
) -> Result<CountTokensResponse, Status> {
    within(LIMIT, client.count_tokens(request)).await.map(tonic::Response::into_inner)
}

fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

fn assert_unsupported(status: &Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.metadata["feature"].as_str()), ("FEATURE_UNSUPPORTED", "count_tokens"));
}

fn provider(name: &str, kind: &str, base_url: &str) -> String {
    let key = if kind == "ollama" { "" } else { "api_key_env = \"COUNT_KEY\"\n" };
    format!(
        "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n{key}retries = 0\nbreaker_failures = 0\n"
    )
}

async fn start(config: &str) -> Copilot {
    Copilot::start_with(config, &[("COUNT_KEY", "k".into())]).await
}

async fn gemini() -> FakeGemini {
    let fake = FakeGemini::start().await;
    fake.add_model(FakeModel::new("gemini-2.5-flash"));
    fake
}

async fn anthropic() -> FakeAnthropic {
    let fake = FakeAnthropic::start().await;
    fake.add_model(FakeModel::new("claude-sonnet-4-5"));
    fake
}

/// Gemini's count is exact, and of the whole request: the wrapped `generateContentRequest`
/// carries the system instruction and the tools, so they count.
#[tokio::test]
async fn gemini_counts_the_system_prompt_and_tools_exactly() {
    let fake = gemini().await;
    let copilot = start(&provider("up", "gemini", &fake.base_url())).await;
    let mut client = copilot.client().await;

    let counted = count(&mut client, full_request("up/gemini-2.5-flash")).await.unwrap();
    assert_eq!(
        counted,
        CountTokensResponse { input_tokens: full_count(), exact: true, model: "up/gemini-2.5-flash".into() }
    );
    let bare = count(&mut client, bare_request("up/gemini-2.5-flash")).await.unwrap();
    assert_eq!(bare.input_tokens, bare_count());
    assert!(bare.input_tokens < counted.input_tokens);

    let body = &fake.count_requests()[0];
    let wrapped = &body["generateContentRequest"];
    assert_eq!(wrapped["model"], "models/gemini-2.5-flash", "{body}");
    assert_eq!(wrapped["systemInstruction"]["parts"][0]["text"], SYSTEM, "{body}");
    assert_eq!(wrapped["tools"][0]["functionDeclarations"][0]["name"], "weather", "{body}");
    assert!(body.get("contents").is_none(), "the wrapped form alone: {body}");
    assert!(fake.chat_requests().is_empty(), "counting generates nothing");
}

/// On Vertex AI the same fields go flat to its `:countTokens`, with the service account's token.
#[tokio::test]
async fn vertex_counts_exactly_with_the_flat_body() {
    let auth = FakeGoogleAuth::start().await;
    let vertex = FakeGemini::start().await.with_vertex_auth(&auth, "test-project");
    vertex.add_model(FakeModel::new("gemini-2.5-flash"));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("service-account.json");
    std::fs::write(&key_file, auth.service_account_json(TEST_PRIVATE_KEY_PEM, None)).unwrap();
    let config = format!(
        "[providers.vx]\nkind = \"gemini\"\nbase_url = \"{}\"\nproject_id = \"test-project\"\nlocation = \"us-central1\"\nretries = 0\n",
        vertex.base_url()
    );
    let copilot =
        Copilot::start_with(&config, &[("GOOGLE_APPLICATION_CREDENTIALS", key_file.display().to_string())]).await;
    let mut client = copilot.client().await;

    let counted = count(&mut client, full_request("vx/gemini-2.5-flash")).await.unwrap();
    assert_eq!(
        counted,
        CountTokensResponse { input_tokens: full_count(), exact: true, model: "vx/gemini-2.5-flash".into() }
    );
    let body = &vertex.count_requests()[0];
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], SYSTEM, "{body}");
    assert_eq!(body["tools"][0]["functionDeclarations"][0]["description"], TOOL_DESCRIPTION, "{body}");
    assert!(body.get("generateContentRequest").is_none() && body.get("model").is_none(), "{body}");

    let status = count(&mut client, full_request("vx/gemini-nope")).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "MODEL_NOT_FOUND"), "{status:?}");
}

/// Anthropic's count is its own estimate (`exact` false), of the messages body without
/// `max_tokens`.
#[tokio::test]
async fn anthropic_counts_an_estimate() {
    let fake = anthropic().await;
    let copilot = start(&provider("claude", "anthropic", &fake.base_url())).await;
    let mut client = copilot.client().await;

    let counted = count(&mut client, full_request("claude/claude-sonnet-4-5")).await.unwrap();
    let expected =
        CountTokensResponse { input_tokens: full_count(), exact: false, model: "claude/claude-sonnet-4-5".into() };
    assert_eq!(counted, expected);
    assert_eq!(count(&mut client, bare_request("claude/claude-sonnet-4-5")).await.unwrap().input_tokens, bare_count());

    let body = &fake.count_requests()[0];
    assert_eq!(body["system"], SYSTEM, "{body}");
    assert_eq!(body["tools"][0]["name"], "weather", "{body}");
    assert!(body.get("max_tokens").is_none() && body.get("stream").is_none(), "{body}");
    assert!(fake.chat_requests().is_empty(), "counting generates nothing");
}

/// A count refused for overload is retried like a chat.
#[tokio::test]
async fn an_overloaded_count_is_retried() {
    let fake = anthropic().await;
    let config = provider("claude", "anthropic", &fake.base_url()).replace("retries = 0", "retries = 1");
    let copilot = start(&config).await;
    fake.fail_next(1, 529, None);
    let counted = count(&mut copilot.client().await, bare_request("claude/claude-sonnet-4-5")).await.unwrap();
    assert_eq!(counted.input_tokens, bare_count());
    assert_eq!(fake.count_requests().len(), 2);
}

/// Ollama and OpenAI-compatible servers have no counting endpoint: FEATURE_UNSUPPORTED naming
/// `count_tokens`, and the upstream is not asked.
#[tokio::test]
async fn ollama_and_openai_cannot_count() {
    let ollama = FakeOllama::start().await;
    ollama.add_model(FakeModel::new("llama3.2"));
    let openai = FakeOpenAi::start().await;
    openai.add_model(FakeModel::new("gpt-4o-mini"));
    let config = provider("ollama", "ollama", &ollama.base_url()) + &provider("openai", "openai", &openai.base_url());
    let copilot = start(&config).await;
    let mut client = copilot.client().await;
    for model in ["ollama/llama3.2", "openai/gpt-4o-mini"] {
        let status = count(&mut client, bare_request(model)).await.unwrap_err();
        assert_unsupported(&status);
        assert!(status.message().contains("no token-counting endpoint"), "{}", status.message());
    }
    assert!(ollama.chat_requests().is_empty() && openai.chat_requests().is_empty());
}

/// vLLM counts with its `/tokenize` (opted into with `count_tokens = "vllm"`): the conversation
/// as a chat call would send it, the tools and the generation prompt included, counted exactly;
/// and the count of a bare question is what the same question's `Generate` reports as its input.
#[tokio::test]
async fn vllm_counts_exactly_with_tokenize() {
    let vllm = FakeOpenAi::start().await;
    vllm.set_flavour(Flavour::Vllm);
    vllm.add_model(FakeModel::new("qwen3"));
    let config = provider("vllm", "openai", &vllm.base_url()) + "count_tokens = \"vllm\"\n";
    let copilot = start(&config).await;
    let mut client = copilot.client().await;

    let counted = count(&mut client, full_request("vllm/qwen3")).await.unwrap();
    let with_tool = fake_token_count(words(SYSTEM) + words(QUESTION), 0, [TOOL_DESCRIPTION]) as u32;
    assert_eq!((counted.input_tokens, counted.exact, counted.model.as_str()), (with_tool, true, "vllm/qwen3"));
    let sent = &vllm.tokenize_requests()[0];
    assert_eq!(sent["add_generation_prompt"], true, "{sent}");
    assert_eq!(
        (sent["messages"][0]["role"].as_str(), sent["messages"][1]["content"].as_str()),
        (Some("system"), Some(QUESTION))
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "weather", "{sent}");
    assert!(vllm.chat_requests().is_empty(), "counting generates nothing");

    let bare = count(&mut client, bare_request("vllm/qwen3")).await.unwrap();
    let generated = within(
        LIMIT,
        client.generate(GenerateRequest { model: "vllm/qwen3".into(), prompt: QUESTION.into(), ..Default::default() }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(bare.input_tokens, generated.usage.unwrap().input_tokens, "the count is what a call then uses");

    let status = count(&mut client, bare_request("vllm/nope")).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "MODEL_NOT_FOUND"), "{status:?}");
}

/// `count_tokens = "vllm"` on a server that is not vLLM: its 404 says there is no `/tokenize`.
#[tokio::test]
async fn tokenize_on_a_server_without_it_is_refused_precisely() {
    let openai = FakeOpenAi::start().await;
    openai.add_model(FakeModel::new("gpt-4o-mini"));
    let config = provider("openai", "openai", &openai.base_url()) + "count_tokens = \"vllm\"\n";
    let copilot = start(&config).await;
    let status = count(&mut copilot.client().await, bare_request("openai/gpt-4o-mini")).await.unwrap_err();
    assert_unsupported(&status);
    assert!(
        status.message().contains("/tokenize") && status.message().contains("count_tokens"),
        "{}",
        status.message()
    );
}

/// llama.cpp counts as its server would for a chat call (opted into with `count_tokens =
/// "llama_cpp"`): the conversation rendered by `/apply-template` with the tools and the template
/// arguments a chat call sends, then the rendered prompt tokenized by `/tokenize` with the special
/// tokens added and the template's markers parsed. Images cannot be counted there; a server
/// without `/apply-template` is refused precisely.
#[tokio::test]
async fn llama_cpp_counts_the_rendered_template_exactly() {
    let llama = FakeOpenAi::start().await;
    llama.set_flavour(Flavour::LlamaCpp);
    llama.add_model(FakeModel::new("qwen3"));
    let openai = FakeOpenAi::start().await;
    openai.add_model(FakeModel::new("gpt-4o-mini"));
    let config = provider("llama", "openai", &llama.base_url())
        + "count_tokens = \"llama_cpp\"\n"
        + &provider("openai", "openai", &openai.base_url())
        + "count_tokens = \"llama_cpp\"\n";
    let copilot = start(&config).await;
    let mut client = copilot.client().await;

    let counted = count(&mut client, full_request("llama/qwen3")).await.unwrap();
    let rendered = &llama.template_requests()[0];
    assert_eq!(
        (rendered["messages"][0]["role"].as_str(), rendered["messages"][1]["content"].as_str()),
        (Some("system"), Some(QUESTION)),
        "{rendered}"
    );
    assert_eq!(rendered["tools"][0]["function"]["description"], TOOL_DESCRIPTION, "{rendered}");
    let tokenized = &llama.tokenize_requests()[0];
    assert_eq!((&tokenized["add_special"], &tokenized["parse_special"]), (&true.into(), &true.into()), "{tokenized}");
    let prompt = tokenized["content"].as_str().unwrap();
    assert!(
        prompt.contains(SYSTEM) && prompt.contains(QUESTION) && prompt.contains(TOOL_DESCRIPTION),
        "the rendered prompt is what was tokenized: {prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "with the generation prompt: {prompt:?}");
    let expected = fake_llama_cpp_tokens(prompt, true, true).len() as u32;
    assert_eq!((counted.input_tokens, counted.exact, counted.model.as_str()), (expected, true, "llama/qwen3"));
    assert!(llama.chat_requests().is_empty(), "counting generates nothing");

    let bare = count(&mut client, bare_request("llama/qwen3")).await.unwrap();
    assert!(bare.input_tokens < counted.input_tokens, "the system prompt and the tool count");

    // An image cannot be counted by a text tokenizer: refused before the upstream is asked.
    let asked = llama.template_requests().len();
    let image = Message {
        role: Role::User as i32,
        parts: vec![
            Part { kind: Some(part::Kind::Text(QUESTION.into())) },
            Part {
                kind: Some(part::Kind::Image(Image {
                    source: Some(image::Source::Data(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR tiny".to_vec())),
                    mime_type: "image/png".into(),
                })),
            },
        ],
        ..Default::default()
    };
    let with_image = CountTokensRequest { model: "llama/qwen3".into(), messages: vec![image], tools: vec![] };
    let status = count(&mut client, with_image).await.unwrap_err();
    assert_unsupported(&status);
    assert!(status.message().contains("images"), "{}", status.message());
    assert_eq!(llama.template_requests().len(), asked);

    // A server that is not llama.cpp answers 404 for /apply-template.
    let status = count(&mut client, bare_request("openai/gpt-4o-mini")).await.unwrap_err();
    assert_unsupported(&status);
    assert!(
        status.message().contains("/apply-template") && status.message().contains("count_tokens"),
        "{}",
        status.message()
    );
}

/// An alias skips a target that cannot count and counts on the next.
#[tokio::test]
async fn an_alias_skips_a_target_that_cannot_count() {
    let ollama = FakeOllama::start().await;
    ollama.add_model(FakeModel::new("llama3.2"));
    let fake = gemini().await;
    let config = provider("local", "ollama", &ollama.base_url())
        + &provider("cloud", "gemini", &fake.base_url())
        + "[routing.aliases]\nsmart = [\"local/llama3.2\", \"cloud/gemini-2.5-flash\"]\n";
    let copilot = start(&config).await;
    let counted = count(&mut copilot.client().await, full_request("smart")).await.unwrap();
    assert_eq!((counted.model.as_str(), counted.input_tokens), ("cloud/gemini-2.5-flash", full_count()));
    assert!(ollama.chat_requests().is_empty());
}

/// A key counts only with the models it may use; each count spends one of its requests, and no
/// tokens: a budget of one token still counts a long conversation, twice.
#[tokio::test]
async fn keys_limit_models_and_requests_but_charge_no_tokens() {
    const KEY: &str = "cpk_alpha_test_key";
    const KEY_HASH: &str = "sha256:4d63903d956a1bdd30396662a5d2e3ef5b6b3244b1f41395b23e718b725b3838";
    let fake = gemini().await;
    fake.add_model(FakeModel::new("gemini-2.5-pro"));
    let config = provider("up", "gemini", &fake.base_url())
        + &format!(
            "[auth]\nenabled = true\n[[auth.keys]]\nname = \"alpha\"\nhash = \"{KEY_HASH}\"\n\
             models = [\"up/gemini-2.5-flash\"]\nrequests_per_minute = 3\ntokens_per_minute = 1\n"
        );
    let copilot = start(&config).await;
    let mut client = copilot.client().await;

    let status =
        within(LIMIT, client.count_tokens(with_key(full_request("up/gemini-2.5-pro"), KEY))).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::PermissionDenied, "MODEL_NOT_ALLOWED"));
    for _ in 0..2 {
        let counted = within(LIMIT, client.count_tokens(with_key(full_request("up/gemini-2.5-flash"), KEY))).await;
        assert_eq!(counted.unwrap().into_inner().input_tokens, full_count());
    }
    let status =
        within(LIMIT, client.count_tokens(with_key(full_request("up/gemini-2.5-flash"), KEY))).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "KEY_REQUEST_LIMIT"));
    assert_eq!(fake.count_requests().len(), 2);
}

/// A count request is checked as a chat is, before any upstream sees it.
#[tokio::test]
async fn bad_requests_never_reach_the_upstream() {
    let fake = gemini().await;
    let copilot = start(&provider("up", "gemini", &fake.base_url())).await;
    let mut client = copilot.client().await;
    let no_messages = CountTokensRequest { model: "up/gemini-2.5-flash".into(), ..Default::default() };
    let mut bad_tool = full_request("up/gemini-2.5-flash");
    bad_tool.tools[0].parameters_json_schema = "{not json".into();
    let mut no_role = bare_request("up/gemini-2.5-flash");
    no_role.messages[0].role = Role::Unspecified as i32;
    for (request, field) in
        [(no_messages, "messages"), (bad_tool, "tools[0].parameters_json_schema"), (no_role, "messages[0].role")]
    {
        let status = count(&mut client, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, field, "{violations:?}");
    }
    assert!(fake.count_requests().is_empty());
}

/// The upstream's refusals keep their meaning: an unknown model is NOT_FOUND on both providers; a
/// Gemini model without `countTokens` (an embedding model) is FEATURE_UNSUPPORTED, told apart by
/// its description; Anthropic's own 400 is INVALID_ARGUMENT.
#[tokio::test]
async fn upstream_refusals_are_mapped() {
    let gemini = gemini().await;
    gemini.add_model(FakeModel::embedding("gemini-embedding-001", 8));
    let claude = anthropic().await;
    let config = provider("up", "gemini", &gemini.base_url()) + &provider("claude", "anthropic", &claude.base_url());
    let copilot = start(&config).await;
    let mut client = copilot.client().await;

    for model in ["up/gemini-nope", "claude/claude-nope"] {
        let status = count(&mut client, bare_request(model)).await.unwrap_err();
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::NotFound, "MODEL_NOT_FOUND"),
            "{model}: {status:?}"
        );
    }
    assert_unsupported(&count(&mut client, bare_request("up/gemini-embedding-001")).await.unwrap_err());

    // A 400 from Anthropic, in its words.
    claude.add_model(FakeModel::new("claude-sonnet-4-5").with_behaviour(copilot_fakes::Behaviour::HttpError {
        status: 400,
        message: "messages: text content blocks must be non-empty".into(),
    }));
    let request = bare_request("claude/claude-sonnet-4-5");
    let status = count(&mut client, request).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST"));
    assert!(status.message().contains("text content blocks must be non-empty"), "{}", status.message());
}

/// A count attempt is a `count_tokens {model}` span with the count on it.
#[tokio::test]
async fn a_count_is_a_count_tokens_span() {
    use copilot_fakes::otlp::{AttrValue, FakeCollector};
    let collector = FakeCollector::start().await;
    let fake = gemini().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("COUNT_KEY", "k".to_string()),
    ];
    let copilot = Copilot::start_with(&provider("up", "gemini", &fake.base_url()), &env).await;
    count(&mut copilot.client().await, full_request("up/gemini-2.5-flash")).await.unwrap();
    let span = collector.wait_for_span(LIMIT, |s| s.name == "count_tokens gemini-2.5-flash").await.unwrap();
    assert_eq!(span.str_attr("gen_ai.operation.name"), Some("count_tokens"));
    assert_eq!(span.attr("copilot.count_tokens.input_tokens"), Some(&AttrValue::Int(i64::from(full_count()))));
    assert_eq!(span.attr("copilot.count_tokens.exact"), Some(&AttrValue::Bool(true)));
    assert!(span.attr("gen_ai.input.messages").is_none(), "no prompt content without capture");
    let server = collector.wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/CountTokens").await;
    assert!(server.is_some(), "the call's server span");
}
