//! [`ReplyCollector`]: the replies to requests read together, gathered
//! into the one message that answers them all.
//!
//! Two kinds of message are collected the same way: a JSON-RPC batch over
//! TCP (one line holding the array of its replies, none at all when every
//! element was a notification), and the body of one HTTP request (one
//! request or a batch) answered by one HTTP response, whose status the
//! wire contract derives from the replies (see [`http::rpc_status`]).
//! Replies arrive in any order from any thread; the one that completes the
//! set sends the message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::connection::Connection;
use crate::protocol::http;
use crate::protocol::RpcError;

/// How the collected replies are sent.
#[derive(Clone, Copy)]
enum Envelope {
    /// As one line on the stream.
    Line,
    /// As one HTTP response; without `keep_alive` the connection closes
    /// once it is written.
    Http { keep_alive: bool },
}

/// The replies gathered so far.
#[derive(Default)]
struct Collected {
    /// `[r1,r2` (an array) or the one reply.
    body: Vec<u8>,
    /// Replies gathered (notifications have none).
    count: usize,
    /// The error of a single request, for its HTTP status.
    error: Option<RpcError>,
}

/// Gathers the replies to `len` requests read together and sends them as
/// one message (see the module doc).
pub struct ReplyCollector {
    conn: Arc<Connection>,
    /// The requests came as an array: so do the replies.
    array: bool,
    envelope: Envelope,
    remaining: AtomicUsize,
    collected: Mutex<Collected>,
}

impl ReplyCollector {
    /// For a JSON-RPC batch of `len` elements read on stream `conn`.
    pub fn for_batch(conn: &Arc<Connection>, len: usize) -> Arc<ReplyCollector> {
        ReplyCollector::new(conn, len, true, Envelope::Line)
    }

    /// For the `len` requests of one HTTP request on `conn` (`batch`: its
    /// body was an array); the connection reads no further request until
    /// the response is queued.
    pub fn for_http(
        conn: &Arc<Connection>,
        len: usize,
        batch: bool,
        keep_alive: bool,
    ) -> Arc<ReplyCollector> {
        conn.begin_exchange();
        ReplyCollector::new(conn, len, batch, Envelope::Http { keep_alive })
    }

    fn new(
        conn: &Arc<Connection>,
        len: usize,
        array: bool,
        envelope: Envelope,
    ) -> Arc<ReplyCollector> {
        Arc::new(ReplyCollector {
            conn: conn.clone(),
            array,
            envelope,
            remaining: AtomicUsize::new(len),
            collected: Mutex::new(Collected::default()),
        })
    }

    /// The connection the requests came from.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Adds one request's reply (`None` for a notification; `error` when
    /// the reply is one); the last of them sends the message.
    pub(super) fn add(&self, reply: Option<&[u8]>, error: Option<&RpcError>) {
        if let Some(reply) = reply {
            let mut collected = self.collected.lock();
            if self.array {
                let separator = if collected.count == 0 { b'[' } else { b',' };
                collected.body.push(separator);
            } else {
                collected.error = error.cloned();
            }
            collected.body.extend_from_slice(reply);
            collected.count += 1;
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let collected = std::mem::take(&mut *self.collected.lock());
            self.send(collected);
        }
    }

    fn send(&self, collected: Collected) {
        let mut body = collected.body;
        if self.array && collected.count > 0 {
            body.push(b']');
        }
        match self.envelope {
            Envelope::Line if collected.count == 0 => {}
            Envelope::Line => {
                body.push(b'\n');
                self.conn.deliver(&body);
            }
            Envelope::Http { keep_alive } => {
                let status = match self.array {
                    true => http::rpc_status(None),
                    false => http::rpc_status(collected.error.as_ref()),
                };
                let body =
                    (collected.count > 0).then(|| String::from_utf8_lossy(&body).into_owned());
                let response = http::rpc_response(status, body, keep_alive);
                self.conn
                    .deliver_response(&response.to_bytes(), !keep_alive);
            }
        }
    }
}
