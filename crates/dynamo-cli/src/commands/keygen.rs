//! `dynamo keygen`: a fresh secret key, as a line of a key file: a coordinator's
//! `--context-key-file`, or any service's `--member-key-file` / `--control-key-file`;
//! with `--dir`, every secret file a cluster needs, each made only where it is missing
//! (a container cluster's init step, run at every start).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::Args;
use dynamo_core::keys::{Key, KeyRing};

use crate::cli::ROOT_TOKEN_FILE;
use crate::commands::dev::{CONTEXT_KEY_FILE, CONTROL_KEY_FILE, MEMBER_KEY_FILE};
use crate::error::CliError;

/// Arguments of `dynamo keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key's id (0-255), carried in everything it signs: give each new key of a
    /// key file an id its current keys do not use.
    #[arg(long, default_value_t = 1)]
    pub id: u8,
    /// Instead of printing a key, make the cluster's secret files in this directory
    /// (`root-token`, `context-key`, `member-key`, `control-key`, mode 0600), each only
    /// where it does not exist yet; an existing file is checked, never replaced.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints a key line from 32 bytes of the operating system's randomness, or makes the
/// missing secret files of `--dir`.
///
/// # Errors
/// [`CliError::Io`] when a file cannot be read or written; [`CliError::Usage`] when an
/// existing file does not hold what its name says (it is left alone for a person to look
/// at: replacing a key would lock out everything signed with it).
pub fn run(args: &KeygenArgs) -> Result<(), CliError> {
    match &args.dir {
        None => println!("{}", generate(args.id)?),
        Some(dir) => {
            for (name, made) in ensure_cluster_secrets(dir, args.id)? {
                eprintln!(
                    "{}: {}",
                    dir.join(name).display(),
                    if made { "made" } else { "kept" }
                );
            }
        }
    }
    Ok(())
}

/// The secret files of a cluster, as [`ensure_cluster_secrets`] makes them.
pub const CLUSTER_SECRET_FILES: [&str; 4] = [
    ROOT_TOKEN_FILE,
    CONTEXT_KEY_FILE,
    MEMBER_KEY_FILE,
    CONTROL_KEY_FILE,
];

/// Makes each of [`CLUSTER_SECRET_FILES`] in `dir` that is missing (keys with id `id`, a
/// root token of 32 random bytes) and checks the others. Returns each name with whether
/// it was made.
///
/// # Errors
/// As [`run`].
pub fn ensure_cluster_secrets(dir: &Path, id: u8) -> Result<Vec<(&'static str, bool)>, CliError> {
    let io = |what: String| move |source| CliError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let mut done = Vec::with_capacity(CLUSTER_SECRET_FILES.len());
    for name in CLUSTER_SECRET_FILES {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_secret(name, &text).map_err(|e| {
                    CliError::Usage(format!(
                        "{} exists but is not a valid {name}: {e}",
                        path.display()
                    ))
                })?;
                done.push((name, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let line = if name == ROOT_TOKEN_FILE {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
                } else {
                    generate(id)?
                };
                write_new(&path, &line).map_err(io(format!("cannot write {}", path.display())))?;
                done.push((name, true));
            }
            Err(source) => {
                return Err(CliError::Io {
                    what: format!("cannot read {}", path.display()),
                    source,
                });
            }
        }
    }
    Ok(done)
}

/// Checks an existing secret file the way the service that reads it will.
fn check_secret(name: &str, text: &str) -> Result<(), String> {
    if name == ROOT_TOKEN_FILE {
        // The coordinator's rule: one or two token lines (a rotation), 16 characters or
        // more; blank lines and `#` comments skipped.
        let tokens: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        match tokens.len() {
            1 | 2 if tokens.iter().all(|t| t.len() >= 16) => Ok(()),
            1 | 2 => Err("a token is shorter than 16 characters".into()),
            n => Err(format!("it holds {n} tokens; one, or two while rotating")),
        }
    } else {
        KeyRing::parse(text).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Writes `line` to a file that must not exist yet (two init containers racing never
/// overwrite each other's keys), readable by its owner only.
fn write_new(path: &Path, line: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{line}")?;
    f.sync_all()
}

/// Returns a fresh key line for `id`.
///
/// # Errors
/// [`CliError::Usage`] should the key be refused (it never is: 32 random bytes).
pub fn generate(id: u8) -> Result<String, CliError> {
    let key = Key::new(id, &rand::random::<[u8; 32]>()).map_err(|e| CliError::Usage(e.to_string()))?;
    let line = key.to_line();
    // What is printed must be what a service reads back.
    KeyRing::parse(&line).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_lines_a_coordinator_reads() {
        let (a, b) = (generate(3).expect("key"), generate(3).expect("key"));
        assert_ne!(a, b);
        assert!(a.starts_with("3:"));
        let keys = KeyRing::parse(&format!("{a}\n")).expect("parse");
        assert_eq!(keys.signing().id(), 3);
    }

    #[test]
    fn cluster_secrets_are_made_once_and_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("secrets");
        let made = ensure_cluster_secrets(&secrets, 1).expect("made");
        assert!(made.iter().all(|(_, m)| *m), "{made:?}");
        let before: Vec<String> = CLUSTER_SECRET_FILES
            .iter()
            .map(|n| std::fs::read_to_string(secrets.join(n)).expect("read"))
            .collect();
        for (name, text) in CLUSTER_SECRET_FILES.iter().zip(&before) {
            check_secret(name, text).expect("what the services read");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(secrets.join(name))
                    .expect("stat")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        let again = ensure_cluster_secrets(&secrets, 1).expect("kept");
        assert!(again.iter().all(|(_, m)| !*m), "{again:?}");
        let after: Vec<String> = CLUSTER_SECRET_FILES
            .iter()
            .map(|n| std::fs::read_to_string(secrets.join(n)).expect("read"))
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn a_broken_secret_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(MEMBER_KEY_FILE), "not a key\n").expect("write");
        let err = ensure_cluster_secrets(dir.path(), 1).expect_err("broken");
        assert!(matches!(err, CliError::Usage(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(MEMBER_KEY_FILE)).expect("read"),
            "not a key\n"
        );
    }
}
