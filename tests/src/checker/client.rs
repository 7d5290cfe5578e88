//! A recording client of the public REST API: every call becomes an [`Op`] in the
//! run's [`History`], whatever it answered (or failed to).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::history::{History, Kind, Op, Outcome};
use crate::ROOT_TOKEN;

/// The context header.
pub const CTX: &str = "x-dynamo-context";

/// How long a client waits for any answer. Well above the coordinator's request timeout
/// (2 s), so a missing answer means the coordinator itself stalled, not a slow quorum.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One workload client's handle on the coordinator.
#[derive(Debug, Clone)]
pub struct Api {
    http: dynamo_testkit::Http,
    base: String,
    t0: Instant,
    history: History,
    /// The client's name in the history.
    pub client: String,
}

/// A write to make.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key.
    pub key: &'a str,
    /// The value; `None` for a delete.
    pub value: Option<&'a str>,
    /// The context to send.
    pub ctx: Option<&'a str>,
    /// The writer's sequence number.
    pub seq: u64,
    /// The write's short unique name.
    pub tag: &'a str,
}

impl Api {
    /// A client named `client` of the coordinator at `base`, recording into `history`
    /// with times measured from `t0`.
    pub fn new(
        http: dynamo_testkit::Http,
        base: String,
        t0: Instant,
        history: History,
        client: String,
    ) -> Api {
        Api {
            http,
            base,
            t0,
            history,
            client,
        }
    }

    fn url(bucket: &str, key: &str) -> String {
        format!("/v1/kv/{bucket}/{key}")
    }

    fn request(&self, method: Method, path: &str) -> reqwest_middleware::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ROOT_TOKEN)
            .timeout(CLIENT_TIMEOUT)
    }

    fn blank(&self, bucket: &str, key: &str, kind: Kind) -> Op {
        Op {
            id: 0,
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            kind,
            seq: 0,
            tag: String::new(),
            value: None,
            ctx_sent: None,
            ctx_answered: None,
            outcome: Outcome::Ok,
            read: Vec::new(),
            start: self.t0.elapsed(),
            end: Duration::ZERO,
        }
    }

    /// `PUT` (value given) or `DELETE` (no value), recorded.
    pub async fn write(&self, w: Write<'_>) -> Op {
        let kind = if w.value.is_some() {
            Kind::Put
        } else {
            Kind::Delete
        };
        let mut op = self.blank(w.bucket, w.key, kind);
        op.seq = w.seq;
        op.tag = w.tag.to_owned();
        op.value = w.value.map(str::to_owned);
        op.ctx_sent = w.ctx.map(str::to_owned);
        let path = Self::url(w.bucket, w.key);
        let mut req = match w.value {
            Some(v) => self
                .request(Method::PUT, &path)
                .header("content-type", "text/plain")
                .body(v.to_owned()),
            None => self.request(Method::DELETE, &path),
        };
        if let Some(ctx) = w.ctx {
            req = req.header(CTX, ctx);
        }
        let answer = req.send().await;
        match answer {
            Err(e) => op.outcome = no_answer(&e),
            Ok(resp) => {
                op.ctx_answered = header_context(&resp);
                let status = resp.status();
                op.outcome = if status.is_success() {
                    Outcome::Ok
                } else {
                    error_outcome(status, resp).await
                };
            }
        }
        op.end = self.t0.elapsed();
        self.history.record(op)
    }

    /// `POST /v1/crdt/{bucket}/{key}` of `{"increment": by}` under `idempotency_key`, not
    /// recorded in the history (a counter's value names no single write: its check is
    /// a sum, `check::check_counters`).
    pub async fn increment(&self, bucket: &str, key: &str, by: i64, idempotency_key: &str) -> Outcome {
        let answer = self
            .request(Method::POST, &format!("/v1/crdt/{bucket}/{key}"))
            .header("content-type", "application/json")
            .header("idempotency-key", idempotency_key)
            .body(serde_json::json!({ "increment": by }).to_string())
            .send()
            .await;
        match answer {
            Err(e) => no_answer(&e),
            Ok(resp) if resp.status().is_success() => Outcome::Ok,
            Ok(resp) => error_outcome(resp.status(), resp).await,
        }
    }

    /// A counter's value read through the coordinator at the bucket's R: `Ok(None)` for
    /// a 404, `Err` with what failed otherwise.
    pub async fn counter(&self, bucket: &str, key: &str) -> Result<Option<i64>, String> {
        let resp = self
            .request(Method::GET, &format!("/v1/crdt/{bucket}/{key}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match resp.status() {
            StatusCode::OK => resp
                .json::<i64>()
                .await
                .map(Some)
                .map_err(|e| format!("not a counter: {e}")),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(format!("{s}: {}", resp.text().await.unwrap_or_default())),
        }
    }

    /// `GET` with `Accept: application/json`, recorded with the sibling values shown.
    pub async fn read(&self, bucket: &str, key: &str) -> Op {
        let mut op = self.blank(bucket, key, Kind::Read);
        let answer = self
            .request(Method::GET, &Self::url(bucket, key))
            .header("accept", "application/json")
            .send()
            .await;
        match answer {
            Err(e) => op.outcome = no_answer(&e),
            Ok(resp) => {
                op.ctx_answered = header_context(&resp);
                let status = resp.status();
                if status.is_success() || status == StatusCode::MULTIPLE_CHOICES {
                    match resp.json::<Value>().await {
                        Ok(env) => match sibling_values(&env) {
                            Some(values) => {
                                op.read = values;
                                op.outcome = Outcome::Ok;
                            }
                            None => {
                                op.outcome = Outcome::Indeterminate {
                                    status: Some(status.as_u16()),
                                    code: "malformed_envelope".into(),
                                };
                            }
                        },
                        Err(e) => {
                            op.outcome = Outcome::Indeterminate {
                                status: Some(status.as_u16()),
                                code: format!("unreadable body: {e}"),
                            };
                        }
                    }
                } else if status == StatusCode::NOT_FOUND {
                    op.outcome = Outcome::NotFound;
                } else {
                    op.outcome = error_outcome(status, resp).await;
                }
            }
        }
        op.end = self.t0.elapsed();
        self.history.record(op)
    }
}

