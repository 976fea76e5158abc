//! JSON-RPC 2.0 messages: parsing one JSON text into requests
//! ([`parse_line`]) and rendering replies ([`render_result`],
//! [`render_error`]). Request ids are kept as the raw JSON text the client
//! sent, so they are echoed byte for byte.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::RpcError;

/// The id of a request, as the raw JSON text the client sent (`"null"` for
/// an explicit null id, and for errors about unreadable requests).
pub type Id = Box<RawValue>;

/// The id used in replies to requests whose id could not be read.
pub fn null_id() -> Id {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// One well-formed request object.
///
/// `params` stays raw JSON text here: the router thread has a small stack,
/// so nested JSON is only turned into a [`Value`] by [`Request::params`] on a
/// worker (serde_json's nesting limit then applies on a full-size stack).
#[derive(Debug)]
pub struct Request {
    /// `None` for a notification (no reply is sent).
    pub id: Option<Id>,
    /// The method name.
    pub method: String,
    /// `params` (an object or an array) as sent, `None` when absent.
    pub raw_params: Option<Box<RawValue>>,
    /// The `timeout_ms` extension member.
    pub timeout_ms: Option<u64>,
    /// The `idempotency_key` extension member.
    pub idempotency_key: Option<String>,
    /// The `session` extension member: a session key that authenticates
    /// this request alone.
    pub session: Option<String>,
}

impl Request {
    /// `params` as a JSON value (`Value::Null` when absent); -32602 when it
    /// nests deeper than serde_json allows (128 levels).
    pub fn params(&self) -> Result<Value, RpcError> {
        match &self.raw_params {
            None => Ok(Value::Null),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| RpcError::invalid_params(None, format!("params cannot be read: {e}"))),
        }
    }
}

/// What one element of a line turned into: a request, or an error to send
/// back with the id we could recover.
pub type Parsed = Result<Request, (Option<Id>, RpcError)>;

/// A parsed line: one request, or a batch.
#[derive(Debug)]
pub enum Line {
    /// A single request object (or something that failed to be one).
    Single(Parsed),
    /// A batch (JSON array) of one or more elements.
    Batch(Vec<Parsed>),
}

/// The request members as they come off the wire, every one kept raw so
/// that no nested value is parsed recursively on the router thread. An
/// explicit `"id": null` is `Some("null")`.
#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: WireId<'a>,
    #[serde(borrow)]
    timeout_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    idempotency_key: Option<&'a RawValue>,
    #[serde(borrow)]
    session: Option<&'a RawValue>,
}

/// Present-or-absent id; serde's `Option` would fold `null` into absent.
#[derive(Default)]
enum WireId<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireId<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(d).map(WireId::Present)
    }
}

/// Parses one line (without its `\n`). `Err` is a reply to send with a null
/// id: the line is not UTF-8, not JSON, or an empty batch.
pub fn parse_line(bytes: &[u8]) -> Result<Line, RpcError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RpcError::parse_error(format!("the line is not valid UTF-8: {e}")))?;
    let raw: &RawValue = serde_json::from_str(text).map_err(RpcError::parse_error)?;
    if raw.get().starts_with('[') {
        let elements: Vec<&RawValue> =
            serde_json::from_str(raw.get()).map_err(RpcError::parse_error)?;
        if elements.is_empty() {
            return Err(RpcError::invalid_request("empty batch"));
        }
        return Ok(Line::Batch(
            elements.into_iter().map(parse_request).collect(),
        ));
    }
    Ok(Line::Single(parse_request(raw)))
}

fn parse_request(raw: &RawValue) -> Parsed {
    if !raw.get().starts_with('{') {
        return Err((
            None,
            RpcError::invalid_request("a request must be a JSON object"),
        ));
    }
    let wire: WireRequest = serde_json::from_str(raw.get())
        .map_err(|e| (None, RpcError::invalid_request(e.to_string())))?;
    let id = match wire.id {
        WireId::Absent => None,
        WireId::Present(r) => Some(r.to_owned()),
    };
    validate(&wire, &id).map_err(|e| (Some(id.clone().unwrap_or_else(null_id)), e))?;
    Ok(Request {
        id,
        method: from_raw(wire.method).unwrap_or_default(),
        raw_params: wire.params.map(RawValue::to_owned),
        timeout_ms: from_raw(non_null(wire.timeout_ms)),
        idempotency_key: from_raw(non_null(wire.idempotency_key)),
        session: from_raw(non_null(wire.session)),
    })
}

