//! From frames to requests: what the router threads share ([`Router`]:
//! the `[server]` limits, the open connections, the counters, the
//! lifecycle, and the dispatch function), and how one frame read on a
//! connection becomes parsed requests, each handed with its
//! [`Responder`] to the dispatch function, or an error reply.

use std::sync::Arc;

use super::collector::ReplyCollector;
use super::connection::{Connection, Handles};
use super::registry::Registry;
use super::responder::Responder;
use crate::config::ServerConfig;
use crate::protocol::framing::Frame;
use crate::protocol::{null_id, parse_line, Line, Parsed, Request, RpcError};
use crate::server::shutdown::Shutdown;
use crate::server::stats::Stats;

/// Where the router hands each request it has read.
pub type Dispatch = dyn Fn(Request, Responder) + Send + Sync;

/// What the router needs: the `[server]` limits, the open connections, the
/// counters, the lifecycle, and where requests go.
pub struct Router {
    /// `[server]` configuration.
    pub config: ServerConfig,
    /// The open connections.
    pub connections: Arc<Registry>,
    /// Counters (errors answered on the router thread).
    pub stats: Arc<Stats>,
    /// Lifecycle state.
    pub shutdown: Arc<Shutdown>,
    /// The method table's routing.
    pub dispatch: Box<Dispatch>,
}

impl Router {
    /// What each connection is given.
    pub fn handles(&self) -> Handles {
        Handles::new(
            self.stats.clone(),
            self.shutdown.clone(),
            self.connections.queued_bytes(),
        )
    }
}

/// Handles one frame read on `conn`: a text is parsed and each request in
/// it dispatched; an oversized one is answered -32009.
pub fn handle_frame(router: &Router, conn: &Arc<Connection>, frame: Frame) {
    match frame {
        Frame::Text(bytes) | Frame::Stray(bytes) => handle_text(router, conn, bytes),
        Frame::TooLarge => Responder::new(conn, None, Some(null_id())).reply(Err(
            RpcError::message_too_large(router.config.max_message_bytes),
        )),
        Frame::Http(event) => super::http::handle(router, conn, event),
    }
}

fn handle_text(router: &Router, conn: &Arc<Connection>, bytes: &[u8]) {
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
    router: &Router,
    conn: &Arc<Connection>,
    batch: Option<&Arc<ReplyCollector>>,
    parsed: Parsed,
) {
    match parsed {
        Ok(mut request) => {
            let responder = Responder::new(conn, batch, request.id.take());
            (router.dispatch)(request, responder);
        }
        Err((id, error)) => {
            Responder::new(conn, batch, Some(id.unwrap_or_else(null_id))).reply(Err(error));
        }
    }
}
