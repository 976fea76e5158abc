//! Configuration: defaults, file, environment, flags, precedence, every
//! validation error, `--print-config`, and the server's start line, exit
//! codes and pool-size check against a real PostgreSQL.

mod support;

use std::io::Write;
use std::process::Command;

use blitz::{Config, ConfigInputs, PoolSizeOrigin, Source};
use support::{bin, run, Server, TestDb};

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
    flags: &[(&str, &str)],
) -> Result<Config, String> {
    let path = file.map(|text| {
        let mut f = tempfile_in_target();
        f.1.write_all(text.as_bytes()).unwrap();
        f.0
    });
    let result = Config::load(&ConfigInputs {
        file: path.clone(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    if let Some(p) = path {
        let _ = std::fs::remove_file(&p);
    }
    result.map_err(|e| e.to_string())
}

fn tempfile_in_target() -> (std::path::PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "blitz-config-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let f = std::fs::File::create(&path).unwrap();
    (path, f)
}

/// The pool the formula should give here, computed by the test itself, not
/// by the code under test: physical cores counted from
/// `/sys/devices/system/cpu/cpu*/topology` (distinct package and core ids
/// of the CPUs that are online; `cpuN/online` is absent for a CPU that
/// cannot go offline), at most the CPUs this process may use. `physical`
/// is false where the topology is not exposed: the server then sizes the
/// pool from the logical CPUs.
fn expected_cores() -> (u64, bool) {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut cores = std::collections::BTreeSet::new();
    let entries = std::fs::read_dir("/sys/devices/system/cpu")
        .into_iter()
        .flatten();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_cpu = name
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let dir = entry.path();
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|t| t.trim().to_string())
        };
        if read("online").is_some_and(|o| o == "0") {
            continue;
        }
        match (
            read("topology/physical_package_id"),
            read("topology/core_id"),
        ) {
            (Some(package), Some(core)) => cores.insert((package, core)),
            _ => return (logical, false),
        };
    }
    if cores.is_empty() {
        return (logical, false);
    }
    ((cores.len() as u64).min(logical), true)
}

#[test]
fn defaults_follow_the_architecture() {
    let c = load(None, &[], &[]).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:4063");
    assert_eq!(c.server.max_message_bytes, 1 << 20);
    assert_eq!(c.db.api_schema, "blitz_api");
    assert_eq!(c.auth.mode, blitz::AuthMode::Password);
    assert_eq!(c.auth.session_idle_timeout_s, 600);
    let (cores, physical) = expected_cores();
    assert_eq!(c.db.pool_size, 4 * cores * 2, "room for active_limit auto");
    assert_eq!(
        c.active_limit_start(),
        cores * 2,
        "the tuner starts at the formula"
    );
    assert_eq!(
        c.pool_size_origin,
        PoolSizeOrigin::Formula {
            cores,
            physical,
            spindles: 0
        }
    );
    assert_eq!(
        c.invocation.workers, c.db.pool_size,
        "workers = 0 means the pool size"
    );
    assert_eq!(c.source("db.pool_size"), Source::Default);
}

#[test]
fn spindles_add_to_the_formula() {
    let c = load(None, &[], &[("db.effective_spindles", "3")]).unwrap();
    let (cores, _) = expected_cores();
    assert_eq!(c.db.pool_size, 4 * (cores * 2 + 3));
    assert!(c.pool_size_explained().contains("+ spindles 3"));
}

#[test]
fn file_env_and_flags_layer_in_order() {
    let file = "[db]\npool_size = 7\napi_schema = \"from_file\"\n[invocation]\nqueue_capacity = 11\nworkers = 2\n";
    let c = load(Some(file), &[], &[]).unwrap();
    assert_eq!(
        (
            c.db.pool_size,
            c.invocation.queue_capacity,
            c.invocation.workers
        ),
        (7, 11, 2)
    );
    assert!(matches!(c.source("db.pool_size"), Source::File(_)));

    let env = [
        ("BLITZ_DB_POOL_SIZE", "9"),
        ("BLITZ_INVOCATION_QUEUE_CAPACITY", "22"),
        ("BLITZ_AUTH_SET_ROLE", "true"),
    ];
    let c = load(Some(file), &env, &[]).unwrap();
    assert_eq!(
        (c.db.pool_size, c.invocation.queue_capacity),
        (9, 22),
        "env beats file"
    );
    assert!(c.auth.set_role);
    assert_eq!(c.db.api_schema, "from_file");
    assert_eq!(
        c.source("db.pool_size"),
        Source::Env("BLITZ_DB_POOL_SIZE".into())
    );

    let c = load(Some(file), &env, &[("db.pool_size", "5")]).unwrap();
    assert_eq!(c.db.pool_size, 5, "flag beats env");
    assert_eq!(c.invocation.queue_capacity, 22);
    assert_eq!(c.source("db.pool_size"), Source::Flag);
}

