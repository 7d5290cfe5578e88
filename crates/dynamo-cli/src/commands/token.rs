//! `dynamo token create|list|delete`: scoped tokens (need `admin`).

use clap::{Subcommand, ValueEnum};
use dynamo_client::{AllBuckets, BucketName, BucketScope, Permission, TokenInfo, TokenRequest};

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// The `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once and never again.
    Create {
        /// The buckets it covers: `*` for all, or names separated by commas.
        #[arg(long, value_delimiter = ',', required = true)]
        buckets: Vec<String>,
        /// What it may do, separated by commas.
        #[arg(long, value_enum, value_delimiter = ',', required = true)]
        permissions: Vec<PermissionArg>,
        /// Seconds until the token stops being accepted; without it, it lives until deleted.
        #[arg(long)]
        ttl: Option<u64>,
        /// Requests per second it may make through each coordinator; without it, the
        /// coordinators' default (`--token-rate-limit-rps`).
        #[arg(long)]
        rate_limit_rps: Option<u32>,
    },
    /// List tokens: ids and scopes, never secrets.
    List,
    /// Delete a token by id.
    Delete {
        /// The token's id (from `create` or `list`).
        id: String,
    },
}

/// `--permissions` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermissionArg {
    /// Read objects and bucket properties.
    Read,
    /// Write and delete objects.
    Write,
    /// Bucket properties, tokens, membership.
    Admin,
}

impl From<PermissionArg> for Permission {
    fn from(p: PermissionArg) -> Permission {
        match p {
            PermissionArg::Read => Permission::Read,
            PermissionArg::Write => Permission::Write,
            PermissionArg::Admin => Permission::Admin,
        }
    }
}

/// Runs a `token` subcommand.
///
/// # Errors
/// A usage error for an invalid bucket list; the API's errors (`forbidden`,
/// `token_not_found`).
pub async fn run(global: &GlobalArgs, command: &TokenCommand) -> Result<(), CliError> {
    let client = global.client()?;
    match command {
        TokenCommand::Create {
            buckets,
            permissions,
            ttl,
            rate_limit_rps,
        } => {
            let request = TokenRequest {
                buckets: scope(buckets)?,
                permissions: permissions.iter().map(|&p| p.into()).collect(),
                ttl_s: *ttl,
                rate_limit_rps: *rate_limit_rps,
            };
            let created = client.create_token(&request).await?;
            eprintln!("the secret is shown once: store it now");
            if global.json {
                return output::json(&created);
            }
            output::line(&format!("id: {}\ntoken: {}", created.id, created.token))
        }
        TokenCommand::List => {
            let tokens = client.list_tokens().await?;
            if global.json {
                return output::json(&tokens);
            }
            output::stdout(list_text(&tokens).as_bytes())
        }
        TokenCommand::Delete { id } => {
            client.delete_token(id).await?;
            Ok(())
        }
    }
}

/// Parses `--buckets`: exactly `*`, or valid bucket names.
fn scope(buckets: &[String]) -> Result<BucketScope, CliError> {
    if buckets.iter().any(|b| b == "*") {
        if buckets.len() > 1 {
            return Err(CliError::Usage(
                "--buckets is either `*` or a list of names, not both".into(),
            ));
        }
        return Ok(BucketScope::All(AllBuckets::Star));
    }
    buckets
        .iter()
        .map(|b| BucketName::new(b.as_str()).map_err(|e| CliError::Usage(format!("--buckets {b:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(BucketScope::Only)
}

fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::Admin => "admin",
    }
}

fn list_text(tokens: &[TokenInfo]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let buckets = match &t.buckets {
                BucketScope::All(_) => "*".to_owned(),
                BucketScope::Only(names) => {
                    names.iter().map(BucketName::as_str).collect::<Vec<_>>().join(",")
                }
            };
            let permissions: Vec<&str> = t.permissions.iter().map(|&p| permission_name(p)).collect();
            // A token without a limit of its own gets each coordinator's default.
            let rate = t
                .rate_limit_rps
                .map_or_else(|| "default".to_owned(), |r| format!("{r}/s"));
            let expires = t.expires.clone().unwrap_or_else(|| "never".to_owned());
            vec![
                t.id.clone(),
                buckets,
                permissions.join(","),
                rate,
                t.created.clone(),
                expires,
            ]
        })
        .collect();
    output::table(
        &["ID", "BUCKETS", "PERMISSIONS", "RATE", "CREATED", "EXPIRES"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_scopes_are_star_or_valid_names() {
        assert!(matches!(scope(&["*".into()]), Ok(BucketScope::All(_))));
        assert!(matches!(scope(&["a".into(), "b".into()]), Ok(BucketScope::Only(v)) if v.len() == 2));
        assert!(matches!(
            scope(&["*".into(), "a".into()]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(scope(&["Bad".into()]), Err(CliError::Usage(_))));
    }

    #[test]
    fn the_list_shows_rate_limits_and_expiry() {
        let t = |rate, expires: Option<&str>| TokenInfo {
            id: "ab12".into(),
            buckets: BucketScope::Only(vec![BucketName::new("cart").expect("bucket")]),
            permissions: vec![Permission::Read],
            created: "2026-12-05T10:00:00.000Z".into(),
            expires: expires.map(str::to_owned),
            rate_limit_rps: rate,
        };
        let text = list_text(&[t(Some(200), Some("2026-12-06T10:00:00.000Z")), t(None, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("RATE") && lines[0].contains("EXPIRES"),
            "{text}"
        );
        assert!(
            lines[1].contains("200/s") && lines[1].contains("2026-12-06"),
            "{text}"
        );
        assert!(
            lines[2].contains("default") && lines[2].contains("never"),
            "{text}"
        );
    }
}
