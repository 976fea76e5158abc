//! Clients that do not keep a connection: a request's own `"session"`
//! member authenticates that request alone, on a fresh TCP connection per
//! call, and `blitz call --session KEY` sends it.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::{bin, error_code, result, run, Rpc, Server, TestDb};

fn add_function(db: &TestDb) {
    db.execute(
        "CREATE SCHEMA blitz_api; \
         CREATE FUNCTION blitz_api.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b'; \
         CREATE FUNCTION blitz_api.whoami() RETURNS text LANGUAGE sql AS $$SELECT current_setting('blitz.user')$$",
    );
}

/// One call on a connection of its own, with `extra` members.
fn call_once(addr: &str, method: &str, params: Value, extra: Value) -> Value {
    let mut rpc = Rpc::connect(addr);
    rpc.send_with(method, params, extra);
    rpc.read_reply().expect("a reply")
}

#[test]
fn a_session_member_authenticates_one_request_on_a_fresh_connection() {
    let db = TestDb::new();
    add_function(&db);
    let server = Server::start(&db.url, &[]);
    let key = {
        let mut rpc = Rpc::connect(&server.addr);
        rpc.login(json!({"user": "carol"}))["session"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let own = json!({ "session": key });
    for i in 0..3 {
        let reply = call_once(&server.addr, "api.add", json!([i, 1]), own.clone());
        assert_eq!(result(&reply), i + 1);
    }
    let who = call_once(&server.addr, "api.whoami", json!({}), own.clone());
    assert_eq!(result(&who), "carol");
    let status = call_once(&server.addr, "sys.status", json!({}), own.clone());
    assert!(result(&status)["counters"].is_object(), "{status}");

    // The key authenticates its request only: nothing is bound.
    let mut rpc = Rpc::connect(&server.addr);
    rpc.send_with("api.add", json!([1, 1]), own.clone());
    assert_eq!(result(&rpc.read_reply().unwrap()), 2);
    assert_eq!(error_code(&rpc.call("api.add", json!([1, 1]))), -32006);

    // A dead key is refused as session.join refuses it.
    let bogus = json!({"session": "not-a-session"});
    for method in ["api.add", "sys.status"] {
        let reply = call_once(&server.addr, method, json!([1, 1]), bogus.clone());
        assert_eq!(error_code(&reply), -32006, "{method}: {reply}");
    }
    let reply = call_once(
        &server.addr,
        "api.add",
        json!([1, 1]),
        json!({"session": 5}),
    );
    assert_eq!(error_code(&reply), -32600, "{reply}");

    // The CLI sends it with --session.
    let mut cli = Command::new(bin("blitz"));
    cli.args(["--server", &server.addr, "call", "--session", &key])
        .args(["api.add", "a=2", "b=3"])
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("blitz-http-test-none"),
        );
    let (code, stdout, stderr) = run(cli);
    assert_eq!((code, stdout.trim()), (0, "5"), "{stderr}");

    // session.logout with the member ends that session everywhere.
    let out = call_once(&server.addr, "session.logout", json!({}), own.clone());
    assert_eq!(result(&out), &Value::Null);
    let after = call_once(&server.addr, "api.add", json!([1, 1]), own);
    assert_eq!(error_code(&after), -32006);
}

#[test]
fn a_bound_session_still_works_and_a_request_session_takes_precedence() {
    let db = TestDb::new();
    add_function(&db);
    let server = Server::start(&db.url, &[]);
    let dave = {
        let mut rpc = Rpc::connect(&server.addr);
        rpc.login(json!({"user": "dave"}))["session"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut erin = Rpc::session(&server.addr); // bound as user "test"
    assert_eq!(result(&erin.call("api.whoami", json!({}))), "test");
    erin.send_with("api.whoami", json!({}), json!({ "session": dave }));
    assert_eq!(result(&erin.read_reply().unwrap()), "dave");
    assert_eq!(result(&erin.call("api.whoami", json!({}))), "test");
}