#[test]
fn unrelated_blitz_variables_are_ignored() {
    let c = load(None, &[("BLITZ_SERVERS", "a:1"), ("PATH", "/bin")], &[]).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:4063");
}

/// Each case: where the bad value is given, and the fragments its message must hold.
#[test]
fn every_validation_error_names_key_and_value() {
    let cases: Vec<(Result<Config, String>, &[&str])> = vec![
        (
            load(Some("[db]\npool_sise = 3\n"), &[], &[]),
            &["db.pool_sise", "unknown", "db.pool_size"],
        ),
        (
            load(Some("[nope]\nx = 1\n"), &[], &[]),
            &["nope", "allowed sections"],
        ),
        (
            load(Some("[db]\npool_size = \"four\"\n"), &[], &[]),
            &["db.pool_size", "four", "whole number"],
        ),
        (
            load(None, &[("BLITZ_DB_POOL_SIZE", "many")], &[]),
            &["db.pool_size", "many", "BLITZ_DB_POOL_SIZE"],
        ),
        (
            load(None, &[], &[("db.pool_size", "-1")]),
            &["db.pool_size", "-1"],
        ),
        (
            load(None, &[], &[("db.pool_size", "100000")]),
            &["db.pool_size", "100000", "allowed 0 to 10000"],
        ),
        (
            load(None, &[], &[("invocation.queue_capacity", "0")]),
            &["invocation.queue_capacity", "= 0", "allowed 1"],
        ),
        (
            load(None, &[], &[("server.max_clients", "0")]),
            &["server.max_clients", "= 0"],
        ),
        (
            load(None, &[], &[("server.max_message_bytes", "10")]),
            &["server.max_message_bytes", "10"],
        ),
        (
            load(None, &[], &[("server.max_in_flight_per_connection", "0")]),
            &["server.max_in_flight_per_connection", "0"],
        ),
        (
            load(None, &[], &[("invocation.default_timeout_ms", "0")]),
            &["invocation.default_timeout_ms", "0"],
        ),
        (
            load(None, &[], &[("invocation.workers", "5000")]),
            &["invocation.workers", "5000"],
        ),
        (
            load(None, &[], &[("db.acquire_timeout_ms", "0")]),
            &["db.acquire_timeout_ms", "0"],
        ),
        (
            load(None, &[], &[("server.listen", "not an address")]),
            &["server.listen", "not an address", "host:port"],
        ),
        (
            load(None, &[], &[("server.listen", "127.0.0.1")]),
            &["server.listen", "127.0.0.1"],
        ),
        (
            load(None, &[], &[("metrics.listen", "nowhere")]),
            &["metrics.listen", "nowhere"],
        ),
        (
            load(
                None,
                &[],
                &[("db.url", "postgresql://bob:pw@host:notaport/x")],
            ),
            &[
                "db.url",
                "bob:***@host:notaport",
                "PostgreSQL connection URL",
            ],
        ),
        (
            load(None, &[], &[("db.api_schema", "x; drop")]),
            &["db.api_schema", "x; drop", "identifier"],
        ),
        (
            load(None, &[], &[("auth.mode", "ldap")]),
            &["auth.mode", "ldap", "\"password\" or \"trust\""],
        ),
        (
            load(None, &[], &[("auth.set_role", "maybe")]),
            &["auth.set_role", "maybe", "true or false"],
        ),
        (
            load(None, &[], &[("db.poolsize", "3")]),
            &["db.poolsize", "unknown"],
        ),
    ];
    for (result, fragments) in cases {
        let message = result
            .err()
            .unwrap_or_else(|| panic!("expected an error mentioning {fragments:?}"));
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "{message:?} should contain {fragment:?}"
            );
        }
        assert!(!message.contains("pw@"), "password leaked: {message}");
    }
}

#[test]
fn the_shipped_config_file_loads_and_lists_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/blitz.toml");
    let c = Config::load(&ConfigInputs {
        file: Some(path.into()),
        env: vec![],
        flags: vec![],
    })
    .unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let printed = c.to_annotated_toml();
    for line in printed.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            text.contains(&format!("\n{key} = ")),
            "conf/blitz.toml lacks key {key}"
        );
    }
}

