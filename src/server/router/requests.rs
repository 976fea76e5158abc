//! From frames to requests: how one frame read on a connection becomes
//! parsed requests, each handed with its [`Responder`] to the router's
//! [`RouteFn`](super::handles::RouteFn), or an error reply; an HTTP event
//! goes to [`http`](super::http).

use std::sync::Arc;

use super::collector::ReplyCollector;
use super::connection::Connection;
use super::handles::RouterHandles;
use super::responder::Responder;
use crate::protocol::framing::Frame;
use crate::protocol::{null_id, parse_line, Line, Parsed, RpcError};

/// Handles one frame read on `conn`: a text is parsed and each request in
/// it dispatched; an oversized one is answered -32009.
pub fn handle_frame(router: &RouterHandles, conn: &Arc<Connection>, frame: Frame) {
    match frame {
        Frame::Text(bytes) | Frame::Stray(bytes) => handle_text(router, conn, bytes),
        Frame::TooLarge => Responder::new(conn, None, Some(null_id())).reply(Err(
            RpcError::message_too_large(router.config.max_message_bytes),
        )),
        Frame::Http(event) => super::http::handle(router, conn, event),
    }
}

fn handle_text(router: &RouterHandles, conn: &Arc<Connection>, bytes: &[u8]) {
    match parse_line(bytes) {
        Err(e) => Responder::new(conn, None, Some(null_id())).reply(Err(e)),
        Ok(Line::Single(parsed)) => handle_parsed(router, conn, None, parsed),
        Ok(Line::Batch(items)) => {
            let batch = ReplyCollector::for_batch(conn, items.len());
            for parsed in items {
                handle_parsed(router, conn, Some(&batch), parsed);
            }
        }
    }
}

fn handle_parsed(
    router: &RouterHandles,
    conn: &Arc<Connection>,
    batch: Option<&Arc<ReplyCollector>>,
    parsed: Parsed,
) {
    match parsed {
        Ok(mut request) => {
            let responder = Responder::new(conn, batch, request.id.take());
            (router.route)(request, responder);
        }
        Err((id, error)) => {
            Responder::new(conn, batch, Some(id.unwrap_or_else(null_id))).reply(Err(error));
        }
    }
}
