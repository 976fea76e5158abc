//! Quoting: identifiers in the SQL text (always double-quoted, so any name
//! the catalogue holds is safe there) and names and values in the messages
//! of a refused call.

use serde_json::Value;

/// `"name"` with embedded double quotes doubled: a safe SQL identifier for
/// any name the catalogue holds.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`, both quoted as by [`quote_ident`].
pub(super) fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A name in double quotes for messages.
pub(super) fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// A JSON value for a message, cut short when long.
pub(super) fn show(value: &Value) -> String {
    const LIMIT: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= LIMIT {
        text
    } else {
        let cut: String = text.chars().take(LIMIT).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}