#[test]
fn bad_config_exits_2_with_a_message() {
    let mut cmd = Command::new(bin("blitz-server"));
    cmd.args(["--queue-capacity", "0"]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 2);
    assert!(
        err.contains("invocation.queue_capacity") && err.contains("= 0"),
        "{err}"
    );

    let mut cmd = Command::new(bin("blitz-server"));
    cmd.env("BLITZ_SERVER_LISTEN", "nowhere");
    let (code, _, err) = run(cmd);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.listen") && err.contains("nowhere"),
        "{err}"
    );
}

#[test]
fn print_config_shows_sources_and_redacts_passwords() {
    let mut cmd = Command::new(bin("blitz-server"));
    cmd.args([
        "--print-config",
        "--db-url",
        "postgresql://app:hunter2@db.example:5432/blitz",
    ])
    .env("BLITZ_INVOCATION_QUEUE_CAPACITY", "77");
    let (code, out, _) = run(cmd);
    assert_eq!(code, 0);
    assert!(!out.contains("hunter2"), "{out}");
    assert!(
        out.contains("url = \"postgresql://app:***@db.example:5432/blitz\"  # flag"),
        "{out}"
    );
    assert!(
        out.contains("queue_capacity = 77  # env BLITZ_INVOCATION_QUEUE_CAPACITY"),
        "{out}"
    );
    assert!(out.contains("max_retries = 3  # default"), "{out}");
    let kind = if expected_cores().1 {
        "physical"
    } else {
        "logical"
    };
    assert!(out.contains(&format!("{kind} cores")), "{out}");
    let reparsed: toml::Table = out.parse().expect("--print-config prints valid TOML");
    assert!(reparsed.contains_key("server"));
}

#[test]
fn server_starts_logs_sizes_and_stops_on_sigterm() {
    let db = TestDb::new();
    let mut cmd = Command::new(bin("blitz-server"));
    let addr = format!("127.0.0.1:{}", support::free_port());
    cmd.args([
        "--db-url",
        &db.url,
        "--listen",
        &addr,
        "--queue-capacity",
        "123",
    ]);
    let mut server = Server::spawn(cmd, addr);
    let start = std::time::Instant::now();
    while !server.log().contains("started") && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    let (cores, physical) = expected_cores();
    let kind = if physical { "physical" } else { "logical" };
    let expected = format!(
        "pool_size={} (4 × ({kind} cores {cores} × 2 + spindles 0), room for active_limit auto)",
        4 * cores * 2
    );
    assert!(
        log.contains(&expected),
        "start line should show {expected:?}:\n{log}"
    );
    assert!(log.contains("queue_capacity=123"), "{log}");
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
}

#[test]
fn a_pool_larger_than_the_budget_gets_a_share_and_no_room_exits_2() {
    let db = TestDb::new();
    // The budget is max_connections 300 − 3 reserved: the pool of 299 is cut
    // to it, less this instance's housekeeping connection and one kept for
    // the next instance to join.
    let server = support::Server::start(&db.url, &[("db.pool_size", "299")]);
    let mut rpc = support::Rpc::session(&server.addr);
    let status = support::result(&rpc.call("sys.status", serde_json::json!({}))).clone();
    assert_eq!(status["pool"]["size"], 299, "{status}");
    assert_eq!(status["pool"]["share"], 295, "{status}");
    assert_eq!(status["cluster"]["budget"], 297, "{status}");
    drop(server);
    let mut cmd = Command::new(bin("blitz-server"));
    cmd.args(["--db-url", &db.url, "--listen", "127.0.0.1:0"])
        .args(["--set", "db.reserved_connections=299"]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("max_connections 300 minus db.reserved_connections 299 = 1"),
        "{err}"
    );
}

#[test]
fn plaintext_passwords_off_loopback_are_refused_unless_allowed() {
    let e = load(None, &[], &[("server.listen", "0.0.0.0:4063")]).unwrap_err();
    assert!(
        e.contains("auth.mode")
            && e.contains("server.tls_cert_file")
            && e.contains("server.allow_plaintext"),
        "{e}"
    );
    let e = load(None, &[], &[("server.http_listen", "0.0.0.0:4080")]).unwrap_err();
    assert!(e.contains("server.http_listen"), "{e}");
    let allowed = load(
        None,
        &[],
        &[
            ("server.listen", "0.0.0.0:4063"),
            ("server.allow_plaintext", "true"),
        ],
    );
    assert!(allowed.is_ok(), "{allowed:?}");
    assert!(load(None, &[], &[]).is_ok(), "loopback stays plaintext");
}

