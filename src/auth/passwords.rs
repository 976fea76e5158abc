//! Credentials: argon2id password hashes and random session keys. Nothing
//! here touches the database or logs a secret.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64ct::{Base64UrlUnpadded, Encoding};

/// Random bytes in a session key: 256 bits, 43 url-safe characters.
const SESSION_KEY_BYTES: usize = 32;

/// `n` bytes from the operating system's CSPRNG (getrandom(2) on Linux).
fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

/// A new session key: 256 random bits, base64url without padding.
pub fn new_session_key() -> std::io::Result<String> {
    Ok(Base64UrlUnpadded::encode_string(&random_bytes(
        SESSION_KEY_BYTES,
    )?))
}

/// A new random password for `user add --generate`: 128 bits, base64url.
pub fn generate_password() -> std::io::Result<String> {
    Ok(Base64UrlUnpadded::encode_string(&random_bytes(16)?))
}

/// The argon2id PHC string of `password` with a fresh random salt
/// (argon2's default cost: 19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes =
        random_bytes(16).map_err(|e| format!("cannot get random bytes from the OS: {e}"))?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches `stored` (a PHC string). With `stored = None`
/// (no such user, or no password set) a dummy hash is checked instead, so
/// the answer takes as long as for a wrong password.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    let (phc, real) = match stored.and_then(|s| PasswordHash::new(s).ok()) {
        Some(hash) => (hash, true),
        None => (
            PasswordHash::new(dummy_hash()).expect("the dummy hash parses"),
            false,
        ),
    };
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &phc)
        .is_ok();
    matches && real
}

/// Makes the dummy hash now, so the first login of an unknown user does not
/// take twice as long as a wrong password (which would tell them apart).
pub fn prepare_dummy_hash() {
    dummy_hash();
}

/// A hash of a random password, made once, checked for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let password = generate_password().unwrap_or_else(|_| "blitz-dummy".into());
        hash_password(&password).expect("hashing a dummy password")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_long_random_and_url_safe() {
        let a = new_session_key().unwrap();
        let b = new_session_key().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn passwords_verify_and_unknown_users_never_do() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong", Some(&hash)));
        assert!(!verify_password("correct horse", None));
        assert!(!verify_password("anything", Some("not a hash")));
    }
}
