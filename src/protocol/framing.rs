//! Framing: the byte stream of a connection split into JSON texts of at
//! most `server.max_message_bytes`, without buffering an oversized one.

use std::io::{self, BufRead};

/// One result of [`LineReader::read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line (without `\n`; a trailing `\r` is removed too).
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes were discarded, not buffered.
    TooLarge,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
}

/// Splits a byte stream into lines of at most `max` bytes, discarding the
/// rest of any longer line without buffering it.
#[derive(Debug)]
pub struct LineReader {
    max: usize,
    buf: Vec<u8>,
    oversized: bool,
}

impl LineReader {
    /// A reader for lines of at most `max` bytes.
    pub fn new(max: usize) -> LineReader {
        LineReader {
            max,
            buf: Vec::new(),
            oversized: false,
        }
    }

    /// Whether part of a line has been received (and not yet its end).
    pub fn has_partial_line(&self) -> bool {
        !self.buf.is_empty() || self.oversized
    }

    /// Reads the next frame. I/O errors, including read timeouts, are
    /// returned as they are; the partial line is kept for the next call.
    pub fn read_line(&mut self, input: &mut impl BufRead) -> io::Result<Frame> {
        loop {
            let available = input.fill_buf()?;
            if available.is_empty() {
                return Ok(Frame::Eof);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.map_or(available.len(), |i| i);
            if !self.oversized && self.buf.len() + take > self.max {
                self.oversized = true;
                self.buf = Vec::new();
            }
            if !self.oversized {
                self.buf.extend_from_slice(&available[..take]);
            }
            input.consume(newline.map_or(take, |i| i + 1));
            if newline.is_some() {
                return Ok(self.finish_line());
            }
        }
    }

    fn finish_line(&mut self) -> Frame {
        if std::mem::take(&mut self.oversized) {
            return Frame::TooLarge;
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Frame::Line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_lines_are_discarded_and_the_stream_goes_on() {
        let data = format!("{}\nshort\r\n{}", "x".repeat(100), "tail");
        let mut input = io::BufReader::with_capacity(7, data.as_bytes());
        let mut r = LineReader::new(10);
        assert_eq!(r.read_line(&mut input).unwrap(), Frame::TooLarge);
        assert_eq!(
            r.read_line(&mut input).unwrap(),
            Frame::Line(b"short".to_vec())
        );
        assert_eq!(r.read_line(&mut input).unwrap(), Frame::Eof);
    }
}
