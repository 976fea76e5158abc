//! Test support: one throw-away PostgreSQL cluster per test process, one fresh
//! database per test, and `blitz-server` processes on free ports.
//!
//! The cluster lives in a temp dir named `blitz-test-pg-*` and is stopped and
//! removed by a detached reaper process as soon as the test process exits,
//! however it exits (success, panic, Ctrl-C, SIGKILL). `make test` waits for
//! the reapers, so no postgres started by the suite outlives it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod certs;

/// The per-process PostgreSQL cluster.
pub struct Cluster {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The cluster's temp dir (data, socket, log).
    pub dir: PathBuf,
    /// Where initdb, pg_ctl and psql live.
    pub bindir: PathBuf,
}

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start_cluster)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL program, run as `postgres` when we are root
/// (the server refuses to run as root).
pub fn pg_command(bindir: &Path, program: &str) -> Command {
    let path = bindir.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn find_bindir() -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("initdb"))
            .collect::<Vec<_>>()
    });
    for candidate in on_path {
        if candidate.is_file() {
            let real = std::fs::canonicalize(&candidate).unwrap_or(candidate);
            return real.parent().unwrap().to_path_buf();
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in `pg_config --bindir`; \
         run `scripts/localdb.sh check` (installs them as root) or install postgresql-15"
    );
}

fn start_cluster() -> Cluster {
    start_cluster_with(|_| String::new())
}

/// A cluster of its own (not [`cluster`]'s) that speaks only TLS: `ssl=on`
/// with `chain_pem` / `key_pem` as its certificate and key, and a
/// `pg_hba.conf` of `hostssl` lines alone, so a plaintext client is refused.
pub fn start_tls_only_cluster(chain_pem: &str, key_pem: &str) -> Cluster {
    start_cluster_with(|data| {
        let files = [
            ("server.crt", chain_pem),
            ("server.key", key_pem),
            ("pg_hba.conf", "hostssl all all 127.0.0.1/32 trust\n"),
        ];
        for (name, text) in files {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write a TLS cluster file");
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
            std::fs::set_permissions(&path, perms).unwrap();
            if is_root() {
                let chown = Command::new("chown").arg("postgres").arg(&path).status();
                assert!(chown.is_ok_and(|s| s.success()), "chown {name} to postgres");
            }
        }
        " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into()
    })
}

/// Makes a cluster: `initdb`, then `setup(data dir)` (which returns extra
/// server options), then starts it on a free port.
fn start_cluster_with(setup: impl FnOnce(&Path) -> String) -> Cluster {
    let bindir = find_bindir();
    let dir = new_cluster_dir(&bindir);
    let data = dir.join("data");
    let out = pg_command(&bindir, "initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .args(["--no-instructions"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extra = setup(&data);
    start_on_a_free_port(bindir, dir, &extra)
}

/// A fresh temp dir for a cluster (`blitz-test-pg-*`), owned by `postgres`
/// when we are root, with its reaper already watching this process.
fn new_cluster_dir(bindir: &Path) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "blitz-test-pg-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "cannot chown the test cluster dir to user postgres; run `scripts/localdb.sh check`"
        );
    }
    spawn_reaper(bindir, &dir);
    dir
}

/// Starts the cluster in `dir`/data on a free port (trying a few, since a
/// port found free may be taken before postgres binds it).
fn start_on_a_free_port(bindir: PathBuf, dir: PathBuf, extra: &str) -> Cluster {
    let data = dir.join("data");
    for _ in 0..5 {
        let port = free_port();
        let opts = server_options(port, &dir) + extra;
        let status = pg_command(&bindir, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        if status.success() {
            return Cluster { port, dir, bindir };
        }
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("the test PostgreSQL did not start:\n{log}");
}

/// A cluster of its own, apart from [`cluster`]'s (for a test that stops,
/// promotes or reconfigures its primary).
pub fn start_own_cluster() -> Cluster {
    start_cluster()
}

/// The postgres options of a test cluster: loopback only, durability off,
/// room for a slot per standby ([`Cluster::standby`]).
fn server_options(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_replication_slots=32 -c max_wal_senders=32",
        dir.display()
    )
}

/// A detached process that waits for this test process to exit, then stops
/// the cluster and removes its dir.
fn spawn_reaper(bindir: &Path, dir: &Path) {
    let pg_ctl = bindir.join("pg_ctl");
    let as_pg = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.1; done; \
         {as_pg}{pg_ctl} -D {dir}/data -m immediate -w stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        dir = dir.display()
    );
    // `setsid -f` forks the reaper into a session of its own (so a Ctrl-C
    // aimed at the test run does not reach it) and returns at once.
    Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn the cluster reaper (setsid, sh)");
}

