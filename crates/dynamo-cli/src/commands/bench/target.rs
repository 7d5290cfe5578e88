//! The system under test, behind the three operations a bench client issues: read a
//! record, update it, insert it.

use std::borrow::Cow;

use dynamo_client::{Bytes, Client, ClientError, Lookup, RequestOptions};

use super::ErrorKey;
use super::etcd::Etcd;
use super::workload::{Mode, record_key};

/// The media type of bench values.
const CONTENT_TYPE: &str = "application/octet-stream";

/// What a successful read saw: the sibling count of the value, `None` for no value.
pub type Seen = Option<u32>;

/// A store to drive, with the connections to it.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A Dynamo cluster through the SDK.
    Dynamo(Dynamo),
    /// etcd members through their HTTP/JSON gateways.
    Etcd(Etcd),
}

/// A Dynamo cluster: one SDK client per coordinator endpoint, the bench bucket, the
/// per-request quorums and the value every write stores.
#[derive(Debug, Clone)]
pub struct Dynamo {
    /// Requests are spread round-robin over these (one per `--endpoints` URL).
    pub clients: Vec<Client>,
    /// The bench bucket.
    pub bucket: String,
    /// `r` for reads, `w` for writes.
    pub options: RequestOptions,
    /// The value every write stores (cheap to clone).
    pub value: Bytes,
}

impl Backend {
    /// Reads `record` through connection `lane` (the round-robin position).
    ///
    /// # Errors
    /// The failure's code (see [`client_error_key`]).
    pub async fn read(&self, lane: usize, record: u64) -> Result<Seen, ErrorKey> {
        let key = record_key(record);
        match self {
            Backend::Dynamo(d) => d.lookup(lane, &key).await.map(|lookup| match lookup {
                Lookup::Found(object) => Some(u32::try_from(object.siblings.len()).unwrap_or(u32::MAX)),
                Lookup::NotFound { .. } => None,
            }),
            Backend::Etcd(e) => e.range(lane, &key).await.map(|found| found.then_some(1)),
        }
    }

    /// Updates `record`: a blind write, or in `rmw` mode a read then a write carrying the
    /// read's context (for etcd: a range then a put). Returns what the read saw, if any.
    ///
    /// # Errors
    /// The code of the first request that failed; a failed read is not followed by a
    /// write.
    pub async fn update(&self, lane: usize, record: u64, mode: Mode) -> Result<Seen, ErrorKey> {
        let key = record_key(record);
        match (self, mode) {
            (Backend::Dynamo(d), Mode::Plain) => d.put(lane, &key, None).await.map(|()| None),
            (Backend::Dynamo(d), Mode::Rmw) => {
                let lookup = d.lookup(lane, &key).await?;
                d.put(lane, &key, lookup.context()).await?;
                Ok(match lookup {
                    Lookup::Found(object) => Some(u32::try_from(object.siblings.len()).unwrap_or(u32::MAX)),
                    Lookup::NotFound { .. } => None,
                })
            }
            (Backend::Etcd(e), Mode::Plain) => e.put(lane, &key).await.map(|()| None),
            (Backend::Etcd(e), Mode::Rmw) => {
                let found = e.range(lane, &key).await?;
                e.put(lane, &key).await?;
                Ok(found.then_some(1))
            }
        }
    }

    /// Inserts `record` (a blind write), for `--load`.
    ///
    /// # Errors
    /// The failure's code.
    pub async fn insert(&self, lane: usize, record: u64) -> Result<(), ErrorKey> {
        let key = record_key(record);
        match self {
            Backend::Dynamo(d) => d.put(lane, &key, None).await,
            Backend::Etcd(e) => e.put(lane, &key).await,
        }
    }

    /// Returns how many endpoints requests are spread over.
    pub fn lanes(&self) -> usize {
        match self {
            Backend::Dynamo(d) => d.clients.len(),
            Backend::Etcd(e) => e.members(),
        }
    }
}

impl Dynamo {
    fn client(&self, lane: usize) -> &Client {
        &self.clients[lane % self.clients.len()]
    }

    async fn lookup(&self, lane: usize, key: &str) -> Result<Lookup, ErrorKey> {
        self.client(lane)
            .lookup(&self.bucket, key, &self.options)
            .await
            .map_err(|e| client_error_key(&e))
    }

    async fn put(
        &self,
        lane: usize,
        key: &str,
        context: Option<&dynamo_client::Context>,
    ) -> Result<(), ErrorKey> {
        self.client(lane)
            .put_with(
                &self.bucket,
                key,
                self.value.clone(),
                CONTENT_TYPE,
                context,
                &self.options,
            )
            .await
            .map(drop)
            .map_err(|e| client_error_key(&e))
    }
}

/// Returns the code a failed SDK call counts under: the server's error code, `timeout`,
/// `transport` (connection refused or reset), or `decode` (an answer the SDK could not
/// read).
pub fn client_error_key(e: &ClientError) -> ErrorKey {
    if let Some(code) = e.code() {
        return Cow::Borrowed(code.as_str());
    }
    match e {
        ClientError::Timeout { .. } => Cow::Borrowed("timeout"),
        ClientError::Transport { .. } => Cow::Borrowed("transport"),
        ClientError::Decode { .. } => Cow::Borrowed("decode"),
        _ => Cow::Borrowed("client"),
    }
}
