//! `blitz-server`: loads the configuration, builds the pool and serves until
//! Ctrl-C or SIGTERM. Exit codes: 0 after a clean stop, 2 for a bad
//! configuration, 1 for any other failure to start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use blitz::config::{Config, ConfigError, ConfigInputs};
use blitz::server::Server;

/// The blitz application server.
#[derive(Debug, Parser)]
#[command(name = "blitz-server", version, about)]
struct Args {
    /// Config file (TOML); see conf/blitz.toml for every key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// server.listen: address(es) to listen on, host:port[,host:port].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// db.url: PostgreSQL connection URL.
    #[arg(long, value_name = "URL")]
    db_url: Option<String>,
    /// db.pool_size: pooled connections (0 = cores × 2 + spindles).
    #[arg(long, value_name = "N")]
    pool_size: Option<String>,
    /// invocation.workers: worker threads (0 = pool size).
    #[arg(long, value_name = "N")]
    workers: Option<String>,
    /// invocation.queue_capacity: bounded queue length.
    #[arg(long, value_name = "N")]
    queue_capacity: Option<String>,
    /// Any key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration with each value's source, then exit.
    #[arg(long)]
    print_config: bool,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
    serve(config)
}

fn serve(config: Config) -> ExitCode {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        eprintln!("blitz-server: cannot install the Ctrl-C/SIGTERM handler: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = blitz::db::check_capacity(&config) {
        eprintln!("blitz-server: {e}");
        return ExitCode::from(2);
    }
    blitz::server::raise_fd_limit(&config);
    let listen = config.server.listen.clone();
    match Server::bind(config) {
        Ok(server) => {
            server.run(&stop_rx);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "blitz-server: cannot listen on {listen}: {e} (is another server using the port?)"
            );
            ExitCode::FAILURE
        }
    }
}
