//! The single-instance ring service's state file, `state.json`: what a ring group
//! migrates on its first start ([`crate::raft`]); the group itself keeps its state in its
//! Raft log and snapshots. [`load`] reads and checks one; [`save`] writes one in that
//! format (tests make the files a migration starts from with it).
//!
//! A save writes `state.json.tmp`, fsyncs it, renames it over `state.json` and fsyncs the
//! directory, so after a crash the file is either the old or the new state, never a mix,
//! and a change answered to a caller survives power loss. Liveness timestamps are not
//! saved (they mean nothing after a restart); node states (`up`/`down`) are, because
//! their transitions bump the version.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use dynamo_core::wire::cluster::ClusterState;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::plan::PendingChange;

/// The state file's name inside the data directory.
pub const STATE_FILE: &str = "state.json";
/// The temporary file a save writes before renaming it over [`STATE_FILE`].
pub const TEMP_FILE: &str = "state.json.tmp";
/// The layout version of [`StateFile`]; another value is refused, never guessed at.
pub const FORMAT: u32 = 1;

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// [`FORMAT`].
    pub format: u32,
    /// The published document (liveness timestamps stripped).
    pub state: ClusterState,
    /// The membership change in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<PendingChange>,
}

/// Why the stored state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid state.
    #[error("{path} is not a valid ring state: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StateFile {
    /// Captures `cluster` for saving, without liveness timestamps.
    pub fn of(cluster: &Cluster) -> StateFile {
        let mut state = cluster.state.clone();
        for n in &mut state.nodes {
            n.last_heartbeat_ms_ago = None;
        }
        StateFile {
            format: FORMAT,
            state,
            change: cluster.change.clone(),
        }
    }
}

/// Loads the state saved in `dir`; `None` when none was ever saved.
///
/// # Errors
/// [`LoadError::Corrupt`] for a file that does not parse, has another format or breaks
/// an invariant (core's ring checks, [`Cluster::check_consistent`]); [`LoadError::Io`].
pub fn load(dir: &Path) -> Result<Option<Cluster>, LoadError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    let corrupt = |reason: String| LoadError::Corrupt {
        path: path.clone(),
        reason,
    };
    // Check the format first, so a future layout gets a clear message rather than a
    // field-level parse error.
    let format = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| corrupt(e.to_string()))?
        .get("format")
        .and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        return Err(corrupt(format!("format {format:?}, expected {FORMAT}")));
    }
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let cluster = Cluster {
        state: file.state,
        change: file.change,
    };
    cluster.check_consistent().map_err(corrupt)?;
    Ok(Some(cluster))
}

/// Saves `file` in `dir` atomically and durably (temp file, fsync, rename, fsync of the
/// directory). Blocking: call it from `spawn_blocking`.
///
/// # Errors
/// The I/O error; `state.json` then still holds the previous state.
pub fn save(dir: &Path, file: &StateFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let tmp = dir.join(TEMP_FILE);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_strips_timestamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("empty dir").is_none());
        let mut c = Cluster::empty();
        c.state.version = 7;
        save(dir.path(), &StateFile::of(&c)).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(c));
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[test]
    fn a_pending_change_round_trips() {
        use crate::cluster::Settings;
        use crate::plan::ChangeKind;
        use dynamo_core::wire::cluster::NodeRegistration;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings {
            partitioning: dynamo_core::Partitioning::with_count(8).expect("q"),
            n: 3,
            early_release: false,
        };
        let mut c = Cluster::empty();
        let reg = NodeRegistration {
            node_id: dynamo_core::NodeId::new("a").expect("id"),
            address: "http://127.0.0.1:1".into(),
            zone: Some("z1".into()),
        };
        c.begin(ChangeKind::Join { node: reg }, settings).expect("join");
        c.state.version += 1;
        c.fail(1, "boom".into(), 3);
        save(dir.path(), &StateFile::of(&c)).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(c));
    }

    #[test]
    fn corrupt_and_foreign_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        for bad in [
            "{not json",
            r#"{"format": 2, "state": {}}"#,
            r#"{"format": 1, "state": {"version": 1}}"#,
        ] {
            std::fs::write(&path, bad).expect("write");
            let e = load(dir.path()).expect_err(bad);
            assert!(matches!(e, LoadError::Corrupt { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("state.json"), "{e}");
        }
    }
}
