//! `dynamo keygen`: a fresh secret key, as a line of a key file: a coordinator's
//! `--context-key-file`, or any service's `--member-key-file` / `--control-key-file`.

use clap::Args;
use dynamo_core::keys::{Key, KeyRing};

use crate::error::CliError;

/// Arguments of `dynamo keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key's id (0-255), carried in everything it signs: give each new key of a
    /// key file an id its current keys do not use.
    #[arg(long, default_value_t = 1)]
    pub id: u8,
}

/// Prints a key line from 32 bytes of the operating system's randomness.
///
/// # Errors
/// None in practice: a 32-byte key is always valid.
pub fn run(args: &KeygenArgs) -> Result<(), CliError> {
    println!("{}", generate(args.id)?);
    Ok(())
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
}
