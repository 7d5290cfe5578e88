//! YCSB's key choosers: the zipfian generator and its scrambled form.
//!
//! A port of YCSB's `ZipfianGenerator` and `ScrambledZipfianGenerator` (Gray et al.,
//! "Quickly Generating Billion-Record Synthetic Databases", SIGMOD 1994), so that a run
//! here and a YCSB run skew their keys alike. The scrambled form draws a zipfian rank
//! over a huge item space (10¹⁰ items, θ = 0.99, whose ζ YCSB precomputes) and hashes
//! it with FNV-1a onto the record space: the popular records are scattered over the key
//! space instead of being its first few, and the record count can change without
//! recomputing ζ(n), which costs O(n).
//!
//! The generators are pure: the random source comes in as an argument, so a seeded
//! [`rand::Rng`] gives the same keys every time.

use rand::Rng;

/// The skew of YCSB's zipfian distribution (its `ZIPFIAN_CONSTANT`).
pub const ZIPFIAN_THETA: f64 = 0.99;

/// The item space the scrambled generator draws ranks from (YCSB's `ITEM_COUNT`).
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;

/// ζ(`SCRAMBLED_ITEMS`, 0.99), precomputed by YCSB (`ZETAN`): summing 10¹⁰ terms at
/// start-up would take tens of seconds.
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// FNV-1a's 64-bit offset basis.
const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// Returns YCSB's `Utils.fnvhash64`: FNV-1a over the value's 8 little-endian bytes, made
/// non-negative as Java's `Math.abs` of a `long` would.
pub fn fnvhash64(value: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    for octet in value.to_le_bytes() {
        hash ^= u64::from(octet);
        hash = hash.wrapping_mul(FNV_PRIME_64);
    }
    // Java's Math.abs(Long.MIN_VALUE) stays negative; as an unsigned value it is 2^63,
    // which is as good a hash and keeps the result in range after the modulo.
    (hash as i64).unsigned_abs()
}

/// Returns ζ(n, θ) = Σ_{i=1..n} 1/i^θ. Costs O(n).
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Draws item ranks `0..items` with P(rank k) ∝ 1/(k+1)^θ: rank 0 is the most popular.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// Returns a generator over `items` ranks with skew `theta` (0 < θ < 1), computing
    /// ζ(items, θ) in O(items).
    ///
    /// # Panics
    /// When `items` is zero or θ is outside (0, 1): callers pass constants or checked
    /// flags.
    #[cfg(test)]
    pub fn new(items: u64, theta: f64) -> Zipfian {
        Zipfian::with_zetan(items, theta, zeta(items, theta))
    }

    /// Returns a generator over `items` ranks whose ζ(items, θ) is already known.
    ///
    /// # Panics
    /// As `Zipfian::new`.
    pub fn with_zetan(items: u64, theta: f64, zetan: f64) -> Zipfian {
        assert!(items > 0, "a zipfian generator needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "the zipfian skew must be in (0, 1)");
        let zeta2theta = zeta(2, theta);
        Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan),
        }
    }

    /// Draws one rank in `0..items` (YCSB's `nextLong`).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // Floating point can land on `items` itself when u is within an ulp of 1.
        rank.min(self.items - 1)
    }
}

/// YCSB's scrambled zipfian: zipfian ranks over 10¹⁰ items, FNV-hashed onto
/// `0..records`. The record popularity keeps the zipfian shape but the popular records
/// are spread over the key space.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    records: u64,
    ranks: Zipfian,
}

impl ScrambledZipfian {
    /// Returns a generator over record numbers `0..records` with YCSB's θ = 0.99.
    ///
    /// # Panics
    /// When `records` is zero (the bench checks `--records ≥ 1` first).
    pub fn new(records: u64) -> ScrambledZipfian {
        assert!(records > 0, "a key chooser needs at least one record");
        // YCSB builds `ZipfianGenerator(0, ITEM_COUNT, ...)`: ITEM_COUNT + 1 items.
        ScrambledZipfian {
            records,
            ranks: Zipfian::with_zetan(SCRAMBLED_ITEMS + 1, ZIPFIAN_THETA, SCRAMBLED_ZETAN),
        }
    }

    /// Draws one record number in `0..records`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        fnvhash64(self.ranks.sample(rng)) % self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::SmallRng;

