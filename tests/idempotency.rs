//! Idempotency keys against a real server and PostgreSQL: a repeat gets
//! the recorded outcome (result or error) without running the function, a
//! concurrent repeat waits for the first, a reused key gets -32011, and
//! records expire.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{error_code, result, Rpc, Server, TestDb};

/// A database whose functions append to `public.applied`, so that the rows
/// count the times a call really ran.
fn fixture_db() -> TestDb {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api;
         CREATE TABLE public.applied (id serial PRIMARY KEY, note text NOT NULL);
         CREATE FUNCTION blitz_api.apply(note text) RETURNS int LANGUAGE sql
           AS 'INSERT INTO public.applied (note) VALUES (note) RETURNING id';
         CREATE FUNCTION blitz_api.apply_slowly(note text, ms int) RETURNS int LANGUAGE plpgsql AS $$
           DECLARE r int;
           BEGIN PERFORM pg_sleep(ms / 1000.0);
                 INSERT INTO public.applied (note) VALUES (note) RETURNING id INTO r; RETURN r; END $$;
         CREATE FUNCTION blitz_api.refuse(note text) RETURNS int LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO public.applied (note) VALUES (note);
                 RAISE EXCEPTION 'refused: %', note USING ERRCODE = 'P0001'; END $$;",
    );
    db
}

/// Sends `method` with `params` and `key`, and reads its reply.
fn keyed(rpc: &mut Rpc, method: &str, params: Value, key: &str) -> Value {
    let id = rpc.send_with(method, params, json!({ "idempotency_key": key }));
    let reply = rpc.read_reply().expect("a reply");
    assert_eq!(reply["id"], id, "{reply}");
    reply
}

fn applied(db: &TestDb, note: &str) -> i64 {
    db.connect()
        .query_one(
            "SELECT count(*) FROM public.applied WHERE note = $1",
            &[&note],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_repeat_gets_the_recorded_result_without_running() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[]);
    let mut rpc = Rpc::session(&server.addr);
    let first = keyed(&mut rpc, "api.apply", json!({"note": "a"}), "k-1");
    let id = result(&first).clone();
    let again = keyed(&mut rpc, "api.apply", json!({"note": "a"}), "k-1");
    assert_eq!(result(&again), &id, "{again}");
    // From another connection of the same user, too.
    let mut other = Rpc::session(&server.addr);
    let third = keyed(&mut other, "api.apply", json!({"note": "a"}), "k-1");
    assert_eq!(result(&third), &id);
    assert_eq!(applied(&db, "a"), 1, "the function ran once");
    // Without a key every call runs.
    for _ in 0..2 {
        result(&rpc.call("api.apply", json!({"note": "a"})));
    }
    assert_eq!(applied(&db, "a"), 3);
    // Keys belong to a user: another user's same key is another call.
    let mut bob = Rpc::connect(&server.addr);
    bob.login(json!({"user": "bob"}));
    let bobs = keyed(&mut bob, "api.apply", json!({"note": "a"}), "k-1");
    assert_ne!(result(&bobs), &id);
    assert_eq!(applied(&db, "a"), 4);
}

#[test]
fn a_repeat_gets_the_recorded_error_and_nothing_is_applied() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[]);
    let mut rpc = Rpc::session(&server.addr);
    let first = keyed(&mut rpc, "api.refuse", json!({"note": "r"}), "k-err");
    assert_eq!(error_code(&first), -32010, "{first}");
    assert_eq!(first["error"]["data"]["detail"], "refused: r");
    let again = keyed(&mut rpc, "api.refuse", json!({"note": "r"}), "k-err");
    assert_eq!(again["error"], first["error"], "the recorded error");
    assert_eq!(applied(&db, "r"), 0, "rolled back both times");
    let recorded: i64 = db
        .connect()
        .query_one(
            "SELECT count(*) FROM blitz.idempotency WHERE key = 'k-err' AND outcome::text LIKE '%-32010%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1);
    // The key was released: the connection serves a keyed call at once.
    let next = keyed(&mut rpc, "api.apply", json!({"note": "after"}), "k-next");
    result(&next);
    // Invalid params are no outcome of the function: not recorded.
    let bad = keyed(&mut rpc, "api.apply", json!({"nope": 1}), "k-bad");
    assert_eq!(error_code(&bad), -32602);
    let fixed = keyed(&mut rpc, "api.apply", json!({"note": "fixed"}), "k-bad");
    result(&fixed);
}

