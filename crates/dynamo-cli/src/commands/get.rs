//! `dynamo get <bucket> <key>`: print a key's value, or its siblings.

use clap::Args;
use dynamo_client::{ErrorCode, Lookup, Object, RequestOptions};
use dynamo_core::wire::{SiblingView, SiblingsEnvelope};

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output::{self, Printable};

/// Arguments of `dynamo get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Print only the context token on stdout (for a script's next write), not the value.
    #[arg(long, conflicts_with = "etag")]
    pub context: bool,
    /// Print only the ETag on stdout (for a script's `put --if-match`), not the value.
    #[arg(long)]
    pub etag: bool,
    /// The read quorum for this request (1 ≤ r ≤ n).
    #[arg(long)]
    pub r: Option<u8>,
}

/// Reads the key. One value goes to stdout as raw bytes; siblings are listed readably
/// (index, content type, last-modified, value as text or base64). The context and the
/// ETag go to stderr (`context: …`, `etag: …`), or alone to stdout with `--context` or
/// `--etag`; `--json` prints the siblings envelope, its `etag` included.
///
/// # Errors
/// `not_found` (exit 1) when the key has no live value; the context of its tombstone, if
/// any, is still printed on stderr so a write can supersede the delete.
pub async fn run(global: &GlobalArgs, args: &GetArgs) -> Result<(), CliError> {
    let client = global.client()?;
    let opts = RequestOptions {
        r: args.r,
        ..RequestOptions::default()
    };
    let object = match client.lookup(&args.bucket, &args.key, &opts).await? {
        Lookup::Found(object) => object,
        Lookup::NotFound { context, etag } => {
            if let Some(context) = context {
                eprintln!("context: {context}");
            }
            if let Some(etag) = etag {
                eprintln!("etag: {etag}");
            }
            return Err(CliError::Failed {
                code: ErrorCode::NotFound,
                message: format!("no value under {}/{}", args.bucket, args.key),
            });
        }
    };
    if args.context {
        return output::line(object.context.as_str());
    }
    if args.etag {
        return match &object.etag {
            Some(etag) => output::line(etag.as_str()),
            None => Err(CliError::Failed {
                code: ErrorCode::Internal,
                message: "the server answered no ETag (it predates conditional writes)".into(),
            }),
        };
    }
    if global.json {
        return output::json(&envelope(&object));
    }
    match object.single() {
        Some(only) => output::value(&only.value)?,
        None => output::stdout(siblings_text(&object).as_bytes())?,
    }
    eprintln!("context: {}", object.context);
    if let Some(etag) = &object.etag {
        eprintln!("etag: {etag}");
    }
    Ok(())
}

/// The object as the API's JSON envelope (values in base64).
fn envelope(object: &Object) -> SiblingsEnvelope {
    SiblingsEnvelope {
        context: object.context.to_string(),
        etag: object.etag.as_ref().map(ToString::to_string),
        siblings: object
            .siblings
            .iter()
            .map(|s| SiblingView {
                value: s.value.clone(),
                content_type: s.content_type.clone(),
                last_modified: s.last_modified.clone(),
            })
            .collect(),
    }
}

/// Lists siblings for a reader: a header line per sibling, then its value indented by
/// two spaces (so a value's own lines can never pass for a header).
fn siblings_text(object: &Object) -> String {
    let mut out = format!(
        "{} siblings: resolve them by writing with the context\n",
        object.siblings.len()
    );
    for (i, s) in object.siblings.iter().enumerate() {
        let (encoding, body) = match Printable::of(&s.value) {
            Printable::Text(text) => ("text", text.to_owned()),
            Printable::Base64(b64) => ("base64", b64),
        };
        out.push_str(&format!(
            "[{}] content-type: {}  last-modified: {}  value ({encoding}, {} bytes):\n",
            i + 1,
            s.content_type,
            s.last_modified,
            s.value.len()
        ));
        for line in body.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::{Context, Sibling};

    #[test]
    fn siblings_are_listed_with_index_type_time_and_value() {
        let object = Object {
            context: Context::new("ctx"),
            siblings: vec![
                Sibling {
                    value: b"one\ntwo".to_vec(),
                    content_type: "text/plain".into(),
                    last_modified: "2025-01-01T00:00:00.000Z".into(),
                },
                Sibling {
                    value: vec![0, 255],
                    content_type: "application/octet-stream".into(),
                    last_modified: "2025-01-01T00:00:01.000Z".into(),
                },
            ],
            etag: None,
        };
        assert_eq!(
            siblings_text(&object),
            "2 siblings: resolve them by writing with the context\n\
             [1] content-type: text/plain  last-modified: 2025-01-01T00:00:00.000Z  value (text, 7 bytes):\n  one\n  two\n\
             [2] content-type: application/octet-stream  last-modified: 2025-01-01T00:00:01.000Z  value (base64, 2 bytes):\n  AP8=\n"
        );
    }
}