/// A member that is present and not `null`.
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// A scalar member read from its raw text (`None` if absent or of another type).
fn from_raw<T: serde::de::DeserializeOwned>(raw: Option<&RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn validate(wire: &WireRequest, id: &Option<Id>) -> Result<(), RpcError> {
    if from_raw::<String>(wire.jsonrpc).as_deref() != Some("2.0") {
        return Err(RpcError::invalid_request("\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(id) = id {
        if !matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n') {
            return Err(RpcError::invalid_request(
                "\"id\" must be a string, a number or null",
            ));
        }
    }
    if from_raw::<String>(wire.method).is_none() {
        return Err(RpcError::invalid_request("\"method\" must be a string"));
    }
    if let Some(p) = wire.params {
        if !p.get().starts_with(['{', '[']) {
            return Err(RpcError::invalid_request(
                "\"params\" must be an object or an array",
            ));
        }
    }
    if let Some(t) = non_null(wire.timeout_ms) {
        if !matches!(from_raw::<u64>(Some(t)), Some(ms) if ms > 0) {
            return Err(RpcError::invalid_request(
                "\"timeout_ms\" must be a positive integer",
            ));
        }
    }
    if let Some(k) = non_null(wire.idempotency_key) {
        if !matches!(from_raw::<String>(Some(k)), Some(key) if !key.is_empty() && key.len() <= 256)
        {
            return Err(RpcError::invalid_request(
                "\"idempotency_key\" must be a string of 1 to 256 bytes",
            ));
        }
    }
    if let Some(k) = non_null(wire.session) {
        if !matches!(from_raw::<String>(Some(k)), Some(key) if !key.is_empty() && key.len() <= 256)
        {
            return Err(RpcError::invalid_request(
                "\"session\" must be a session key (a string of 1 to 256 bytes)",
            ));
        }
    }
    Ok(())
}

/// `{"jsonrpc":"2.0","id":…,"result":…}` as one line without the `\n`.
pub fn render_result(id: &RawValue, result: &Value) -> String {
    let mut out = Vec::new();
    write_result(&mut out, id, result);
    String::from_utf8(out).expect("rendered JSON is UTF-8")
}

/// `{"jsonrpc":"2.0","id":…,"error":{…}}` as one line without the `\n`.
pub fn render_error(id: &RawValue, error: &RpcError) -> String {
    let mut out = Vec::new();
    write_error(&mut out, id, error);
    String::from_utf8(out).expect("rendered JSON is UTF-8")
}

/// Appends `{"jsonrpc":"2.0","id":…,"result":…}` to `out` (no `\n`),
/// rendered straight into the buffer.
pub fn write_result(out: &mut Vec<u8>, id: &RawValue, result: &Value) {
    write_head(out, id, b"result");
    serde_json::to_writer(&mut *out, result).expect("a JSON value always renders");
    out.push(b'}');
}

/// Appends a result that is JSON text already (a template rendered once,
/// or the text PostgreSQL sent). A reply is one line, and JSON text from
/// elsewhere may hold line breaks (`json_agg` puts one between elements):
/// they are whitespace between tokens (inside a JSON string a line break
/// is always escaped), so each becomes a space.
pub fn write_raw_result(out: &mut Vec<u8>, id: &RawValue, result: &RawValue) {
    write_head(out, id, b"result");
    let start = out.len();
    out.extend_from_slice(result.get().as_bytes());
    for byte in &mut out[start..] {
        if matches!(*byte, b'\n' | b'\r') {
            *byte = b' ';
        }
    }
    out.push(b'}');
}

/// Appends `{"jsonrpc":"2.0","id":…,"error":{…}}` to `out` (no `\n`),
/// rendered straight into the buffer (no intermediate JSON value).
pub fn write_error(out: &mut Vec<u8>, id: &RawValue, error: &RpcError) {
    write_head(out, id, b"error");
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(itoa::Buffer::new().format(error.code).as_bytes());
    out.extend_from_slice(b",\"message\":");
    serde_json::to_writer(&mut *out, &error.message).expect("a string always renders");
    out.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut *out, &error.data).expect("a JSON map always renders");
    out.extend_from_slice(b"}}");
}

fn write_head(out: &mut Vec<u8>, id: &RawValue, member: &[u8]) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(member);
    out.extend_from_slice(b"\":");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::code;

    #[test]
    fn a_raw_result_with_line_breaks_is_written_on_one_line() {
        let rows = RawValue::from_string("[{\"a\":1}, \n {\"a\":\"x\\ny\"}]\r\n".into()).unwrap();
        let id = RawValue::from_string("7".into()).unwrap();
        let mut out = Vec::new();
        write_raw_result(&mut out, &id, &rows);
        assert!(!out.contains(&b'\n') && !out.contains(&b'\r'));
        let reply: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(reply["result"], json!([{"a": 1}, {"a": "x\ny"}]));
    }

    fn single(text: &str) -> Parsed {
        match parse_line(text.as_bytes()).unwrap() {
            Line::Single(p) => p,
            Line::Batch(_) => panic!("not a single request"),
        }
    }

    #[test]
    fn ids_are_kept_byte_for_byte() {
        for id in [
            "1",
            "\"a\"",
            "null",
            "-0",
            "1.50",
            "1e3",
            "18446744073709551616",
            "\"\\u00e9\"",
        ] {
            let r = single(&format!(r#"{{"jsonrpc":"2.0","method":"m","id":{id}}}"#)).unwrap();
            assert_eq!(r.id.unwrap().get(), id);
        }
    }

    #[test]
    fn notifications_have_no_id() {
        let r = single(r#"{"jsonrpc":"2.0","method":"m"}"#).unwrap();
        assert!(r.id.is_none());
    }

    #[test]
    fn invalid_requests_are_named() {
        let cases = [
            (r#"{"jsonrpc":"1.0","method":"m","id":1}"#, "jsonrpc"),
            (r#"{"jsonrpc":"2.0","method":5,"id":1}"#, "method"),
            (
                r#"{"jsonrpc":"2.0","method":"m","params":3,"id":1}"#,
                "params",
            ),
            (r#"{"jsonrpc":"2.0","method":"m","id":{}}"#, "id"),
            (
                r#"{"jsonrpc":"2.0","method":"m","id":1,"timeout_ms":-5}"#,
                "timeout_ms",
            ),
            (r#"5"#, "object"),
        ];
        for (text, word) in cases {
            let (_, e) = single(text).unwrap_err();
            assert_eq!(e.code, code::INVALID_REQUEST, "{text}");
            assert!(
                e.data["detail"].as_str().unwrap().contains(word),
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn parse_errors_and_empty_batches() {
        assert_eq!(parse_line(b"{nope").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse_line(b"\xff\xfe").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse_line(b"[]").unwrap_err().code, code::INVALID_REQUEST);
        match parse_line(br#"[1, {"jsonrpc":"2.0","method":"m","id":2}]"#).unwrap() {
            Line::Batch(v) => {
                assert!(v[0].is_err());
                assert!(v[1].is_ok());
            }
            Line::Single(_) => panic!("expected a batch"),
        }
    }

    #[test]
    fn replies_render_with_raw_ids() {
        let id = RawValue::from_string("1.50".into()).unwrap();
        assert_eq!(
            render_result(&id, &json!({"a": 1})),
            r#"{"jsonrpc":"2.0","id":1.50,"result":{"a":1}}"#
        );
        let e = render_error(&id, &RpcError::overloaded(5, 10, 10, "i"));
        assert!(e.contains(r#""code":-32001"#) && e.contains(r#""retryable":true"#));
    }
}
