//! User administration for `blitz-server user add|passwd|disable|list`:
//! one direct connection (no pool), the schema brought up to date first.
//! Passwords come from the caller (read from stdin by the binary) or are
//! generated; only a generated password is ever printed, once, by the caller.

use std::fmt;

use postgres::Client;

use super::migrations;
use crate::auth;
use crate::config::Config;

/// What a user command can fail with.
#[derive(Debug)]
pub enum AdminError {
    /// The database refused or could not be reached.
    Db(postgres::Error),
    /// The user does not exist.
    NoSuchUser(String),
    /// `user add` for a name that exists.
    UserExists(String),
    /// A name or password that cannot be used.
    Invalid(String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Db(e) => match std::error::Error::source(e) {
                Some(cause) => write!(f, "database: {e}: {cause}"),
                None => write!(f, "database: {e}"),
            },
            AdminError::NoSuchUser(name) => {
                write!(f, "no user {name:?} (see `blitz-server user list`)")
            }
            AdminError::UserExists(name) => write!(
                f,
                "user {name:?} exists already; use `blitz-server user passwd {name}` to change the password"
            ),
            AdminError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<postgres::Error> for AdminError {
    fn from(e: postgres::Error) -> AdminError {
        AdminError::Db(e)
    }
}

/// One row of `user list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The user's name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Whether logins and its sessions are refused.
    pub disabled: bool,
    /// Whether a password is set (false for users made by trust-mode logins).
    pub has_password: bool,
    /// Its live sessions.
    pub sessions: i64,
}

/// A connection to the configured database with schema `blitz` current.
pub struct Admin {
    client: Client,
}

impl Admin {
    /// Connects to `config`'s database and applies pending migrations.
    pub fn connect(config: &Config) -> Result<Admin, AdminError> {
        let mut client = crate::db::Connector::new(config).connect()?;
        migrations::migrate(&mut client)?;
        Ok(Admin { client })
    }

    /// Creates user `name` with `password`.
    pub fn add(&mut self, name: &str, password: &str) -> Result<(), AdminError> {
        check_name(name)?;
        let hash = hashed(password)?;
        let added = self.client.execute(
            "INSERT INTO blitz.users (name, password_hash) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &hash],
        )?;
        match added {
            0 => Err(AdminError::UserExists(name.to_string())),
            _ => Ok(()),
        }
    }

    /// Sets `name`'s password. Its sessions stay valid (disable the user
    /// to end them).
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), AdminError> {
        let hash = hashed(password)?;
        let changed = self.client.execute(
            "UPDATE blitz.users SET password_hash = $2 WHERE name = $1",
            &[&name, &hash],
        )?;
        found(changed, name)
    }

    /// Lets a disabled user log in again.
    pub fn enable(&mut self, name: &str) -> Result<(), AdminError> {
        let changed = self.client.execute(
            "UPDATE blitz.users SET disabled = false WHERE name = $1",
            &[&name],
        )?;
        found(changed, name)
    }

    /// Disables `name` and ends its sessions on every instance.
    pub fn disable(&mut self, name: &str) -> Result<u64, AdminError> {
        let mut tx = self.client.transaction()?;
        let changed = tx.execute(
            "UPDATE blitz.users SET disabled = true WHERE name = $1",
            &[&name],
        )?;
        found(changed, name)?;
        let ended = tx.execute("DELETE FROM blitz.sessions WHERE user_name = $1", &[&name])?;
        tx.commit()?;
        Ok(ended)
    }

    /// Every user, by name.
    pub fn list(&mut self) -> Result<Vec<UserRow>, AdminError> {
        let rows = self.client.query(
            "SELECT u.name, to_json(u.created) #>> '{}', u.disabled, u.password_hash IS NOT NULL,
                    (SELECT count(*) FROM blitz.sessions s WHERE s.user_name = u.name)
               FROM blitz.users u ORDER BY u.name",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| UserRow {
                name: r.get(0),
                created: r.get(1),
                disabled: r.get(2),
                has_password: r.get(3),
                sessions: r.get(4),
            })
            .collect())
    }
}

fn check_name(name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.chars().any(|c| c.is_control() || c.is_whitespace());
    match ok {
        true => Ok(()),
        false => Err(AdminError::Invalid(format!(
            "user name {name:?}: use 1 to 63 characters, no spaces or control characters"
        ))),
    }
}

fn hashed(password: &str) -> Result<String, AdminError> {
    if password.is_empty() {
        return Err(AdminError::Invalid(
            "the password is empty; type one on stdin or use --generate".into(),
        ));
    }
    auth::hash_password(password).map_err(AdminError::Invalid)
}

fn found(changed: u64, name: &str) -> Result<(), AdminError> {
    match changed {
        0 => Err(AdminError::NoSuchUser(name.to_string())),
        _ => Ok(()),
    }
}
