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
///
/// A line that opens an object, as nearly every line does, is read in one
/// pass into its members; only when that fails on something other than the
/// JSON syntax is the line checked again, to tell a request of the wrong
/// shape (-32600) from text that is not JSON at all (-32700).
pub fn parse_line(bytes: &[u8]) -> Result<Line, RpcError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RpcError::parse_error(format!("the line is not valid UTF-8: {e}")))?;
    match text.trim_start_matches(JSON_WHITESPACE).as_bytes().first() {
        Some(b'{') => parse_object(text).map(Line::Single),
        Some(b'[') => {
            let elements: Vec<&RawValue> =
                serde_json::from_str(text).map_err(RpcError::parse_error)?;
            if elements.is_empty() {
                return Err(RpcError::invalid_request("empty batch"));
            }
            Ok(Line::Batch(
                elements.into_iter().map(parse_request).collect(),
            ))
        }
        _ => {
            let raw: &RawValue = serde_json::from_str(text).map_err(RpcError::parse_error)?;
            Ok(Line::Single(parse_request(raw)))
        }
    }
}

/// The whitespace JSON allows between tokens.
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// A whole line that opens an object: its members read in one pass.
fn parse_object(text: &str) -> Result<Parsed, RpcError> {
    match serde_json::from_str::<WireRequest>(text) {
        Ok(wire) => Ok(read_request(wire)),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            // A duplicated member, say; but only a reply about the request's
            // shape if the whole line is JSON (the error came before its end).
            serde_json::from_str::<&RawValue>(text).map_err(RpcError::parse_error)?;
            Ok(Err((None, RpcError::invalid_request(e.to_string()))))
        }
        Err(e) => Err(RpcError::parse_error(e)),
    }
}

/// One element of a batch (JSON already checked) as a request.
fn parse_request(raw: &RawValue) -> Parsed {
    if !raw.get().starts_with('{') {
        return Err((
            None,
            RpcError::invalid_request("a request must be a JSON object"),
        ));
    }
    let wire: WireRequest = serde_json::from_str(raw.get())
        .map_err(|e| (None, RpcError::invalid_request(e.to_string())))?;
    read_request(wire)
}

/// The request the members describe, each read once, or the error naming
/// the first member that is wrong (with the id, when it could be read).
fn read_request(wire: WireRequest) -> Parsed {
    let id = match wire.id {
        WireId::Absent => None,
        WireId::Present(r) => Some(r.to_owned()),
    };
    match read_members(&wire, id.as_deref()) {
        Ok(members) => Ok(Request {
            id,
            method: members.method,
            raw_params: wire.params.map(RawValue::to_owned),
            timeout_ms: members.timeout_ms,
            idempotency_key: members.idempotency_key,
            session: members.session,
        }),
        Err(e) => Err((Some(id.unwrap_or_else(null_id)), e)),
    }
}

/// The members of a request besides its id and params, read and checked.
struct Members {
    method: String,
    timeout_ms: Option<u64>,
    idempotency_key: Option<String>,
    session: Option<String>,
}

/// A member that is present and not `null`.
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// A scalar member read from its raw text (`None` if absent or of another type).
fn from_raw<T: serde::de::DeserializeOwned>(raw: Option<&RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// A string member's value: a string without escapes is its text between
/// the quotes (JSON allows no raw control character in a string); one with
/// escapes is decoded. `None` if absent or not a string.
fn string_of(raw: Option<&RawValue>) -> Option<String> {
    let text = raw?.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(inner.to_owned()),
        _ => from_raw(raw),
    }
}

/// A key member (`idempotency_key`, `session`): a string of 1 to 256 bytes,
/// or absent; `Err(())` when present but not such a string.
fn key_of(raw: Option<&RawValue>) -> Result<Option<String>, ()> {
    match non_null(raw) {
        None => Ok(None),
        Some(r) => match string_of(Some(r)) {
            Some(key) if !key.is_empty() && key.len() <= 256 => Ok(Some(key)),
            _ => Err(()),
        },
    }
}

