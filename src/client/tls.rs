//! The thin client's TLS: whom it trusts (`--ca FILE` or, with `--tls`,
//! the operating system's roots via rustls-native-certs), the handshake
//! done when a connection opens, with the host name of `--server` checked
//! against the certificate, and the `Stream` the wire reads and writes.
//! A certificate that fails verification is an error naming what it was
//! checked against; the client never falls back to plaintext.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// What the client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The CA certificate(s) in this PEM file (`--ca FILE`).
    Ca(PathBuf),
    /// The operating system's roots (`--tls`).
    SystemRoots,
}

/// TLS settings shared by a client's connections.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    trusted: String,
}

impl ClientTls {
    /// Loads the roots of `trust`; an unreadable or empty CA file is an error naming it.
    pub fn new(trust: &Trust) -> io::Result<ClientTls> {
        let mut roots = RootCertStore::empty();
        let trusted = match trust {
            Trust::Ca(path) => {
                let bad = |why: String| io::Error::other(format!("--ca {}: {why}", path.display()));
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("not a readable PEM file ({e:?})")))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad("no CA certificate in it".into()));
                }
                format!("the CA of --ca {}", path.display())
            }
            Trust::SystemRoots => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                "the system's roots (--tls)".to_string()
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            trusted,
        })
    }

    /// The rustls configuration (for clients that drive rustls themselves).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Runs the handshake with `server` (`host:port`) on `tcp`.
    pub(super) fn connect(&self, server: &str, mut tcp: TcpStream) -> io::Result<Stream> {
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| self.handshake_error(host, e))?;
        }
        Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }

    fn handshake_error(&self, host: &str, e: io::Error) -> io::Error {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(why)) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the server's TLS certificate for {host} is not trusted by {} ({why:?}); \
                     not falling back to plaintext",
                    self.trusted
                ),
            ),
            _ => io::Error::new(e.kind(), format!("TLS handshake failed ({e})")),
        }
    }
}

/// A connection's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub(super) enum Stream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket under the stream (timeouts, peeking).
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;
    use crate::test_certs::{temp_dir, TestCa};

    /// A one-connection TLS server on loopback that echoes one line.
    fn echo_server(ca: &TestCa) -> String {
        let leaf = ca.leaf("blitz test server", &["localhost"]);
        let dir = temp_dir("client-echo"); // read below
        let (cert, key) = leaf.write(&dir, "server");
        let chain = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = StreamOwned::new(conn, tcp);
            let mut line = String::new();
            if BufReader::new(&mut tls).read_line(&mut line).is_ok() {
                let _ = tls.write_all(line.as_bytes());
                let _ = tls.flush();
            }
        });
        format!("localhost:{port}")
    }

    #[test]
    fn ca_verifies_the_server_and_its_name() {
        let ca = TestCa::new("blitz test CA");
        let server = echo_server(&ca);
        let dir = temp_dir("client-ca");
        let tls = ClientTls::new(&Trust::Ca(ca.write(&dir, "ca"))).unwrap();
        let tcp = TcpStream::connect(&server).unwrap();
        let mut stream = tls.connect(&server, tcp).unwrap();
        stream.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        assert_eq!(line, "ping\n");
    }

    #[test]
    fn another_ca_is_an_error_naming_the_file() {
        let server = echo_server(&TestCa::new("blitz test CA"));
        let dir = temp_dir("client-other");
        let other = TestCa::new("someone else").write(&dir, "other");
        let tls = ClientTls::new(&Trust::Ca(other.clone())).unwrap();
        let e = tls
            .connect(&server, TcpStream::connect(&server).unwrap())
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&other.display().to_string()), "{text}");
        assert!(
            text.contains("UnknownIssuer") && text.contains("not falling back"),
            "{text}"
        );
    }

    #[test]
    fn system_roots_do_not_trust_a_private_ca() {
        let server = echo_server(&TestCa::new("blitz private CA"));
        let tls = ClientTls::new(&Trust::SystemRoots).unwrap();
        let e = tls
            .connect(&server, TcpStream::connect(&server).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("the system's roots (--tls)"), "{e}");
    }
}
