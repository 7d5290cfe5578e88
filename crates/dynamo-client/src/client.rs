//! [`Client`]: the HTTP plumbing every call goes through.
//!
//! One `reqwest::Client` (a connection pool) per [`Client`]; cloning a [`Client`] shares
//! it. Every request gets a timeout, its response body a size cap, and the retry loop a
//! bounded budget: only transient codes ([`ErrorCode::is_transient`]: `429` and the
//! `503`s) and refused connections are retried, with exponential backoff and jitter
//! (kube-rs's transient/permanent split), waiting at least what a `Retry-After` asks.
//! Everything else, timeouts included, is answered at once.
//!
//! A client may know several coordinators ([`ClientBuilder::endpoints`]): every
//! coordinator serves every key, so a retry goes to the next one in the list, and the
//! client keeps sending to the one that last answered.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::ErrorCode;
use dynamo_core::backoff::Backoff;
use dynamo_core::limits::{MAX_SIBLINGS_LIMIT, MAX_VALUE_BYTES};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ClientError, code_for_status};

/// The header carrying the opaque causal context between a read and the next write.
pub const CONTEXT_HEADER: HeaderName = HeaderName::from_static(dynamo_core::wire::CONTEXT_HEADER);

/// The header that makes a write's retries safe (the SDK sets one on every write).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header naming a CRDT value's type (`counter`, `set`, `register`, `map`) on CRDT
/// reads and operation answers.
pub const CRDT_TYPE_HEADER: HeaderName = HeaderName::from_static(dynamo_core::wire::CRDT_TYPE_HEADER);

/// The header a server's request id comes back in.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Default bound on one request, from connecting until the whole body is read.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest retry budget a [`RetryPolicy`] may have.
pub const MAX_RETRIES: u32 = 10;

/// Default number of writes [`Client::update`] tries before handing back an object that
/// still has siblings, and of read-then-remove attempts a CRDT remove makes while the
/// coordinator answers `context_not_seen` ([`crate::CrdtBucket::apply`]).
pub const DEFAULT_UPDATE_ATTEMPTS: u32 = 5;

/// Largest number of writes [`Client::update`] may try.
pub const MAX_UPDATE_ATTEMPTS: u32 = 100;

/// Default cap on a response body: the largest legitimate answer, a siblings envelope
/// holding the most siblings a bucket may allow, each of the largest value, in base64
/// (4/3 of the bytes), plus 1 MiB for the JSON around them. Nothing legitimate is refused;
/// a runaway answer cannot exhaust memory beyond this.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 =
    (MAX_SIBLINGS_LIMIT as u64) * (MAX_VALUE_BYTES as u64) * 4 / 3 + (1 << 20);

/// How much longer than a request's server-side `timeout_ms` the client waits for the
/// answer, so that the server's own timeout answer (a 503) arrives before ours fires.
const SERVER_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Idle connections kept per host.
const MAX_IDLE_CONNECTIONS_PER_HOST: usize = 32;

/// Bytes outside RFC 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`): what a path segment
/// percent-encodes.
const NON_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How failed requests are retried: only transient codes and refused connections, at
/// most `max_retries` times in all (whichever endpoints the retries go to), waiting
/// `initial_backoff · 2^attempt` capped at `max_backoff`, jittered down to half of that
/// (so clients that failed together do not retry together), and at least the answer's
/// `Retry-After`, up to `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (at most [`MAX_RETRIES`]).
    pub max_retries: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts. A server's `Retry-After` is honoured up to
    /// this too: a longer one is cut to it, so a caller's bound on waiting holds whatever
    /// a server (or a proxy in front of it) asks.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Returns a policy that never retries.
    pub const fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    /// Returns the wait before retry number `retry` (0 for the first): a random duration
    /// between half and all of `min(initial_backoff · 2^retry, max_backoff)`.
    pub fn backoff(&self, retry: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).delay(retry.saturating_add(1), rand::random())
    }

    /// Returns the wait before retry number `retry` after a failure whose answer carried
    /// `retry_after`: the [`RetryPolicy::backoff`], or the server's `Retry-After` when
    /// that is longer, up to `max_backoff`.
    fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.max_backoff)),
            None => backoff,
        }
    }
}

