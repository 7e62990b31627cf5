//! The seeds of the `grpc_request` fuzz target (`fuzz/seeds/grpc_request/`): valid calls of every
//! method, caller and framing, and hand-made broken messages and bodies. `UPDATE_SEEDS=1 cargo
//! test --no-default-features --test request_path` writes them; the tests replay every file of that
//! directory.

use prost::Message as _;

use crate::check::{Call, Caller, Framing, Method};
use copilot::proto::v1 as pb;

/// The seeds, by file name.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let call = |method, framing, caller, payload: Vec<u8>| Call { method, framing, caller, payload }.to_input();
    let whole = |method, payload| call(method, Framing::Whole, Caller::Open, payload);
    let generate = |model: &str, prompt: &str, options| {
        pb::GenerateRequest {
            model: model.into(),
            prompt: prompt.into(),
            system: "Be brief.".into(),
            options,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let message = |role: i32, content: &str| pb::Message { role, content: content.into(), ..Default::default() };
    let chat = |model: &str, messages: Vec<pb::Message>| {
        pb::ChatRequest { model: model.into(), messages, options: None, ..Default::default() }.encode_to_vec()
    };
    let user = |content: &str| message(pb::Role::User as i32, content);
    let options = |temperature| Some(pb::GenerationOptions { temperature: Some(temperature), ..Default::default() });
    let valid_options = Some(pb::GenerationOptions {
        temperature: Some(0.5),
        max_tokens: Some(16),
        top_p: Some(0.9),
        top_k: Some(40),
        stop: vec!["\n\n".into()],
        seed: Some(7),
    });
    let get_model = |model: &str| pb::GetModelRequest { model: model.into() }.encode_to_vec();
    // A valid Generate request followed by fields this server does not know (a varint, a string).
    let mut unknown_fields = generate("echo/m", "Hi", None);
    unknown_fields.extend([0x98, 0x06, 0x01, 0xa2, 0x06, 0x03, b'a', b'b', b'c']);
    vec![
        ("generate.bin", whole(Method::Generate, generate("echo/m", "Hello", valid_options.clone()))),
        ("generate-default-model.bin", whole(Method::Generate, generate("", "Hello", None))),
        ("generate-alias.bin", whole(Method::Generate, generate("fast", "Hello", None))),
        ("generate-provider-down.bin", whole(Method::Generate, generate("down/m", "Hello", None))),
        ("generate-empty-prompt.bin", whole(Method::Generate, generate("echo/m", "  ", None))),
        ("generate-empty-message.bin", whole(Method::Generate, Vec::new())),
        (
            "chat.bin",
            whole(Method::Chat, chat("echo/m", vec![message(pb::Role::System as i32, "Be brief."), user("Hello")])),
        ),
        ("chat-no-messages.bin", whole(Method::Chat, chat("echo/m", vec![]))),
        ("chat-too-many-messages.bin", whole(Method::Chat, chat("echo/m", vec![user("hi"); 9]))),
        ("chat-role-out-of-range.bin", whole(Method::Chat, chat("echo/m", vec![message(42, "hi")]))),
        ("chat-role-negative.bin", whole(Method::Chat, chat("echo/m", vec![message(-1, "hi")]))),
        ("chat-prompt-too-long.bin", whole(Method::Chat, chat("echo/m", vec![user(&"é".repeat(2049))]))),
        ("list-models.bin", whole(Method::ListModels, Vec::new())),
        ("list-models-unknown-field.bin", whole(Method::ListModels, vec![0x08, 0x01])),
        ("get-model.bin", whole(Method::GetModel, get_model("echo/default"))),
        ("get-model-alias.bin", whole(Method::GetModel, get_model("fast"))),
        ("get-model-provider-down.bin", whole(Method::GetModel, get_model("down/m"))),
        ("get-model-name-10kb.bin", whole(Method::GetModel, get_model(&"m".repeat(10 * 1024)))),
        ("generate-model-name-10kb.bin", whole(Method::Generate, generate(&"m".repeat(10 * 1024), "Hi", None))),
        ("temperature-negative.bin", whole(Method::Generate, generate("echo/m", "Hi", options(-1.0)))),
        ("temperature-nan.bin", whole(Method::Generate, generate("echo/m", "Hi", options(f32::NAN)))),
        ("temperature-infinite.bin", whole(Method::Generate, generate("echo/m", "Hi", options(f32::INFINITY)))),
        (
            "stop-sequences-too-many.bin",
            whole(
                Method::Generate,
                generate(
                    "echo/m",
                    "Hi",
                    Some(pb::GenerationOptions { stop: vec!["s".into(); 17], ..Default::default() }),
                ),
            ),
        ),
        // Field 2 (prompt), 2 bytes that are not UTF-8.
        ("prompt-invalid-utf8.bin", whole(Method::Generate, vec![0x12, 0x02, 0xff, 0xfe])),
        // Field 1 (messages[0].content) inside field 2 (messages), not UTF-8.
        ("chat-content-invalid-utf8.bin", whole(Method::Chat, vec![0x12, 0x04, 0x12, 0x02, 0xc3, 0x28])),
        // Field 1 (model), its length a varint that never ends.
        ("truncated-varint.bin", whole(Method::Generate, vec![0x0a, 0xff, 0xff])),
        // Tag 0 is never valid.
        ("field-zero.bin", whole(Method::Chat, vec![0x00, 0x01])),
        // Field 2 (prompt) claiming 4 GiB, with one byte.
        ("huge-length-prefix.bin", whole(Method::Generate, vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'])),
        ("unknown-fields.bin", whole(Method::Generate, unknown_fields)),
        // Field 15 as 200 nested groups: past prost's recursion limit.
        ("nested-groups.bin", whole(Method::Chat, vec![0x7b; 200])),
        // A message of wrong wire types: field 2 (messages) as a varint, field 1 (model) as fixed64.
        ("wrong-wire-types.bin", whole(Method::Chat, vec![0x10, 0x01, 0x09, 1, 2, 3, 4, 5, 6, 7, 8])),
        ("garbage.bin", whole(Method::GetModel, b"\xde\xad\xbe\xef not protobuf at all \x00\x01\x02".to_vec())),
        // The frame's length field past the message limit (16 KiB here).
        (
            "declared-length-past-the-limit.bin",
            call(Method::Generate, Framing::DeclaredLength, Caller::Open, vec![0xff, 0xff, 0xff, 0xff, 0x0a]),
        ),
        (
            "declared-length-exact.bin",
            call(Method::Generate, Framing::DeclaredLength, Caller::Open, {
                let message = generate("echo/m", "Hi", None);
                [&(message.len() as u32).to_be_bytes()[..], &message].concat()
            }),
        ),
        (
            "split-frame.bin",
            call(Method::Chat, Framing::Split, Caller::Open, [&[3][..], &chat("echo/m", vec![user("Hello")])].concat()),
        ),
        (
            "keyed-generate.bin",
            call(Method::Generate, Framing::Whole, Caller::ValidKey, generate("echo/m", "Hi", None)),
        ),
        ("keyed-chat-alias.bin", call(Method::Chat, Framing::Whole, Caller::ValidKey, chat("fast", vec![user("Hi")]))),
        (
            "keyed-model-not-allowed.bin",
            call(Method::Chat, Framing::Whole, Caller::ValidKey, chat("down/m", vec![user("Hi")])),
        ),
        ("keyed-list-models.bin", call(Method::ListModels, Framing::Whole, Caller::ValidKey, Vec::new())),
        (
            "keyed-get-model-not-allowed.bin",
            call(Method::GetModel, Framing::Whole, Caller::ValidKey, get_model("down/m")),
        ),
        ("no-key.bin", call(Method::Generate, Framing::Whole, Caller::NoKey, generate("echo/m", "Hi", None))),
        ("unknown-key.bin", call(Method::Chat, Framing::Whole, Caller::UnknownKey, chat("echo/m", vec![user("Hi")]))),
        // Found by the fuzzer, answered INTERNAL by tonic until the request-body guards answered
        // them: a body that ends inside the message, inside the next frame's header, or holds
        // nothing (INVALID_ARGUMENT / MALFORMED_REQUEST now).
        (
            "found-message-cut-short.bin",
            call(
                Method::Generate,
                Framing::Truncated,
                Caller::Open,
                [&[1][..], &generate("echo/m", "Hi", None)].concat(),
            ),
        ),
        (
            "found-declared-length-past-the-body.bin",
            call(Method::Chat, Framing::DeclaredLength, Caller::Open, vec![0, 0, 0, 100, 0x0a, 0x01, b'm']),
        ),
        (
            "found-header-cut-short.bin",
            call(Method::ListModels, Framing::DeclaredLength, Caller::Open, vec![0, 0, 0, 0, 0, 0]),
        ),
        ("found-empty-body.bin", call(Method::GetModel, Framing::Truncated, Caller::Open, vec![5])),
        // Found by the fuzzer: a whole frame header, then the end of the body.
        (
            "found-header-without-its-message.bin",
            call(Method::ListModels, Framing::Truncated, Caller::Open, vec![2, 255, 254]),
        ),
        // Two messages for a method that takes one (tonic dropped the second).
        (
            "found-two-messages.bin",
            call(Method::Generate, Framing::DeclaredLength, Caller::Open, {
                let message = generate("echo/m", "Hi", None);
                let length = (message.len() as u32).to_be_bytes();
                [&length[..], &message, &[0], &length, &message].concat()
            }),
        ),
        // The rest of the message read as a frame flagged 0x65: the compression spec's INTERNAL.
        (
            "declared-length-short-of-the-message.bin",
            call(Method::Generate, Framing::DeclaredLength, Caller::Open, {
                let message = generate("echo/m", "Hi", None);
                [&[0, 0, 0, 2][..], &message].concat()
            }),
        ),
    ]
}
