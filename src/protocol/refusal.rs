//! The -32001 reply rendered from a template: [`OverloadTemplate`] holds
//! the constant text of a "Server overloaded" error of one server (its
//! instance name and queue capacity included), rendered once; a refusal
//! splices in only the request's id and the live numbers ([`Overload`]).
//!
//! The bytes are those [`write_error`](super::write_error) writes for
//! [`RpcError::overloaded`] with its `reason`: the same members in the same
//! order (a `data` map's keys sorted), so a client cannot tell the two
//! apart. Rendering appends to the caller's buffer and allocates nothing
//! itself.

use serde_json::value::RawValue;

use super::error::RpcError;

/// Why admission refused a request with -32001 (the `reason` member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverloadReason {
    /// The connection had its in-flight limit of requests queued or running.
    InFlightLimit,
    /// The request's deadline was shorter than the expected queue wait.
    Deadline,
    /// The queue stood over its wait target and this request would too.
    QueueWait,
    /// The queue was full.
    QueueFull,
}

impl OverloadReason {
    /// Every reason, in the order the template keeps their texts.
    const ALL: [OverloadReason; 4] = [
        OverloadReason::InFlightLimit,
        OverloadReason::Deadline,
        OverloadReason::QueueWait,
        OverloadReason::QueueFull,
    ];

    /// The `reason` member's text.
    pub fn text(self) -> &'static str {
        match self {
            OverloadReason::InFlightLimit => "in-flight limit of this connection",
            OverloadReason::Deadline => "deadline shorter than the queue wait",
            OverloadReason::QueueWait => "queue wait over the target",
            OverloadReason::QueueFull => "queue full",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The live part of one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overload {
    /// Why it was refused.
    pub reason: OverloadReason,
    /// The suggested wait before a retry (at least 1 is sent).
    pub retry_after_ms: u64,
    /// Jobs in the queue when it was refused.
    pub queue_depth: usize,
}

/// The constant text of one server's -32001 replies, rendered once.
#[derive(Debug, Clone)]
pub struct OverloadTemplate {
    instance: String,
    capacity: usize,
    /// From after the id up to the value of `queue_depth`.
    after_id: Box<[u8]>,
    /// Per reason: from after `queue_depth` up to the value of `retry_after_ms`.
    after_depth: [Box<[u8]>; OverloadReason::ALL.len()],
}

/// The start of every reply, up to the id.
const HEAD: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":";

/// The end of a -32001 reply, after `retry_after_ms`.
const TAIL: &[u8] = b",\"retryable\":true}}}";

impl OverloadTemplate {
    /// The template of a server named `instance` with a queue of `capacity`.
    pub fn new(capacity: usize, instance: &str) -> OverloadTemplate {
        let instance_json = serde_json::to_string(instance).expect("a string always renders");
        let after_id = format!(
            ",\"error\":{{\"code\":-32001,\"message\":\"Server overloaded\",\"data\":\
             {{\"instance\":{instance_json},\"queue_capacity\":{capacity},\"queue_depth\":"
        );
        let after_depth = OverloadReason::ALL.map(|reason| {
            format!(",\"reason\":\"{}\",\"retry_after_ms\":", reason.text())
                .into_bytes()
                .into_boxed_slice()
        });
        OverloadTemplate {
            instance: instance.to_string(),
            capacity,
            after_id: after_id.into_bytes().into_boxed_slice(),
            after_depth,
        }
    }

    /// Appends the reply to request `id` refused for `overload` to `out`
    /// (no `\n`). Allocates nothing when `out` has room.
    pub fn write(&self, out: &mut Vec<u8>, id: &RawValue, overload: &Overload) {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(HEAD);
        out.extend_from_slice(id.get().as_bytes());
        out.extend_from_slice(&self.after_id);
        out.extend_from_slice(number.format(overload.queue_depth).as_bytes());
        out.extend_from_slice(&self.after_depth[overload.reason.index()]);
        out.extend_from_slice(number.format(overload.retry_after_ms.max(1)).as_bytes());
        out.extend_from_slice(TAIL);
    }

    /// The same refusal as an [`RpcError`] (for a reply gathered with
    /// others, whose collector needs the error itself).
    pub fn to_error(&self, overload: &Overload) -> RpcError {
        RpcError::overloaded(
            overload.retry_after_ms,
            overload.queue_depth,
            self.capacity,
            &self.instance,
        )
        .with("reason", overload.reason.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::write_error;

    fn id(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.into()).unwrap()
    }

    #[test]
    fn the_template_writes_the_bytes_of_the_error_it_stands_for() {
        let template = OverloadTemplate::new(1000, "db-1 \"east\"\n");
        for reason in OverloadReason::ALL {
            for (retry_after_ms, queue_depth) in [(0, 0), (1, 7), (60_000, 123_456_789)] {
                let overload = Overload {
                    reason,
                    retry_after_ms,
                    queue_depth,
                };
                for id in [id("7"), id("\"a\\u00e9\""), id("null"), id("-1.5e3")] {
                    let mut from_template = Vec::new();
                    template.write(&mut from_template, &id, &overload);
                    let mut from_error = Vec::new();
                    write_error(&mut from_error, &id, &template.to_error(&overload));
                    assert_eq!(
                        String::from_utf8(from_template).unwrap(),
                        String::from_utf8(from_error).unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn writing_into_a_buffer_with_room_does_not_grow_it() {
        let template = OverloadTemplate::new(4, "x");
        let overload = Overload {
            reason: OverloadReason::QueueFull,
            retry_after_ms: u64::MAX,
            queue_depth: usize::MAX,
        };
        let mut out = Vec::with_capacity(4096);
        let (at, capacity) = (out.as_ptr(), out.capacity());
        template.write(&mut out, &id("12345678901234567890"), &overload);
        assert_eq!((out.as_ptr(), out.capacity()), (at, capacity));
        let reply: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(reply["error"]["data"]["retry_after_ms"], u64::MAX);
    }
}
