//! The `blitz` command against a real server: results as JSON on stdout,
//! one error line on stderr, and an exit code per class of outcome.

mod support;

use std::process::Command;

use support::{bin, free_port, run, Server, TestDb};

/// Runs `blitz --server addr args…` with no stored sessions.
fn blitz(addr: &str, args: &[&str]) -> (i32, String, String) {
    run(blitz_command(addr, args))
}

/// The `blitz` command line, with an empty config dir (no stored sessions).
fn blitz_command(addr: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("blitz"));
    cmd.arg("--server")
        .arg(addr)
        .args(args)
        .env_remove("BLITZ_SERVER")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("blitz-cli-test-no-config"),
        );
    cmd
}

/// A database with `blitz_api.sleep_ms(ms)`.
fn sleepy_db() -> TestDb {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api;
         CREATE FUNCTION blitz_api.sleep_ms(ms int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(ms / 1000.0); RETURN ms; END $$;",
    );
    db
}

#[test]
fn the_thin_client_calls_pings_and_reports_errors_by_class() {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api;
         CREATE FUNCTION blitz_api.add(a int, b int DEFAULT 0) RETURNS int LANGUAGE sql AS 'SELECT a + b';
         CREATE FUNCTION blitz_api.fail() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'nope'; END $$;",
    );
    let server = Server::start(&db.url, &[]);

    let (code, out, _) = blitz(&server.addr, &["call", "api.add", "a=2", "b=3"]);
    assert_eq!((code, out.trim()), (0, "5"));
    let (code, out, _) = blitz(&server.addr, &["call", "api.add", r#"{"a": 7}"#]);
    assert_eq!((code, out.trim()), (0, "7"));
    let (code, out, _) = blitz(&server.addr, &["ping"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"pong\": true"), "{out}");
    let (code, out, _) = blitz(&server.addr, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"queue\""), "{out}");

    let (code, _, err) = blitz(&server.addr, &["call", "api.add", "a=x"]);
    assert_eq!(code, 4, "refused, final: {err}");
    assert!(
        err.starts_with("blitz: error -32602 Invalid params") && err.contains("param a"),
        "{err}"
    );
    let (code, _, err) = blitz(&server.addr, &["call", "api.fail"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("-32010") && err.contains("P0001"), "{err}");

    let (code, _, err) = blitz(&server.addr, &["call"]);
    assert_eq!(code, 2, "usage: {err}");
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = blitz(&nobody, &["ping"]);
    assert_eq!(code, 5, "connection: {err}");
}

#[test]
fn an_overloaded_server_is_a_retryable_refusal_after_the_retries() {
    let db = sleepy_db();
    let server = Server::start(
        &db.url,
        &[("db.pool_size", "1"), ("invocation.queue_capacity", "1")],
    );
    let mut watcher = support::Rpc::session(&server.addr); // logged in before the queue is full
    let mut busy = support::Rpc::session(&server.addr);
    // One running, then one queued: the queue of one is full.
    busy.send("api.sleep_ms", serde_json::json!({"ms": 3000}));
    db.wait_until_running("sleep_ms", 1);
    busy.send("api.sleep_ms", serde_json::json!({"ms": 3000}));
    watcher.wait_for_status("the call queued", |s| s["queue"]["depth"] == 1);
    let (code, _, err) = blitz(&server.addr, &["call", "api.sleep_ms", "ms=1"]);
    assert_eq!(code, 3, "refused, retryable: {err}");
    assert!(
        err.contains("-32001 Server overloaded") && err.contains("retry after"),
        "{err}"
    );
    assert!(err.contains(", 3 attempts)"), "the default: {err}");
    let args = ["--max-attempts", "2", "call", "api.sleep_ms", "ms=1"];
    let (code, _, err) = blitz(&server.addr, &args);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(", 2 attempts)"), "{err}");
}

#[test]
fn a_server_list_skips_an_instance_that_is_down() {
    let db = sleepy_db();
    let server = Server::start(&db.url, &[]);
    let down = format!("127.0.0.1:{}", free_port());
    for list in [
        format!("{down},{}", server.addr),
        format!("{},{down}", server.addr),
    ] {
        let (code, out, err) = blitz(&list, &["call", "api.sleep_ms", "ms=1"]);
        assert_eq!((code, out.trim()), (0, "1"), "{list}: {err}");
    }
}

#[test]
fn a_server_killed_mid_call_exits_6_outcome_unknown() {
    let db = sleepy_db();
    let mut server = Server::start(&db.url, &[]);
    let cmd = blitz_command(&server.addr, &["call", "api.sleep_ms", "ms=5000"]);
    let caller = std::thread::spawn(move || run(cmd));
    db.wait_until_running("sleep_ms", 1);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (code, out, err) = caller.join().unwrap();
    assert_eq!(code, 6, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("may or may not have run"), "{err}");
}

/// `blitz call` as user `ann` (the trust-mode login of a call without a
/// stored session), so that every call shares one user's idempotency keys.
fn blitz_as_ann(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = blitz_command(addr, args);
    cmd.env("USER", "ann");
    run(cmd)
}

#[test]
fn an_idempotency_key_runs_a_repeated_call_once() {
    let (db, server) = Server::on_fresh_db(
        "CREATE SCHEMA blitz_api;
         CREATE TABLE public.balance (id int PRIMARY KEY, amount int NOT NULL);
         INSERT INTO public.balance VALUES (1, 0);
         CREATE FUNCTION blitz_api.deposit(cents int) RETURNS int LANGUAGE sql
           AS 'UPDATE public.balance SET amount = amount + cents WHERE id = 1 RETURNING amount';",
        &[],
    );
    let balance = || -> i32 {
        db.connect()
            .query_one("SELECT amount FROM public.balance", &[])
            .unwrap()
            .get(0)
    };
    let keyed = [
        "call",
        "api.deposit",
        "cents=5",
        "--idempotency-key",
        "dep-1",
    ];
    for _ in 0..2 {
        let (code, out, err) = blitz_as_ann(&server.addr, &keyed);
        assert_eq!((code, out.trim()), (0, "5"), "the first outcome: {err}");
    }
    assert_eq!(balance(), 5, "the deposit ran once");

    let (code, out, err) = blitz_as_ann(&server.addr, &["call", "api.deposit", "cents=5"]);
    assert_eq!(
        (code, out.trim()),
        (0, "10"),
        "without a key it runs: {err}"
    );

    let other = [
        "call",
        "api.deposit",
        "cents=7",
        "--idempotency-key",
        "dep-1",
    ];
    let (code, out, err) = blitz_as_ann(&server.addr, &other);
    assert_eq!(code, 4, "refused, final: {err}");
    assert!(out.is_empty() && err.contains("-32011"), "{err}");

    let long = "k".repeat(257);
    let too_long = ["call", "api.deposit", "cents=5", "--idempotency-key", &long];
    let (code, _, err) = blitz_as_ann(&server.addr, &too_long);
    assert_eq!(code, 2, "usage: {err}");
    assert!(
        err.contains("--idempotency-key") && err.contains("1 to 256 bytes, not 257"),
        "{err}"
    );
    assert_eq!(balance(), 10, "neither refused call ran");
}
