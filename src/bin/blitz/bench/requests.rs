//! What goes on the wire and what comes back: a call rendered from a
//! [`RequestTemplate`] (the fixed parts rendered once, the params drawn per
//! call), and a reply line classified by the protocol's reply parser.

use std::io::Write;

use blitz::protocol::{self, ReplyId};
use serde_json::Value;

use super::options::{BenchError, Options, Params};

/// The parts of a request line that do not change, rendered once.
#[derive(Debug, Clone)]
pub(super) struct RequestTemplate {
    /// `{"jsonrpc":"2.0","method":"…",` … up to the params.
    head: String,
    /// What the params are.
    params: Params,
    /// `Params::Fixed` rendered once.
    fixed: String,
    /// `,"timeout_ms":T` or nothing.
    tail: String,
    /// With `--idempotency-keys`: this run's key prefix (keys differ between runs).
    key_prefix: Option<String>,
}

impl RequestTemplate {
    /// The template of the calls `opts` describes; a usage error for
    /// params that are not an object or an array.
    pub(super) fn new(opts: &Options) -> Result<RequestTemplate, BenchError> {
        let method = serde_json::to_string(&opts.method).expect("a string serializes");
        let fixed = match &opts.params {
            Params::Fixed(v @ (Value::Object(_) | Value::Array(_))) => v.to_string(),
            Params::Fixed(_) => {
                return Err(BenchError::Usage(
                    "--params must be a JSON object or array".into(),
                ))
            }
            Params::Transfer { .. } => String::new(),
        };
        Ok(RequestTemplate {
            head: format!(r#"{{"jsonrpc":"2.0","method":{method},"params":"#),
            params: opts.params.clone(),
            fixed,
            tail: opts
                .timeout_ms
                .map_or(String::new(), |t| format!(r#","timeout_ms":{t}"#)),
            key_prefix: opts.idempotency_keys.then(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                format!("{:x}", nanos ^ u64::from(std::process::id()) << 40)
            }),
        })
    }

    /// Appends request `id` as one line to `out`.
    pub(super) fn render(&self, id: u64, rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        match self.params {
            Params::Transfer { scale } => {
                let s = i64::from(scale);
                let aid = rng.i64(1..=100_000 * s);
                let tid = rng.i64(1..=10 * s);
                let bid = rng.i64(1..=s);
                let delta = rng.i64(-5000..=5000);
                let _ = write!(
                    out,
                    r#"{{"aid":{aid},"tid":{tid},"bid":{bid},"delta":{delta}}}"#
                );
            }
            Params::Fixed(_) => out.extend_from_slice(self.fixed.as_bytes()),
        }
        if let Some(prefix) = &self.key_prefix {
            let _ = write!(out, r#","idempotency_key":"{prefix}-{:x}""#, rng.u64(..));
        }
        let _ = write!(out, r#","id":{id}{}}}"#, self.tail);
        out.push(b'\n');
    }
}

/// What one reply line says.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// A result for request `id`.
    Ok(u64),
    /// An error with this code for request `id`.
    Error(u64, i64),
    /// An error the server could not tie to a request (null id), e.g. -32005.
    Unaddressed(i64),
    /// Not a JSON-RPC reply.
    Garbage,
}

/// Classifies one reply line with the protocol's reply parser (which
/// keeps `result` raw: the bench counts replies, it does not read them).
pub(super) fn parse_reply(line: &[u8]) -> Outcome {
    let Ok(reply) = protocol::parse_reply(line) else {
        return Outcome::Garbage;
    };
    match (reply.id, reply.error_code()) {
        (ReplyId::Number(id), None) => Outcome::Ok(id),
        (ReplyId::Number(id), Some(code)) => Outcome::Error(id, code),
        (ReplyId::Null, Some(code)) => Outcome::Unaddressed(code),
        _ => Outcome::Garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_requests_draw_pgbench_ranges() {
        let opts = Options::example("127.0.0.1:1");
        let t = RequestTemplate::new(&opts).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for id in 1..2000 {
            let mut out = Vec::new();
            t.render(id, &mut rng, &mut out);
            assert_eq!(out.pop(), Some(b'\n'));
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["jsonrpc"], "2.0");
            assert_eq!(v["id"], id);
            assert_eq!(v["method"], "api.transfer");
            assert_eq!(v["timeout_ms"], 1000);
            let p = &v["params"];
            let get = |k: &str| p[k].as_i64().unwrap();
            assert!((1..=1_000_000).contains(&get("aid")), "{p}");
            assert!((1..=100).contains(&get("tid")), "{p}");
            assert!((1..=10).contains(&get("bid")), "{p}");
            assert!((-5000..=5000).contains(&get("delta")), "{p}");
        }
    }

    #[test]
    fn fixed_params_are_sent_as_given() {
        let mut opts = Options::example("127.0.0.1:1");
        opts.method = "sys.ping".into();
        opts.params = Params::Fixed(serde_json::json!({}));
        opts.timeout_ms = None;
        let t = RequestTemplate::new(&opts).unwrap();
        let mut out = Vec::new();
        t.render(3, &mut fastrand::Rng::with_seed(1), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"method\":\"sys.ping\",\"params\":{},\"id\":3}\n"
        );
        opts.params = Params::Fixed(Value::from(5));
        assert!(RequestTemplate::new(&opts).is_err());
    }

    #[test]
    fn replies_are_classified() {
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","id":4,"result":null}"#),
            Outcome::Ok(4)
        );
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","id":5,"error":{"code":-32001,"message":"x"}}"#),
            Outcome::Error(5, -32001)
        );
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"x"}}"#),
            Outcome::Unaddressed(-32005)
        );
        assert_eq!(parse_reply(b"nope"), Outcome::Garbage);
        assert_eq!(parse_reply(br#"{"id":1}"#), Outcome::Garbage);
    }
}
