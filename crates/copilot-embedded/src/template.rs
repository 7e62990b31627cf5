//! Chat templates: turn a conversation into the exact prompt text a GGUF chat model was trained on.
//!
//! Most GGUF files carry their Hugging Face Jinja template in `tokenizer.chat_template`; we render it
//! the way `transformers`' `apply_chat_template` does (same variables, helper functions and
//! whitespace rules) so the prompt matches what the model saw in training. Files without one get a
//! built-in template chosen by architecture.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use copilot_provider::{Message, Role, Tool};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value, context};

/// Gemma has no system role; like Google's template, system text opens the next user turn. Unlike
/// Google's, it accepts any role order and system messages anywhere, since a gateway should not
/// reject a conversation another provider would take.
const GEMMA: &str = r#"
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}
        {%- set ns.system = ns.system + message.content + '\n\n' -%}
    {%- else -%}
        {%- set role = 'model' if message.role == 'assistant' else 'user' -%}
        {%- set prefix = ns.system if role == 'user' else '' -%}
        {%- if role == 'user' -%}{%- set ns.system = '' -%}{%- endif -%}
        {{- '<start_of_turn>' + role + '\n' + prefix + message.content | trim + '<end_of_turn>\n' -}}
    {%- endif -%}
{%- endfor -%}
{#- System text with no user turn after it must not be lost. -#}
{%- if ns.system -%}
    {{- '<start_of_turn>user\n' + ns.system | trim + '<end_of_turn>\n' -}}
{%- endif -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"#;

/// Meta's Llama 3 format (without 3.1's date header, which only the GGUF's own template knows).
const LLAMA3: &str = r#"
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"#;

/// ChatML, as Qwen uses it. No BOS: ChatML models (Qwen among them) do not expect one.
const CHATML: &str = r#"
{%- for message in messages -%}
    {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"#;

/// Turn terminators of the common template families. A model may write one as plain text (e.g. when
/// a fine-tune's tokenizer lacks it as a special token), so the engine also stops on the text.
const KNOWN_END_MARKERS: [&str; 6] = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>"];

/// The name the template is registered under; it shows up in minijinja's error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template for one model. Cheap to render many times and shareable across threads.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: TemplateSource,
    /// Names the model and template in errors, e.g. "the built-in gemma template (architecture gemma3)".
    description: String,
    bos_token: String,
    eos_token: String,
    end_markers: Vec<String>,
    /// Whether the template lists tools for the model (it reads the `tools` variable).
    tools: bool,
}

/// Where a [`ChatTemplate`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model's own `tokenizer.chat_template`.
    Gguf,
    /// One of ours, by name: `"gemma"`, `"llama3"` or `"chatml"`.
    BuiltIn(&'static str),
}

impl fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateSource::Gguf => f.write_str("the GGUF's own chat template"),
            TemplateSource::BuiltIn(name) => write!(f, "the built-in {name} template"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot compile {0}")]
    Compile(String),
    #[error("cannot render {0}")]
    Render(String),
}

impl ChatTemplate {
    /// The GGUF's own `tokenizer.chat_template` when it has one; otherwise a built-in template chosen
    /// by architecture. `bos_token`/`eos_token` are the token texts templates insert themselves.
    pub fn for_model(
        gguf_template: Option<&str>,
        architecture: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let (source, text) = match gguf_template.filter(|t| !t.trim().is_empty()) {
            Some(text) => (TemplateSource::Gguf, text.to_owned()),
            None => {
                let (name, text) = built_in_for(architecture, bos_token);
                (TemplateSource::BuiltIn(name), text.to_owned())
            }
        };
        let description = format!("{source} (architecture {architecture})");
        let end_markers = end_markers_in(&text, eos_token);
        let tools = mentions_tools(&text);

        let mut env = new_environment();
        env.add_template_owned(TEMPLATE_NAME, text)
            .map_err(|err| TemplateError::Compile(format!("{description}: {}", describe(&err))))?;

        Ok(ChatTemplate {
            env,
            source,
            description,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            end_markers,
            tools,
        })
    }

    /// The prompt for `messages`, ending where the assistant's reply should begin.
    pub fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        self.render_with_tools(messages, &[])
    }

    /// The prompt for `messages` with `tools` listed for the model (none: no tool section).
    ///
    /// Tools go in as `transformers` passes them: `{"type": "function", "function": {"name",
    /// "description", "parameters"}}` with the schema as an object. Earlier calls go in the
    /// assistant message's `tool_calls` with `arguments` as an object (templates write it with
    /// `tojson`), and results as `role: "tool"` messages with the call's id and tool name.
    pub fn render_with_tools(&self, messages: &[Message], tools: &[Tool]) -> Result<String, TemplateError> {
        let messages: Vec<Value> =
            messages.iter().map(|m| self.message_value(m, messages)).collect::<Result<_, _>>()?;
        let tools: Value = if tools.is_empty() {
            // `apply_chat_template` passes None without tools, and templates test `if tools`
            // or `tools is not none`.
            Value::from(())
        } else {
            tools.iter().map(|t| self.tool_value(t)).collect::<Result<Vec<_>, _>>()?.into()
        };
        let ctx = context! {
            messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools,
            documents => (),
        };
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(ctx))
            .map_err(|err| TemplateError::Render(format!("{}: {}", self.description, describe(&err))))
    }

    pub fn source(&self) -> TemplateSource {
        self.source
    }

    /// Whether the template shows the model a list of tools, so that it can call them.
    pub fn supports_tools(&self) -> bool {
        self.tools
    }

    fn message_value(&self, message: &Message, all: &[Message]) -> Result<Value, TemplateError> {
        let content = message.content();
        let value = match message.role {
            Role::Assistant => {
                let calls: Vec<Value> = message
                    .tool_calls()
                    .map(|call| {
                        let arguments = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
                        let function = context! {
                            name => call.name.as_str(),
                            arguments => self.json(arguments, "a tool call's arguments")?,
                        };
                        Ok(context! { id => call.id.as_str(), type => "function", function })
                    })
                    .collect::<Result<_, TemplateError>>()?;
                if calls.is_empty() {
                    context! { role => "assistant", content }
                } else {
                    context! { role => "assistant", content, tool_calls => calls }
                }
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = all
                    .iter()
                    .flat_map(Message::tool_calls)
                    .find(|call| call.id == id)
                    .map(|call| call.name.as_str())
                    .unwrap_or_default();
                context! { role => "tool", content, tool_call_id => id, name }
            }
            role => context! { role => role.as_str(), content },
        };
        Ok(value)
    }

    fn tool_value(&self, tool: &Tool) -> Result<Value, TemplateError> {
        let parameters = tool.parameters.as_deref().unwrap_or(r#"{"type": "object", "properties": {}}"#);
        let function = context! {
            name => tool.name.as_str(),
            description => tool.description.as_str(),
            parameters => self.json(parameters, "a tool's parameters")?,
        };
        Ok(context! { type => "function", function })
    }

    /// JSON text as a template value, keys in the order written.
    fn json(&self, text: &str, what: &str) -> Result<Value, TemplateError> {
        serde_json::from_str(text)
            .map_err(|e| TemplateError::Render(format!("{}: {what} are not valid JSON: {e}", self.description)))
    }

    /// Strings that end a turn in this template family (e.g. `<|im_end|>`), for the engine to stop
    /// on when the model emits them as plain text.
    pub fn end_of_turn_markers(&self) -> &[String] {
        &self.end_markers
    }
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("description", &self.description)
            .field("end_markers", &self.end_markers)
            .finish_non_exhaustive()
    }
}

