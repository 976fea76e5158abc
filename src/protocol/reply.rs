//! Reading a reply: the one parser of a JSON-RPC 2.0 reply line, shared by
//! the thin client and the load generator of `blitz bench`.
//!
//! [`parse_reply`] checks the envelope (an object with `"jsonrpc": "2.0"`,
//! an id, exactly one of `result` and `error`, an error object with an
//! integer `code` and a string `message`) and keeps `result`, `data` and
//! any id that is not a whole number as raw JSON borrowed from the line:
//! the load generator only counts replies and must not build a value it
//! does not read, the client turns the raw text into a value when it needs
//! one.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The id of a reply.
#[derive(Debug, Clone, Copy)]
pub enum ReplyId<'a> {
    /// `null`: the server could not read the request's id (or refuses the
    /// connection, e.g. -32005); only an error reply may carry it.
    Null,
    /// A whole number, as blitz's client and load generator send them.
    Number(u64),
    /// Any other id (a string, a negative or fractional number), as sent.
    Other(&'a RawValue),
}

/// A JSON-RPC error object as received.
#[derive(Debug, Clone)]
pub struct ErrorObject<'a> {
    /// The error code (see [`super::code`]).
    pub code: i64,
    /// The error message.
    pub message: Cow<'a, str>,
    /// The `data` member, unless it is absent or `null`.
    pub data: Option<&'a RawValue>,
}

/// What a reply says about its request.
#[derive(Debug, Clone)]
pub enum ReplyOutcome<'a> {
    /// The request succeeded; its `result`, raw (`null` included).
    Result(&'a RawValue),
    /// The request failed.
    Error(ErrorObject<'a>),
}

/// One well-formed reply.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    /// Which request it answers.
    pub id: ReplyId<'a>,
    /// Its result or its error.
    pub outcome: ReplyOutcome<'a>,
}

impl Reply<'_> {
    /// The error code, for an error reply.
    pub fn error_code(&self) -> Option<i64> {
        match &self.outcome {
            ReplyOutcome::Error(e) => Some(e.code),
            ReplyOutcome::Result(_) => None,
        }
    }
}

/// Why a line is not a JSON-RPC reply; `Display` says what the line is, to
/// follow "the server sent …".
#[derive(Debug)]
pub enum BadReply {
    /// Not JSON at all.
    NotJson(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
    /// No `"jsonrpc": "2.0"` member.
    NoVersion,
    /// No `id` member.
    NoId,
    /// A `result` with a `null` id.
    NullIdResult,
    /// Neither or both of `result` and `error`.
    NotOneOutcome,
    /// An `error` that is not an object with an integer code and a string message.
    BadError,
}

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadReply::NotJson(e) => write!(f, "a line that is not JSON ({e})"),
            BadReply::NotAnObject => f.write_str("a JSON value that is not a reply object"),
            BadReply::NoVersion => f.write_str("a reply without \"jsonrpc\": \"2.0\""),
            BadReply::NoId => f.write_str("a reply without an id"),
            BadReply::NullIdResult => f.write_str("a result with a null id"),
            BadReply::NotOneOutcome => {
                f.write_str("a reply with neither or both of result and error")
            }
            BadReply::BadError => {
                f.write_str("an error reply without an integer code and a string message")
            }
        }
    }
}

impl std::error::Error for BadReply {}

/// A member that may be absent, and whose `null` is kept as a value
/// (serde's `Option` would fold an explicit `null` into absent).
#[derive(Default)]
enum Member<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
}

impl<'a> Member<'a> {
    fn get(&self) -> Option<&'a RawValue> {
        match self {
            Member::Absent => None,
            Member::Present(raw) => Some(raw),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Member<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(d).map(Member::Present)
    }
}

/// The members of a reply object, each kept raw.
#[derive(Deserialize)]
struct WireReply<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Member<'a>,
    #[serde(default, borrow)]
    result: Member<'a>,
    #[serde(default, borrow)]
    error: Member<'a>,
}

/// An error object's members.
#[derive(Deserialize)]
struct WireError<'a> {
    code: i64,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Member<'a>,
}