impl Cluster {
    /// A hot standby of this cluster: `pg_basebackup -R` (streaming WAL,
    /// `standby.signal` and `primary_conninfo` written), started on a free
    /// port. It replays everything the primary writes, every database
    /// included; like every test cluster it is stopped and removed when the
    /// test process exits.
    ///
    /// A replication slot of its own, reserving WAL at once, is made on
    /// the primary before the backup starts (`-S`, and the standby then
    /// streams from it): without it the primary may recycle a WAL segment
    /// the backup or the standby still needs ("requested WAL segment … has
    /// already been removed"). `pg_basebackup -C` was not enough (that
    /// error, once in `make test`): its streaming process makes the slot
    /// only once the backup has started.
    pub fn standby(&self) -> Cluster {
        let dir = new_cluster_dir(&self.bindir);
        let slot = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a cluster dir has a name")
            .replace('-', "_");
        self.connect("postgres")
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .expect("create the standby's replication slot");
        let out = pg_command(&self.bindir, "pg_basebackup")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "--no-sync"])
            .args(["-S", &slot])
            .args(["-c", "fast"])
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        start_on_a_free_port(self.bindir.clone(), dir, "")
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting until
    /// it accepts writes).
    pub fn promote(&self) {
        self.pg_ctl(&["-w", "-t", "60", "promote"]);
    }

    /// Stops the cluster at once (`-m immediate`: like a crash).
    pub fn kill(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// Waits until this standby has replayed everything `primary` had
    /// written when this was called.
    pub fn wait_for_replay(&self, primary: &Cluster) {
        let lsn: String = primary
            .connect("postgres")
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .unwrap()
            .get(0);
        let mut client = self.connect("postgres");
        wait_until(&format!("the standby replayed {lsn}"), || {
            client
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .unwrap()
                .get::<_, bool>(0)
        });
    }

    /// Runs `pg_ctl -D <data> args…`, which must succeed.
    fn pg_ctl(&self, args: &[&str]) {
        let status = pg_command(&self.bindir, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {} failed", args.join(" "));
    }

    /// A URL for database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A plain client on database `db`.
    pub fn connect(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).expect("connect to test cluster")
    }

    /// Stops the cluster (fast shutdown); `start` brings it back on the same port.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts a stopped cluster again on the same port.
    pub fn start(&self) {
        self.start_with("");
    }

    /// Starts a stopped cluster again on the same port, with `extra`
    /// postgres options (e.g. `-c max_connections=40`) after the usual ones.
    pub fn start_with(&self, extra: &str) {
        let opts = format!("{} {extra}", server_options(self.port, &self.dir));
        let status = pg_command(&self.bindir, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
    }
}

/// A database of its own for one test, dropped at the end of the test.
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// Its connection URL.
    pub url: String,
}

impl TestDb {
    /// Creates a fresh, empty database in the process's cluster.
    pub fn new() -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let c = cluster();
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        c.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        TestDb {
            url: c.url(&name),
            name,
        }
    }

    /// A plain client on this database.
    pub fn connect(&self) -> postgres::Client {
        cluster().connect(&self.name)
    }

    /// Rows in `table` (a name the test wrote, never user input).
    pub fn count_rows(&self, table: &str) -> i64 {
        self.connect()
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .expect("count rows")
            .get(0)
    }

    /// Waits until `n` statements whose text contains `fragment` run in
    /// this database (other than the watching one): the condition for "the
    /// call is running". A busy-worker count alone is not: the worker that
    /// answered the previous request (a login) stays busy until just after
    /// its reply is sent.
    pub fn wait_until_running(&self, fragment: &str, n: i64) {
        let mut client = self.connect();
        wait_until(
            &format!("{n} running statement(s) with {fragment:?}"),
            || {
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND state = 'active' AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
                        &[&fragment],
                    )
                    .expect("query pg_stat_activity");
                row.get::<_, i64>(0) >= n
            },
        );
    }

    /// Runs SQL (several statements allowed) on this database.
    pub fn execute(&self, sql: &str) {
        self.connect().batch_execute(sql).expect("test SQL");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&cluster().url("postgres"), postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A running `blitz-server`, killed when dropped. Its stderr is collected.
pub struct Server {
    /// The child process.
    pub child: Child,
    /// `127.0.0.1:port` it listens on.
    pub addr: String,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

/// The path of a binary of this package.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "blitz-server" => PathBuf::from(env!("CARGO_BIN_EXE_blitz-server")),
        "blitz" => PathBuf::from(env!("CARGO_BIN_EXE_blitz")),
        other => panic!("unknown binary {other}"),
    }
}

