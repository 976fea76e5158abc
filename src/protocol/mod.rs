//! The wire format shared by the server, the client and the load generator:
//! JSON-RPC 2.0 request messages ([`parse_line`], [`Request`],
//! [`render_result`], [`render_error`], and their `write_*` forms that
//! render straight into a buffer), the contract's error codes ([`code`],
//! [`RpcError`]), the -32001 reply rendered from a template
//! ([`OverloadTemplate`]), the framing of a connection's byte stream
//! ([`framing`]), the one parser of reply lines ([`parse_reply`]), used by
//! the thin client and `blitz bench`, and HTTP/1.1 framing, sans-IO
//! ([`http`]).

mod error;
pub mod framing;
pub mod http;
mod message;
mod refusal;
mod reply;

pub use error::{code, RpcError, SHUTDOWN_RETRY_AFTER_MS};
pub use message::{
    null_id, parse_line, render_error, render_result, write_error, write_raw_result, write_result,
    Id, Line, Parsed, Request,
};
pub use refusal::{Overload, OverloadReason, OverloadTemplate};
pub use reply::{parse_reply, BadReply, ErrorObject, Reply, ReplyId, ReplyOutcome};