/// A typed async client for a cluster's coordinators: one endpoint, or several to fail
/// over between ([`ClientBuilder::endpoints`]).
///
/// Cheap to clone: clones share the connection pool and the endpoint in use. Object
/// calls are in [`crate::object`] (typed ones in [`crate::json`], resolvers in
/// [`crate::resolve`]), listings in [`crate::list`], the change feed in [`crate::feed`],
/// CRDT calls in [`crate::crdt`]
/// (through [`Client::crdt`]), bucket calls in [`crate::bucket`], cluster calls in
/// [`crate::cluster`], token calls in [`crate::token`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The coordinators, each `scheme://host:port[/prefix]` without a trailing `/`.
    /// Invariant: never empty (the builder refuses an empty list).
    bases: Vec<String>,
    /// The index in `bases` of the coordinator that answered last, where the next request
    /// starts. A hint shared by concurrent requests, so relaxed ordering is enough.
    current: AtomicUsize,
    /// `Bearer <token>`, marked sensitive.
    auth: Option<HeaderValue>,
    timeout: Duration,
    retry: RetryPolicy,
    update_attempts: u32,
    max_response_bytes: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.bases)
            .field("token", &self.inner.auth.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.inner.timeout)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl Client {
    /// Builds a client for `endpoint` (e.g. `http://127.0.0.1:8080`) that authenticates
    /// with the bearer `token`, with the default timeouts and retry policy.
    ///
    /// # Errors
    /// [`ClientError::Config`] when the endpoint is not an `http://` URL or the token is
    /// not a valid header value.
    pub fn new(endpoint: &str, token: impl Into<String>) -> Result<Client, ClientError> {
        Client::builder(endpoint).token(token).build()
    }

    /// Starts a [`ClientBuilder`] for `endpoint`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// Returns the endpoint the next request goes to first (the one that answered last),
    /// without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        &self.inner.bases[self.current_index()]
    }

    /// Returns every endpoint this client may send to, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.bases
    }

    /// Returns true when a coordinator answers `GET /readyz` with a success (no token is
    /// sent: the route needs none). The endpoints are asked in turn, starting with
    /// [`Client::endpoint`], until one is ready.
    ///
    /// # Errors
    /// The last transport error or timeout when no endpoint answers; not-ready answers
    /// are `false`.
    pub async fn is_ready(&self) -> Result<bool, ClientError> {
        let inner = &self.inner;
        let start = self.current_index();
        let mut answered = false;
        let mut last_error = None;
        for i in 0..inner.bases.len() {
            let base = &inner.bases[(start + i) % inner.bases.len()];
            let sent = inner
                .http
                .get(format!("{base}/readyz"))
                .timeout(inner.timeout)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => return Ok(true),
                Ok(_) => answered = true,
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) if !answered => Err(ClientError::from_transport(e)),
            // Some coordinator answered "not ready", none "ready".
            _ => Ok(false),
        }
    }

    /// The index of the endpoint to start at, always within `bases`.
    fn current_index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.bases.len()
    }

    pub(crate) fn update_attempts(&self) -> u32 {
        self.inner.update_attempts
    }

    /// Sends a call, retrying transient failures within the budget, each retry on the
    /// next endpoint.
    ///
    /// Answers with a status below 400 come back as a [`Reply`]; so does a
    /// `404 not_found` when the call allows it. Every other status is a
    /// [`ClientError::Api`].
    ///
    /// Every attempt replays the same call, headers included, so a write's
    /// `Idempotency-Key` is the same on every endpoint: a coordinator that reaches the
    /// storage node holding the first attempt's record answers the retry from it.
    pub(crate) async fn send(&self, call: Call) -> Result<Reply, ClientError> {
        let policy = self.inner.retry;
        let endpoints = self.inner.bases.len();
        let start = self.current_index();
        let mut endpoint = start;
        let mut retries = 0;
        loop {
            let failure = match self.attempt(&self.inner.bases[endpoint], &call).await {
                Ok(reply) => {
                    self.answered_from(start, endpoint);
                    return Ok(reply);
                }
                Err(failure) => failure,
            };
            if !failure.error.is_transient() || retries >= policy.max_retries {
                // A permanent answer still shows that this coordinator is up.
                if failure.error.status().is_some() {
                    self.answered_from(start, endpoint);
                }
                return Err(failure.error);
            }
            tokio::time::sleep(policy.wait(retries, failure.retry_after)).await;
            // A transient failure is this coordinator's (down, overloaded, short of
            // replicas it can reach): another one, which reaches the replicas by other
            // paths, may serve the retry. With one endpoint this is the same one.
            endpoint = (endpoint + 1) % endpoints;
            retries += 1;
        }
    }

    /// Makes `endpoint` the one the next requests start at, when a request that started
    /// at `start` got its answer there.
    fn answered_from(&self, start: usize, endpoint: usize) {
        if endpoint != start {
            self.inner.current.store(endpoint, Ordering::Relaxed);
        }
    }

    async fn attempt(&self, base: &str, call: &Call) -> Result<Reply, Failure> {
        let inner = &self.inner;
        let mut timeout = match call.timeout_ms {
            Some(ms) => inner
                .timeout
                .max(Duration::from_millis(ms) + SERVER_TIMEOUT_MARGIN),
            None => inner.timeout,
        };
        // A long poll may rightly hold the answer for its whole wait before the work the
        // usual bound is for even starts (the coordinator then still gathers its nodes'
        // answers), so the wait comes on top of that bound.
        if let Some(ms) = call.long_poll_ms {
            timeout = timeout.saturating_add(Duration::from_millis(ms));
        }
        let mut req = inner
            .http
            .request(call.method.clone(), format!("{base}{}", call.path))
            .timeout(timeout)
            .headers(call.headers.clone());
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        if let Some(auth) = &inner.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = &call.body {
            req = req.body(body.clone());
        }
        let resp = req.send().await.map_err(ClientError::from_transport)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = read_body(resp, inner.max_response_bytes).await?;
        if status < 400 {
            return Ok(Reply {
                status,
                headers,
                body,
            });
        }
        let error = api_error(status, &headers, &body);
        if call.not_found_ok && status == 404 && error.code() == Some(ErrorCode::NotFound) {
            return Ok(Reply {
                status,
                headers,
                body,
            });
        }
        Err(Failure {
            error,
            retry_after: retry_after(&headers),
        })
    }
}