fn read_members(wire: &WireRequest, id: Option<&RawValue>) -> Result<Members, RpcError> {
    let version_ok = match wire.jsonrpc {
        Some(r) if r.get() == "\"2.0\"" => true,
        other => string_of(other).as_deref() == Some("2.0"),
    };
    if !version_ok {
        return Err(RpcError::invalid_request("\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(id) = id {
        if !matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n') {
            return Err(RpcError::invalid_request(
                "\"id\" must be a string, a number or null",
            ));
        }
    }
    let method = string_of(wire.method)
        .ok_or_else(|| RpcError::invalid_request("\"method\" must be a string"))?;
    if let Some(p) = wire.params {
        if !p.get().starts_with(['{', '[']) {
            return Err(RpcError::invalid_request(
                "\"params\" must be an object or an array",
            ));
        }
    }
    let timeout_ms = match non_null(wire.timeout_ms) {
        None => None,
        Some(t) => match from_raw::<u64>(Some(t)) {
            Some(ms) if ms > 0 => Some(ms),
            _ => {
                return Err(RpcError::invalid_request(
                    "\"timeout_ms\" must be a positive integer",
                ))
            }
        },
    };
    let idempotency_key = key_of(wire.idempotency_key).map_err(|()| {
        RpcError::invalid_request("\"idempotency_key\" must be a string of 1 to 256 bytes")
    })?;
    let session = key_of(wire.session).map_err(|()| {
        RpcError::invalid_request("\"session\" must be a session key (a string of 1 to 256 bytes)")
    })?;
    Ok(Members {
        method,
        timeout_ms,
        idempotency_key,
        session,
    })
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
    fn a_malformed_line_is_a_parse_error_even_after_a_wrong_member() {
        // A duplicated member stops the one-pass read before the line's end:
        // what follows decides between -32700 and -32600.
        let broken = r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m" nope"#;
        assert_eq!(
            parse_line(broken.as_bytes()).unwrap_err().code,
            code::PARSE_ERROR
        );
        let duplicated = r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#;
        let (id, e) = single(duplicated).unwrap_err();
        assert!(id.is_none());
        assert_eq!(e.code, code::INVALID_REQUEST);
        assert!(
            e.data["detail"].as_str().unwrap().contains("duplicate"),
            "{e:?}"
        );
        for text in [r#"{"jsonrpc":"2.0","method":"m"} x"#, "{", " \t{\"a\":"] {
            assert_eq!(
                parse_line(text.as_bytes()).unwrap_err().code,
                code::PARSE_ERROR,
                "{text}"
            );
        }
    }

    #[test]
    fn members_are_read_with_and_without_escapes() {
        let r = single(
            " \r\n\t{\"jsonrpc\":\"2\\u002e0\",\"method\":\"api.\\u0074ransfer\",\"id\":3,\
             \"idempotency_key\":\"k\\\"1\",\"session\":\"s\",\"timeout_ms\":250,\"params\":{\"a\":[1]}}",
        )
        .unwrap();
        assert_eq!(r.method, "api.transfer");
        assert_eq!(r.idempotency_key.as_deref(), Some("k\"1"));
        assert_eq!(r.session.as_deref(), Some("s"));
        assert_eq!(r.timeout_ms, Some(250));
        assert_eq!(r.raw_params.unwrap().get(), r#"{"a":[1]}"#);
        let r = single(r#"{"jsonrpc":"2.0","method":"m","id":1,"session":null,"timeout_ms":null}"#)
            .unwrap();
        assert!(r.session.is_none() && r.timeout_ms.is_none() && r.idempotency_key.is_none());
        for (text, word) in [
            (
                r#"{"jsonrpc":"2.0","method":"m","id":1,"session":""}"#,
                "session",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"m","id":1,"idempotency_key":7}"#,
                "idempotency_key",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"m","id":1,"timeout_ms":0}"#,
                "timeout_ms",
            ),
        ] {
            let (id, e) = single(text).unwrap_err();
            assert_eq!(id.unwrap().get(), "1", "{text}");
            assert!(
                e.data["detail"].as_str().unwrap().contains(word),
                "{text}: {e:?}"
            );
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
