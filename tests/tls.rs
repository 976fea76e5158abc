//! TLS end to end. To PostgreSQL: a PostgreSQL of its own with `ssl=on`,
//! a certificate from a test CA and only `hostssl` lines in `pg_hba.conf`;
//! `blitz-server` with `db.url`'s `sslmode` and `sslrootcert`. On blitz's
//! own listeners: JSON-RPC over TLS and HTTPS with clients nobody here
//! wrote (Python's `ssl`, curl, openssl), plaintext and silent clients on a
//! TLS port, mutual TLS, certificate rotation on SIGHUP, the thin client.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use support::certs::{temp_dir, TempDir, TestCa};
use support::{bin, result, Rpc, Server};

/// The TLS-only cluster of this test process, its CA file and an unrelated CA's.
struct TlsDb {
    cluster: support::Cluster,
    ca: PathBuf,
    wrong_ca: PathBuf,
}

fn tls_db() -> &'static TlsDb {
    static DB: OnceLock<TlsDb> = OnceLock::new();
    DB.get_or_init(|| {
        let ca = TestCa::new("blitz test PostgreSQL CA");
        let leaf = ca.leaf("postgres", &["localhost"]);
        let cluster = support::start_tls_only_cluster(&leaf.chain_pem, &leaf.key_pem);
        // In the cluster's folder, which goes with the cluster (a static
        // is never dropped).
        TlsDb {
            ca: ca.write(&cluster.dir, "ca"),
            wrong_ca: TestCa::new("some other CA").write(&cluster.dir, "wrong-ca"),
            cluster,
        }
    })
}

fn url(host: &str, query: &str) -> String {
    format!(
        "postgresql://postgres@{host}:{}/postgres?{query}",
        tls_db().cluster.port
    )
}

fn rootcert(query: &str, ca: &Path) -> String {
    format!("{query}&sslrootcert={}", ca.display())
}

/// Runs `blitz-server user list` on `db_url`: (exit code, stderr).
fn user_list(db_url: &str) -> (i32, String) {
    let mut cmd = Command::new(bin("blitz-server"));
    cmd.args(["--db-url", db_url, "user", "list"]);
    let (code, _, err) = support::run(cmd);
    (code, err)
}

#[test]
fn verify_full_with_the_right_ca_serves_calls() {
    let db_url = url("localhost", &rootcert("sslmode=verify-full", &tls_db().ca));
    let server = Server::start(&db_url, &[]);
    let mut rpc = Rpc::session(&server.addr);
    let reply = rpc.call("sys.instances", json!({}));
    assert!(result(&reply).is_array(), "{reply}\n{}", server.log());
    assert_eq!(user_list(&db_url).0, 0, "the admin commands speak TLS too");
}

#[test]
fn verify_ca_takes_any_name_verify_full_does_not() {
    let ca = &tls_db().ca;
    // The certificate names localhost, not 127.0.0.1.
    let (code, err) = user_list(&url("127.0.0.1", &rootcert("sslmode=verify-ca", ca)));
    assert_eq!(code, 0, "{err}");
    let (code, err) = user_list(&url("127.0.0.1", &rootcert("sslmode=verify-full", ca)));
    assert_ne!(code, 0);
    assert!(
        err.contains("certificate") && err.contains("127.0.0.1"),
        "{err}"
    );
}