    fn counts(records: u64, draws: usize, seed: u64) -> Vec<u64> {
        let chooser = ScrambledZipfian::new(records);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0u64; records as usize];
        for _ in 0..draws {
            let record = chooser.sample(&mut rng);
            counts[record as usize] += 1;
        }
        counts
    }

    // Goal: the hash is YCSB's fnvhash64. Method: vectors computed independently (FNV-1a
    // over the little-endian bytes, then |x| as a signed 64-bit value).
    #[test]
    fn fnvhash64_matches_ycsb() {
        assert_eq!(fnvhash64(0), 6_284_781_860_667_377_211);
        assert_eq!(fnvhash64(1), 8_517_097_267_634_966_620);
        assert_eq!(fnvhash64(42), 55_488_592_825_689_361);
        assert_eq!(fnvhash64(10_000_000_000), 1_201_321_332_300_452_516);
    }

    // Goal: YCSB's precomputed ζ agrees with the definition. Method: ζ grows by less than
    // n^(1-θ)/(1-θ) between n and 2n, so compare the exact sum for 10⁶ items with the
    // constant minus the integral tail from 10⁶ to 10¹⁰, within a small tolerance.
    #[test]
    fn the_precomputed_zeta_is_consistent() {
        let head = zeta(1_000_000, ZIPFIAN_THETA);
        let a = 1.0 - ZIPFIAN_THETA;
        let tail = ((1e10f64).powf(a) - (1e6f64).powf(a)) / a;
        assert!((head + tail - SCRAMBLED_ZETAN).abs() < 0.01, "{head} + {tail}");
    }

    // Goal: every draw is a valid record number, for tiny and odd record counts too.
    #[test]
    fn every_key_is_in_range() {
        let mut rng = SmallRng::seed_from_u64(1);
        for records in [1, 2, 3, 7, 200, 100_000] {
            let chooser = ScrambledZipfian::new(records);
            for _ in 0..20_000 {
                assert!(chooser.sample(&mut rng) < records);
            }
        }
        let plain = Zipfian::new(10, 0.99);
        for _ in 0..20_000 {
            assert!(plain.sample(&mut rng) < 10);
        }
    }

    // Goal: the popular keys are much more frequent than under a uniform choice. Method:
    // 200 000 draws over 1 000 records (200 each if uniform): the most popular record
    // gets over 20× its uniform share (YCSB's top rank alone is 1/ζ ≈ 3.8 % of draws),
    // the top 1 % of records over 10× theirs (the top 10 ranks hold ≈ 11 % of the mass),
    // and yet most records are drawn.
    #[test]
    fn the_most_popular_keys_dominate() {
        let draws = 200_000;
        let mut c = counts(1_000, draws, 7);
        c.sort_unstable_by(|a, b| b.cmp(a));
        assert!(c[0] > 20 * 200, "top record drawn {} times", c[0]);
        let top_1_percent: u64 = c[..10].iter().sum();
        assert!(top_1_percent * 10 > draws as u64, "top 1 %: {top_1_percent}");
        let touched = c.iter().filter(|&&n| n > 0).count();
        assert!(touched > 900, "only {touched} records drawn");
    }

    // Goal: the unscrambled generator has the zipfian shape: rank 0 first, then rank 1,
    // and rank 0 near its exact probability 1/ζ(n).
    #[test]
    fn plain_zipfian_ranks_decrease_in_popularity() {
        let z = Zipfian::new(100, ZIPFIAN_THETA);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut c = [0u64; 100];
        let draws = 100_000;
        for _ in 0..draws {
            c[z.sample(&mut rng) as usize] += 1;
        }
        assert!(c[0] > c[1] && c[1] > c[5] && c[5] > c[50], "{:?}", &c[..6]);
        let expected = draws as f64 / zeta(100, ZIPFIAN_THETA);
        assert!(
            (c[0] as f64 - expected).abs() < expected * 0.05,
            "{} vs {expected}",
            c[0]
        );
    }

    // Goal: a seed fixes the sequence; another seed changes it.
    #[test]
    fn a_seed_makes_the_keys_deterministic() {
        assert_eq!(counts(500, 10_000, 42), counts(500, 10_000, 42));
        assert_ne!(counts(500, 10_000, 42), counts(500, 10_000, 43));
    }
}