fn built_in_for(architecture: &str, bos_token: &str) -> (&'static str, &'static str) {
    match architecture {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" => ("gemma", GEMMA),
        // `llama` covers Llama 2, Mistral and many fine-tunes too; only Llama 3's vocabulary has this BOS.
        "llama" if bos_token == "<|begin_of_text|>" => ("llama3", LLAMA3),
        // ChatML is the format most instruction fine-tunes of unknown lineage were trained on.
        _ => ("chatml", CHATML),
    }
}

/// The known turn terminators that `template` writes, plus the EOS token when the template inserts
/// it (Mistral-style templates end assistant turns with `{{ eos_token }}`).
fn end_markers_in(template: &str, eos_token: &str) -> Vec<String> {
    let mut markers: Vec<String> =
        KNOWN_END_MARKERS.iter().filter(|marker| template.contains(*marker)).map(|m| m.to_string()).collect();
    if !eos_token.is_empty() && template.contains("eos_token") && !markers.iter().any(|m| m == eos_token) {
        markers.push(eos_token.to_owned());
    }
    markers
}

/// Whether a template reads the `tools` variable (outside a comment, roughly: a template that
/// only mentions tools in prose is rare, and the model would simply not call any).
pub fn mentions_tools(template: &str) -> bool {
    let bytes = template.as_bytes();
    template.match_indices("tools").any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + 5).copied();
        let word = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        !word(before) && !word(after)
    })
}

