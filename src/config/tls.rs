//! The TLS keys of the configuration: the checks of `server.tls_*` and
//! `server.allow_plaintext` (both files or neither, each file readable and
//! parseable PEM, no plaintext passwords off loopback), and libpq's
//! `sslmode` / `sslrootcert` in `db.url`, which rust-postgres does not know
//! in full and so are taken out of the URL before it parses the rest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS keys of `[server]`, as the checks need them.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerTlsKeys<'a> {
    /// `server.tls_cert_file` ("" = unset).
    pub cert_file: &'a str,
    /// `server.tls_key_file` ("" = unset).
    pub key_file: &'a str,
    /// `server.tls_client_ca_file` ("" = unset).
    pub client_ca_file: &'a str,
    /// `server.tls_handshake_timeout_ms`.
    pub handshake_timeout_ms: u64,
    /// `server.allow_plaintext`.
    pub allow_plaintext: bool,
    /// Whether `auth.mode` is `"password"`.
    pub password_mode: bool,
}

/// Checks the TLS keys of `[server]` against each other, their files and
/// the listeners (`(key, address)` of every JSON-RPC listen address).
pub(super) fn check_server(
    keys: ServerTlsKeys<'_>,
    listeners: &[(&str, SocketAddr)],
) -> Result<(), String> {
    if !(1..=600_000).contains(&keys.handshake_timeout_ms) {
        return Err(format!(
            "config key server.tls_handshake_timeout_ms = {}: allowed 1 to 600000",
            keys.handshake_timeout_ms
        ));
    }
    let tls = check_files(keys)?;
    check_plaintext_passwords(keys, tls, listeners)
}

/// Both files or neither, each readable and parseable; `Ok(true)` when
/// the listeners are to speak TLS.
fn check_files(keys: ServerTlsKeys<'_>) -> Result<bool, String> {
    match (keys.cert_file.is_empty(), keys.key_file.is_empty()) {
        (true, true) if keys.client_ca_file.is_empty() => return Ok(false),
        (true, true) => {
            return Err(format!(
                "config key server.tls_client_ca_file = {:?} needs server.tls_cert_file and \
                 server.tls_key_file: mutual TLS is TLS",
                keys.client_ca_file
            ))
        }
        (false, false) => {}
        _ => {
            return Err(format!(
                "config keys server.tls_cert_file = {:?} and server.tls_key_file = {:?}: \
                 set both (TLS) or neither (plaintext)",
                keys.cert_file, keys.key_file
            ))
        }
    }
    read_certificates("server.tls_cert_file", Path::new(keys.cert_file))?;
    read_private_key("server.tls_key_file", Path::new(keys.key_file))?;
    if !keys.client_ca_file.is_empty() {
        read_certificates("server.tls_client_ca_file", Path::new(keys.client_ca_file))?;
    }
    Ok(true)
}

/// Password mode sends passwords: not in clear off loopback, unless a
/// TLS-terminating proxy in front says so (`server.allow_plaintext`).
fn check_plaintext_passwords(
    keys: ServerTlsKeys<'_>,
    tls: bool,
    listeners: &[(&str, SocketAddr)],
) -> Result<(), String> {
    if !keys.password_mode || tls || keys.allow_plaintext {
        return Ok(());
    }
    match listeners.iter().find(|(_, addr)| !addr.ip().is_loopback()) {
        None => Ok(()),
        Some((key, addr)) => Err(format!(
            "config key auth.mode = \"password\" on {key} {addr}, which is not loopback, \
             would send passwords and session keys in clear: set server.tls_cert_file and \
             server.tls_key_file, or set server.allow_plaintext = true when a TLS-terminating \
             proxy is in front, or listen on 127.0.0.1 / [::1]"
        )),
    }
}

/// The certificates of a PEM file (a chain: leaf first), at least one.
/// Errors name `key` and the file.
pub fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |why: String| format!("config key {key} = {:?}: {why}", path.display().to_string());
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| bad(pem_error(&e)))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC). Errors
/// name `key` and the file.
pub fn read_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (-----BEGIN PRIVATE KEY-----) in it".into()
            }
            e => pem_error(&e),
        };
        format!("config key {key} = {:?}: {why}", path.display().to_string())
    })
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read it ({io})"),
        e => format!("not a PEM file ({e:?})"),
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS or no connection; unverified (verify-ca when `sslrootcert` is set).
    Require,
    /// TLS with the server's certificate checked against the roots.
    VerifyCa,
    /// As `VerifyCa`, and the host name checked against the certificate.
    VerifyFull,
}

