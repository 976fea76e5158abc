//! `blitz-server`: loads the configuration, builds the pool and serves until
//! Ctrl-C or SIGTERM (SIGHUP re-reads the TLS files); `blitz-server user …` administers users. Exit codes:
//! 0 after a clean stop, 2 for a bad configuration or usage, 1 for any
//! other failure.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use blitz::{Admin, AdminError, Config, ConfigError, ConfigInputs, Server, ServerTls};

/// The blitz application server.
#[derive(Debug, Parser)]
#[command(name = "blitz-server", version, about)]
struct Args {
    /// Without a command: serve.
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML); see conf/blitz.toml for every key.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// server.listen: address(es) to listen on, `host:port[,host:port]`.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// db.url: PostgreSQL connection URL.
    #[arg(long, global = true, value_name = "URL")]
    db_url: Option<String>,
    /// db.pool_size: pooled connections (0 = cores × 2 + spindles).
    #[arg(long, global = true, value_name = "N")]
    pool_size: Option<String>,
    /// invocation.workers: worker threads (0 = pool size).
    #[arg(long, global = true, value_name = "N")]
    workers: Option<String>,
    /// invocation.queue_capacity: bounded queue length.
    #[arg(long, global = true, value_name = "N")]
    queue_capacity: Option<String>,
    /// Any key: --set section.key=value (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration with each value's source, then exit.
    #[arg(long)]
    print_config: bool,
}

/// What to do instead of serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Administer the users who may log in (in schema blitz of db.url).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

/// `blitz-server user …`.
#[derive(Debug, Subcommand)]
enum UserAction {
    /// Create a user; the password is read from stdin (one line).
    Add {
        /// The user name (1–63 characters, no spaces).
        name: String,
        /// Generate a random password and print it once instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Set a user's password, read from stdin (one line).
    Passwd {
        /// The user name.
        name: String,
        /// Generate a random password and print it once instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Refuse a user's logins and end its sessions on every instance.
    Disable {
        /// The user name.
        name: String,
    },
    /// Let a disabled user log in again.
    Enable {
        /// The user name.
        name: String,
    },
    /// List the users, with their number of live sessions.
    List,
}

impl Args {
    /// The flag overrides as `(section.key, value)`, dedicated flags last so they win.
    fn flag_overrides(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut flags = Vec::new();
        for item in &self.set {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                ConfigError(format!("--set {item:?}: expected section.key=value"))
            })?;
            flags.push((key.trim().to_string(), value.to_string()));
        }
        let named = [
            ("server.listen", &self.listen),
            ("db.url", &self.db_url),
            ("db.pool_size", &self.pool_size),
            ("invocation.workers", &self.workers),
            ("invocation.queue_capacity", &self.queue_capacity),
        ];
        for (key, value) in named {
            if let Some(v) = value {
                flags.push((key.to_string(), v.clone()));
            }
        }
        Ok(flags)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // tokio_postgres logs every statement's parameter values at debug,
        // session keys and user names among them: never below info.
        .filter_module("tokio_postgres::query", log::LevelFilter::Info)
        .init();
    let args = Args::parse();
    let config = match args
        .flag_overrides()
        .and_then(|flags| Config::load(&ConfigInputs::from_process(args.config.clone(), flags)))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blitz-server: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_annotated_toml());
        return ExitCode::SUCCESS;
    }
    match args.command {
        Some(Command::User { action }) => match administer(&config, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("blitz-server user: {e}");
                ExitCode::FAILURE
            }
        },
        None => serve(config),
    }
}

fn administer(config: &Config, action: UserAction) -> Result<(), AdminError> {
    let mut admin = Admin::connect(config)?;
    match action {
        UserAction::Add { name, generate } => {
            let password = new_password(&name, generate)?;
            admin.add(&name, &password)?;
            println!("user {name} added");
        }
        UserAction::Passwd { name, generate } => {
            let password = new_password(&name, generate)?;
            admin.passwd(&name, &password)?;
            println!("password of {name} changed");
        }
        UserAction::Disable { name } => {
            let ended = admin.disable(&name)?;
            println!("user {name} disabled; {ended} sessions ended");
        }
        UserAction::Enable { name } => {
            admin.enable(&name)?;
            println!("user {name} enabled");
        }
        UserAction::List => print_users(&mut admin)?,
    }
    Ok(())
}

/// A generated password (printed once, on stderr, so stdout stays the
/// command's report) or one line read from stdin.
fn new_password(name: &str, generate: bool) -> Result<String, AdminError> {
    if generate {
        let password = blitz::generate_password().map_err(|e| {
            AdminError::Invalid(format!("cannot get random bytes from the OS: {e}"))
        })?;
        eprintln!("generated password for {name} (shown once): {password}");
        return Ok(password);
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password for {name} (input is echoed; pipe it in to avoid that): ");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| AdminError::Invalid(format!("cannot read the password from stdin: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn print_users(admin: &mut Admin) -> Result<(), AdminError> {
    println!(
        "{:<24} {:<9} {:<9} {:>8}  created",
        "name", "state", "password", "sessions"
    );
    for user in admin.list()? {
        println!(
            "{:<24} {:<9} {:<9} {:>8}  {}",
            user.name,
            if user.disabled { "disabled" } else { "enabled" },
            if user.has_password { "set" } else { "none" },
            user.sessions,
            user.created
        );
    }
    Ok(())
}

fn serve(config: Config) -> ExitCode {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let tls = match ServerTls::from_config(&config) {
        Ok(tls) => tls.map(std::sync::Arc::new),
        Err(e) => {
            eprintln!("blitz-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = blitz::spawn_signal_thread(stop_tx, tls.clone()) {
        eprintln!("blitz-server: cannot install the SIGINT/SIGTERM/SIGHUP handler: {e}");
        return ExitCode::FAILURE;
    }
    blitz::raise_fd_limit(&config);
    match Server::bind(config).and_then(|mut server| {
        server.set_tls(tls);
        if let Err(refusal) = server.join() {
            return Ok(Err(refusal));
        }
        server.run(&stop_rx).map(Ok)
    }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(refusal)) => {
            eprintln!("blitz-server: {refusal}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("blitz-server: cannot listen on {e} (is another server using the port?)");
            ExitCode::FAILURE
        }
    }
}
