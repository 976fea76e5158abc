//! The outcome of a run ([`Report`]) and its two renderings: the text
//! report and the JSON object `--json` prints (both parsed by
//! `bench/run.sh` and `bench/report.py`, so their shape is a contract).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles of one class of replies, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Replies in this class.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of histogram `h` (µs) in milliseconds.
    pub(super) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time of a process (tree) during the measured phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// The pid measured.
    pub pid: u32,
    /// `utime + stime` spent during the measured phase, seconds.
    pub seconds: f64,
    /// Microseconds per reply (server) or per success (PostgreSQL).
    pub us_per_call: f64,
}

/// The outcome of a run (`--json` prints it as it is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `"closed"` or `"open"`.
    pub mode: String,
    /// The method called.
    pub method: String,
    /// Connections asked for.
    pub connections: usize,
    /// Event-loop threads used.
    pub threads: usize,
    /// Open loop: the target rate, calls/s.
    pub target_rate: Option<f64>,
    /// The deadline sent with each call, ms.
    pub timeout_ms: Option<u64>,
    /// Whether each connection logged in first.
    pub user: Option<String>,
    /// From the start of the run (connects included) to the last reply, s.
    pub wall_s: f64,
    /// Time to open (and log in) every connection, s.
    pub connect_s: f64,
    /// The measured phase: all connections ready → last reply, s.
    pub elapsed_s: f64,
    /// Calls sent.
    pub sent: u64,
    /// Replies received.
    pub replies: u64,
    /// Successful replies.
    pub ok: u64,
    /// Successful replies within the deadline (all of them without one).
    pub ok_in_deadline: u64,
    /// Error replies (any code).
    pub rejected: u64,
    /// Error replies by code (as text, e.g. `"-32001"`).
    pub errors_by_code: BTreeMap<String, u64>,
    /// The first error reply of each code, as received (cut at 300 bytes).
    pub error_samples: BTreeMap<String, String>,
    /// Connections that could not be made or broke (must be 0).
    pub connection_errors: u64,
    /// What happened to the first connection that broke, if one did.
    pub first_connection_error: Option<String>,
    /// Calls sent that never got a reply (lost with a broken connection or
    /// still outstanding at the end of the drain).
    pub lost: u64,
    /// Replies per second.
    pub throughput: f64,
    /// Successes per second.
    pub ok_per_s: f64,
    /// Successes within the deadline per second.
    pub goodput: f64,
    /// Open loop: calls actually sent per second while sending.
    pub offered_rate: Option<f64>,
    /// Latency of successes, from the (intended) send time.
    pub latency_ok: Latency,
    /// Latency of error replies, from the (intended) send time.
    pub latency_rejected: Latency,
    /// Open loop: how late calls left against their schedule.
    pub send_lag: Option<Latency>,
    /// The server's CPU time per reply.
    pub server_cpu: Option<Cpu>,
    /// PostgreSQL's CPU time per success.
    pub postgres_cpu: Option<Cpu>,
    /// This process's CPU time during the run, s.
    pub client_cpu_s: f64,
}

impl Report {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let stop = match self.target_rate {
            Some(r) => format!("open loop at {r:.0} calls/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            s,
            "blitz bench: {} × {} connections ({} threads), {stop}{}{}",
            self.method,
            self.connections,
            self.threads,
            self.timeout_ms
                .map_or(String::new(), |t| format!(", timeout_ms {t}")),
            self.user
                .as_ref()
                .map_or(String::new(), |u| format!(", user {u}")),
        );
        let _ = writeln!(
            s,
            "  wall {:.3} s (connect {:.3} s), measured {:.3} s",
            self.wall_s, self.connect_s, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "  calls {} sent, {} replies: {} ok ({} within deadline), {} rejected; connection errors {}, lost {}",
            self.sent, self.replies, self.ok, self.ok_in_deadline, self.rejected,
            self.connection_errors, self.lost
        );
        if let Some(first) = &self.first_connection_error {
            let _ = writeln!(s, "  first connection error: {first}");
        }
        let _ = write!(
            s,
            "  throughput {:.1}/s, ok {:.1}/s, goodput {:.1}/s",
            self.throughput, self.ok_per_s, self.goodput
        );
        if let Some(r) = self.offered_rate {
            let _ = write!(s, ", offered {r:.1}/s");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "  latency ms {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, l: &Latency| {
            let _ = writeln!(
                s,
                "  {name:<10} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        };
        row("ok", &self.latency_ok);
        row("rejected", &self.latency_rejected);
        if let Some(lag) = &self.send_lag {
            row("send lag", lag);
        }
        if !self.errors_by_code.is_empty() {
            let codes: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let _ = writeln!(s, "  errors by code: {}", codes.join(", "));
            for (code, sample) in &self.error_samples {
                let _ = writeln!(s, "    first {code}: {sample}");
            }
        }
        let mut cpu = vec![format!("client {:.2} s", self.client_cpu_s)];
        if let Some(c) = &self.server_cpu {
            cpu.push(format!(
                "server (pid {}) {:.2} s = {:.1} µs/call",
                c.pid, c.seconds, c.us_per_call
            ));
        }
        if let Some(c) = &self.postgres_cpu {
            cpu.push(format!(
                "PostgreSQL (pid {}) {:.2} s = {:.1} µs/success",
                c.pid, c.seconds, c.us_per_call
            ));
        }
        let _ = writeln!(s, "  CPU: {}", cpu.join(", "));
        s
    }
}
