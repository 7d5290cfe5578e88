//! The etcd target: etcd's v3 HTTP/JSON gateway (`/v3/kv/put`, `/v3/kv/range`), so the
//! same generator drives both stores in one run.
//!
//! One pooled keep-alive `reqwest::Client` for every member; requests are spread
//! round-robin over the members' client URLs. Keys and values travel in base64, as the
//! gateway's JSON mapping of protobuf `bytes` wants; the value's base64 is computed once.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamo_client::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::ErrorKey;
use crate::error::CliError;

/// Bound on establishing a connection to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of several etcd members' gateways.
#[derive(Debug, Clone)]
pub struct Etcd {
    http: reqwest::Client,
    /// `{member}/v3/kv/put`, per member.
    put_urls: Vec<String>,
    /// `{member}/v3/kv/range`, per member.
    range_urls: Vec<String>,
    /// Prepended to every key: `<bucket>/`.
    prefix: String,
    /// The value, in base64, as every put sends it.
    value_base64: String,
}

/// The part of a range answer the bench reads.
#[derive(Deserialize)]
struct RangeReply {
    /// Absent when nothing matched (proto3 JSON omits empty fields).
    #[serde(default)]
    kvs: Vec<IgnoredAny>,
}

impl Etcd {
    /// Returns a client of `endpoints` (client URLs like `http://127.0.0.1:2379`) that
    /// keeps up to `max_idle` idle connections per member and bounds each request by
    /// `timeout`.
    ///
    /// # Errors
    /// [`CliError::Usage`] for an endpoint that is not an `http://` URL.
    pub fn new(
        endpoints: &[String],
        bucket: &str,
        value: &[u8],
        max_idle: usize,
        timeout: Duration,
    ) -> Result<Etcd, CliError> {
        let mut bases = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let base = endpoint.trim_end_matches('/');
            let url = reqwest::Url::parse(base)
                .map_err(|e| CliError::Usage(format!("--endpoints: {base:?} is not a URL: {e}")))?;
            if url.scheme() != "http" {
                return Err(CliError::Usage(format!(
                    "--endpoints: {base:?}: only http:// is supported (this build has no TLS)"
                )));
            }
            bases.push(base.to_owned());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .pool_max_idle_per_host(max_idle)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CliError::Local(format!("cannot build the HTTP client: {e}")))?;
        Ok(Etcd {
            http,
            put_urls: bases.iter().map(|b| format!("{b}/v3/kv/put")).collect(),
            range_urls: bases.iter().map(|b| format!("{b}/v3/kv/range")).collect(),
            prefix: format!("{bucket}/"),
            value_base64: STANDARD.encode(value),
        })
    }

    /// Returns the number of members requests are spread over.
    pub fn members(&self) -> usize {
        self.put_urls.len()
    }

    /// Writes the value under `key`, through member `member % members`.
    ///
    /// # Errors
    /// The error's code: `http_<status>`, `timeout` or `transport`.
    pub async fn put(&self, member: usize, key: &str) -> Result<(), ErrorKey> {
        let url = &self.put_urls[member % self.put_urls.len()];
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            self.key_base64(key),
            self.value_base64
        );
        self.post(url, body).await.map(drop)
    }

    /// Reads `key` through member `member % members`; true when it has a value.
    ///
    /// # Errors
    /// As [`Etcd::put`], and `decode` for an answer that is not a range reply.
    pub async fn range(&self, member: usize, key: &str) -> Result<bool, ErrorKey> {
        let url = &self.range_urls[member % self.range_urls.len()];
        let body = format!(r#"{{"key":"{}"}}"#, self.key_base64(key));
        let bytes = self.post(url, body).await?;
        let reply: RangeReply = serde_json::from_slice(&bytes).map_err(|_| Cow::Borrowed("decode"))?;
        Ok(!reply.kvs.is_empty())
    }

    fn key_base64(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        STANDARD.encode(full)
    }

    /// Posts a JSON body and returns the answer's body. The body is always read to its
    /// end, so the connection goes back to the pool.
    async fn post(&self, url: &str, body: String) -> Result<Bytes, ErrorKey> {
        let resp = self
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
            .map_err(|e| transport_key(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport_key(&e))?;
        if !status.is_success() {
            return Err(Cow::Owned(format!("http_{}", status.as_u16())));
        }
        Ok(bytes)
    }
}

fn transport_key(e: &reqwest::Error) -> ErrorKey {
    if e.is_timeout() {
        Cow::Borrowed("timeout")
    } else {
        Cow::Borrowed("transport")
    }
}