#[test]
fn require_encrypts_without_verifying() {
    let (code, err) = user_list(&url("localhost", "sslmode=require"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_wrong_ca_stops_the_start_with_a_message_naming_the_verification() {
    let db_url = url(
        "localhost",
        &rootcert("sslmode=verify-full", &tls_db().wrong_ca),
    );
    let mut cmd = Command::new(bin("blitz-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--db-url", &db_url])
        .args(["--set", "auth.mode=trust"]);
    let mut server = Server::spawn(cmd, String::new());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "blitz-server kept running on a certificate that fails verification:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = server.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("failed verification") && log.contains("verify-full"),
        "{log}"
    );
    assert!(
        log.contains("UnknownIssuer") && log.contains("wrong-ca.pem"),
        "{log}"
    );
}

#[test]
fn sslmode_disable_is_refused_by_a_hostssl_only_server() {
    let (code, err) = user_list(&url("localhost", "sslmode=disable"));
    assert_ne!(code, 0);
    assert!(
        err.contains("pg_hba.conf") && err.contains("no encryption"),
        "{err}"
    );
}

#[test]
fn an_unreadable_sslrootcert_is_refused_at_start() {
    let (code, err) = user_list(&url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("sslrootcert") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[test]
fn sighup_never_stops_the_server() {
    let db = support::TestDb::new();
    let mut server = Server::start(&db.url, &[]);
    for _ in 0..2 {
        let sent = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()));
    }
    support::wait_until("the SIGHUP log line", || {
        server.log().contains("SIGHUP: no TLS files configured")
    });
    let mut rpc = Rpc::session(&server.addr);
    assert!(result(&rpc.call("sys.instances", json!({}))).is_array());
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "{}",
        server.log()
    );
    assert_eq!(server.terminate().code(), Some(0), "SIGTERM still drains");
}

/// A TLS server's files: its CA, its certificate and key, and the folder.
struct TlsFiles {
    ca: TestCa,
    dir: TempDir,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// A CA and a server certificate for `localhost`, written to a fresh folder.
    fn new(name: &str) -> TlsFiles {
        let ca = TestCa::new("blitz test CA");
        let dir = temp_dir(name);
        let ca_file = ca.write(&dir, "ca");
        let (cert, key) = ca.leaf("server", &["localhost"]).write(&dir, "server");
        TlsFiles {
            ca,
            dir,
            ca_file,
            cert,
            key,
        }
    }
}

/// A blitz-server whose listeners speak TLS with `files`, with `extra`
/// settings, on a fresh database.
fn tls_server(files: &TlsFiles, extra: &[(&str, &str)]) -> (support::TestDb, Server) {
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let mut settings = vec![
        ("server.tls_cert_file", cert.as_str()),
        ("server.tls_key_file", key.as_str()),
    ];
    settings.extend_from_slice(extra);
    let db = support::TestDb::new();
    let server = Server::start(&db.url, &settings);
    (db, server)
}

fn port(server: &Server) -> &str {
    server.addr.rsplit(':').next().unwrap()
}

/// Python's `ssl`: connects to 127.0.0.1:`port` as `localhost`, verifying
/// against `ca`, presenting `identity` (cert, key) if given; sends `line`
/// and prints the first reply line, or `ERROR <exception>`.
fn python_call(port: &str, ca: &Path, identity: Option<(&Path, &Path)>, line: &str) -> String {
    const SCRIPT: &str = r#"
import socket, ssl, sys
port, ca, cert, key, line = sys.argv[1:6]
try:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(line.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        print(reply.decode().strip() or "ERROR end of file without a reply")
except Exception as e:
    print("ERROR", type(e).__name__, e)
"#;
    let (cert, key) = identity
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or_default();
    let out = Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            port,
            &ca.display().to_string(),
            &cert,
            &key,
            line,
        ])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const PING: &str = r#"{"jsonrpc":"2.0","method":"sys.ping","id":7}"#;

/// curl POSTing [`PING`] to `https://localhost:PORT/` (resolved to
/// 127.0.0.1), verified against `ca`, with `extra` options.
fn curl_ping_https(ca: &Path, http_port: &str, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(extra)
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("localhost:{http_port}:127.0.0.1")])
        .args(["-H", "Content-Type: application/json", "-d", PING])
        .arg(format!("https://localhost:{http_port}/"))
        .output()
        .expect("run curl")
}

fn assert_pong(reply: &str) {
    let value: serde_json::Value =
        serde_json::from_str(reply).unwrap_or_else(|_| panic!("not a JSON-RPC reply: {reply}"));
    assert_eq!(value["id"], 7, "{reply}");
    assert!(!result(&value).is_null(), "{reply}");
}

