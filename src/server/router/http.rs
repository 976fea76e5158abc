//! JSON-RPC over HTTP/1.1 on the router's event loops: what is done with
//! each [`Event`] the HTTP framing yields.
//!
//! `POST /` carries one request or a batch as its body; each request goes
//! through the same route (admission, queue, workers) as on TCP, with a
//! [`Responder`] whose replies a [`ReplyCollector`] gathers into the one HTTP
//! response. `Authorization: Bearer <key>` gives each request of the body
//! that has no `"session"` member of its own that session. The next
//! request on the connection is read once this response is queued, so
//! responses go out in request order.
//!
//! What is not a `POST /` with a `Content-Length` is answered with its own
//! status and a -32600 (-32009 for a body over `max_message_bytes`) body:
//! 405 (other methods, `Allow: POST`) and 404 (other paths) keep the
//! connection; the framing's rejections say whether they close it.

use std::sync::Arc;

use super::collector::ReplyCollector;
use super::connection::Connection;
use super::handles::RouterHandles;
use super::responder::Responder;
use crate::protocol::http::{Event, HttpRequest, Rejection, Response, CONTINUE};
use crate::protocol::{null_id, parse_line, render_error, Line, RpcError};
use crate::server::metrics::MethodKind;

/// Handles one event of an HTTP connection (event-loop thread).
pub fn handle(router: &RouterHandles, conn: &Arc<Connection>, event: Event) {
    match event {
        Event::Continue => conn.deliver(CONTINUE),
        Event::Reject(rejection) => reject(router, conn, &rejection, None),
        Event::Request(request) => serve(router, conn, request),
    }
}

fn serve(router: &RouterHandles, conn: &Arc<Connection>, request: HttpRequest) {
    let keep = request.keep_alive;
    if request.method != "POST" {
        let detail = format!(
            "method {} not allowed: POST / with a JSON-RPC request",
            request.method
        );
        return reject(
            router,
            conn,
            &Rejection {
                status: 405,
                detail,
                close: !keep,
            },
            Some(("Allow", "POST")),
        );
    }
    if request.path() != "/" {
        let detail = format!(
            "no such path {}: POST / with a JSON-RPC request",
            request.path()
        );
        return reject(
            router,
            conn,
            &Rejection {
                status: 404,
                detail,
                close: !keep,
            },
            None,
        );
    }
    if request.content_length.is_none() {
        let detail = "a POST needs a Content-Length".to_string();
        return reject(
            router,
            conn,
            &Rejection {
                status: 411,
                detail,
                close: true,
            },
            None,
        );
    }
    match parse_line(&request.body) {
        Err(error) => {
            let exchange = ReplyCollector::for_http(conn, 1, false, keep);
            Responder::collected(&exchange, Some(null_id())).reply(Err(error));
        }
        Ok(Line::Single(parsed)) => {
            let exchange = ReplyCollector::for_http(conn, 1, false, keep);
            dispatch(router, &exchange, parsed, request.bearer.as_deref());
        }
        Ok(Line::Batch(items)) => {
            let exchange = ReplyCollector::for_http(conn, items.len(), true, keep);
            for parsed in items {
                dispatch(router, &exchange, parsed, request.bearer.as_deref());
            }
        }
    }
}

fn dispatch(
    router: &RouterHandles,
    exchange: &Arc<ReplyCollector>,
    parsed: crate::protocol::Parsed,
    bearer: Option<&str>,
) {
    match parsed {
        Ok(mut request) => {
            if request.session.is_none() {
                request.session = bearer.map(str::to_string);
            }
            let responder = Responder::collected(exchange, request.id.take());
            (router.route)(request, responder);
        }
        Err((id, error)) => {
            Responder::collected(exchange, Some(id.unwrap_or_else(null_id))).reply(Err(error))
        }
    }
}

/// Answers a request that is not served with its status and a JSON-RPC
/// error body (counted like any error reply).
fn reject(
    router: &RouterHandles,
    conn: &Arc<Connection>,
    r: &Rejection,
    header: Option<(&'static str, &str)>,
) {
    let error: RpcError = r.rpc_error(router.config.max_message_bytes as usize);
    router
        .stats
        .count_reply(MethodKind::Other, Some(error.code));
    let body = render_error(&null_id(), &error);
    let mut response = Response::new(r.status, "application/json", body).keep_alive(!r.close);
    if let Some((name, value)) = header {
        response = response.header(name, value);
    }
    conn.begin_exchange();
    conn.deliver_response(&response.to_bytes(), r.close);
}
