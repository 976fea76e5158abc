//! Framing, sans I/O: a connection's bytes in, complete JSON texts out.
//!
//! [`Framing`] is what the router's event loop holds per connection; the
//! listener that accepted the connection decides its variant by its
//! [`Wire`]: the TCP stream ([`StreamFramer`]), or HTTP/1.1
//! (`server.http_listen`, [`HttpFramer`]), whose frames are whole HTTP
//! requests (or their rejections, [`Frame::Http`]); the event loop is the
//! same for both.
//!
//! ## The TCP stream
//!
//! The contract: a request text (an object, or an array for a batch) ends
//! as soon as it is complete, at its closing `}` or `]`, whether a newline
//! follows, the next text follows directly (`{…}{…}`), or nothing follows
//! yet. Whitespace between texts is ignored. Anything else (a stray scalar,
//! garbage) runs to the next newline and is handed over as one
//! [`Frame::Stray`] line. A text or stray line longer than the limit is
//! reported once as [`Frame::TooLarge`] as soon as it passes the limit, and
//! its remaining bytes are skipped to its end without being kept.
//!
//! A text must lie on one line (compact JSON, as every stream-framing
//! client sends it: a raw newline is not allowed inside a JSON string, and
//! outside one it is only layout). A newline inside an unfinished text
//! ends it there, and the parser answers it -32700: so a truncated text
//! cannot swallow the requests that follow it on the next lines.
//!
//! The framer only finds where a text ends: it tracks strings, escapes and
//! the nesting depth with a counter (no stack, so any depth is framed), and
//! leaves UTF-8 and JSON validity to the parser. Bytes are borrowed from the
//! caller's input whenever a text lies whole inside it; only a text split
//! across inputs is copied, into a buffer that exists while it is split.

use super::http::{Event, HttpFramer};

/// The transport a listener speaks; its connections get the matching [`Framing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `server.listen`: a stream of JSON texts, replies `\n`-terminated.
    Stream,
    /// `server.http_listen`: HTTP/1.1, `POST /` with a request or batch.
    Http,
}

/// One connection's framing state.
#[derive(Debug)]
pub enum Framing {
    /// The TCP stream of JSON texts.
    Stream(StreamFramer),
    /// HTTP/1.1 requests.
    Http(HttpFramer),
}

impl Framing {
    /// The framing of a connection accepted on a `wire` listener, for
    /// texts of at most `max` bytes.
    pub fn new(wire: Wire, max: usize) -> Framing {
        match wire {
            Wire::Stream => Framing::Stream(StreamFramer::new(max)),
            Wire::Http => Framing::Http(HttpFramer::new(max)),
        }
    }

    /// The next frame in `input` (see [`StreamFramer::next`]).
    pub fn next<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<Frame<'s>> {
        match self {
            Framing::Stream(framer) => framer.next(input),
            Framing::Http(framer) => framer.next(input).map(Frame::Http),
        }
    }

    /// What the end of the stream means: an HTTP request cut short is
    /// answered (400); a stream's unfinished text is dropped, as before.
    pub fn at_eof(&mut self) -> Option<Frame<'static>> {
        match self {
            Framing::Stream(_) => None,
            Framing::Http(framer) => framer.at_eof().map(Frame::Http),
        }
    }

    /// Whether a frame has begun and not ended (the idle timeout closes such a connection).
    pub fn has_partial(&self) -> bool {
        match self {
            Framing::Stream(framer) => framer.has_partial(),
            Framing::Http(framer) => framer.has_partial(),
        }
    }
}

/// One event of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete text that starts with `{` or `[`, as received (its UTF-8
    /// and JSON are the parser's to check).
    Text(&'a [u8]),
    /// A line that does not start a text (a stray scalar or garbage),
    /// without its `\n`.
    Stray(&'a [u8]),
    /// The current text (or stray line) passed the limit; the rest of it is
    /// skipped and nothing more is reported about it.
    TooLarge,
    /// An HTTP request, a rejection, or a `100 Continue` to send.
    Http(Event),
}

/// What the framer is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Between texts: whitespace is skipped.
    Between,
    /// Inside a text that is being kept.
    Text,
    /// Inside a stray line that is being kept.
    Stray,
    /// Inside an oversized text: scanned to its end, not kept.
    SkipText,
    /// Inside an oversized stray line: skipped to its newline.
    SkipStray,
}

/// Splits a byte stream into JSON texts of at most `max` bytes each.
#[derive(Debug)]
pub struct StreamFramer {
    max: usize,
    mode: Mode,
    /// Open `{` and `[` of the current text.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Bytes of the current text or line seen so far.
    len: usize,
    /// The current text or line, while it is split across inputs.
    partial: Vec<u8>,
    /// `partial` holds a frame returned by the last call: cleared next call.
    returned_partial: bool,
}