/// Configures a [`Client`]: its endpoints, timeouts, the retry budget,
/// [`Client::update`]'s attempts and the response size cap.
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    update_attempts: u32,
    max_response_bytes: u64,
    ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("update_attempts", &self.update_attempts)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ClientBuilder {
    /// Starts with the defaults: no token, [`DEFAULT_TIMEOUT`],
    /// [`DEFAULT_CONNECT_TIMEOUT`], [`RetryPolicy::default`], [`DEFAULT_UPDATE_ATTEMPTS`]
    /// and [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientBuilder {
            endpoints: vec![endpoint.into()],
            token: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            update_attempts: DEFAULT_UPDATE_ATTEMPTS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca_file: None,
        }
    }

    /// Sets the coordinators to send to, replacing the endpoint the builder started with
    /// (e.g. `["http://10.0.0.1:8080", "http://10.0.0.2:8080"]`).
    ///
    /// Requests go to the first one until it fails transiently (refuses the connection,
    /// or answers `429` or a `503`); the retry then goes to the next one, within the
    /// [`RetryPolicy`]'s budget, and later requests start at whichever coordinator
    /// answered last. A request that timed out is not retried anywhere (it may have been
    /// applied), and neither is an answer such as `400` or `412`, which another
    /// coordinator would give too.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Trusts the CA certificates (PEM) in `path` for an `https://` endpoint, instead of
    /// the system's roots: a cluster with its own CA (`dynamo dev --tls` writes
    /// `<data-dir>/tls/ca.pem`). The file is read again when it changes, so a rotated CA
    /// needs no new client.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets the bearer token sent with every `/v1` request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the bound on one attempt of a request, from connecting until the body is
    /// read. A request with a larger server-side `timeout_ms` waits that long plus a
    /// second instead.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the bound on establishing a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the retry policy for transient failures.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets how many writes [`Client::update`] tries, and how many read-then-remove
    /// attempts a CRDT remove makes ([`crate::CrdtBucket::apply`]), 1 to
    /// [`MAX_UPDATE_ATTEMPTS`].
    pub fn update_attempts(mut self, attempts: u32) -> Self {
        self.update_attempts = attempts;
        self
    }

    /// Sets the largest response body accepted; larger answers are a
    /// [`ClientError::Decode`].
    pub fn max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`ClientError::Config`] when there is no endpoint or one is not an `http://` or
    /// `https://` URL without query or fragment, the CA file cannot be read or holds no
    /// certificate, the token is not a valid header value, a timeout is zero, or a bound
    /// is out of range.
    pub fn build(self) -> Result<Client, ClientError> {
        let config = |message: String| ClientError::Config { message };
        if self.endpoints.is_empty() {
            return Err(config("at least one endpoint is needed".into()));
        }
        let bases = self
            .endpoints
            .iter()
            .map(|endpoint| base_url(endpoint))
            .collect::<Result<Vec<String>, ClientError>>()?;
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(config("timeouts must be greater than zero".into()));
        }
        if self.retry.max_retries > MAX_RETRIES {
            return Err(config(format!(
                "max_retries is {}; the limit is {MAX_RETRIES}",
                self.retry.max_retries
            )));
        }
        if !(1..=MAX_UPDATE_ATTEMPTS).contains(&self.update_attempts) {
            return Err(config(format!(
                "update_attempts must be 1..={MAX_UPDATE_ATTEMPTS}, got {}",
                self.update_attempts
            )));
        }
        let auth = match self.token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| config("the token is not a valid header value".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        // The trust of `https://` endpoints; `http://` ones never use it.
        let tls = dynamo_tls::ClientTls::new(self.ca_file.as_deref(), dynamo_tls::DEFAULT_RELOAD)
            .map_err(|e| config(format!("TLS: {e}")))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.config())
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS_PER_HOST)
            .pool_idle_timeout(std::time::Duration::from_millis(
                dynamo_core::limits::CLIENT_POOL_IDLE_MS,
            ))
            // The bearer token must never follow a redirect, and the API has none.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dynamo-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                bases,
                current: AtomicUsize::new(0),
                auth,
                timeout: self.timeout,
                retry: self.retry,
                update_attempts: self.update_attempts,
                max_response_bytes: self.max_response_bytes,
            }),
        })
    }
}