#[test]
fn json_rpc_over_tls_with_python_ssl_verified_against_the_ca() {
    let files = TlsFiles::new("py");
    let (_db, server) = tls_server(&files, &[]);
    let reply = python_call(port(&server), &files.ca_file, None, PING);
    assert_pong(&reply);
    let batch = format!("[{PING},{}]", PING.replace("7", "8"));
    let reply = python_call(port(&server), &files.ca_file, None, &batch);
    assert!(
        reply.contains(r#""id":7"#) && reply.contains(r#""id":8"#),
        "{reply}"
    );
    // A client trusting another CA refuses the server's certificate.
    let other = TestCa::new("another CA").write(&files.dir, "other-ca");
    let reply = python_call(port(&server), &other, None, PING);
    assert!(reply.contains("CERTIFICATE_VERIFY_FAILED"), "{reply}");
}

#[test]
fn https_with_curl_verified_against_the_ca() {
    let files = TlsFiles::new("curl");
    let http_port = support::free_port().to_string();
    let http = format!("127.0.0.1:{http_port}");
    let (_db, server) = tls_server(&files, &[("server.http_listen", &http)]);
    let out = curl_ping_https(&files.ca_file, &http_port, &[]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert_pong(body.trim());
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-d", PING])
        .arg(format!("http://127.0.0.1:{http_port}/"))
        .output()
        .expect("run curl");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("jsonrpc"));
}

#[test]
fn a_plaintext_client_on_a_tls_port_is_closed_without_an_answer() {
    let files = TlsFiles::new("plain");
    let (_db, server) = tls_server(&files, &[]);
    let mut plain = TcpStream::connect(&server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    plain.write_all(PING.as_bytes()).unwrap();
    plain.write_all(b"\n").unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got); // end of file (or a reset) once closed
    assert!(
        !String::from_utf8_lossy(&got).contains("jsonrpc"),
        "a JSON-RPC answer in clear: {got:?}"
    );
    support::wait_until("the log line about the failed handshake", || {
        server.log().contains("TLS failed with")
    });
    assert_pong(&python_call(port(&server), &files.ca_file, None, PING));
}

#[test]
fn a_client_that_never_handshakes_is_closed_after_the_timeout_and_holds_no_one_up() {
    let files = TlsFiles::new("silent");
    let (_db, server) = tls_server(&files, &[("server.tls_handshake_timeout_ms", "300")]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert_pong(&python_call(port(&server), &files.ca_file, None, PING));
    let mut got = Vec::new();
    let closed = silent.read_to_end(&mut got);
    assert!(closed.is_ok() && got.is_empty(), "{closed:?} {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    support::wait_until("the log line about the timeout", || {
        server.log().contains("TLS handshake timeout")
    });
    assert_pong(&python_call(port(&server), &files.ca_file, None, PING));
}

#[test]
fn mutual_tls_accepts_a_client_certificate_of_the_ca_and_refuses_none() {
    let files = TlsFiles::new("mtls");
    let client_ca = TestCa::new("blitz client CA");
    let client_ca_file = client_ca.write(&files.dir, "client-ca");
    let (cert, key) = client_ca
        .leaf("alice", &["alice.example"])
        .write(&files.dir, "alice");
    let ca = client_ca_file.display().to_string();
    let (_db, server) = tls_server(&files, &[("server.tls_client_ca_file", &ca)]);
    let reply = python_call(port(&server), &files.ca_file, Some((&cert, &key)), PING);
    assert_pong(&reply);
    let reply = python_call(port(&server), &files.ca_file, None, PING);
    assert!(reply.starts_with("ERROR"), "{reply}");
    // A certificate of the server's CA is not one of the client CA's.
    let (cert, key) = files
        .ca
        .leaf("mallory", &["m.example"])
        .write(&files.dir, "mallory");
    let reply = python_call(port(&server), &files.ca_file, Some((&cert, &key)), PING);
    assert!(reply.starts_with("ERROR"), "{reply}");
}

/// The subject of the certificate the server on `port` presents, by openssl
/// (`subject=CN=NAME`, without spaces), verified against `ca`.
fn presented_subject(port: &str, ca: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {} \
             -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -subject",
            ca.display()
        ))
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&out.stdout).replace(' ', "")
}

