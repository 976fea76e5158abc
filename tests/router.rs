//! The router's event loops on real sockets against a real server and a
//! real PostgreSQL: stream framing, oversized texts, fairness between
//! clients, clients that do not read, refusals past `max_clients`, the
//! drain at SIGTERM, and a thread count that does not grow with clients.

mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{error_code, result, Rpc, Server, TestDb};

const FIXTURES: &str = r#"
CREATE SCHEMA blitz_api;
CREATE FUNCTION blitz_api.sleep_ms(ms int) RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(ms / 1000.0); RETURN ms; END $$;
CREATE FUNCTION blitz_api.add(a int, b int DEFAULT 0) RETURNS int LANGUAGE sql AS 'SELECT a + b';
"#;

fn setup(settings: &[(&str, &str)]) -> (TestDb, Server) {
    Server::on_fresh_db(FIXTURES, settings)
}

fn ping(id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","method":"sys.ping","id":{id}}}"#)
}

/// `sys.status` of the server, from a connection of its own.
fn status(addr: &str) -> Value {
    let mut rpc = Rpc::session(addr);
    result(&rpc.call("sys.status", json!({}))).clone()
}

fn threads_of(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The server's thread count once it has stayed the same for 300 ms (up
/// to 5 s): threads that start after the first reply (the pool's and the
/// housekeepers') are counted before the clients come, not with them.
fn settled_threads(server: &Server) -> usize {
    let mut last = (threads_of(server), Instant::now());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && last.1.elapsed() < Duration::from_millis(300)
    {
        std::thread::sleep(Duration::from_millis(20));
        let now = threads_of(server);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    last.0
}

/// Waits up to `limit` for `cond`; false if it never held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn texts_back_to_back_without_newlines_are_each_answered() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    // Three texts in one write, no newline anywhere, whitespace between two.
    let add = r#"{"jsonrpc":"2.0","method":"api.add","params":{"a":2,"b":3},"id":"sum"}"#;
    let texts = format!("{}{add} \t{}", ping(1), ping(2));
    rpc.stream.write_all(texts.as_bytes()).unwrap();
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let reply = rpc.read_reply().unwrap();
        if reply["id"] == "sum" {
            assert_eq!(result(&reply), 5);
        }
        ids.insert(reply["id"].to_string());
    }
    assert_eq!(
        ids,
        HashSet::from(["1".into(), "2".into(), "\"sum\"".into()])
    );
    // A text split over two writes, with nothing after it: answered once whole.
    let text = ping(3);
    let (a, b) = text.split_at(10);
    rpc.stream.write_all(a.as_bytes()).unwrap();
    assert!(
        rpc.poll_reply(Duration::from_millis(200)).is_none(),
        "answered half a text"
    );
    rpc.stream.write_all(b.as_bytes()).unwrap();
    assert_eq!(rpc.read_reply().unwrap()["id"], 3);
    // A batch and garbage on the same persistent connection.
    rpc.stream
        .write_all(format!("[{},{}]nonsense\n{}", ping(4), ping(5), ping(6)).as_bytes())
        .unwrap();
    let batch = rpc.read_reply().unwrap();
    assert_eq!(batch.as_array().map(Vec::len), Some(2), "{batch}");
    assert_eq!(error_code(&rpc.read_reply().unwrap()), -32700);
    assert_eq!(rpc.read_reply().unwrap()["id"], 6);
}

#[test]
fn an_oversized_text_is_skipped_and_the_next_one_in_the_same_write_answered() {
    let (_db, server) = setup(&[("server.max_message_bytes", "4096")]);
    let mut rpc = Rpc::session(&server.addr);
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"api.add","params":{{"a":1,"pad":"{}","n":[[{{}}]]}},"id":1}}"#,
        "x".repeat(200_000)
    );
    let add = r#"{"jsonrpc":"2.0","method":"api.add","params":{"a":40,"b":2},"id":2}"#;
    rpc.stream
        .write_all(format!("{huge}{add}").as_bytes())
        .unwrap();
    let reply = rpc.read_reply().unwrap();
    assert_eq!(error_code(&reply), -32009);
    assert_eq!(reply["error"]["data"]["max_message_bytes"], 4096);
    assert_eq!(result(&rpc.read_reply().unwrap()), 42);
    assert_eq!(result(&rpc.call("api.add", json!({"a": 1}))), 1);
}

