//! How results reach the terminal: raw values, readable values, tables and JSON.

use std::io::{IsTerminal as _, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::error::CliError;

/// Writes bytes to stdout exactly as given.
pub fn stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Io {
            what: "cannot write to stdout".into(),
            source,
        })
}

/// Writes a raw value to stdout, adding a final newline only for a terminal (so the
/// prompt does not run into it), never when stdout is a pipe or a file.
pub fn value(bytes: &[u8]) -> Result<(), CliError> {
    stdout(bytes)?;
    if std::io::stdout().is_terminal() && !bytes.ends_with(b"\n") {
        stdout(b"\n")?;
    }
    Ok(())
}

/// Writes text and a newline to stdout.
pub fn line(text: &str) -> Result<(), CliError> {
    stdout(format!("{text}\n").as_bytes())
}

/// Writes a value as pretty JSON and a newline to stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Io {
        what: "cannot encode the output as JSON".into(),
        source: std::io::Error::other(e),
    })?;
    line(&text)
}

/// Writes a value as compact JSON on one line (JSON Lines: a string holding a newline
/// stays on its line) to stdout.
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    line(&to_json_line(value)?)
}

fn to_json_line<T: Serialize + ?Sized>(value: &T) -> Result<String, CliError> {
    serde_json::to_string(value).map_err(|e| CliError::Io {
        what: "cannot encode the output as JSON".into(),
        source: std::io::Error::other(e),
    })
}

/// A value made fit for a terminal: its text when it is UTF-8 without control characters
/// (other than newlines and tabs), otherwise its base64.
#[derive(Debug, PartialEq, Eq)]
pub enum Printable<'a> {
    /// The value is readable text.
    Text(&'a str),
    /// The value's bytes in base64 (standard alphabet, padded).
    Base64(String),
}

impl Printable<'_> {
    /// Classifies `bytes`.
    pub fn of(bytes: &[u8]) -> Printable<'_> {
        match std::str::from_utf8(bytes) {
            Ok(text)
                if !text
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
            {
                Printable::Text(text)
            }
            _ => Printable::Base64(STANDARD.encode(bytes)),
        }
    }
}

/// Lays out rows under headers in columns two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut cells = Vec::with_capacity(row.len());
        for (i, cell) in row.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            cells.push(format!("{cell:<width$}"));
        }
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_text_only_when_safe_to_print() {
        assert_eq!(
            Printable::of(b"hello\nworld\t!"),
            Printable::Text("hello\nworld\t!")
        );
        assert_eq!(
            Printable::of(&[0, 159, 146, 150]),
            Printable::Base64("AJ+Slg==".into())
        );
        assert_eq!(
            Printable::of(b"\x1b[31mred"),
            Printable::Base64("G1szMW1yZWQ=".into())
        );
        assert_eq!(Printable::of("héllo".as_bytes()), Printable::Text("héllo"));
    }

    #[test]
    fn json_lines_keep_a_string_on_one_line() {
        assert_eq!(to_json_line("a\nb \"c\"").expect("encodes"), r#""a\nb \"c\"""#);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NODE", "STATE"],
            &[
                vec!["node-a".into(), "up".into()],
                vec!["b".into(), "down".into()],
            ],
        );
        assert_eq!(t, "NODE    STATE\nnode-a  up\nb       down\n");
    }
}
