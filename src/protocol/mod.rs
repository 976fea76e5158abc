//! The wire format shared by the server, the client and the load generator:
//! JSON-RPC 2.0 messages (`message`), the contract's error codes
//! ([`code`], [`RpcError`]) and the framing of a connection's byte stream ([`framing`]).

mod error;
pub mod framing;
mod message;

pub use error::{code, RpcError, SHUTDOWN_RETRY_AFTER_MS};
pub use message::{
    null_id, parse_line, render_error, render_result, write_error, write_raw_result, write_result,
    Id, Line, Parsed, Request,
};