/// An environment that behaves like the one `transformers` renders chat templates in.
fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    // Prompts are not HTML: a `<` in a message must reach the model as `<`.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env
}

/// `transformers` replaces Jinja's `tojson` with a plain `json.dumps`: keys in insertion order and no
/// HTML escaping. minijinja's matches it except that it escapes `<`, `>`, `&` and `'`, which would
/// put `\u003c` where the model was trained to see `<` (in tool schemas, say); undo just that.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let json = minijinja::filters::tojson(value, indent, kwargs)?;
    let json = json.as_str().unwrap_or_default();
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        // Escapes are consumed whole, so the `u003c` in an escaped backslash followed by `u003c`
        // (`\\u003c`) is left alone.
        let escape = rest[at..].get(..6).unwrap_or(&rest[at..]);
        let (replacement, len) = match escape {
            "\\u003c" => ("<", 6),
            "\\u003e" => (">", 6),
            "\\u0026" => ("&", 6),
            "\\u0027" => ("'", 6),
            _ => (rest[at..].get(..2).unwrap_or(&rest[at..]), 2),
        };
        out.push_str(replacement);
        rest = rest[at..].get(len..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// Templates call this to reject conversations they cannot express (e.g. wrong role order).
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Templates put today's date in the system turn (Llama 3.1, Granite). UTC rather than local time:
/// the day is all they use, and it spares us a timezone database.
fn strftime_now(format: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(now, format)
}

/// A `strftime` for the directives chat templates use. Unknown directives are kept as written, as
/// glibc does.
fn format_utc(unix_seconds: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    let (hour, minute, second) = (seconds_of_day / 3600, seconds_of_day / 60 % 60, seconds_of_day % 60);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];
    let month_name = MONTHS[month as usize - 1];
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    const DAYS_BEFORE_MONTH: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = DAYS_BEFORE_MONTH[month as usize - 1] + day + u32::from(leap && month > 2);

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let formatted = match directive {
            'Y' => year.to_string(),
            'y' => format!("{:02}", year.rem_euclid(100)),
            'm' => format!("{month:02}"),
            'd' => format!("{day:02}"),
            'e' => format!("{day:>2}"),
            'B' => month_name.to_owned(),
            'b' | 'h' => month_name[..3].to_owned(),
            'A' => weekday.to_owned(),
            'a' => weekday[..3].to_owned(),
            'j' => format!("{day_of_year:03}"),
            'H' => format!("{hour:02}"),
            'I' => format!("{:02}", (hour + 11) % 12 + 1),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            '%' => "%".to_owned(),
            other => format!("%{other}"),
        };
        out.push_str(&formatted);
    }
    out
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01, by Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// minijinja's message plus where in the template it happened, and the cause of a failed call.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::Part;

    const QWEN25: &str = include_str!("../tests/fixtures/qwen2.5-chat-template.jinja");
    const LLAMA31_STYLE: &str = include_str!("../tests/fixtures/llama3.1-style-chat-template.jinja");
    const GEMMA3_STYLE: &str = include_str!("../tests/fixtures/gemma3-style-chat-template.jinja");

    fn msg(role: Role, content: &str) -> Message {
        Message::text(role, content)
    }

    /// system, user, assistant, user — with whitespace the trimming templates must remove.
    fn conversation() -> Vec<Message> {
        vec![
            msg(Role::System, "You are terse."),
            msg(Role::User, "What is 2+2?\n"),
            msg(Role::Assistant, " 4"),
            msg(Role::User, "And <3*3>?"),
        ]
    }

    fn render(template: &ChatTemplate, messages: &[Message]) -> String {
        template.render(messages).unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn gemma_folds_the_system_prompt_into_the_first_user_turn() {
        let template = ChatTemplate::for_model(None, "gemma3", "<bos>", "<eos>").unwrap();
        assert_eq!(template.source(), TemplateSource::BuiltIn("gemma"));
        assert_eq!(template.end_of_turn_markers(), ["<end_of_turn>"]);
        let prompt = render(&template, &conversation());
        assert_eq!(
            prompt,
            "<bos><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n\
             <start_of_turn>model\n4<end_of_turn>\n\
             <start_of_turn>user\nAnd <3*3>?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        assert_eq!(prompt.matches("<bos>").count(), 1);
    }

    #[test]
    fn gemma_without_a_system_prompt() {
        let template = ChatTemplate::for_model(None, "gemma2", "<bos>", "<eos>").unwrap();
        assert_eq!(
            render(&template, &[msg(Role::User, "Hi")]),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn gemma_keeps_a_trailing_system_message_as_a_user_turn() {
        let template = ChatTemplate::for_model(None, "gemma", "<bos>", "<eos>").unwrap();
        assert_eq!(
            render(&template, &[msg(Role::User, "Hi"), msg(Role::System, "Be brief.")]),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n\
             <start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn llama3_is_chosen_by_its_bos_token() {
        let template = ChatTemplate::for_model(None, "llama", "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(template.source(), TemplateSource::BuiltIn("llama3"));
        assert_eq!(template.end_of_turn_markers(), ["<|eot_id|>"]);
        let prompt = render(&template, &conversation());
        assert_eq!(
            prompt,
            "<|begin_of_text|>\
             <|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nAnd <3*3>?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(prompt.matches("<|begin_of_text|>").count(), 1);
    }

    #[test]
    fn chatml_for_qwen_other_llamas_and_unknown_architectures() {
        for (architecture, bos) in [("qwen2", "<|endoftext|>"), ("qwen3", ""), ("llama", "<s>"), ("mystery", "<s>")] {
            let template = ChatTemplate::for_model(None, architecture, bos, "").unwrap();
            assert_eq!(template.source(), TemplateSource::BuiltIn("chatml"), "{architecture}");
            assert_eq!(template.end_of_turn_markers(), ["<|im_end|>"]);
            assert_eq!(
                render(&template, &conversation()),
                "<|im_start|>system\nYou are terse.<|im_end|>\n\
                 <|im_start|>user\nWhat is 2+2?\n<|im_end|>\n\
                 <|im_start|>assistant\n 4<|im_end|>\n\
                 <|im_start|>user\nAnd <3*3>?<|im_end|>\n\
                 <|im_start|>assistant\n",
                "{architecture}"
            );
        }
    }

    #[test]
    fn a_blank_gguf_template_falls_back_to_the_built_in_one() {
        let template = ChatTemplate::for_model(Some(" \n"), "gemma3", "<bos>", "<eos>").unwrap();
        assert_eq!(template.source(), TemplateSource::BuiltIn("gemma"));
    }

    #[test]
    fn real_qwen25_template_with_a_system_prompt() {
        let template = ChatTemplate::for_model(Some(QWEN25), "qwen2", "<|endoftext|>", "<|im_end|>").unwrap();
        assert_eq!(template.source(), TemplateSource::Gguf);
        assert_eq!(template.end_of_turn_markers(), ["<|im_end|>"]);
        assert_eq!(
            render(&template, &[msg(Role::System, "You are terse."), msg(Role::User, "What is 2+2?")]),
            "<|im_start|>system\nYou are terse.<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn real_qwen25_template_injects_its_default_system_prompt() {
        let template = ChatTemplate::for_model(Some(QWEN25), "qwen2", "<|endoftext|>", "<|im_end|>").unwrap();
        assert_eq!(
            render(&template, &[msg(Role::User, "Hi"), msg(Role::Assistant, "Hello!"), msg(Role::User, "Bye")]),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nBye<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn real_qwen25_template_from_the_model_file_matches_the_fixture() {
        // The fixture was extracted from this file; skip quietly where the model is not downloaded.
        let Some(home) = std::env::var_os("HOME") else { return };
        let path = std::path::Path::new(&home).join(".cache/copilot/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        let Ok(bytes) = std::fs::read(&path) else { return };
        let needle = QWEN25.as_bytes();
        assert!(bytes.windows(needle.len()).any(|w| w == needle), "{} holds another template", path.display());
    }

    #[test]
    fn real_qwen25_template_lists_tools_and_renders_calls_and_results() {
        let template = ChatTemplate::for_model(Some(QWEN25), "qwen2", "<|endoftext|>", "<|im_end|>").unwrap();
        assert!(template.supports_tools());
        let tools = [Tool {
            name: "get_weather".into(),
            description: "Get the weather.".into(),
            // Key order as written, `<` as written, and a 64-bit integer whole.
            parameters: Some(
                r#"{"type":"object","properties":{"city":{"type":"string","description":"<city>"}},"required":["city"],"maxId":9007199254740993}"#
                    .into(),
            ),
            strict: false,
        }];
        let call = copilot_provider::ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city": "Paris", "days": 2}"#.into(),
            signature: Vec::new(),
        };
        let messages = [
            msg(Role::User, "Weather in Paris?"),
            Message { role: Role::Assistant, parts: vec![Part::ToolCall(call)], tool_call_id: None },
            Message::tool_result("call_1", r#"{"temp": 18}"#),
        ];
        assert_eq!(
            template.render_with_tools(&messages, &tools).unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n\
             # Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
             {\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the weather.\", \
             \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"<city>\"}}, \
             \"required\": [\"city\"], \"maxId\": 9007199254740993}}}\n</tools>\n\n\
             For each function call, return a json object with function name and arguments within \
             <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n\
             </tool_call><|im_end|>\n\
             <|im_start|>user\nWeather in Paris?<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n\
             </tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n{\"temp\": 18}\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without tools (tool choice none), the history still renders and no tool section appears.
        let plain = template.render_with_tools(&messages, &[]).unwrap();
        assert!(!plain.contains("# Tools") && plain.contains("<tool_response>"), "{plain}");
    }

    #[test]
    fn which_templates_list_tools() {
        assert!(mentions_tools("{%- if tools %}x{% endif %}"));
        assert!(mentions_tools("{{ tools | tojson }}"));
        assert!(!mentions_tools("{{ message.tool_calls }}{{ my_tools_x }}"));
        for built_in in [GEMMA, LLAMA3, CHATML] {
            assert!(!mentions_tools(built_in));
        }
    }

    #[test]
    fn llama31_style_template_dates_the_system_turn() {
        let template =
            ChatTemplate::for_model(Some(LLAMA31_STYLE), "llama", "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(template.end_of_turn_markers(), ["<|eot_id|>"]);
        let before = strftime_now("%d %b %Y");
        let prompt = render(&template, &[msg(Role::System, " You are terse. "), msg(Role::User, "Hi")]);
        let after = strftime_now("%d %b %Y");
        let expected = |date: &str| {
            format!(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                 Cutting Knowledge Date: December 2023\nToday Date: {date}\n\nYou are terse.<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            )
        };
        assert!(prompt == expected(&before) || prompt == expected(&after), "{prompt:?}");
    }

    #[test]
    fn gemma3_style_template_renders_and_rejects_bad_role_order() {
        let template = ChatTemplate::for_model(Some(GEMMA3_STYLE), "gemma3", "<bos>", "<eos>").unwrap();
        assert_eq!(template.end_of_turn_markers(), ["<end_of_turn>"]);
        let prompt = render(&template, &conversation());
        // Same text as the built-in Gemma template: that one follows Google's format.
        let built_in = ChatTemplate::for_model(None, "gemma3", "<bos>", "<eos>").unwrap();
        assert_eq!(prompt, render(&built_in, &conversation()));

        let err = template.render(&[msg(Role::User, "Hi"), msg(Role::User, "Hello?")]).unwrap_err();
        assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("Conversation roles must alternate user/assistant/user/assistant/..."), "{text}");
        assert!(text.contains("gemma3"), "{text}");
    }

    #[test]
    fn python_methods_namespace_loop_last_and_raise_exception() {
        let source = r#"
{%- set ns = namespace(commands=0) -%}
{%- for message in messages -%}
    {%- if message['content'].startswith('/') -%}
        {%- set ns.commands = ns.commands + 1 -%}
    {%- endif -%}
    {%- if message.role not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unexpected role ' + message.role) -}}
    {%- endif -%}
    {%- if message['content'].strip() == 'boom' -%}
        {{- raise_exception('Refusing to render a bomb') -}}
    {%- endif -%}
    {{- message['role'].upper() + ': ' + message['content'].strip() -}}
    {%- if not loop.last %} | {% endif -%}
{%- endfor -%}
{{- ' (' ~ ns.commands ~ ' commands, ' ~ messages[0].items() | list | length ~ ' keys)' -}}
"#;
        let template = ChatTemplate::for_model(Some(source), "custom", "", "").unwrap();
        assert_eq!(template.end_of_turn_markers(), [] as [String; 0]);
        assert_eq!(
            render(&template, &[msg(Role::User, "/help  \n"), msg(Role::Assistant, " sure ")]),
            "USER: /help | ASSISTANT: sure (1 commands, 2 keys)"
        );

        let err = template.render(&[msg(Role::User, "hi"), msg(Role::User, " boom ")]).unwrap_err();
        assert!(err.to_string().contains("Refusing to render a bomb"), "{err}");
    }

    #[test]
    fn block_tags_swallow_their_line_as_in_transformers() {
        // Zephyr-style: no `-` whitespace control, relying on trim_blocks and lstrip_blocks.
        let source = "{% for message in messages %}
    {% if message['role'] == 'user' %}
<|user|>
{{ message['content'] }}</s>
    {% else %}
<|assistant|>
{{ message['content'] }}</s>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}
";
        let template = ChatTemplate::for_model(Some(source), "stablelm", "", "</s>").unwrap();
        assert_eq!(template.end_of_turn_markers(), ["</s>"]);
        assert_eq!(
            render(&template, &[msg(Role::User, "Hi"), msg(Role::Assistant, "Hello")]),
            "<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|assistant|>\n"
        );
    }

    #[test]
    fn tojson_and_undefined_tools() {
        let source = "{% if tools is none %}{{ messages[0] | tojson }}|{{ messages | tojson(indent=2) }}{% endif %}";
        let template = ChatTemplate::for_model(Some(source), "custom", "", "").unwrap();
        // What Python's `json.dumps(x, ensure_ascii=False)` writes, which is what `transformers` uses.
        assert_eq!(
            render(&template, &[msg(Role::User, "<b>&'é\"\\u003c\n")]),
            r#"{"role": "user", "content": "<b>&'é\"\\u003c\n"}|[
  {
    "role": "user",
    "content": "<b>&'é\"\\u003c\n"
  }
]"#
        );
    }

    #[test]
    fn end_markers_include_an_eos_token_the_template_inserts() {
        let source = "{% for m in messages %}[INST] {{ m.content }} [/INST]{{ eos_token }}{% endfor %}";
        let template = ChatTemplate::for_model(Some(source), "llama", "<s>", "</s>").unwrap();
        assert_eq!(template.end_of_turn_markers(), ["</s>"]);
    }

    #[test]
    fn compile_errors_name_the_model_and_the_problem() {
        let err = ChatTemplate::for_model(Some("{% if messages %}unclosed"), "phi3", "", "").unwrap_err();
        assert!(matches!(err, TemplateError::Compile(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("GGUF") && text.contains("phi3") && text.contains("syntax error"), "{text}");
    }

    #[test]
    fn templates_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 09:05:03 UTC, a Friday.
        assert_eq!(format_utc(1_721_984_703, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            format_utc(1_721_984_703, "%A %B %e, %y %H:%M:%S %I%p day %j %%"),
            "Friday July 26, 24 09:05:03 09AM day 208 %"
        );
        // 2000-02-29 23:59:59 UTC, a Tuesday in a leap year.
        assert_eq!(format_utc(951_868_799, "%a %Y-%m-%d %j %I %p %Q"), "Tue 2000-02-29 060 11 PM %Q");
        assert_eq!(format_utc(0, "%Y-%m-%d %A"), "1970-01-01 Thursday");
    }
}