#[test]
fn tls_keys_are_checked_at_start() {
    let dir = support::certs::temp_dir("config");
    let ca = support::certs::TestCa::new("blitz config CA");
    let (cert, key) = ca.leaf("server", &["localhost"]).write(&dir, "server");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let e = load(None, &[], &[("server.tls_cert_file", &cert)]).unwrap_err();
    assert!(
        e.contains("server.tls_cert_file")
            && e.contains("server.tls_key_file")
            && e.contains("both"),
        "{e}"
    );
    let e = load(None, &[], &[("server.tls_client_ca_file", &cert)]).unwrap_err();
    assert!(e.contains("server.tls_client_ca_file"), "{e}");
    let missing = dir.join("missing.crt").display().to_string();
    let e = load(
        None,
        &[],
        &[
            ("server.tls_cert_file", &missing),
            ("server.tls_key_file", &key),
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("server.tls_cert_file") && e.contains(&missing),
        "{e}"
    );
    let e = load(
        None,
        &[],
        &[
            ("server.tls_cert_file", &cert),
            ("server.tls_key_file", &cert),
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("server.tls_key_file") && e.contains("private key"),
        "{e}"
    );
    let e = load(None, &[], &[("server.tls_handshake_timeout_ms", "0")]).unwrap_err();
    assert!(e.contains("server.tls_handshake_timeout_ms"), "{e}");
    // Good files: the listeners speak TLS.
    let good = load(
        None,
        &[],
        &[
            ("server.tls_cert_file", &cert),
            ("server.tls_key_file", &key),
        ],
    );
    assert!(good.is_ok(), "{:?}", good.err());
}

#[test]
fn server_exits_2_on_plaintext_passwords_off_loopback() {
    let mut cmd = Command::new(bin("blitz-server"));
    cmd.args(["--listen", "0.0.0.0:0", "--set", "auth.mode=password"]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.allow_plaintext"), "{err}");
}

#[test]
fn replica_urls_come_as_a_list_from_file_env_and_flags() {
    let file = load(
        Some("[db]\nreplica_urls = [\"postgresql://s1:5432/x\", \"postgresql://s2:5432/x\"]\n"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(file.db.replica_urls.len(), 2);
    let env = load(
        None,
        &[(
            "BLITZ_DB_REPLICA_URLS",
            "postgresql://s1,s2:5433/x?target_session_attrs=any, host=s3 dbname=x",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(
        env.db.replica_urls,
        [
            "postgresql://s1,s2:5433/x?target_session_attrs=any",
            "host=s3 dbname=x"
        ],
        "a comma inside a multi-host URL does not split it"
    );
    let flag = load(None, &[], &[("db.replica_urls", "")]).unwrap();
    assert!(flag.db.replica_urls.is_empty(), "empty text: no standby");
    let workers = load(
        None,
        &[],
        &[
            ("db.pool_size", "4"),
            ("db.replica_urls", "postgresql://s1/x,postgresql://s2/x"),
        ],
    )
    .unwrap();
    assert_eq!(
        workers.invocation.workers, 12,
        "one worker per pooled connection of every pool"
    );
    assert_eq!(workers.db.replica_max_lag_ms, 1000);
}

#[test]
fn bad_replica_settings_are_refused_naming_key_value_and_fix() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("db.replica_urls", "postgresql://s1:notaport/x")],
            "config key db.replica_urls[0] = postgresql://s1:notaport/x: not a PostgreSQL connection URL",
        ),
        (
            &[("db.replica_urls", "postgresql://s1/x?sslmode=sometimes")],
            "config key db.replica_urls[0]: sslmode=sometimes is not one of",
        ),
        (
            &[("db.replica_urls", "postgresql://s1/x,postgresql://s1/x")],
            "config key db.replica_urls[1] = postgresql://s1/x: named twice",
        ),
        (
            &[("db.url", "postgresql://p/x"), ("db.replica_urls", "postgresql://p/x")],
            "config key db.replica_urls[0] = postgresql://p/x: that is db.url",
        ),
        (
            &[("db.replica_urls", "postgresql://s1/x?sslmode=verify-ca&sslrootcert=/no/such/ca.pem")],
            "config key db.replica_urls[0]'s sslrootcert",
        ),
        (
            &[("db.replica_max_lag_ms", "0")],
            "config key db.replica_max_lag_ms = 0: allowed 1 to 3600000 ms",
        ),
    ];
    for (flags, expected) in cases {
        let e = load(None, &[], flags).unwrap_err();
        assert!(e.contains(expected), "{flags:?}: {e}");
    }
    let e = load(
        Some("[db]\nreplica_urls = \"postgresql://s1/x\"\n"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("db.replica_urls") && e.contains("a list of strings"),
        "{e}"
    );
    let e = load(
        None,
        &[],
        &[("db.replica_urls", "postgresql://u:secret@s1:bad/x")],
    )
    .unwrap_err();
    assert!(!e.contains("secret"), "the password is hidden: {e}");
}