/// The stated bound: a router thread handles at most 64 texts of one
/// connection per turn, so another client's call waits for at most one
/// turn of the flooder, never for the flood to end. One router thread, so
/// both clients share it.
#[test]
fn a_flooding_pipelined_client_does_not_hold_up_another_client() {
    let (_db, server) = setup(&[("server.router_threads", "1")]);
    const FLOOD: usize = 200_000;
    let flooder = TcpStream::connect(&server.addr).unwrap();
    let replies = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (replies, stream) = (replies.clone(), flooder.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut stream = stream;
            while replies.load(Ordering::Relaxed) < FLOOD {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                        replies.fetch_add(lines, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let writer = std::thread::spawn(move || {
        let text = ping(7).repeat(1000); // no newlines: stream framing
        let mut flooder = flooder;
        for _ in 0..FLOOD / 1000 {
            if flooder.write_all(text.as_bytes()).is_err() {
                break;
            }
        }
    });
    assert!(
        wait_for(Duration::from_secs(30), || replies.load(Ordering::Relaxed)
            > 1000),
        "the flood never got going"
    );
    let mut other = Rpc::connect(&server.addr);
    let start = Instant::now();
    let reply = other.call("sys.ping", json!({}));
    let waited = start.elapsed();
    let flood_answered = replies.load(Ordering::Relaxed);
    assert_eq!(result(&reply)["pong"], true);
    assert!(
        flood_answered < FLOOD,
        "the other client was answered only after the whole flood"
    );
    // Generous: the bound is one turn (64 texts); this only catches a queue behind the flood.
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    eprintln!(
        "fairness: another client's sys.ping took {waited:?} with {} of {FLOOD} flood replies out",
        flood_answered
    );
    writer.join().unwrap();
    reader.join().unwrap();
}

/// A client that sends and never reads: the server stops reading it once
/// its outbox holds 1 MiB (plus one turn of replies), never buffers more,
/// and closes it within WRITE_TIMEOUT (2 s) + a tick (1 s) of the socket
/// taking nothing.
#[test]
fn a_client_that_never_reads_is_closed_and_costs_at_most_the_outbox() {
    let (_db, server) = setup(&[]);
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let text = ping(1).repeat(1000);
    let blocked_at = loop {
        if let Err(e) = slow.write_all(text.as_bytes()) {
            assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            );
            break Instant::now();
        }
    };
    let most = Arc::new(AtomicUsize::new(0));
    let closed = wait_for(Duration::from_secs(15), || {
        let status = status(&server.addr);
        let queued = status["connections"]["outbox_bytes"].as_u64().unwrap() as usize;
        most.fetch_max(queued, Ordering::Relaxed);
        status["connections"]["open"] == 1 // only the status connection
    });
    let took = blocked_at.elapsed();
    assert!(
        closed,
        "the client that does not read was never closed: {}",
        server.log()
    );
    let most = most.load(Ordering::Relaxed);
    let one_turn = 64 * 200; // 64 replies of sys.ping
    assert!(
        most <= (1 << 20) + one_turn,
        "{most} bytes queued for a client that does not read"
    );
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    eprintln!("never-reading client: closed {took:?} after its writes blocked; at most {most} bytes queued");
    // The server goes on serving.
    assert_eq!(
        Rpc::connect(&server.addr).call("sys.ping", json!({}))["result"]["pong"],
        true
    );
}

/// Raises this process's soft open-file limit to `n` (the hard limit allowing).
fn raise_nofile(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource::RLIMIT_NOFILE};
    let (soft, hard) = getrlimit(RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(RLIMIT_NOFILE, hard.min(n.max(soft)), hard).expect("setrlimit");
}

#[test]
fn a_thousand_connects_past_max_clients_each_get_one_line_and_a_clean_close() {
    raise_nofile(4096);
    let (_db, server) = setup(&[("server.max_clients", "5")]);
    let kept: Vec<Rpc> = (0..5)
        .map(|_| {
            let mut rpc = Rpc::connect(&server.addr);
            assert_eq!(rpc.call("sys.ping", json!({}))["result"]["pong"], true);
            rpc
        })
        .collect();
    // The readiness probe's connection may still count for a moment.
    assert!(wait_for(Duration::from_secs(5), || {
        let mut probe = Rpc::connect(&server.addr);
        probe.read_reply().is_some_and(|r| error_code(&r) == -32005)
    }));
    let refused: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            s.write_all(ping(i).as_bytes()).unwrap(); // input the server must drain
            s
        })
        .collect();
    for (i, s) in refused.into_iter().enumerate() {
        let mut rpc = Rpc::from_stream(s);
        let reply = rpc
            .read_reply()
            .unwrap_or_else(|| panic!("connection {i}: no line"));
        assert_eq!(error_code(&reply), -32005, "connection {i}: {reply}");
        assert_eq!(reply["error"]["data"]["max_clients"], 5);
        // read_raw panics on a reset; None is a clean end of file.
        assert!(
            rpc.read_raw().is_none(),
            "connection {i}: more than one line"
        );
    }
    for mut rpc in kept {
        assert_eq!(rpc.call("sys.ping", json!({}))["result"]["pong"], true);
    }
}