/// Checks an endpoint and returns it without a trailing `/`.
fn base_url(endpoint: &str) -> Result<String, ClientError> {
    let config = |message: String| ClientError::Config { message };
    let base = endpoint.trim_end_matches('/').to_owned();
    let url = reqwest::Url::parse(&base).map_err(|e| config(format!("endpoint {base:?}: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(config(format!(
            "endpoint {base:?}: the scheme must be http:// or https://"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config(format!(
            "endpoint {base:?} must not have a query or fragment"
        )));
    }
    Ok(base)
}

/// Percent-encodes one path segment: every byte outside RFC 3986's unreserved set.
pub(crate) fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_UNRESERVED).to_string()
}

/// One request, as the retry loop replays it.
pub(crate) struct Call {
    method: Method,
    /// The encoded path, starting with `/`.
    path: String,
    query: Vec<(&'static str, String)>,
    headers: HeaderMap,
    /// Cheap to clone for each attempt.
    body: Option<Bytes>,
    /// The server-side bound the request asks for, if any.
    timeout_ms: Option<u64>,
    /// How long the server may hold a long poll before answering, if it is one.
    long_poll_ms: Option<u64>,
    /// True when `404 not_found` is an answer, not an error (reading a key).
    not_found_ok: bool,
}

impl Call {
    pub(crate) fn new(method: Method, path: String) -> Call {
        Call {
            method,
            path,
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: None,
            timeout_ms: None,
            long_poll_ms: None,
            not_found_ok: false,
        }
    }

