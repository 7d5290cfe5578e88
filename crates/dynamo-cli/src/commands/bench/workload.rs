//! What a bench client does next: the operation mix (YCSB's core workloads) and the key.

use clap::ValueEnum;
use rand::Rng;
use serde::Serialize;

use super::zipf::ScrambledZipfian;

/// The operation mixes, after YCSB's core workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Update heavy: 50 % reads, 50 % updates (YCSB A).
    A,
    /// Read mostly: 95 % reads, 5 % updates (YCSB B).
    B,
    /// Read only (YCSB C).
    C,
    /// Write only: 100 % updates.
    W,
}

impl Workload {
    /// Returns the share of operations that are reads, in [0, 1].
    pub fn read_proportion(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::W => 0.0,
        }
    }

    /// Draws the next operation.
    pub fn next_op<R: Rng + ?Sized>(self, rng: &mut R) -> Op {
        // `random::<f64>()` is in [0, 1): C always reads and W never does.
        if rng.random::<f64>() < self.read_proportion() {
            Op::Read
        } else {
            Op::Update
        }
    }
}

/// How an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A blind write (no context).
    Plain,
    /// Read, then write with the read's context (read-modify-write, the way Dynamo
    /// applications write); for etcd a range then a put.
    Rmw,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// YCSB's scrambled zipfian, θ = 0.99.
    Zipfian,
    /// Every record equally likely.
    Uniform,
}

/// One operation of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read a record.
    Read,
    /// Update a record (a blind write, or a read then a write in `rmw` mode).
    Update,
}

/// Picks record numbers by a [`Distribution`].
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// See [`Distribution::Zipfian`].
    Zipfian(ScrambledZipfian),
    /// See [`Distribution::Uniform`].
    Uniform {
        /// The record count.
        records: u64,
    },
}

impl KeyChooser {
    /// Returns a chooser over `0..records`.
    ///
    /// # Panics
    /// When `records` is zero.
    pub fn new(distribution: Distribution, records: u64) -> KeyChooser {
        assert!(records > 0, "a key chooser needs at least one record");
        match distribution {
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(records)),
            Distribution::Uniform => KeyChooser::Uniform { records },
        }
    }

    /// Draws a record number.
    pub fn next_record<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeyChooser::Zipfian(z) => z.sample(rng),
            KeyChooser::Uniform { records } => rng.random_range(0..*records),
        }
    }
}

/// Returns a record's key, YCSB style: `user<N>`. Both targets use the same names; etcd
/// prefixes them with the bucket (`<bucket>/user<N>`), as it has no buckets.
pub fn record_key(record: u64) -> String {
    format!("user{record}")
}

/// Returns the seed of client `task`'s random source, derived from the run's seed so
/// that clients draw different but reproducible sequences (SplitMix64's finaliser).
pub fn task_seed(seed: u64, task: u64) -> u64 {
    let mut z = seed.wrapping_add(task.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::SmallRng;

    // Goal: each workload reads in its advertised proportion. Method: 100 000 draws with
    // a fixed seed; the read share lies within 1 percentage point (≈ 5 standard
    // deviations of a binomial at 50 %); C and W are exact.
    #[test]
    fn the_operation_mix_matches_the_workload() {
        let mut rng = SmallRng::seed_from_u64(11);
        let draws = 100_000;
        for (workload, share) in [
            (Workload::A, 0.5),
            (Workload::B, 0.95),
            (Workload::C, 1.0),
            (Workload::W, 0.0),
        ] {
            let reads = (0..draws)
                .filter(|_| workload.next_op(&mut rng) == Op::Read)
                .count();
            let measured = reads as f64 / draws as f64;
            assert!((measured - share).abs() < 0.01, "{workload:?}: {measured}");
            if share == 1.0 || share == 0.0 {
                assert_eq!(measured, share, "{workload:?} is pure");
            }
        }
    }

    // Goal: the uniform chooser stays in range and spreads evenly (no record over twice
    // its share in 100 000 draws over 100 records).
    #[test]
    fn uniform_keys_are_in_range_and_even() {
        let chooser = KeyChooser::new(Distribution::Uniform, 100);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[chooser.next_record(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 500 && c < 2_000), "{counts:?}");
    }

    // Goal: clients of one run get distinct seeds, the same ones every run.
    #[test]
    fn task_seeds_differ_and_repeat() {
        let seeds: std::collections::HashSet<u64> = (0..1000).map(|t| task_seed(42, t)).collect();
        assert_eq!(seeds.len(), 1000);
        assert_eq!(task_seed(42, 3), task_seed(42, 3));
        assert_ne!(task_seed(42, 3), task_seed(43, 3));
        assert_eq!(record_key(17), "user17");
    }
}