#[test]
fn sigterm_under_pipelined_load_answers_every_request_read() {
    let (_db, mut server) = setup(&[("db.pool_size", "2"), ("server.drain_timeout_s", "1")]);
    let started = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..100)
        .map(|c| {
            let (addr, started, stop) = (server.addr.clone(), started.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rpc = Rpc::session(&addr);
                let mut sent = Vec::new();
                // Pipelined calls back to back, without newlines.
                for k in 0..10u64 {
                    let id = c * 100 + k;
                    let text = format!(
                        r#"{{"jsonrpc":"2.0","method":"api.sleep_ms","params":{{"ms":20}},"id":{id}}}"#
                    );
                    if rpc.stream.write_all(text.as_bytes()).is_err() {
                        break;
                    }
                    sent.push(id);
                }
                started.fetch_add(1, Ordering::Relaxed);
                let mut answered = HashSet::new();
                let mut codes = Vec::new();
                while answered.len() < sent.len() && !stop.load(Ordering::Relaxed) {
                    let Some(reply) = rpc.read_reply() else { break };
                    assert!(answered.insert(reply["id"].as_u64().unwrap()), "two replies: {reply}");
                    codes.push(reply["error"]["code"].as_i64().unwrap_or(0));
                }
                (sent.len(), answered.len(), codes)
            })
        })
        .collect();
    assert!(wait_for(Duration::from_secs(60), || started
        .load(Ordering::Relaxed)
        == 100));
    let status = server.terminate();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (sent, answered, codes) = c.join().expect("a client failed");
        assert_eq!(sent, answered, "a request read got no reply: {codes:?}");
        for code in codes {
            assert!(
                [0, -32001, -32003].contains(&code),
                "unexpected outcome {code}"
            );
        }
        total += answered;
    }
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert_eq!(total, 1000);
}

#[test]
fn the_thread_count_does_not_grow_with_the_clients() {
    raise_nofile(4096);
    let (_db, server) = setup(&[("server.router_threads", "2"), ("db.pool_size", "2")]);
    let before = settled_threads(&server);
    let conns: Vec<Rpc> = (0..1000).map(|_| Rpc::connect(&server.addr)).collect();
    let mut last = Rpc::connect(&server.addr);
    assert_eq!(last.call("sys.ping", json!({}))["result"]["pong"], true);
    let with_clients = threads_of(&server);
    assert!(
        with_clients <= before + 2, // a housekeeper may start late; never one per client
        "{before} threads before, {with_clients} with 1,001 clients"
    );
    // R (2) + W (2) + a few housekeepers.
    assert!(with_clients <= 2 + 2 + 8, "{with_clients} threads");
    assert_eq!(status(&server.addr)["router_threads"], 2);
    drop(conns);
}

/// Each thread's name and nice value, from `/proc/PID/task/*/stat`.
fn nice_by_thread(server: &Server) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // "tid (comm) state ...": nice is field 19, the 17th after comm.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((comm, nice))
        })
        .collect()
}

#[test]
#[cfg(target_os = "linux")]
fn workers_run_at_a_lower_cpu_priority_than_the_routers() {
    let (_db, server) = setup(&[("server.router_threads", "2"), ("invocation.workers", "3")]);
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(result(&rpc.call("api.add", json!({"a": 1}))), 1);
    let threads = nice_by_thread(&server);
    let of = |prefix: &str| -> Vec<i64> {
        let found = threads.iter().filter(|(name, _)| name.starts_with(prefix));
        found.map(|(_, nice)| *nice).collect()
    };
    let (routers, workers) = (of("blitz-router"), of("blitz-worker"));
    assert_eq!((routers.len(), workers.len()), (2, 3), "{threads:?}");
    let router_nice = *routers.iter().max().unwrap();
    let expected = (router_nice + 10).min(19);
    assert!(
        router_nice < 19 && workers.iter().all(|&n| n == expected),
        "routers at nice {routers:?}, workers at {workers:?}: workers should be at {expected}"
    );
}

#[test]
fn status_is_answered_and_counts_right_with_many_idle_connections() {
    let (_db, server) = setup(&[]);
    const IDLE: usize = 500;
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let mut watcher = Rpc::session(&server.addr);
    // The outboxes count a write in progress until it returns: the
    // watcher may read its last reply, and ask again, a moment before the
    // router has taken those bytes off the gauge. Idle connections queue
    // nothing, so it is soon 0 (and stays above 0 if bytes were leaked).
    watcher.wait_for_status("every idle connection to count, nothing queued", |s| {
        s["connections"]["open"] == IDLE + 1 && s["connections"]["outbox_bytes"] == 0
    });
    idle.truncate(IDLE / 2);
    watcher.wait_for_status("the closed half to be gone, nothing queued", |s| {
        s["connections"]["open"] == IDLE / 2 + 1 && s["connections"]["outbox_bytes"] == 0
    });
    drop(idle);
    watcher.wait_for_status("only the watcher to be left", |s| {
        s["connections"]["open"] == 1
    });
}