    pub(crate) fn query(mut self, name: &'static str, value: impl ToString) -> Call {
        self.query.push((name, value.to_string()));
        self
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Call {
        self.headers.insert(name, value);
        self
    }

    pub(crate) fn body(mut self, body: Bytes) -> Call {
        self.body = Some(body);
        self
    }

    pub(crate) fn json<T: serde::Serialize>(self, value: &T) -> Result<Call, ClientError> {
        let body = serde_json::to_vec(value).map_err(|e| ClientError::InvalidInput {
            code: ErrorCode::InvalidJson,
            message: format!("cannot encode the request body: {e}"),
        })?;
        Ok(self
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(Bytes::from(body)))
    }

    pub(crate) fn accept_json(self) -> Call {
        self.header(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        )
    }

    pub(crate) fn timeout_ms(mut self, ms: Option<u64>) -> Call {
        if let Some(ms) = ms {
            self.query.push(("timeout_ms", ms.to_string()));
        }
        self.timeout_ms = ms;
        self
    }

    /// Marks the call as a long poll the server may hold up to `ms` before answering
    /// (the route's own `wait_ms` parameter is the caller's to add): the client waits
    /// that long on top of its usual bound.
    pub(crate) fn long_poll_ms(mut self, ms: u64) -> Call {
        self.long_poll_ms = Some(ms);
        self
    }

    pub(crate) fn not_found_ok(mut self) -> Call {
        self.not_found_ok = true;
        self
    }

    /// Gives the call an `Idempotency-Key` of its own. The retry loop replays the call's
    /// headers, so every attempt carries the same key: a retry after an indeterminate
    /// 503 or a lost answer is then answered as the first attempt was instead of being
    /// applied a second time (docs/api.md, Idempotency-Key). 128 random bits make a
    /// collision with another call's key negligible.
    pub(crate) fn idempotent(self) -> Call {
        let key = format!("sdk-{:032x}", rand::random::<u128>());
        match HeaderValue::from_str(&key) {
            Ok(v) => self.header(IDEMPOTENCY_KEY, v),
            Err(_) => unreachable!("hex digits are a valid header value"),
        }
    }
}

/// An answer with a status below 400 (or an allowed `404 not_found`).
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// Decodes the body as JSON.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| self.unexpected(format!("the body does not decode: {e}")))
    }

    /// Returns a header as text, if present and visible ASCII.
    pub(crate) fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn unexpected(&self, message: impl Into<String>) -> ClientError {
        ClientError::Decode {
            status: self.status,
            message: message.into(),
        }
    }
}