/// Parses one reply line (without its `\n`).
pub fn parse_reply(line: &[u8]) -> Result<Reply<'_>, BadReply> {
    let raw: &RawValue = serde_json::from_slice(line).map_err(BadReply::NotJson)?;
    if !raw.get().starts_with('{') {
        return Err(BadReply::NotAnObject);
    }
    let wire: WireReply = serde_json::from_str(raw.get()).map_err(BadReply::NotJson)?;
    if wire.jsonrpc.as_deref() != Some("2.0") {
        return Err(BadReply::NoVersion);
    }
    let id = reply_id(wire.id.get().ok_or(BadReply::NoId)?);
    let outcome = match (wire.result.get(), wire.error.get()) {
        (Some(_), None) if matches!(id, ReplyId::Null) => return Err(BadReply::NullIdResult),
        (Some(result), None) => ReplyOutcome::Result(result),
        (None, Some(error)) => ReplyOutcome::Error(error_object(error)?),
        _ => return Err(BadReply::NotOneOutcome),
    };
    Ok(Reply { id, outcome })
}

fn reply_id(raw: &RawValue) -> ReplyId<'_> {
    match raw.get() {
        "null" => ReplyId::Null,
        text => text
            .parse::<u64>()
            .map_or(ReplyId::Other(raw), ReplyId::Number),
    }
}

fn error_object(raw: &RawValue) -> Result<ErrorObject<'_>, BadReply> {
    let wire: WireError = serde_json::from_str(raw.get()).map_err(|_| BadReply::BadError)?;
    Ok(ErrorObject {
        code: wire.code,
        message: wire.message,
        data: wire.data.get().filter(|d| d.get() != "null"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Reply<'_>, BadReply> {
        parse_reply(line.as_bytes())
    }

    #[test]
    fn results_keep_their_raw_text() {
        let r = parse(r#"{"jsonrpc":"2.0","id":3,"result":{"x": 1}}"#).unwrap();
        assert!(matches!(r.id, ReplyId::Number(3)));
        assert!(matches!(r.outcome, ReplyOutcome::Result(raw) if raw.get() == r#"{"x": 1}"#));
        let null = parse(r#"{"jsonrpc":"2.0","id":4,"result":null}"#).unwrap();
        assert!(matches!(null.outcome, ReplyOutcome::Result(raw) if raw.get() == "null"));
        assert_eq!(null.error_code(), None);
    }

    #[test]
    fn errors_carry_code_message_and_data() {
        let r = parse(
            r#"{"jsonrpc":"2.0","id":5,"error":{"code":-32001,"message":"Server \"overloaded\"","data":{"retryable":true}}}"#,
        )
        .unwrap();
        assert_eq!(r.error_code(), Some(-32001));
        let ReplyOutcome::Error(e) = r.outcome else {
            panic!("an error reply")
        };
        assert_eq!(e.message, "Server \"overloaded\"");
        assert_eq!(e.data.map(RawValue::get), Some(r#"{"retryable":true}"#));
        let bare =
            parse(r#"{"jsonrpc":"2.0","id":5,"error":{"code":1,"message":"m","data":null}}"#)
                .unwrap();
        assert!(matches!(
            bare.outcome,
            ReplyOutcome::Error(ErrorObject { data: None, .. })
        ));
    }

    #[test]
    fn ids_are_null_numbers_or_other() {
        let null = parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"m"}}"#);
        assert!(matches!(null.unwrap().id, ReplyId::Null));
        for other in [r#""a""#, "-1", "1.5"] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{other},"result":1}}"#);
            let r = parse(&line).unwrap();
            assert!(
                matches!(r.id, ReplyId::Other(raw) if raw.get() == other),
                "{line}"
            );
        }
    }

    #[test]
    fn malformed_replies_say_what_is_wrong() {
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "not a reply object"),
            (r#"{"id":3,"result":1}"#, "\"jsonrpc\": \"2.0\""),
            (
                r#"{"jsonrpc":"1.0","id":3,"result":1}"#,
                "\"jsonrpc\": \"2.0\"",
            ),
            (r#"{"jsonrpc":"2.0","result":1}"#, "without an id"),
            (r#"{"jsonrpc":"2.0","id":3}"#, "neither or both"),
            (
                r#"{"jsonrpc":"2.0","id":3,"result":1,"error":{"code":1,"message":"m"}}"#,
                "neither or both",
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"error":{"code":"x","message":"m"}}"#,
                "integer code",
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"error":{"code":1}}"#,
                "string message",
            ),
            (r#"{"jsonrpc":"2.0","id":null,"result":1}"#, "null id"),
        ];
        for (line, what) in cases {
            let e = parse(line).expect_err(line);
            assert!(e.to_string().contains(what), "{line}: {e}");
        }
    }
}