/// A split text's buffer above this capacity is freed once the text is
/// done, so that one big request does not pin memory on an idle connection.
const KEEP_CAPACITY: usize = 16 * 1024;

impl StreamFramer {
    /// A framer for texts of at most `max` bytes.
    pub fn new(max: usize) -> StreamFramer {
        StreamFramer {
            max,
            mode: Mode::Between,
            depth: 0,
            in_string: false,
            escaped: false,
            len: 0,
            partial: Vec::new(),
            returned_partial: false,
        }
    }

    /// Whether part of a text (or line) has been received and not its end.
    pub fn has_partial(&self) -> bool {
        self.mode != Mode::Between
    }

    /// Takes bytes off the front of `input` until one frame is complete and
    /// returns it; `None` once `input` is used up (the bytes of an
    /// unfinished text are kept for the next call).
    pub fn next<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<Frame<'s>> {
        if std::mem::take(&mut self.returned_partial) {
            self.partial.clear();
            if self.partial.capacity() > KEEP_CAPACITY {
                self.partial = Vec::new();
            }
        }
        loop {
            match self.mode {
                Mode::Between => self.start(input)?,
                Mode::Text => return self.text(input),
                Mode::Stray => return self.stray(input),
                Mode::SkipText => {
                    let (used, done) = self.scan(input);
                    *input = &input[used..];
                    if !done {
                        return None;
                    }
                    self.mode = Mode::Between;
                }
                Mode::SkipStray => match input.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        *input = &input[i + 1..];
                        self.mode = Mode::Between;
                    }
                    None => {
                        *input = &[];
                        return None;
                    }
                },
            }
        }
    }

    /// Skips whitespace and starts the next text or stray line; `None`
    /// when `input` holds nothing but whitespace.
    fn start(&mut self, input: &mut &[u8]) -> Option<()> {
        let Some(i) = input.iter().position(|b| !b.is_ascii_whitespace()) else {
            *input = &[];
            return None;
        };
        *input = &input[i..];
        self.len = 0;
        if matches!(input[0], b'{' | b'[') {
            self.mode = Mode::Text;
            self.depth = 0;
            self.in_string = false;
            self.escaped = false;
        } else {
            self.mode = Mode::Stray;
        }
        Some(())
    }

    fn text<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<Frame<'s>> {
        let (used, done) = self.scan(input);
        let (taken, rest) = input.split_at(used);
        *input = rest;
        self.keep(taken, done, Mode::SkipText)
    }

    fn stray<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<Frame<'s>> {
        let newline = input.iter().position(|&b| b == b'\n');
        let used = newline.map_or(input.len(), |i| i + 1);
        let (taken, rest) = input.split_at(used);
        *input = rest;
        let line = newline.map_or(taken, |i| &taken[..i]);
        match self.keep(line, newline.is_some(), Mode::SkipStray)? {
            Frame::Text(line) => Some(Frame::Stray(line)),
            other => Some(other),
        }
    }

    /// Adds `taken` to the current text or line: returns it when `done`,
    /// reports [`Frame::TooLarge`] once it passes the limit (then `skip`
    /// takes over, or the frame ends right there when `done`).
    fn keep<'s, 'i: 's>(
        &'s mut self,
        taken: &'i [u8],
        done: bool,
        skip: Mode,
    ) -> Option<Frame<'s>> {
        self.len += taken.len();
        if self.len > self.max {
            self.partial = Vec::new();
            self.mode = if done { Mode::Between } else { skip };
            return Some(Frame::TooLarge);
        }
        if !done {
            self.partial.extend_from_slice(taken);
            return None;
        }
        self.mode = Mode::Between;
        if self.partial.is_empty() {
            return Some(Frame::Text(taken));
        }
        self.partial.extend_from_slice(taken);
        self.returned_partial = true;
        Some(Frame::Text(&self.partial))
    }

    /// Scans the current text in `input`: how many bytes belong to it, and
    /// whether its closing bracket is among them.
    fn scan(&mut self, input: &[u8]) -> (usize, bool) {
        for (i, &b) in input.iter().enumerate() {
            if b == b'\n' {
                return (i, true); // an unfinished text ends at a newline: -32700
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
        }
        (input.len(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the framer makes of `chunks` fed one after the other.
    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut framer = StreamFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            while let Some(frame) = framer.next(&mut input) {
                out.push(match frame {
                    Frame::Text(t) => format!("T:{}", String::from_utf8_lossy(t)),
                    Frame::Stray(s) => format!("S:{}", String::from_utf8_lossy(s)),
                    Frame::TooLarge => "TooLarge".to_string(),
                    Frame::Http(e) => panic!("the stream framer made an HTTP event: {e:?}"),
                });
            }
            assert!(input.is_empty(), "input left over");
        }
        out
    }

    #[test]
    fn texts_end_at_their_closing_bracket_with_or_without_newline() {
        assert_eq!(
            frames(100, &[b"{\"a\":1}{\"b\":[2]}\n  [1,{}] \r\n{\"c\":3}"]),
            ["T:{\"a\":1}", "T:{\"b\":[2]}", "T:[1,{}]", "T:{\"c\":3}"]
        );
    }

    #[test]
    fn brackets_and_quotes_inside_strings_do_not_count() {
        assert_eq!(
            frames(100, &[br#"{"a":"}]\"{["}{"b":"\\"}"#]),
            [r#"T:{"a":"}]\"{["}"#, r#"T:{"b":"\\"}"#]
        );
    }

    #[test]
    fn a_text_split_anywhere_comes_out_whole() {
        let text = br#"{"jsonrpc":"2.0","method":"m","params":{"s":"a\"}b"},"id":1}"#;
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                frames(1000, &[a, b]),
                [format!("T:{}", String::from_utf8_lossy(text))],
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(frames(1000, &bytes).len(), 1);
    }

    #[test]
    fn stray_scalars_and_garbage_run_to_the_newline() {
        assert_eq!(
            frames(
                100,
                &[b"42\n\"text\"\r\nnot json {\"a\":1}\n{\"b\":2}x y\n"]
            ),
            [
                "S:42",
                "S:\"text\"\r",
                "S:not json {\"a\":1}",
                "T:{\"b\":2}",
                "S:x y"
            ]
        );
        assert_eq!(frames(100, &[b"gar", b"bage\n[]"]), ["S:garbage", "T:[]"]);
    }

    #[test]
    fn an_oversized_text_is_reported_once_and_skipped_to_its_end() {
        let big = format!(r#"{{"p":"{}","q":[{{}}]}}"#, "x".repeat(50));
        let input = format!("{big}{{\"a\":1}}");
        assert_eq!(frames(20, &[input.as_bytes()]), ["TooLarge", "T:{\"a\":1}"]);
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(7).collect();
        assert_eq!(frames(20, &chunks), ["TooLarge", "T:{\"a\":1}"]);
        let line = format!("{}\n[1]", "z".repeat(50));
        assert_eq!(frames(20, &[line.as_bytes()]), ["TooLarge", "T:[1]"]);
        // Exactly at the limit is fine.
        assert_eq!(frames(7, &[b"{\"a\":1}"]), ["T:{\"a\":1}"]);
        assert_eq!(frames(6, &[b"{\"a\":1}"]), ["TooLarge"]);
    }

    #[test]
    fn nesting_of_any_depth_is_framed_without_recursion() {
        let depth = 1_000_000;
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let out = frames(usize::MAX, &[deep.as_bytes(), b"{}"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], "T:{}");
    }

    #[test]
    fn a_newline_ends_an_unfinished_text() {
        assert_eq!(
            frames(100, &[b"{\"a\":1\n{\"b\":\"x\n\"}\n[2]"]),
            ["T:{\"a\":1", "T:{\"b\":\"x", "S:\"}", "T:[2]"]
        );
        let big = format!("{{\"p\":\"{}\n{{}}", "x".repeat(50));
        assert_eq!(frames(20, &[big.as_bytes()]), ["TooLarge", "T:{}"]);
    }

    #[test]
    fn invalid_utf8_is_left_to_the_parser() {
        let mut framer = StreamFramer::new(100);
        let mut input: &[u8] = b"{\"m\":\"\xff\xfe\"}";
        assert_eq!(
            framer.next(&mut input),
            Some(Frame::Text(b"{\"m\":\"\xff\xfe\"}"))
        );
    }

    #[test]
    fn partial_state_is_visible_and_whitespace_is_not_partial() {
        let mut framer = StreamFramer::new(100);
        let mut input: &[u8] = b"  \n ";
        assert_eq!(framer.next(&mut input), None);
        assert!(!framer.has_partial());
        let mut input: &[u8] = b"{\"a\":";
        assert_eq!(framer.next(&mut input), None);
        assert!(framer.has_partial());
        let mut input: &[u8] = b"1}";
        assert_eq!(framer.next(&mut input), Some(Frame::Text(b"{\"a\":1}")));
        assert!(!framer.has_partial());
    }
}