impl Server {
    /// A fresh database with `fixtures` (SQL) loaded, and a server on it.
    pub fn on_fresh_db(fixtures: &str, settings: &[(&str, &str)]) -> (TestDb, Server) {
        let db = TestDb::new();
        db.execute(fixtures);
        let server = Server::start(&db.url, settings);
        (db, server)
    }

    /// Starts `blitz-server` on a free port against `db_url` with extra
    /// `--set key=value` overrides, and waits until it accepts connections.
    /// `auth.mode` is `trust` unless `settings` say otherwise, so that
    /// [`Rpc::session`] can log in by name.
    pub fn start(db_url: &str, settings: &[(&str, &str)]) -> Server {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin("blitz-server"));
        cmd.arg("--listen").arg(&addr).arg("--db-url").arg(db_url);
        if !settings.iter().any(|(k, _)| *k == "auth.mode") {
            cmd.arg("--set").arg("auth.mode=trust");
        }
        for (k, v) in settings {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        let server = Server::spawn(cmd, addr);
        server.wait_ready();
        server
    }

    /// Spawns `cmd` with stderr captured, without waiting.
    pub fn spawn(mut cmd: Command, addr: String) -> Server {
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        cmd.env_remove("BLITZ_DB_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn blitz-server");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Server { child, addr, log }
    }

