//! TLS to PostgreSQL with rustls, as libpq's `sslmode` says: `disable` (no
//! TLS), `prefer` and `require` (encrypted, the certificate not checked),
//! `verify-ca` (signed by `sslrootcert`, else a system root) and
//! `verify-full` (and issued for the host name). `require` with an
//! `sslrootcert` is `verify-ca`, as in libpq.

use std::sync::{Arc, OnceLock};

use postgres::config::SslMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{read_certificates, split_pg_tls, PgSslMode, PgTls};

/// The TLS connector every connection to PostgreSQL uses.
pub type PgTlsConnector = MakeRustlsConnect;

/// The TLS settings of `url` (`db.url` or a replica's).
pub fn pg_tls(url: &str) -> PgTls {
    split_pg_tls(url).expect("database URLs were validated when the config was loaded")
}

/// What rust-postgres is told: whether to ask for TLS and whether to insist.
pub fn ssl_mode(mode: PgSslMode) -> SslMode {
    match mode {
        PgSslMode::Disable => SslMode::Disable,
        PgSslMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    }
}

/// The connector for `tls`: it checks what its mode asks for.
pub fn connector(tls: &PgTls) -> PgTlsConnector {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        PgSslMode::VerifyFull => webpki_verifier(tls, &provider),
        PgSslMode::VerifyCa => Arc::new(AnyName(webpki_verifier(tls, &provider))),
        _ => Arc::new(Fixed::accepting(provider)),
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// The connector of cancel requests: they carry only the backend's key,
/// so, as libpq's, they do not verify the server (libpq sends them in clear).
pub fn cancel_connector() -> PgTlsConnector {
    static CANCEL: OnceLock<PgTlsConnector> = OnceLock::new();
    CANCEL
        .get_or_init(|| {
            connector(&PgTls {
                mode: PgSslMode::Require,
                root_cert: None,
                url: String::new(),
            })
        })
        .clone()
}

/// When `e` is a failed verification of PostgreSQL's certificate, a
/// message saying so (the server must not start on it: it cannot heal).
pub fn verification_failure(e: &postgres::Error, tls: &PgTls) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        let rustls_error = inner
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .or_else(|| err.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(why)) = rustls_error {
            return Some(format!(
                "PostgreSQL's TLS certificate failed verification ({why:?}) under db.url's \
                 sslmode={} against {}",
                mode_name(tls.mode),
                tls.root_cert
                    .as_ref()
                    .map_or("the system roots".into(), |p| format!("sslrootcert {p:?}"))
            ));
        }
        cause = inner.or_else(|| err.source());
    }
    None
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots: `sslrootcert` if set, else the operating system's.
fn roots(tls: &PgTls) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let certs = match &tls.root_cert {
        Some(path) => read_certificates("db.url's sslrootcert", path).unwrap_or_else(|e| {
            log::error!("{e}; no certificate of PostgreSQL will verify");
            Vec::new()
        }),
        None => rustls_native_certs::load_native_certs().certs,
    };
    roots.add_parsable_certificates(certs);
    roots
}

fn webpki_verifier(tls: &PgTls, provider: &Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    match WebPkiServerVerifier::builder_with_provider(Arc::new(roots(tls)), provider.clone())
        .build()
    {
        Ok(verifier) => verifier,
        // No root at all: nothing can verify, so every certificate fails.
        Err(e) => {
            log::error!(
                "db.url's sslmode={}: no trusted roots ({e})",
                mode_name(tls.mode)
            );
            Arc::new(Fixed::refusing(provider.clone()))
        }
    }
}

/// `verify-ca`: the chain must lead to a root; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verified {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A verifier whose verdict on the certificate is fixed: `prefer` /
/// `require` accept any (encrypted, unverified; the handshake's signatures
/// are still checked), `verify-*` with no root to trust refuses every one.
#[derive(Debug)]
struct Fixed {
    provider: Arc<CryptoProvider>,
    accept: bool,
}

impl Fixed {
    fn accepting(provider: Arc<CryptoProvider>) -> Fixed {
        Fixed {
            provider,
            accept: true,
        }
    }

    fn refusing(provider: Arc<CryptoProvider>) -> Fixed {
        Fixed {
            provider,
            accept: false,
        }
    }
}

impl ServerCertVerifier for Fixed {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.accept {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