fn header_context(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(CTX)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn no_answer(e: &reqwest_middleware::Error) -> Outcome {
    let code = if e.is_timeout() {
        "client timeout".to_owned()
    } else if e.is_connect() {
        "connect error".to_owned()
    } else {
        format!("transport error: {e}")
    };
    Outcome::Indeterminate { status: None, code }
}

async fn error_outcome(status: StatusCode, resp: reqwest::Response) -> Outcome {
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    // The message says which way a quorum failed ("1 answered in time" or "did not reach
    // W within the timeout"); its digits are folded so the report can count by kind.
    let mut message = String::new();
    for c in body["error"]["message"].as_str().unwrap_or("").chars() {
        if !c.is_ascii_digit() {
            message.push(c);
        } else if !message.ends_with('#') {
            message.push('#');
        }
    }
    let code = format!("{}: {message}", body["error"]["code"].as_str().unwrap_or("?"));
    if status.is_server_error() {
        Outcome::Indeterminate {
            status: Some(status.as_u16()),
            code,
        }
    } else {
        Outcome::Failed {
            status: status.as_u16(),
            code,
        }
    }
}

/// The values of a siblings envelope, decoded as UTF-8 (every workload writes text);
/// `None` when the envelope is malformed.
pub fn sibling_values(env: &Value) -> Option<Vec<String>> {
    env["siblings"]
        .as_array()?
        .iter()
        .map(|s| {
            let raw = STANDARD.decode(s["value"].as_str()?).ok()?;
            String::from_utf8(raw).ok()
        })
        .collect()
}