struct Failure {
    error: ClientError,
    retry_after: Option<Duration>,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// Reads a response body, refusing more than `max` bytes.
async fn read_body(mut resp: reqwest::Response, max: u64) -> Result<Bytes, ClientError> {
    let status = resp.status().as_u16();
    let too_large = |len: u64| ClientError::Decode {
        status,
        message: format!("the body is at least {len} bytes; the limit is {max}"),
    };
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(too_large(len));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ClientError::from_transport)? {
        let len = (buf.len() + chunk.len()) as u64;
        if len > max {
            return Err(too_large(len));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[derive(Deserialize)]
struct RawErrorBody {
    error: RawErrorDetail,
}

// The code is read as a string so that a code this SDK does not know yet (a newer
// server) still yields the message instead of a decoding error.
#[derive(Deserialize)]
struct RawErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    request_id: Option<String>,
}

/// Turns an error answer into [`ClientError::Api`].
fn api_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ClientError {
    let header_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match serde_json::from_slice::<RawErrorBody>(body) {
        Ok(RawErrorBody { error }) => {
            let (code, message) = match ErrorCode::from_wire(&error.code) {
                Some(code) => (code, error.message),
                None => (
                    code_for_status(status),
                    format!("{}: {}", error.code, error.message),
                ),
            };
            ClientError::Api {
                status,
                code,
                message,
                request_id: error.request_id.or(header_id),
            }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned();
            let message = if text.is_empty() {
                format!("HTTP {status} without an error body")
            } else {
                format!("HTTP {status} without a JSON error body: {text}")
            };
            ClientError::Api {
                status,
                code: code_for_status(status),
                message,
                request_id: header_id,
            }
        }
    }
}

/// Reads a `Retry-After` given in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode_everything_outside_unreserved() {
        assert_eq!(segment("a-b.c_d~e09AZ"), "a-b.c_d~e09AZ");
        assert_eq!(segment("a/b c?d#e%f+g"), "a%2Fb%20c%3Fd%23e%25f%2Bg");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_half() {
        let p = RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        for _ in 0..100 {
            let first = p.backoff(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = p.backoff(2);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = p.backoff(30);
            assert!(late >= Duration::from_millis(250) && late <= Duration::from_millis(500));
        }
        assert_eq!(RetryPolicy::none().backoff(3), Duration::ZERO);
    }

    // Goal: a server's Retry-After is the least wait before the retry, cut to
    // max_backoff; without one the backoff alone decides.
    #[test]
    fn retry_after_is_a_floor_capped_by_max_backoff() {
        let p = RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(2),
        };
        for _ in 0..100 {
            assert_eq!(p.wait(0, Some(Duration::from_secs(1))), Duration::from_secs(1));
            assert_eq!(p.wait(0, Some(Duration::from_secs(3600))), Duration::from_secs(2));
            assert!(p.wait(0, None) <= Duration::from_millis(10));
            // A backoff already longer than the server asks for is kept.
            assert!(p.wait(9, Some(Duration::ZERO)) >= Duration::from_secs(1));
        }
    }

    #[test]
    fn builder_takes_several_endpoints_and_checks_each() {
        let c = Client::builder("http://unused")
            .endpoints(["http://a:1/", "https://b:2"])
            .build()
            .expect("client");
        assert_eq!(c.endpoints(), ["http://a:1", "https://b:2"]);
        assert_eq!(c.endpoint(), "http://a:1", "the first one is used first");
        assert!(format!("{c:?}").contains("https://b:2"));

        let bad = Client::builder("http://a")
            .endpoints(["http://a", "ftp://b"])
            .build();
        assert!(
            matches!(&bad, Err(ClientError::Config { message }) if message.contains("ftp://b")),
            "{bad:?}"
        );
        let none = Client::builder("http://a")
            .endpoints(Vec::<String>::new())
            .build();
        assert!(matches!(none, Err(ClientError::Config { .. })));
    }

    #[test]
    fn error_bodies_decode_with_unknown_codes_and_bare_statuses() {
        let known = br#"{"error":{"code":"value_too_large","message":"too big","request_id":"r1"}}"#;
        let e = api_error(413, &HeaderMap::new(), known);
        assert!(matches!(
            &e,
            ClientError::Api { status: 413, code: ErrorCode::ValueTooLarge, message, request_id: Some(id) }
                if message == "too big" && id == "r1"
        ));

        let unknown = br#"{"error":{"code":"brand_new","message":"later"}}"#;
        let e = api_error(503, &HeaderMap::new(), unknown);
        assert_eq!(e.code(), Some(ErrorCode::Overloaded));
        assert_eq!(e.to_string(), "overloaded: brand_new: later");

        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("r2"));
        let e = api_error(502, &headers, b"<html>bad gateway</html>");
        assert!(e.is_transient());
        assert_eq!(e.request_id(), Some("r2"));
    }

    #[test]
    fn builder_refuses_bad_configuration() {
        assert!(Client::builder("http://127.0.0.1:1/").build().is_ok());
        assert!(Client::builder("https://example.com").build().is_ok());
        let no_ca = Client::builder("https://example.com")
            .ca_file("/nonexistent/ca.pem")
            .build();
        assert!(
            matches!(&no_ca, Err(ClientError::Config { message }) if message.contains("/nonexistent/ca.pem")),
            "{no_ca:?}"
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://example.com",
            "http://h/?q=1",
            "not a url",
        ] {
            assert!(
                matches!(Client::builder(bad).build(), Err(ClientError::Config { .. })),
                "{bad}"
            );
        }
        let zero = Client::builder("http://h").timeout(Duration::ZERO).build();
        assert!(matches!(zero, Err(ClientError::Config { .. })));
        let greedy = Client::builder("http://h").retry(RetryPolicy {
            max_retries: MAX_RETRIES + 1,
            ..RetryPolicy::default()
        });
        assert!(matches!(greedy.build(), Err(ClientError::Config { .. })));
        assert!(matches!(
            Client::new("http://h", "bad\ntoken"),
            Err(ClientError::Config { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Client::new("http://h", "s3cret").expect("client");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{:?}", Client::builder("http://h").token("s3cret")).contains("s3cret"));
    }
}
