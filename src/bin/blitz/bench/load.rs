//! `blitz bench`: a load generator that speaks the line protocol itself and
//! measures what a client sees: throughput, goodput (successes within the
//! deadline), latency percentiles of successes and of rejections kept apart
//! in HdrHistograms, counts by error code, connection errors, and the CPU the
//! server (and PostgreSQL) spent per call. This file runs one load: it
//! spreads the connections over the event-loop threads ([`engine`]), starts
//! the measured phase once every connection is ready, and builds the
//! [`Report`] from what the threads measured.
//!
//! It does not use [`blitz::client`]: a benchmark must count a refusal, not
//! retry it. With `http` it speaks JSON-RPC over HTTP/1.1 instead
//! (`server.http_listen`, see [`http_client`]).
//!
//! # Threads
//!
//! Connections are spread over a few event-loop threads (`threads`, default
//! one per CPU the process may run on (its affinity: `taskset` counts), at
//! most 4 and at most one per connection), each polling its nonblocking
//! sockets the way `pgbench -j` does. The load generator shares the machine
//! with the server and PostgreSQL in `make bench`, so every microsecond it
//! spends per call is taken from them: one thread per connection costs a
//! wake-up and two context switches per call, a poll loop handles whatever
//! is ready in one pass, and more threads than CPUs only preempt one
//! another (at 47,000 refusals/s on 2 CPUs, 4 threads measured a refusal
//! p99 of 496 ms where 2 measured 3 ms, against the same server).
//! `threads = connections` gives one thread per connection.
//!
//! [`engine`]: super::engine
//! [`http_client`]: super::http_client

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use super::cpu::{own_cpu_seconds, process_ticks, ticks_per_second, tree_ticks};
use super::engine::ThreadPlan;
use super::options::{BenchError, Options, Params, Stop};
use super::progress::{spawn_progress, Shared};
use super::report::{Cpu, Latency, Report};
use super::requests::RequestTemplate;
use super::tally::merge;

/// Runs the benchmark `opts` describes.
pub fn run(opts: &Options) -> Result<Report, BenchError> {
    validate(opts)?;
    let addrs = resolve(&opts.servers)?;
    let threads = effective_threads(opts);
    let request = RequestTemplate::new(opts)?;
    let shared = Arc::new(Shared::new(opts));
    let started = Instant::now();
    // The threads and this one meet once every connection is ready; the
    // measured phase starts there.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let indices: Vec<usize> = (t..opts.connections).step_by(threads).collect();
        let plan = ThreadPlan {
            opts: opts.clone(),
            addrs: addrs.clone(),
            names: opts.servers.iter().map(|s| host_of(s)).collect(),
            indices,
            request: request.clone(),
            shared: shared.clone(),
            barrier: barrier.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || plan.run())
            .map_err(|e| BenchError::Connect(format!("cannot start a thread: {e}")))?;
        handles.push(handle);
    }
    barrier.wait();
    let t0 = *shared.t0.get_or_init(Instant::now);
    let connect_s = (t0 - started).as_secs_f64();
    let server_before = opts.server_pid.map(process_ticks);
    let postgres_before = opts.postgres_pid.map(tree_ticks);
    let client_before = own_cpu_seconds();
    let progress = opts.progress.then(|| spawn_progress(shared.clone(), t0));

    let mut results = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().expect("a bench thread panicked"));
    }
    let server_after = opts.server_pid.map(process_ticks);
    let postgres_after = opts.postgres_pid.map(tree_ticks);
    let client_cpu_s = own_cpu_seconds() - client_before;
    shared.finished.store(true, Ordering::Release);
    if let Some(p) = progress {
        let _ = p.join();
    }

    if let Some(login) = results.iter().find_map(|r| r.login_refused.clone()) {
        return Err(BenchError::Connect(login));
    }
    if shared.ready.load(Ordering::Acquire) == 0 {
        let first = results
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_else(|| "no connection could be made".into());
        return Err(BenchError::Connect(first));
    }
    let total = merge(results);
    if let Some(path) = &opts.series {
        super::series::write(path, t0, &total.series).map_err(|e| {
            BenchError::Usage(format!("--series {}: cannot write it: {e}", path.display()))
        })?;
    }
    let end = total.last_reply.unwrap_or(t0).max(t0);
    let elapsed_s = (end - t0).as_secs_f64();
    let per_s = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    let cpu = |pid: Option<u32>, before: Option<Option<u64>>, after: Option<Option<u64>>, n| {
        let (pid, Some(Some(b)), Some(Some(a))) = (pid?, before, after) else {
            return None;
        };
        let seconds = a.saturating_sub(b) as f64 / ticks_per_second();
        Some(Cpu {
            pid,
            seconds,
            us_per_call: if n > 0 { seconds * 1e6 / n as f64 } else { 0.0 },
        })
    };
    let replies = total.ok + total.rejected;
    Ok(Report {
        mode: if opts.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        method: opts.method.clone(),
        connections: opts.connections,
        threads,
        target_rate: opts.rate,
        timeout_ms: opts.timeout_ms,
        user: opts.user.clone(),
        wall_s: (end - started).as_secs_f64(),
        connect_s,
        elapsed_s,
        sent: total.sent,
        replies,
        ok: total.ok,
        ok_in_deadline: total.ok_in_deadline,
        rejected: total.rejected,
        errors_by_code: total
            .codes
            .iter()
            .map(|(c, n)| (c.to_string(), *n))
            .collect(),
        error_samples: total
            .samples
            .iter()
            .map(|(c, s)| (c.to_string(), s.clone()))
            .collect(),
        connection_errors: total.connection_errors,
        first_connection_error: total.first_error.clone(),
        lost: total.lost,
        throughput: per_s(replies),
        ok_per_s: per_s(total.ok),
        goodput: per_s(total.ok_in_deadline),
        offered_rate: opts.rate.and(total.last_send).map(|last| {
            let window = (last - t0).as_secs_f64();
            if window > 0.0 {
                total.sent as f64 / window
            } else {
                0.0
            }
        }),
        latency_ok: Latency::of(&total.ok_hist),
        latency_rejected: Latency::of(&total.rejected_hist),
        send_lag: opts.rate.map(|_| Latency::of(&total.lag_hist)),
        server_cpu: cpu(opts.server_pid, server_before, server_after, replies),
        postgres_cpu: cpu(opts.postgres_pid, postgres_before, postgres_after, total.ok),
        client_cpu_s,
    })
}

