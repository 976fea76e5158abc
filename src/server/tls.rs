//! The server's TLS material: the certificate chain and key of
//! `server.tls_cert_file` / `server.tls_key_file`, the optional client CA
//! of `server.tls_client_ca_file` (mutual TLS), TLS 1.2 and 1.3 only, with
//! session resumption (an in-memory session cache and tickets), held in a
//! [`ServerTls`] that SIGHUP reloads: new handshakes take the current
//! configuration, open connections keep the one they started with, and a
//! file that fails to load is logged and the old configuration kept.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::config::{read_certificates, read_private_key, Config};

/// Sessions the in-memory resumption cache keeps (TLS 1.2 session ids and
/// TLS 1.3 stateful resumption); tickets need no server memory.
const SESSION_CACHE_SIZE: usize = 4096;

/// The files the TLS configuration is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of the certificate.
    pub key: PathBuf,
    /// PEM CA a client certificate must be signed by (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `config` names, or `None` when the listeners are plaintext.
    pub fn from_config(config: &Config) -> Option<TlsFiles> {
        let server = &config.server;
        if server.tls_cert_file.is_empty() {
            return None;
        }
        Some(TlsFiles {
            cert: server.tls_cert_file.clone().into(),
            key: server.tls_key_file.clone().into(),
            client_ca: (!server.tls_client_ca_file.is_empty())
                .then(|| server.tls_client_ca_file.clone().into()),
        })
    }
}

/// Why the TLS configuration could not be built: names the key and file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The reloadable TLS configuration of the listeners.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// Kept across reloads, so a client resumes its session after a rotation.
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads `files` and builds the first configuration.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError(format!("cannot make the TLS session ticket key: {e}")))?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let first = build(&files, &sessions, &tickets)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(Arc::new(first)),
            sessions,
            tickets,
        })
    }

    /// The TLS listeners' configuration `config` asks for, if any.
    pub fn from_config(config: &Config) -> Result<Option<ServerTls>, TlsError> {
        TlsFiles::from_config(config)
            .map(ServerTls::load)
            .transpose()
    }

    /// The server side of a new connection's handshake, with the current
    /// configuration (which the connection keeps however often it is reloaded).
    pub fn new_connection(&self) -> ServerConnection {
        ServerConnection::new(self.current())
            .expect("a ServerConfig with TLS 1.2/1.3 makes connections")
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Re-reads the files: on success new handshakes use them; on failure
    /// the error is logged and returned, and the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match build(&self.files, &self.sessions, &self.tickets) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                log::info!("TLS: reloaded {}", self.files_named());
                Ok(())
            }
            Err(e) => {
                log::error!("TLS: reload failed, keeping the previous certificate: {e}");
                Err(e)
            }
        }
    }

    fn files_named(&self) -> String {
        let mut named = format!(
            "server.tls_cert_file {:?}, server.tls_key_file {:?}",
            self.files.cert, self.files.key
        );
        if let Some(ca) = &self.files.client_ca {
            named.push_str(&format!(", server.tls_client_ca_file {ca:?}"));
        }
        named
    }
}

/// Session tickets sent after a full TLS 1.3 handshake (rustls sends 2): a
/// client resumes with one, and each resumption brings a fresh one; every
/// ticket costs an encryption and a key derivation on the event loop.
const TLS13_TICKETS: usize = 1;

