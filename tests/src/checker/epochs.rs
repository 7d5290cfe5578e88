//! Check (4): no ring epoch goes backwards. A sampler polls the coordinator's
//! `GET /v1/ring` and every storage node's `GET /internal/v1/cluster-state` through the
//! whole run, and notes every answer whose epoch is below one the same service answered
//! before (restarts included: a node's adopted epoch is durable, so a restarted node
//! must not come back older).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ROOT_TOKEN;

/// How often every service is sampled.
const EVERY: Duration = Duration::from_millis(250);
/// Timeout of one sample: a paused or cut-off node just misses the round.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the sampler saw.
#[derive(Debug, Clone, Default)]
pub struct EpochReport {
    /// Epochs read.
    pub samples: u64,
    /// The highest epoch seen per service.
    pub highest: Vec<(String, u64)>,
    /// Every time an epoch went backwards.
    pub violations: Vec<String>,
}

/// Samples until `stop` turns true. `nodes` are `(name, base URL)`; nodes added to it
/// during the run (a membership change's newcomers) are sampled from then on.
pub async fn sample(
    http: dynamo_testkit::Http,
    coordinator: String,
    nodes: Arc<Mutex<Vec<(String, String)>>>,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
) -> EpochReport {
    let mut report = EpochReport::default();
    loop {
        let mut sources: Vec<(String, String, bool)> =
            vec![("coordinator".into(), format!("{coordinator}/v1/ring"), true)];
        sources.extend(
            nodes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(name, url)| (name.clone(), format!("{url}/internal/v1/cluster-state"), false)),
        );
        for (name, _, _) in &sources[report.highest.len()..] {
            report.highest.push((name.clone(), 0));
        }
        let round = sources.iter().map(|(_, url, public)| {
            let mut req = http.get(url).timeout(SAMPLE_TIMEOUT);
            if *public {
                req = req.bearer_auth(ROOT_TOKEN);
            }
            async move {
                let v: Value = req.send().await.ok()?.json().await.ok()?;
                v["epoch"].as_u64().or_else(|| v["ring_epoch"].as_u64())
            }
        });
        let epochs = futures::future::join_all(round).await;
        for (i, epoch) in epochs.into_iter().enumerate() {
            let Some(epoch) = epoch else { continue };
            report.samples += 1;
            let (name, highest) = &mut report.highest[i];
            if epoch < *highest {
                report.violations.push(format!(
                    "{:.3}s: {name} answered ring epoch {epoch} after {highest}",
                    t0.elapsed().as_secs_f64()
                ));
            }
            *highest = (*highest).max(epoch);
        }
        // Sleeps between rounds, or ends as soon as told to.
        if tokio::time::timeout(EVERY, stop.wait_for(|s| *s)).await.is_ok() {
            return report;
        }
    }
}
