//! Reading a password: from the terminal without echo (`rpassword`, on
//! `/dev/tty`, so it works with stdin and stdout redirected), or one line
//! of stdin for scripts.

use std::io::{self, BufRead};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a prompt has the terminal (rpassword has switched echo off).
static PROMPTING: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C, SIGTERM or SIGHUP came while a prompt had the terminal.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Shows `prompt` on the terminal and reads one line without echo. Ctrl-C
/// (or SIGTERM/SIGHUP) puts the terminal back and exits 130.
///
/// rpassword reads the terminal raw and, on Ctrl-C, raises SIGINT before it
/// restores the terminal; SIGINT's default action would end the process
/// with echo still off. So a handler catches it while the prompt runs (and
/// only notes it), rpassword restores the terminal and returns
/// `Interrupted`, and the process exits 130 here; outside a prompt the same
/// handler exits 130 at once.
pub fn read_password(prompt: &str) -> io::Result<String> {
    let _ = ctrlc::set_handler(on_interrupt);
    PROMPTING.store(true, Ordering::SeqCst);
    let read = rpassword::prompt_password(prompt);
    PROMPTING.store(false, Ordering::SeqCst);
    let interrupted = matches!(&read, Err(e) if e.kind() == io::ErrorKind::Interrupted);
    if interrupted || INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!();
        std::process::exit(130);
    }
    read
}

/// The signal handler of [`read_password`].
fn on_interrupt() {
    if PROMPTING.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        eprintln!();
        std::process::exit(130);
    }
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
