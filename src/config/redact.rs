//! Hiding the password of a `db.url` before it is shown (in the annotated
//! configuration and in error messages).

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db`;
/// `password=secret` in a key=value string → `password=***`.
pub(super) fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgresql://bob:s3cret@db:5432/x"),
            "postgresql://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("postgresql://bob@db/x"), "postgresql://bob@db/x");
        assert_eq!(
            redact_url("host=db password=s3cret user=bob"),
            "host=db password=*** user=bob"
        );
    }
}
