//! TLS to PostgreSQL, end to end: a PostgreSQL of its own with `ssl=on`,
//! a certificate from a test CA and only `hostssl` lines in `pg_hba.conf`;
//! `blitz-server` with `db.url`'s `sslmode` and `sslrootcert`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use support::certs::{temp_dir, TestCa};
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
        let dir = temp_dir("pg-cas");
        TlsDb {
            cluster,
            ca: ca.write(&dir, "ca"),
            wrong_ca: TestCa::new("some other CA").write(&dir, "wrong-ca"),
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