/// Usage errors the options can have whoever built them.
fn validate(opts: &Options) -> Result<(), BenchError> {
    let usage = |m: &str| Err(BenchError::Usage(m.into()));
    if opts.servers.is_empty() {
        return usage("no server to connect to");
    }
    if opts.connections == 0 {
        return usage("--connections must be at least 1");
    }
    match opts.stop {
        Stop::Calls(0) => return usage("--calls must be at least 1"),
        Stop::Duration(d) if d.is_zero() => return usage("--duration must be more than 0"),
        _ => {}
    }
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0) {
            return usage("--rate must be a positive number of calls per second");
        }
    }
    if let Params::Transfer { scale: 0 } = opts.params {
        return usage("--scale must be at least 1");
    }
    Ok(())
}

/// The host of `host:port` (brackets of an IPv6 address removed).
fn host_of(server: &str) -> String {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// The first address of every server.
fn resolve(servers: &[String]) -> Result<Vec<SocketAddr>, BenchError> {
    servers
        .iter()
        .map(|s| {
            s.to_socket_addrs()
                .map_err(|e| BenchError::Usage(format!("server {s:?}: {e}")))?
                .next()
                .ok_or_else(|| BenchError::Usage(format!("server {s:?}: no address")))
        })
        .collect()
}

/// Event-loop threads: as asked, or (0) one per CPU this process may run
/// on, at most 4; at most one per connection.
fn effective_threads(opts: &Options) -> usize {
    let t = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    };
    t.clamp(1, opts.connections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use serde_json::Value;

    /// A stand-in server: answers even ids with a result and odd ids with
    /// -32001, each after `delay`.
    fn fake_server(delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { return };
                        let v: Value = serde_json::from_str(&line).unwrap();
                        std::thread::sleep(delay);
                        let id = v["id"].as_u64().unwrap();
                        let reply = if v["method"] == "session.login" {
                            serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"session":"s"}})
                        } else if id.is_multiple_of(2) {
                            serde_json::json!({"jsonrpc":"2.0","id":id,"result":1})
                        } else {
                            serde_json::json!({"jsonrpc":"2.0","id":id,
                                "error":{"code":-32001,"message":"Server overloaded"}})
                        };
                        if writeln!(out, "{reply}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn closed_loop_counts_every_call_once() {
        let addr = fake_server(Duration::ZERO);
        let mut opts = Options::example(&addr);
        opts.user = Some("bench".into());
        let r = run(&opts).unwrap();
        assert_eq!(r.sent, 200);
        assert_eq!(r.replies, 200);
        assert_eq!(r.ok + r.rejected, 200);
        assert_eq!(r.errors_by_code.get("-32001"), Some(&r.rejected));
        assert_eq!(r.latency_ok.count, r.ok);
        assert_eq!(r.latency_rejected.count, r.rejected);
        assert_eq!((r.connection_errors, r.lost), (0, 0));
        assert_eq!(r.mode, "closed");
        assert!(r.send_lag.is_none());
    }

    #[test]
    fn open_loop_keeps_its_schedule_and_pipelines() {
        // Replies take 20 ms; 400 calls/s on 2 connections is one call per
        // connection every 5 ms, so calls must be pipelined.
        let addr = fake_server(Duration::from_millis(20));
        let mut opts = Options::example(&addr);
        opts.connections = 2;
        opts.rate = Some(400.0);
        opts.stop = Stop::Duration(Duration::from_millis(500));
        let r = run(&opts).unwrap();
        assert_eq!(r.mode, "open");
        assert!((150..=210).contains(&r.sent), "sent {}", r.sent);
        assert_eq!(r.replies + r.lost, r.sent);
        // The fake server answers one at a time per connection, so latency
        // measured from the schedule grows: no coordinated omission.
        assert!(r.latency_ok.max_ms > 100.0, "{:?}", r.latency_ok);
        assert!(r.send_lag.is_some());
    }

    #[test]
    fn unreachable_server_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = run(&Options::example(&addr)).unwrap_err();
        assert!(matches!(e, BenchError::Connect(_)), "{e:?}");
    }
}
