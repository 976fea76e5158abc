//! Reading a password: from the terminal without echo (termios on
//! `/dev/tty`, so it works with stdin and stdout redirected), or one line
//! of stdin for scripts.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::sync::Mutex;

/// The terminal settings to put back if the process is interrupted while
/// echo is off.
static SAVED: Mutex<Option<(i32, libc::termios)>> = Mutex::new(None);

/// Shows `prompt` on the terminal and reads one line with echo off. The
/// echo comes back afterwards, also on Ctrl-C (the process then exits 130).
pub fn read_password(prompt: &str) -> io::Result<String> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let _echo_off = EchoOff::new(&tty)?;
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    let mut line = String::new();
    BufReader::new(&tty).read_line(&mut line)?;
    Ok(strip_newline(line))
}

/// One line of `input`, without its line ending; an error when `input`
/// is empty (no line at all).
pub fn read_line_from(input: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stdin is empty; pipe the password followed by a newline",
        ));
    }
    Ok(strip_newline(line))
}

/// `line` without a trailing `\n` or `\r\n`.
fn strip_newline(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

/// Echo switched off on a terminal until dropped. The newline the user
/// types is still echoed (`ECHONL`), so the cursor moves on.
struct EchoOff {
    fd: i32,
    original: libc::termios,
}

impl EchoOff {
    fn new(tty: &File) -> io::Result<EchoOff> {
        let fd = tty.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is an open descriptor and `original` a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = original;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, original));
        restore_on_interrupt();
        set_attrs(fd, &quiet)?;
        Ok(EchoOff { fd, original })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = set_attrs(self.fd, &self.original);
        SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Applies `attrs` to the terminal `fd` at once.
fn set_attrs(fd: i32, attrs: &libc::termios) -> io::Result<()> {
    // SAFETY: fd is an open terminal and `attrs` a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, attrs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// On Ctrl-C (or SIGTERM/SIGHUP) while echo is off: echo back on, exit 130.
fn restore_on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        if let Some((fd, original)) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = set_attrs(fd, &original);
        }
        eprintln!();
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_without_its_ending() {
        let mut input = io::Cursor::new("s3cret\r\nnext\n");
        assert_eq!(read_line_from(&mut input).unwrap(), "s3cret");
        assert_eq!(read_line_from(&mut input).unwrap(), "next");
        let e = read_line_from(&mut input).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut last = io::Cursor::new("no newline");
        assert_eq!(read_line_from(&mut last).unwrap(), "no newline");
        let mut blank = io::Cursor::new("\n");
        assert_eq!(read_line_from(&mut blank).unwrap(), "");
    }
}
