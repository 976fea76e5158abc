//! [`RouterHandles`]: what every router thread is given — the `[server]`
//! limits, the open connections, the counters, the lifecycle state, the
//! [`RouteFn`] each request read is handed to (the method table's `route`),
//! and the listeners' TLS configuration.

use std::sync::Arc;

use super::connection::Handles;
use super::registry::Registry;
use super::responder::Responder;
use crate::config::ServerConfig;
use crate::protocol::Request;
use crate::server::shutdown::Shutdown;
use crate::server::stats::Stats;
use crate::server::tls::ServerTls;

/// The function the router hands each request it has read, with the
/// [`Responder`] that owes its one reply.
pub type RouteFn = dyn Fn(Request, Responder) + Send + Sync;

/// The handles the acceptor and the event loops share: the `[server]`
/// limits, the open connections, the counters, the lifecycle, and where
/// requests go.
pub struct RouterHandles {
    /// `[server]` configuration.
    pub config: ServerConfig,
    /// The open connections.
    pub connections: Arc<Registry>,
    /// Counters (errors answered on the router thread).
    pub stats: Arc<Stats>,
    /// Lifecycle state.
    pub shutdown: Arc<Shutdown>,
    /// The method table's routing.
    pub route: Box<RouteFn>,
    /// The listeners' TLS configuration (`None`: plaintext listeners).
    pub tls: Option<Arc<ServerTls>>,
}

impl RouterHandles {
    /// What each connection is given.
    pub fn handles(&self) -> Handles {
        Handles::new(
            self.stats.clone(),
            self.shutdown.clone(),
            self.connections.queued_bytes(),
        )
    }
}
