//! The OpenAI request shapes the demo model accepts, their validation, and OpenAI-style error bodies.

use serde_json::{Value, json};

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Chat (`/v1/chat/completions`) or plain completion (`/v1/completions`).
    pub kind: Kind,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Answer as an SSE stream, token by token.
    pub stream: bool,
    /// Rough prompt size, in whitespace-separated words.
    pub prompt_tokens: u32,
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
}

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong.
    pub message: String,
    /// The offending parameter, if one.
    pub param: Option<&'static str>,
    /// OpenAI's error code, if one.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about one parameter.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), param: Some(param), code: None }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let kind = match self.status {
            404 if self.code == Some("model_not_found") => "invalid_request_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// Validates a request body for `kind`. `model` is the served model's name; `limit` the most tokens allowed.
pub fn parse(
    kind: Kind,
    body: &[u8],
    model: &str,
    default_tokens: u32,
    limit: u32,
) -> Result<Generation, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| ApiError {
        status: 400,
        message: format!("We could not parse the JSON body of your request: {err}"),
        param: None,
        code: None,
    })?;
    let object = value.as_object().ok_or_else(|| ApiError {
        status: 400,
        message: "The request body must be a JSON object.".into(),
        param: None,
        code: None,
    })?;
    match object.get("model") {
        None => {}
        Some(Value::String(name)) if name == model => {}
        Some(Value::String(name)) => {
            return Err(ApiError {
                status: 404,
                message: format!("The model `{name}` does not exist; this server serves `{model}`."),
                param: Some("model"),
                code: Some("model_not_found"),
            });
        }
        Some(_) => return Err(ApiError::invalid("model", "`model` must be a string.")),
    }
    let prompt_tokens = match kind {
        Kind::Chat => chat_prompt_words(object.get("messages"))?,
        Kind::Completion => completion_prompt_words(object.get("prompt"))?,
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(ApiError::invalid("stream", "`stream` must be true or false.")),
    };
    let (param, tokens) = match (object.get("max_completion_tokens"), object.get("max_tokens")) {
        (Some(v), _) if !v.is_null() => ("max_completion_tokens", Some(v)),
        (_, v) => ("max_tokens", v.filter(|v| !v.is_null())),
    };
    let max_tokens = match tokens {
        None => default_tokens,
        Some(v) => {
            v.as_u64().filter(|n| (1..=u64::from(limit)).contains(n)).map(|n| n as u32).ok_or_else(|| {
                ApiError::invalid(param, format!("`{param}` must be a whole number from 1 to {limit}."))
            })?
        }
    };
    Ok(Generation { kind, max_tokens, stream, prompt_tokens })
}

fn words(text: &str) -> u32 {
    text.split_whitespace().count() as u32
}

fn chat_prompt_words(messages: Option<&Value>) -> Result<u32, ApiError> {
    let messages = messages
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("messages", "`messages` must be a non-empty array of messages."))?;
    let mut total = 0;
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !role.is_some_and(|r| ROLES.contains(&r)) {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages[{i}].role` must be one of {}.", ROLES.join(", ")),
            ));
        }
        total += match message.get("content") {
            Some(Value::String(text)) => words(text),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(words).sum()
            }
            Some(Value::Null) if role == Some("assistant") => 0,
            _ => {
                let message =
                    format!("`messages[{i}].content` must be a string or an array of content parts.");
                return Err(ApiError::invalid("messages", message));
            }
        };
    }
    Ok(total)
}

fn completion_prompt_words(prompt: Option<&Value>) -> Result<u32, ApiError> {
    let bad = || ApiError::invalid("prompt", "`prompt` must be a string or an array of strings.");
    match prompt {
        Some(Value::String(text)) => Ok(words(text)),
        Some(Value::Array(items)) => items.iter().map(|i| i.as_str().map(words).ok_or_else(bad)).sum(),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Generation, ApiError> {
        parse(Kind::Chat, body.as_bytes(), "demo", 16, 4096)
    }

    #[test]
    fn valid_requests() {
        let g =
            chat(r#"{"model":"demo","messages":[{"role":"user","content":"hello there"}],"stream":true}"#)
                .unwrap();
        assert_eq!(g, Generation { kind: Kind::Chat, max_tokens: 16, stream: true, prompt_tokens: 2 });
        let g = chat(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a b c"}]}],"max_tokens":3}"#,
        );
        assert_eq!(g.unwrap().max_tokens, 3);
        let c =
            parse(Kind::Completion, br#"{"prompt":["a b","c"],"max_completion_tokens":5}"#, "demo", 16, 4096);
        assert_eq!(
            c.unwrap(),
            Generation { kind: Kind::Completion, max_tokens: 5, stream: false, prompt_tokens: 3 }
        );
    }

    #[test]
    fn malformed_requests_get_openai_style_errors() {
        let cases = [
            ("not json", None, "We could not parse the JSON body"),
            ("[1]", None, "must be a JSON object"),
            (r#"{"messages":[]}"#, Some("messages"), "non-empty array"),
            (r#"{"messages":[{"role":"robot","content":"x"}]}"#, Some("messages"), "messages[0].role"),
            (r#"{"messages":[{"role":"user"}]}"#, Some("messages"), "messages[0].content"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                Some("stream"),
                "true or false",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
                "from 1 to 4096",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":5000}"#,
                Some("max_tokens"),
                "from 1 to 4096",
            ),
            (r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#, Some("model"), "must be a string"),
        ];
        for (body, param, message) in cases {
            let err = chat(body).unwrap_err();
            assert_eq!((err.status, err.param), (400, param), "{body}");
            assert!(err.message.contains(message), "{body}: {}", err.message);
            assert_eq!(err.body()["error"]["type"], "invalid_request_error");
        }
        let err = chat(r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert_eq!((err.status, err.code), (404, Some("model_not_found")));
        let err = parse(Kind::Completion, br#"{"prompt":7}"#, "demo", 16, 4096).unwrap_err();
        assert_eq!(err.param, Some("prompt"));
    }
}
