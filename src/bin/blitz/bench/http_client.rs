//! The HTTP/1.1 side of `blitz bench --http`: each call is a `POST /` on a
//! keep-alive connection ([`http_post`]), and each response's body is the
//! reply ([`http_body`] frames responses with httparse; they come back in
//! request order).

use std::io::Write;

/// Appends `POST /` with `body` (and the `bearer` header line) to `out`.
pub(super) fn http_post(bearer: &str, body: &[u8], out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "POST / HTTP/1.1\r\nHost: blitz\r\nContent-Type: application/json\r\n{bearer}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// The first complete HTTP response in `input`: the bytes it takes and
/// where its body lies; `None` until it is complete.
pub(super) fn http_body(input: &[u8]) -> Result<Option<(usize, std::ops::Range<usize>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    Ok((input.len() >= head + length).then(|| (head + length, head..head + length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_are_split_by_content_length() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 503 X\r\nContent-Length: 3\r\n\r\n[1]";
        let (used, body) = http_body(two).unwrap().unwrap();
        assert_eq!(&two[body], b"{}");
        let (_, body) = http_body(&two[used..]).unwrap().unwrap();
        assert_eq!(&two[used..][body], b"[1]");
        assert_eq!(
            http_body(&two[..30]).unwrap(),
            None,
            "a partial response waits"
        );
        assert!(http_body(b"garbage\r\n\r\n").is_err());
        let mut out = Vec::new();
        http_post("Authorization: Bearer k\r\n", b"{}", &mut out);
        assert!(out.ends_with(b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}"));
    }
}
