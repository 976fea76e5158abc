//! Who may call: passwords and session keys ([`passwords`]), the
//! failed-login limiter ([`limiter`]), sessions kept in PostgreSQL
//! ([`sessions`]) and the instance's cache of the live ones ([`cache`]),
//! the server's own schema `blitz` as versioned
//! [`migrations`], and the user administration commands ([`admin`]).

pub mod admin;
pub mod cache;
mod limiter;
pub mod migrations;
mod passwords;
pub mod sessions;

pub use limiter::{LoginLimiter, FAILURE_WINDOW};
pub use passwords::{
    generate_password, hash_password, new_session_key, prepare_dummy_hash, verify_password,
};
