//! `dynamo ring [--bucket B --key K]`: the ring, or where a key lives.

use clap::Args;
use dynamo_client::{KeyPlacement, NodeId, RingView};

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// Arguments of `dynamo ring`.
#[derive(Debug, Args)]
pub struct RingArgs {
    /// Show where a key of this bucket lives (with --key).
    #[arg(long, requires = "key")]
    pub bucket: Option<String>,
    /// Show where this key lives (with --bucket).
    #[arg(long, requires = "bucket")]
    pub key: Option<String>,
    /// Also list every partition and its owner.
    #[arg(long, conflicts_with = "key")]
    pub partitions: bool,
}

/// Prints the ring (epoch, Q, partitions per node) or a key's placement (partition,
/// preference list, fallbacks).
///
/// # Errors
/// The API's errors (`ring_unavailable` before the first node joined).
pub async fn run(global: &GlobalArgs, args: &RingArgs) -> Result<(), CliError> {
    let client = global.client()?;
    if let (Some(bucket), Some(key)) = (&args.bucket, &args.key) {
        let placement = client.placement(bucket, key).await?;
        if global.json {
            return output::json(&placement);
        }
        return output::stdout(placement_text(bucket, key, &placement).as_bytes());
    }
    let ring = client.ring().await?;
    if global.json {
        return output::json(&ring);
    }
    output::stdout(ring_text(&ring, args.partitions).as_bytes())
}

fn join(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".into();
    }
    nodes.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
}

fn placement_text(bucket: &str, key: &str, p: &KeyPlacement) -> String {
    format!(
        "key: {bucket}/{key}\nring epoch: {}\npartition: {}\npreference list: {}\nfallbacks: {}\n",
        p.epoch,
        p.partition,
        join(&p.preference_list),
        join(&p.fallbacks)
    )
}

fn ring_text(ring: &RingView, every_partition: bool) -> String {
    let mut out = format!("ring epoch: {}\npartitions: {}\n\n", ring.epoch, ring.partitions);
    let total = ring.owners.len().max(1) as f64;
    let rows: Vec<Vec<String>> = ring
        .partitions_per_owner()
        .into_iter()
        .map(|(node, count)| {
            vec![
                node.to_string(),
                count.to_string(),
                format!("{:.1}%", f64::from(count) * 100.0 / total),
            ]
        })
        .collect();
    out.push_str(&output::table(&["NODE", "PARTITIONS", "SHARE"], &rows));
    if every_partition {
        let rows: Vec<Vec<String>> = ring
            .owners
            .iter()
            .enumerate()
            .map(|(p, owner)| vec![p.to_string(), owner.to_string()])
            .collect();
        out.push('\n');
        out.push_str(&output::table(&["PARTITION", "OWNER"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::RingEpoch;

    #[test]
    fn the_ring_summarises_partitions_per_node() {
        let ring = RingView {
            epoch: RingEpoch(2),
            partitions: 4,
            owners: ["a", "b", "a", "a"]
                .iter()
                .map(|n| NodeId::new(*n).expect("id"))
                .collect(),
        };
        let text = ring_text(&ring, true);
        assert!(text.contains("a     3           75.0%"), "{text}");
        assert!(text.contains("b     1           25.0%"), "{text}");
        assert!(
            text.contains("PARTITION  OWNER\n0          a\n1          b\n"),
            "{text}"
        );
    }
}
