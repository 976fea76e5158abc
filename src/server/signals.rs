//! The one signal thread of `blitz-server`, started before the server
//! binds: SIGINT and SIGTERM ask for a stop (the drain), SIGHUP re-reads the
//! TLS files. The server never exits on SIGHUP, with TLS or without.

use std::io;
use std::sync::Arc;

use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::tls::ServerTls;

/// Starts the thread: SIGINT/SIGTERM send on `stop` (a second one while
/// the first is pending is dropped), SIGHUP reloads `tls` if the listeners
/// speak TLS and is logged either way.
pub fn spawn_signal_thread(stop: Sender<()>, tls: Option<Arc<ServerTls>>) -> io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("blitz-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => reload(tls.as_deref()),
                    _ => {
                        let _ = stop.try_send(());
                    }
                }
            }
        })?;
    Ok(())
}

fn reload(tls: Option<&ServerTls>) {
    match tls {
        // A failure is logged by reload and the old certificate kept.
        Some(tls) => {
            let _ = tls.reload();
        }
        None => {
            log::info!("SIGHUP: no TLS files configured (server.tls_cert_file); nothing to reload")
        }
    }
}