/// ring, with the cipher suites in the server's order of preference
/// (`ignore_client_order`): AES-128-GCM with SHA-256 first. rustls' own
/// order puts AES-256-GCM-SHA384 first, and most clients ask for it
/// first too; its SHA-384 key schedule and transcript hash then cost about a
/// tenth of a full handshake's CPU on the event loop (SHA-512 blocks in
/// software, where SHA-256 runs on the CPU's SHA extensions), and its bulk
/// encryption has 14 AES rounds instead of 10. AES-128 matches the 128-bit
/// strength of the P-256 and X25519 keys.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// One configuration from `files`, sharing the resumption state.
fn build(
    files: &TlsFiles,
    sessions: &Arc<dyn StoresServerSessions>,
    tickets: &Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates("server.tls_cert_file", &files.cert).map_err(TlsError)?;
    let key = read_private_key("server.tls_key_file", &files.key).map_err(TlsError)?;
    let versions = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
    let builder = match &files.client_ca {
        None => versions.with_no_client_auth(),
        Some(ca) => versions.with_client_cert_verifier(client_verifier(ca)?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "config keys server.tls_cert_file {:?} and server.tls_key_file {:?}: \
             the key does not fit the certificate or is not usable ({e})",
            files.cert, files.key
        ))
    })?;
    config.session_storage = sessions.clone();
    config.ticketer = tickets.clone();
    config.send_tls13_tickets = TLS13_TICKETS;
    config.ignore_client_order = true;
    Ok(config)
}

