//! The wire format shared by the server, the client and the load generator:
//! JSON-RPC 2.0 messages (`message`), the contract's error codes
//! ([`code`], [`RpcError`]), the framing of a connection's byte stream
//! (`framing`), and HTTP/1.1 framing, sans-IO ([`http`]).

mod error;
mod framing;
pub mod http;
mod message;

pub use error::{code, RpcError, SHUTDOWN_RETRY_AFTER_MS};
pub use framing::{Frame, LineReader};
pub use message::{null_id, parse_line, render_error, render_result, Id, Line, Parsed, Request};
