//! Where `blitz login` keeps session keys: one file per server list under
//! `$XDG_CONFIG_HOME/blitz/sessions/` (else `$HOME/.config/blitz/sessions/`),
//! the directory mode 0700 and each file mode 0600 from the moment it is
//! created, so that no other user can read a key at any time.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The longest file name made from a server list; longer lists are cut
/// and get a hash of the whole list instead.
const MAX_NAME: usize = 120;

/// The sessions directory for these values of `$XDG_CONFIG_HOME` and
/// `$HOME`; `None` when neither is usable. A relative `$XDG_CONFIG_HOME` is
/// ignored, as the XDG base directory specification says.
pub fn sessions_dir(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let xdg = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let config = xdg.or_else(|| {
        home.filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".config"))
    })?;
    Some(config.join("blitz").join("sessions"))
}

/// The file name for the server list `servers` (as `host:port,…`): every
/// character but ASCII letters, digits, `.` and `-` becomes `_` and
/// leading dots go, so `127.0.0.1:4063,[::1]:4063` gives
/// `127.0.0.1_4063____1__4063`, a name that never leaves the directory.
pub fn file_name(servers: &str) -> String {
    let clean: String = servers
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.is_empty() || clean.len() > MAX_NAME {
        let cut: String = clean.chars().take(MAX_NAME - 17).collect();
        format!("{cut}-{:016x}", fnv1a(servers.as_bytes()))
    } else {
        clean
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hashers may change between
/// releases, and the name must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The session file of `servers` for this process's environment.
pub fn session_path(servers: &str) -> Result<PathBuf, String> {
    let dir = sessions_dir(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .ok_or("cannot tell where to keep sessions: neither $XDG_CONFIG_HOME nor $HOME is set")?;
    Ok(dir.join(file_name(servers)))
}

/// The key stored at `path`; `None` when there is no file or it is empty.
pub fn load(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|k| !k.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stores `key` at `path`: the directory is made mode 0700, the key is
/// written to a temp file created mode 0600 and renamed over `path`, so a
/// reader sees the old key or the new one, never a part.
pub fn save(path: &Path, key: &str) -> io::Result<()> {
    let dir = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    remove(&tmp)?;
    let written = write_new(&tmp, key).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Creates `path` (mode 0600, failing if it exists) holding `key` and a newline.
fn write_new(path: &Path, key: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{key}\n").as_bytes())?;
    file.sync_all()
}

/// Removes the file at `path`; no file is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn xdg_config_home_wins_then_home_dot_config() {
        assert_eq!(
            sessions_dir(os("/x/cfg"), os("/home/ann")),
            Some(PathBuf::from("/x/cfg/blitz/sessions"))
        );
        assert_eq!(
            sessions_dir(os("relative/cfg"), os("/home/ann")),
            Some(PathBuf::from("/home/ann/.config/blitz/sessions"))
        );
        assert_eq!(
            sessions_dir(None, os("/home/ann")),
            Some(PathBuf::from("/home/ann/.config/blitz/sessions"))
        );
        assert_eq!(sessions_dir(os(""), os("")), None);
        assert_eq!(sessions_dir(None, None), None);
    }

    #[test]
    fn file_names_are_safe_and_distinct_per_server_list() {
        assert_eq!(file_name("127.0.0.1:4063"), "127.0.0.1_4063");
        assert_eq!(file_name("a:1,b:2"), "a_1_b_2");
        assert_eq!(file_name("[::1]:4063"), "___1__4063");
        assert_eq!(file_name("../../etc:1"), "_.._etc_1");
        assert!(!file_name("..").contains('/'));
        assert!(!file_name("..").is_empty());
        let long = (0..40).map(|i| format!("host{i}:4063")).collect::<Vec<_>>();
        let (a, b) = (long.join(","), long[1..].join(","));
        assert!(file_name(&a).len() <= MAX_NAME);
        assert_ne!(file_name(&a), file_name(&b));
        assert_eq!(file_name(&a), file_name(&a), "stable");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blitz-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn saved_keys_are_private_and_replace_the_old_one() {
        let root = temp_dir("save");
        let path = root.join("blitz/sessions/127.0.0.1_4063");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, "key-one").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&root.join("blitz")), 0o700);
        save(&path, "key-two").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some("key-two"));
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_loose_sessions_dir_is_tightened_and_empty_files_hold_no_key() {
        let root = temp_dir("loose");
        let dir = root.join("sessions");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        save(&dir.join("s"), "k").unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::write(dir.join("empty"), "\n").unwrap();
        assert_eq!(load(&dir.join("empty")).unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