/// Requires a client certificate signed by the CA(s) in `ca`.
fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let named = |why: String| {
        TlsError(format!(
            "config key server.tls_client_ca_file {ca:?}: {why}"
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in read_certificates("server.tls_client_ca_file", ca).map_err(TlsError)? {
        roots
            .add(cert)
            .map_err(|e| named(format!("not a CA certificate ({e})")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| named(format!("cannot verify clients with it ({e})")))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection};

    use super::*;
    use crate::test_certs::{temp_dir, Leaf, TestCa};

    /// A client trusting `ca`, presenting `identity` if given.
    fn client_config(ca: &TestCa, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let dir = temp_dir("client-roots");
        for cert in read_certificates("ca", &ca.write(&dir, "ca")).unwrap() {
            roots.add(cert).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            None => builder.with_no_client_auth(),
            Some(leaf) => {
                let (cert, key) = leaf.write(&dir, "client");
                let chain = read_certificates("c", &cert).unwrap();
                let key = read_private_key("k", &key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        })
    }

    fn client(config: &Arc<ClientConfig>) -> ClientConnection {
        let name = ServerName::try_from("localhost").unwrap();
        ClientConnection::new(config.clone(), name).unwrap()
    }

    /// Moves the bytes the client has to write into the server.
    fn to_server(client: &mut ClientConnection, server: &mut ServerConnection) -> usize {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut slice = &buf[..];
        while !slice.is_empty() {
            server.read_tls(&mut slice).unwrap();
        }
        buf.len()
    }

    /// Moves the bytes the server has to write into the client.
    fn to_client(server: &mut ServerConnection, client: &mut ClientConnection) -> usize {
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut slice = &buf[..];
        while !slice.is_empty() {
            client.read_tls(&mut slice).unwrap();
        }
        buf.len()
    }

    /// Pumps bytes both ways until neither side has more to say; the
    /// first error either side finds.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..16 {
            let sent = to_server(client, server);
            server.process_new_packets()?;
            let answered = to_client(server, client);
            client.process_new_packets()?;
            if sent == 0 && answered == 0 {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        Ok(())
    }

    /// Sends `line` from the client and reads it on the server.
    fn round_trip(client: &mut ClientConnection, server: &mut ServerConnection, line: &[u8]) {
        client.writer().write_all(line).unwrap();
        to_server(client, server);
        server.process_new_packets().unwrap();
        let mut got = vec![0; line.len()];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(got, line);
    }

    /// The DER of the leaf certificate the server presented.
    fn presented(client: &ClientConnection) -> Vec<u8> {
        client.peer_certificates().unwrap()[0].to_vec()
    }

    fn leaf_der(leaf: &Leaf) -> Vec<u8> {
        let dir = temp_dir("leaf-der");
        let (cert, _) = leaf.write(&dir, "leaf");
        read_certificates("c", &cert).unwrap()[0].to_vec()
    }

    fn server_files(dir: &Path, leaf: &Leaf, client_ca: Option<PathBuf>) -> TlsFiles {
        let (cert, key) = leaf.write(dir, "server");
        TlsFiles {
            cert,
            key,
            client_ca,
        }
    }

    #[test]
    fn a_reload_serves_the_new_certificate_and_keeps_open_connections() {
        let ca = TestCa::new("blitz test CA");
        let dir = temp_dir("reload");
        let first = ca.leaf("first", &["localhost"]);
        let tls = ServerTls::load(server_files(&dir, &first, None)).unwrap();
        let config = client_config(&ca, None);
        let (mut old_client, mut old_server) = (client(&config), tls.new_connection());
        handshake(&mut old_client, &mut old_server).unwrap();
        assert_eq!(presented(&old_client), leaf_der(&first));

        let second = ca.leaf("second", &["localhost"]);
        server_files(&dir, &second, None);
        tls.reload().unwrap();
        // A fresh client: a resumed session would carry the first certificate.
        let fresh = client_config(&ca, None);
        let (mut new_client, mut new_server) = (client(&fresh), tls.new_connection());
        handshake(&mut new_client, &mut new_server).unwrap();
        assert_eq!(presented(&new_client), leaf_der(&second));
        round_trip(
            &mut old_client,
            &mut old_server,
            b"{\"method\":\"sys.ping\"}\n",
        );
    }

    #[test]
    fn a_broken_file_keeps_the_old_certificate() {
        let ca = TestCa::new("blitz test CA");
        let dir = temp_dir("broken");
        let first = ca.leaf("first", &["localhost"]);
        let files = server_files(&dir, &first, None);
        let tls = ServerTls::load(files.clone()).unwrap();
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.0.contains("server.tls_cert_file"), "{e}");
        std::fs::write(&files.cert, ca.leaf("other key", &["localhost"]).chain_pem).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.0.contains("does not fit"), "{e}");
        let (mut c, mut s) = (client(&client_config(&ca, None)), tls.new_connection());
        handshake(&mut c, &mut s).unwrap();
        assert_eq!(presented(&c), leaf_der(&first));
    }

    #[test]
    fn mutual_tls_wants_a_client_certificate_signed_by_the_client_ca() {
        let ca = TestCa::new("blitz test CA");
        let client_ca = TestCa::new("blitz client CA");
        let dir = temp_dir("mtls");
        let files = server_files(
            &dir,
            &ca.leaf("server", &["localhost"]),
            Some(client_ca.write(&dir, "client-ca")),
        );
        let tls = ServerTls::load(files).unwrap();
        let alice = client_ca.leaf("alice", &["alice.example"]);
        let (mut c, mut s) = (
            client(&client_config(&ca, Some(&alice))),
            tls.new_connection(),
        );
        handshake(&mut c, &mut s).unwrap();
        round_trip(&mut c, &mut s, b"hello\n");

        let (mut c, mut s) = (client(&client_config(&ca, None)), tls.new_connection());
        let refused = handshake(&mut c, &mut s).unwrap_err();
        assert!(
            matches!(refused, rustls::Error::NoCertificatesPresented),
            "{refused:?}"
        );

        let stranger = ca.leaf("mallory", &["mallory.example"]);
        let (mut c, mut s) = (
            client(&client_config(&ca, Some(&stranger))),
            tls.new_connection(),
        );
        assert!(
            handshake(&mut c, &mut s).is_err(),
            "a client cert of another CA"
        );
    }

    #[test]
    fn a_resumed_session_survives_a_reload() {
        let ca = TestCa::new("blitz test CA");
        let dir = temp_dir("resume");
        let tls = ServerTls::load(server_files(&dir, &ca.leaf("s", &["localhost"]), None)).unwrap();
        let config = client_config(&ca, None);
        let (mut c, mut s) = (client(&config), tls.new_connection());
        handshake(&mut c, &mut s).unwrap();
        round_trip(&mut c, &mut s, b"x");
        to_client(&mut s, &mut c); // the session tickets
        c.process_new_packets().unwrap();
        tls.reload().unwrap();
        let (mut c, mut s) = (client(&config), tls.new_connection());
        handshake(&mut c, &mut s).unwrap();
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    }
}