/// A JSON-RPC connection over TLS by rustls, verified against a CA, kept open.
struct TlsRpc {
    stream: std::io::BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsRpc {
    fn connect(addr: &str, ca: &Path) -> TlsRpc {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let socket = TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let stream = rustls::StreamOwned::new(conn, socket);
        TlsRpc {
            stream: std::io::BufReader::new(stream),
        }
    }

    /// `sys.ping`'s result, or the error if the connection failed.
    fn ping(&mut self) -> Result<serde_json::Value, String> {
        use std::io::BufRead;
        let inner = self.stream.get_mut();
        inner
            .write_all(PING.as_bytes())
            .map_err(|e| e.to_string())?;
        inner.write_all(b"\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let reply: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        Ok(result(&reply).clone())
    }
}

fn sighup(server: &Server) {
    let sent = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()));
}

#[test]
fn sighup_rotates_the_certificate_and_keeps_open_connections() {
    let files = TlsFiles::new("rotate");
    let (_db, mut server) = tls_server(&files, &[]);
    let subject = presented_subject(port(&server), &files.ca_file);
    assert!(
        subject.contains("CN=server"),
        "{subject:?}\n{}",
        server.log()
    );
    let mut open = TlsRpc::connect(&server.addr, &files.ca_file);
    open.ping().unwrap();

    files
        .ca
        .leaf("rotated", &["localhost"])
        .write(&files.dir, "server");
    sighup(&server);
    support::wait_until("the reload log line", || {
        server.log().contains("TLS: reloaded")
    });
    assert!(presented_subject(port(&server), &files.ca_file).contains("CN=rotated"));
    open.ping().expect("the open connection keeps working");

    std::fs::write(&files.cert, "not a certificate").unwrap();
    sighup(&server);
    support::wait_until("the failed reload log line", || {
        server
            .log()
            .contains("reload failed, keeping the previous certificate")
    });
    assert!(presented_subject(port(&server), &files.ca_file).contains("CN=rotated"));
    open.ping().unwrap();
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "{}",
        server.log()
    );
    assert_eq!(server.terminate().code(), Some(0), "{}", server.log());
}

