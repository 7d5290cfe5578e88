//! Bucket properties: defaults, patches, and the `n` frozen once a bucket holds data.

use super::*;

impl Cluster {
    /// Returns a bucket's record (the defaults when none is stored).
    pub fn bucket(&self, b: &BucketName) -> BucketRecord {
        self.state
            .buckets
            .get(b)
            .cloned()
            .unwrap_or_else(|| BucketRecord {
                props: BucketProps::default(),
                has_data: false,
            })
    }

    fn ensure_bucket_room(&self, b: &BucketName) -> Result<(), ClusterError> {
        if !self.state.buckets.contains_key(b) && self.state.buckets.len() >= MAX_BUCKETS {
            return Err(ClusterError::Full {
                what: "bucket property records",
                max: MAX_BUCKETS,
            });
        }
        Ok(())
    }

    /// Applies a properties patch and returns the new record.
    ///
    /// # Errors
    /// `invalid_bucket_properties` (core's rules), `bucket_n_immutable` (changing `n` of a
    /// bucket that holds data), `bucket_type_immutable` (making a bucket that holds data a
    /// CRDT bucket, a plain one, or one of another CRDT type), `rate_limited` (too many
    /// buckets).
    pub fn patch_bucket(
        &mut self,
        b: &BucketName,
        patch: &BucketPropsPatch,
    ) -> Result<BucketRecord, ClusterError> {
        let current = self.bucket(b);
        let props = current.props.apply(patch)?;
        if current.has_data && props.n != current.props.n {
            return Err(ClusterError::BucketNImmutable {
                bucket: b.clone(),
                n: current.props.n,
                asked: props.n,
            });
        }
        // Siblings and LWW store the same opaque values, so a bucket may move between them;
        // a CRDT bucket's values are states of its type, which no other mode can read.
        let kind = |p: &dynamo_core::wire::BucketProps| match p.crdt_type {
            Some(t) if p.conflict == dynamo_core::wire::ConflictMode::Crdt => format!("crdt ({t})"),
            _ => "a plain mode".to_owned(),
        };
        if current.has_data && kind(&props) != kind(&current.props) {
            return Err(ClusterError::BucketTypeImmutable {
                bucket: b.clone(),
                was: kind(&current.props),
                asked: kind(&props),
            });
        }
        self.ensure_bucket_room(b)?;
        let record = BucketRecord {
            props,
            has_data: current.has_data,
        };
        self.state.buckets.insert(b.clone(), record.clone());
        Ok(record)
    }

    /// Records that a bucket holds data (its `n` is frozen from now on). Idempotent.
    ///
    /// # Errors
    /// `rate_limited` (too many buckets).
    pub fn mark_written(&mut self, b: &BucketName) -> Result<(), ClusterError> {
        if self.state.buckets.get(b).is_some_and(|r| r.has_data) {
            return Ok(());
        }
        self.ensure_bucket_room(b)?;
        let mut record = self.bucket(b);
        record.has_data = true;
        self.state.buckets.insert(b.clone(), record);
        Ok(())
    }
}