    /// Waits until the server accepts TCP connections (or panics after 20
    /// s). The probe counts against `server.max_clients` until the server
    /// has seen it go, so it is half-closed and waited for: when this
    /// returns, the server holds no connection of it (the server closes
    /// its side once the probe's is closed; 5 s at most).
    pub fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(probe) = TcpStream::connect(&self.addr) {
                let _ = probe.shutdown(std::net::Shutdown::Write);
                let _ = probe.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = std::io::copy(&mut &probe, &mut std::io::sink());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "blitz-server did not listen on {}; log:\n{}",
            self.addr,
            self.log()
        );
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit status (panics after 30 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "blitz-server did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test: what the server said is its first clue.
            eprintln!("--- blitz-server log ---\n{}--- end of log ---", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion, returning (exit code, stdout, stderr).
pub fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd
        .env_remove("BLITZ_DB_URL")
        .output()
        .expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads lines from a stream until `pred` matches one (or panics after `timeout`).
pub fn read_line_matching(
    r: &mut impl BufRead,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    let mut line = String::new();
    while start.elapsed() < timeout {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if pred(&line) {
            return line;
        }
    }
    panic!("no matching line within {timeout:?}");
}

/// A buffered reader over a clone of `stream`.
pub fn reader(stream: &TcpStream) -> BufReader<TcpStream> {
    BufReader::new(stream.try_clone().unwrap())
}

/// A raw JSON-RPC connection for tests: send any line, read replies.
pub struct Rpc {
    /// The socket (for shutdown and raw writes).
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    next_id: u64,
}

impl Rpc {
    /// Connects to `addr` with a 60 s read timeout.
    pub fn connect(addr: &str) -> Rpc {
        Rpc::from_stream(TcpStream::connect(addr).expect("connect to blitz-server"))
    }

    /// Wraps a connected stream, with a 60 s read timeout.
    pub fn from_stream(stream: TcpStream) -> Rpc {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Rpc {
            reader: reader(&stream),
            stream,
            next_id: 0,
        }
    }

    /// Connects to `addr` and logs in as user `test` (trust mode).
    pub fn session(addr: &str) -> Rpc {
        let mut rpc = Rpc::connect(addr);
        rpc.login(serde_json::json!({"user": "test"}));
        rpc
    }

    /// `session.login` with `params`, waiting out overload refusals (-32001)
    /// as a client would; returns the reply's `result`.
    pub fn login(&mut self, params: serde_json::Value) -> serde_json::Value {
        loop {
            let reply = self.call("session.login", params.clone());
            match reply["error"]["code"].as_i64() {
                None => return reply["result"].clone(),
                Some(-32001) => {
                    let pause = reply["error"]["data"]["retry_after_ms"]
                        .as_u64()
                        .unwrap_or(50);
                    std::thread::sleep(Duration::from_millis(pause.clamp(1, 1000)));
                }
                Some(_) => panic!("login failed: {reply}"),
            }
        }
    }

    /// Writes `line` and a `\n`.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        // One write: a line and its newline in two small segments would
        // wait for the delayed ACK of the first (Nagle), about 40 ms a call.
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.stream.write_all(&bytes).unwrap();
    }

    /// Reads one reply line as JSON; `None` at end of file.
    pub fn read_reply(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}")),
            ),
            Err(e) => panic!("reading a reply failed: {e}"),
        }
    }

    /// Reads one raw reply line (without `\n`); `None` at end of file.
    pub fn read_raw(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_string()),
            Err(e) => panic!("reading a reply failed: {e}"),
        }
    }

    /// Waits up to `timeout` for a reply line; `None` if none came.
    pub fn poll_reply(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        let got = self.reader.read_line(&mut line);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        match got {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap()),
            _ => None,
        }
    }

    /// Sends a request with a fresh integer id and returns its id.
    pub fn send(&mut self, method: &str, params: serde_json::Value) -> u64 {
        self.send_with(method, params, serde_json::json!({}))
    }

    /// Sends a request with extra members (e.g. `timeout_ms`).
    pub fn send_with(
        &mut self,
        method: &str,
        params: serde_json::Value,
        extra: serde_json::Value,
    ) -> u64 {
        self.next_id += 1;
        let mut req = serde_json::json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        self.send_line(&req.to_string());
        self.next_id
    }

    /// Sends a request and reads its reply (no pipelining).
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.send(method, params);
        let reply = self.read_reply().expect("a reply before end of file");
        assert_eq!(reply["id"], id, "reply to another request: {reply}");
        reply
    }
}

/// Polls `ready` every 20 ms until it holds; panics, naming `what`, after
/// 20 s. The way a test waits for a condition instead of sleeping.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < give_up, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Rpc {
    /// Polls `sys.status` (answered on the router thread, never queued) on
    /// this connection until `ready` holds; returns that status. Panics,
    /// naming `what` and the last status, after 20 s.
    pub fn wait_for_status(
        &mut self,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let status = result(&self.call("sys.status", serde_json::json!({}))).clone();
            if ready(&status) {
                return status;
            }
            assert!(Instant::now() < give_up, "waited 20 s for {what}: {status}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `error.code` of a reply (panics on a result).
pub fn error_code(reply: &serde_json::Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

/// The `result` of a reply (panics on an error).
pub fn result(reply: &serde_json::Value) -> &serde_json::Value {
    assert!(
        reply.get("error").is_none(),
        "expected a result, got {reply}"
    );
    &reply["result"]
}

/// Every note in `acked` is in `public.applied` exactly once, and nothing
/// else is: the check of tests whose clients retry calls by their keys.
pub fn assert_applied_once(client: &mut postgres::Client, acked: &[String]) {
    let twice: Vec<String> = client
        .query(
            "SELECT note || ' x' || count(*) FROM public.applied GROUP BY note HAVING count(*) > 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let acked_set: std::collections::HashSet<&String> = acked.iter().collect();
    let unacked: Vec<String> = client
        .query("SELECT note FROM public.applied", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| !acked_set.contains(n))
        .take(5)
        .collect();
    assert!(
        unacked.is_empty(),
        "applied but not acknowledged: {unacked:?}"
    );
    let missing: i64 = client
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) AS a(note) \
             WHERE NOT EXISTS (SELECT 1 FROM public.applied p WHERE p.note = a.note)",
            &[&acked],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        (twice.len(), missing),
        (0, 0),
        "applied twice: {twice:?}; acknowledged, not applied: {missing}"
    );
}