#[test]
fn the_thin_client_verifies_against_ca_and_refuses_a_private_ca_with_tls() {
    let files = TlsFiles::new("thin");
    let (_db, server) = tls_server(&files, &[]);
    let target = format!("localhost:{}", port(&server));
    let mut cmd = Command::new(bin("blitz"));
    cmd.args(["--server", &target, "--ca"])
        .arg(&files.ca_file)
        .arg("ping");
    let (code, out, err) = support::run(cmd);
    assert_eq!(code, 0, "{out}{err}\n{}", server.log());
    let mut cmd = Command::new(bin("blitz"));
    cmd.args(["--server", &target, "--tls", "ping"]);
    let (code, out, err) = support::run(cmd);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn blitz_bench_speaks_tls_with_ca() {
    let files = TlsFiles::new("bench");
    let (_db, server) = tls_server(&files, &[]);
    let target = format!("localhost:{}", port(&server));
    let mut cmd = Command::new(bin("blitz"));
    cmd.args(["--server", &target, "--ca"])
        .arg(&files.ca_file)
        .args(["bench", "-c", "8", "--threads", "2", "--calls", "400"])
        .args(["--method", "sys.ping", "--json", "--quiet"]);
    let (code, out, err) = support::run(cmd);
    assert_eq!(code, 0, "{out}{err}\n{}", server.log());
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(report["ok"], 400, "{report}");
}

#[test]
fn a_tls_client_past_max_clients_gets_the_32005_line_over_tls() {
    let files = TlsFiles::new("max-clients");
    let http_port = support::free_port().to_string();
    let http = format!("127.0.0.1:{http_port}");
    let (_db, server) = tls_server(
        &files,
        &[
            ("server.max_clients", "1"),
            ("server.tls_handshake_timeout_ms", "600000"),
            ("server.http_listen", &http),
        ],
    );
    // The one client allowed: a socket that has not handshaken yet counts
    // (once the start's readiness probe has left; until then it is refused).
    let mut held = None;
    let mut reply = String::new();
    support::wait_until("a client held and the next one refused", || {
        held = Some(TcpStream::connect(&server.addr).unwrap());
        reply = python_call(port(&server), &files.ca_file, None, PING);
        !reply.contains(r#""result""#)
    });
    let value: serde_json::Value =
        serde_json::from_str(&reply).unwrap_or_else(|_| panic!("not JSON-RPC: {reply}"));
    assert_eq!(support::error_code(&value), -32005, "{reply}");
    assert_eq!(value["error"]["data"]["max_clients"], 1, "{reply}");
    // HTTPS: a 503 with the -32005 body.
    let out = curl_ping_https(&files.ca_file, &http_port, &["-w", "\n%{http_code}"]);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.ends_with("\n503") && answer.contains("-32005"),
        "{answer}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
    support::wait_until("a free slot once the held client left", || {
        let reply = python_call(port(&server), &files.ca_file, None, PING);
        reply.contains(r#""result""#)
    });
}

/// `GET /metrics` on `addr`: the exposition's lines.
fn scrape(addr: &str) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines().map(str::to_string).collect()
}

/// The value of the sample `name` in `lines` (0 when absent).
fn sample(lines: &[String], name: &str) -> f64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn handshakes_are_counted_by_outcome_in_metrics() {
    let files = TlsFiles::new("metrics");
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let (_db, server) = tls_server(
        &files,
        &[
            ("metrics.listen", metrics.as_str()),
            ("server.tls_handshake_timeout_ms", "300"),
        ],
    );
    support::wait_until("the metrics listener", || {
        TcpStream::connect(&metrics).is_ok()
    });
    let count = |outcome: &str| {
        let name = format!("blitz_tls_handshakes_total{{outcome=\"{outcome}\"}}");
        sample(&scrape(&metrics), &name)
    };
    assert_eq!(count("failed"), 0.0);
    assert_pong(&python_call(port(&server), &files.ca_file, None, PING));
    assert_eq!(count("ok"), 1.0);
    let seconds = sample(&scrape(&metrics), "blitz_tls_handshake_seconds_count");
    assert_eq!(seconds, 1.0, "the handshake's duration is observed");

    let mut plain = TcpStream::connect(&server.addr).unwrap();
    plain.write_all(PING.as_bytes()).unwrap();
    plain.write_all(b"\n").unwrap();
    support::wait_until("a failed handshake counted", || count("failed") == 1.0);

    let _silent = TcpStream::connect(&server.addr).unwrap();
    support::wait_until("a timed-out handshake counted", || count("timeout") == 1.0);
    assert_eq!((count("ok"), count("failed")), (1.0, 1.0));
}

#[test]
fn blitz_bench_handshakes_makes_full_handshakes_each_answered() {
    let files = TlsFiles::new("storm");
    let (_db, server) = tls_server(&files, &[]);
    let target = format!("localhost:{}", port(&server));
    let mut cmd = Command::new(bin("blitz"));
    cmd.args(["--server", &target, "--ca"])
        .arg(&files.ca_file)
        .args([
            "bench",
            "--handshakes",
            "-c",
            "4",
            "--duration",
            "1",
            "--json",
        ])
        .args(["--server-pid", &server.child.id().to_string()]);
    let (code, out, err) = support::run(cmd);
    assert_eq!(code, 0, "{out}{err}\n{}", server.log());
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert!(report["handshakes"].as_u64() > Some(0), "{report}");
    assert_eq!(report["full"], report["handshakes"], "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["router_us_per_handshake"].is_number(), "{report}");
    // Without --ca or --tls there is nothing to handshake.
    let mut cmd = Command::new(bin("blitz"));
    cmd.args(["--server", &target, "bench", "--handshakes"]);
    let (code, _, err) = support::run(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ca"), "{err}");
}
