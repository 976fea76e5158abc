//! The wire format shared by the server, the client and the load generator:
//! JSON-RPC 2.0 messages ([`message`]), the contract's error codes
//! ([`error`]), the framing of a connection's byte stream ([`framing`]),
//! and the one parser of reply lines ([`reply`]), used by the thin client
//! and `blitz bench`.

mod error;
mod framing;
mod message;
mod reply;

pub use error::{code, RpcError};
pub use framing::{Frame, LineReader};
pub use message::{null_id, parse_line, render_error, render_result, Id, Line, Parsed, Request};
pub use reply::{parse_reply, BadReply, ErrorObject, Reply, ReplyId, ReplyOutcome};
