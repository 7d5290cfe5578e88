//! The group-commit fsync reaches fjall's journal through a file handle of its own
//! (`Engine::sync_journal`), so it relies on fjall's journal layout: the newest
//! `<data-dir>/<id>.jnl` is the file commits are appended to. This pins that assumption
//! against the fjall version in Cargo.lock; an upgrade that changes it fails here
//! instead of silently fsyncing the wrong file.

use dynamo_core::version::{ConflictRule, NewWrite};
use dynamo_core::{DotSet, NodeId, Partitioning};
use dynamo_storage::engine::{Durability, Engine, KeyRef};
use dynamo_storage::metrics::StorageMetrics;

fn newest_journal(dir: &std::path::Path) -> Option<(u64, std::path::PathBuf)> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| {
            let path = e.expect("entry").path();
            let id = path
                .file_name()?
                .to_str()?
                .strip_suffix(".jnl")?
                .parse::<u64>()
                .ok()?;
            Some((id, path))
        })
        .max()
}

// Goal: a committed write is in the newest journal file, which is the file
// `sync_journal` fsyncs; and the engine stays usable across a sync and a reopen.
#[test]
fn commits_land_in_the_newest_journal_file_that_sync_journal_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = StorageMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let open = || {
        Engine::open(
            dir.path(),
            Partitioning::with_count(16).expect("q"),
            Durability::Sync,
            Some(NodeId::new("node-0").expect("id")),
            metrics.clone(),
        )
        .expect("open")
    };
    let k = KeyRef {
        bucket: "b",
        key: "k",
    };
    let probe = b"journal-probe-5d1c0b7e-value".to_vec();
    {
        let e = open();
        e.coordinate_put(
            &k,
            &DotSet::new(),
            NewWrite::value(probe.clone(), "text/plain", 1),
            ConflictRule::LastWriterWins,
            None,
        )
        .expect("put");
        e.sync_journal().expect("sync");
        let (_, path) = newest_journal(dir.path()).expect("fjall keeps <id>.jnl files in the data dir");
        let bytes = std::fs::read(&path).expect("read journal");
        assert!(
            bytes.windows(probe.len()).any(|w| w == probe.as_slice()),
            "the write is in {path:?}, the file sync_journal fsyncs"
        );
        e.close_clean().expect("close");
    }
    let e = open();
    let got = e.get(&k).expect("get").expect("stored");
    assert_eq!(got.live_siblings().next().map(|s| s.value.clone()), Some(probe));
    e.sync_journal().expect("sync after reopen");
}