#[test]
fn a_reused_key_is_refused_with_32011() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[]);
    let mut rpc = Rpc::session(&server.addr);
    result(&keyed(&mut rpc, "api.apply", json!({"note": "x"}), "k-2"));
    let other_params = keyed(&mut rpc, "api.apply", json!({"note": "y"}), "k-2");
    assert_eq!(error_code(&other_params), -32011, "{other_params}");
    let error = &other_params["error"];
    assert_eq!(error["message"], "Idempotency key reused");
    assert_eq!(error["data"]["idempotency_key"], "k-2");
    assert_eq!(error["data"]["retryable"], false);
    let other_method = keyed(&mut rpc, "api.refuse", json!({"note": "x"}), "k-2");
    assert_eq!(error_code(&other_method), -32011);
    // Params are compared as JSON values: member order does not matter.
    let slow = json!({"note": "z", "ms": 1});
    result(&keyed(&mut rpc, "api.apply_slowly", slow, "k-3"));
    let reordered: Value = serde_json::from_str(r#"{"ms": 1, "note": "z"}"#).unwrap();
    result(&keyed(&mut rpc, "api.apply_slowly", reordered, "k-3"));
    assert_eq!(
        (applied(&db, "x"), applied(&db, "y"), applied(&db, "z")),
        (1, 0, 1)
    );
}

/// Waits until the call of `function` is running in PostgreSQL.
fn wait_running(db: &TestDb, function: &str) {
    let start = Instant::now();
    let mut client = db.connect();
    loop {
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                &[&format!("%{function}%")],
            )
            .unwrap()
            .get(0);
        if running > 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{function} never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_concurrent_repeat_waits_for_the_first_within_its_own_deadline() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[]);
    let mut first = Rpc::session(&server.addr);
    let mut second = Rpc::session(&server.addr);
    let mut hasty = Rpc::session(&server.addr);
    let params = json!({"note": "slow", "ms": 1500});
    let first_id = first.send_with(
        "api.apply_slowly",
        params.clone(),
        json!({"idempotency_key": "k-slow"}),
    );
    wait_running(&db, "apply_slowly");
    // A repeat whose deadline ends before the first does: -32002.
    hasty.send_with(
        "api.apply_slowly",
        params.clone(),
        json!({"idempotency_key": "k-slow", "timeout_ms": 300}),
    );
    let second_id = second.send_with(
        "api.apply_slowly",
        params,
        json!({"idempotency_key": "k-slow"}),
    );
    let hasty_reply = hasty.read_reply().unwrap();
    assert_eq!(error_code(&hasty_reply), -32002, "{hasty_reply}");
    let a = first.read_reply().unwrap();
    let b = second.read_reply().unwrap();
    assert_eq!(
        (a["id"].clone(), b["id"].clone()),
        (json!(first_id), json!(second_id))
    );
    assert_eq!(result(&a), result(&b), "the repeat got the first's outcome");
    assert_eq!(applied(&db, "slow"), 1, "applied once");
}

#[test]
fn records_expire_after_the_ttl() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[("invocation.idempotency_ttl_s", "1")]);
    let mut rpc = Rpc::session(&server.addr);
    result(&keyed(&mut rpc, "api.apply", json!({"note": "e"}), "k-exp"));
    // The sweep (every second at this TTL) deletes the record.
    let start = Instant::now();
    while db.count_rows("blitz.idempotency") > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never swept");
        std::thread::sleep(Duration::from_millis(50));
    }
    result(&keyed(&mut rpc, "api.apply", json!({"note": "e"}), "k-exp"));
    assert_eq!(applied(&db, "e"), 2, "after expiry the call runs again");
}

#[test]
fn an_expired_record_not_yet_swept_is_not_returned() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[]);
    let mut rpc = Rpc::session(&server.addr);
    result(&keyed(
        &mut rpc,
        "api.apply",
        json!({"note": "old"}),
        "k-old",
    ));
    db.execute("UPDATE blitz.idempotency SET created = now() - interval '2 days'");
    result(&keyed(
        &mut rpc,
        "api.apply",
        json!({"note": "old"}),
        "k-old",
    ));
    assert_eq!(applied(&db, "old"), 2);
    assert_eq!(
        db.count_rows("blitz.idempotency"),
        1,
        "the expired record was replaced"
    );
}
