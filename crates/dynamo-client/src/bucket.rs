//! Bucket properties: `GET` and `PUT /v1/buckets/{bucket}`.

use dynamo_core::ids::BucketName;
use dynamo_core::wire::{BucketProps, BucketPropsPatch};
use reqwest::Method;

use crate::client::{Call, Client, segment};
use crate::error::ClientError;

/// The encoded path of a bucket, after checking its name as the server would.
pub(crate) fn bucket_path(bucket: &str) -> Result<String, ClientError> {
    bucket_name(bucket)?;
    Ok(format!("/v1/buckets/{}", segment(bucket)))
}

/// Checks a bucket name as the server would.
pub(crate) fn bucket_name(bucket: &str) -> Result<BucketName, ClientError> {
    BucketName::new(bucket).map_err(|e| ClientError::InvalidInput {
        code: e.code(),
        message: e.to_string(),
    })
}

impl Client {
    /// Returns a bucket's effective properties, defaults included.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for an invalid name, [`ClientError::Api`] for an
    /// error answer, transport and decoding errors.
    pub async fn bucket_props(&self, bucket: &str) -> Result<BucketProps, ClientError> {
        let reply = self
            .send(Call::new(Method::GET, bucket_path(bucket)?).accept_json())
            .await?;
        reply.json()
    }

    /// Changes the properties named in `patch` (needs `admin`) and returns the effective
    /// properties afterwards.
    ///
    /// # Errors
    /// As [`Client::bucket_props`]; `invalid_bucket_properties` for a combination the
    /// rules refuse, `bucket_n_immutable` when `n` changes on a bucket holding data.
    pub async fn set_bucket_props(
        &self,
        bucket: &str,
        patch: &BucketPropsPatch,
    ) -> Result<BucketProps, ClientError> {
        let call = Call::new(Method::PUT, bucket_path(bucket)?)
            .accept_json()
            .json(patch)?;
        let reply = self.send(call).await?;
        if reply.body.is_empty() {
            // A server that answers 204 without the properties: read them back.
            return self.bucket_props(bucket).await;
        }
        reply.json()
    }
}