impl PgSslMode {
    fn parse(text: &str) -> Option<PgSslMode> {
        Some(match text {
            "disable" => PgSslMode::Disable,
            "prefer" => PgSslMode::Prefer,
            "require" => PgSslMode::Require,
            "verify-ca" => PgSslMode::VerifyCa,
            "verify-full" => PgSslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// The TLS settings of `db.url`, and the URL without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// `sslmode` (libpq's default: prefer), with `require` plus
    /// `sslrootcert` already turned into `VerifyCa` as libpq does.
    pub mode: PgSslMode,
    /// `sslrootcert`: the CA file that `verify-*` trusts (else the system roots).
    pub root_cert: Option<PathBuf>,
    /// `db.url` without `sslmode` and `sslrootcert`, for `postgres::Config`.
    pub url: String,
}

/// Takes `sslmode` and `sslrootcert` out of a URL or key=value connection
/// string.
pub fn split_pg_tls(url: &str) -> Result<PgTls, String> {
    let (rest, params) = if url.contains("://") {
        split_query(url)
    } else {
        split_key_values(url)
    };
    let mut mode = PgSslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in params {
        match key.as_str() {
            "sslmode" => {
                mode = PgSslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "config key db.url: sslmode={value} is not one of disable, prefer, \
                         require, verify-ca, verify-full"
                    )
                })?
            }
            _ => root_cert = Some(PathBuf::from(value)),
        }
    }
    if mode == PgSslMode::Require && root_cert.is_some() {
        mode = PgSslMode::VerifyCa;
    }
    Ok(PgTls {
        mode,
        root_cert,
        url: rest,
    })
}

/// Whether `key` is one of the TLS parameters taken out of the URL.
fn is_tls_param(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// `postgresql://h/db?sslmode=x&a=b` → (`postgresql://h/db?a=b`, [(sslmode, x)]).
fn split_query(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if is_tls_param(key) {
            taken.push((key.to_string(), percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (rest, taken)
}

/// `%2Fetc%2Fca.pem` → `/etc/ca.pem` (invalid escapes stay as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `host=h sslmode=x dbname=d` → (`host=h dbname=d`, [(sslmode, x)]);
/// values may be quoted ('a b') with backslash escapes, as libpq allows.
fn split_key_values(text: &str) -> (String, Vec<(String, String)>) {
    let mut kept = String::new();
    let mut taken = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (pair, key, value, after) = next_key_value(rest);
        if is_tls_param(&key) {
            taken.push((key, value));
        } else {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(pair);
        }
        rest = after.trim_start();
    }
    (kept, taken)
}

/// The first `key=value` of `text`: (its text, key, unquoted value, the rest).
fn next_key_value(text: &str) -> (&str, String, String, &str) {
    let eq = text.find('=').unwrap_or(text.len());
    let key = text[..eq].trim().to_string();
    let after_eq = text.get(eq + 1..).unwrap_or("");
    let value_start = eq + 1 + (after_eq.len() - after_eq.trim_start().len());
    let mut value = String::new();
    let mut chars = text.get(value_start..).unwrap_or("").char_indices();
    let quoted = text[value_start.min(text.len())..].starts_with('\'');
    if quoted {
        chars.next();
    }
    let mut end = text.len();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.extend(chars.next().map(|(_, c)| c)),
            '\'' if quoted => {
                end = value_start + i + 1;
                break;
            }
            c if c.is_whitespace() && !quoted => {
                end = value_start + i;
                break;
            }
            c => value.push(c),
        }
    }
    let end = end.min(text.len());
    (&text[..end], key, value, &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_a_url() {
        let tls = split_pg_tls(
            "postgresql://u@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(tls.mode, PgSslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.url, "postgresql://u@db:5432/x?application_name=a");
        let plain = split_pg_tls("postgresql://u@db/x").unwrap();
        assert_eq!(
            (plain.mode, plain.url.as_str()),
            (PgSslMode::Prefer, "postgresql://u@db/x")
        );
        assert_eq!(
            split_pg_tls("postgresql://db/x?sslmode=disable")
                .unwrap()
                .url,
            "postgresql://db/x"
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_leave_key_values() {
        let tls =
            split_pg_tls("host=db sslmode = require sslrootcert='/a b/ca.pem' dbname=x").unwrap();
        assert_eq!(
            tls.mode,
            PgSslMode::VerifyCa,
            "require with a root cert is verify-ca"
        );
        assert_eq!(tls.root_cert, Some(PathBuf::from("/a b/ca.pem")));
        assert_eq!(tls.url, "host=db dbname=x");
    }

    #[test]
    fn an_unknown_sslmode_is_refused() {
        let e = split_pg_tls("postgresql://db/x?sslmode=allow-all").unwrap_err();
        assert!(
            e.contains("sslmode=allow-all") && e.contains("verify-full"),
            "{e}"
        );
    }
}
