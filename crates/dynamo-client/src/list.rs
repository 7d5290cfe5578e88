//! Listing a bucket's keys: `GET /v1/kv/{bucket}?list`, page by page, as a [`Stream`].
//!
//! [`Client::list_keys`] returns a [`KeyStream`] that fetches a page when the keys already
//! fetched run out, so a caller that stops early asks for no more pages, and memory holds
//! one page at a time. [`Client::list_page`] fetches one page, for a caller that keeps
//! the cursor itself (to resume a listing later); the page is the wire type itself,
//! [`KeyList`] (`dynamo_core::wire::public`), the one definition the coordinator answers
//! with.
//!
//! ```no_run
//! # async fn demo(client: dynamo_client::Client) -> Result<(), dynamo_client::ClientError> {
//! use futures::TryStreamExt as _;
//!
//! let mut keys = client.list_keys("orders", "2026-12/");
//! while let Some(key) = keys.try_next().await? {
//!     println!("{key}");
//! }
//! # Ok(()) }
//! ```
//!
//! What a listing promises (`docs/api.md`): keys in byte order, a key with a live value
//! for the whole listing exactly once, a key deleted before it began never; a key
//! written or deleted while it runs may or may not appear. It asks every storage node for
//! each page: it is for administration, exports and occasional scans, not a per-request
//! query.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use dynamo_core::ErrorCode;
use dynamo_core::wire::internal::MAX_LIST_PAGE;
use dynamo_core::wire::public::KeyList;
use futures::stream::{self, Stream, StreamExt as _, TryStreamExt as _};
use reqwest::Method;

use crate::bucket::bucket_name;
use crate::client::{Call, Client, segment};
use crate::error::ClientError;

/// The page size the server uses when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// The largest page size the server accepts.
pub const MAX_PAGE_SIZE: u32 = MAX_LIST_PAGE as u32;

/// What to list: the keys starting with `prefix`, after `start_after`, fetched
/// `page_size` at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys that start with this (empty: every key).
    pub prefix: String,
    /// Only keys after this one, in byte order: the cursor to resume a listing from (the
    /// last key seen, or a page's [`KeyList::next`]).
    pub start_after: Option<String>,
    /// Keys per page, 1 to [`MAX_PAGE_SIZE`]; `None` for the server's default
    /// ([`DEFAULT_PAGE_SIZE`]). A page may hold fewer, even none, and still not be the
    /// last.
    pub page_size: Option<u32>,
}

impl ListOptions {
    /// Returns options that list every key, with the default page size.
    pub fn new() -> ListOptions {
        ListOptions::default()
    }

    /// Lists only keys starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> ListOptions {
        self.prefix = prefix.into();
        self
    }

    /// Lists only keys after `key`.
    pub fn start_after(mut self, key: impl Into<String>) -> ListOptions {
        self.start_after = Some(key.into());
        self
    }

    /// Fetches `size` keys per page (1 to [`MAX_PAGE_SIZE`]).
    pub fn page_size(mut self, size: u32) -> ListOptions {
        self.page_size = Some(size);
        self
    }
}

/// A bucket's keys, fetched page by page: a [`Stream`] of `Result<String, ClientError>`
/// (use `futures::StreamExt`/`TryStreamExt`, or [`KeyStream::try_next`]).
///
/// After an error the stream ends; resume with [`ListOptions::start_after`] set to the
/// last key received. Dropping it cancels the page being fetched, if any; nothing is
/// left behind on the server.
pub struct KeyStream {
    inner: Pin<Box<dyn Stream<Item = Result<String, ClientError>> + Send>>,
}

impl fmt::Debug for KeyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStream").finish_non_exhaustive()
    }
}

impl Stream for KeyStream {
    type Item = Result<String, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl KeyStream {
    /// Returns the next key, `Ok(None)` once the listing is over, fetching the next page
    /// when the current one is used up (what `TryStreamExt::try_next` does, without
    /// importing it).
    ///
    /// # Errors
    /// The page's error (as [`Client::list_page`]); the stream ends after it.
    pub async fn try_next(&mut self) -> Result<Option<String>, ClientError> {
        self.inner.next().await.transpose()
    }
}

impl Client {
    /// Lists the keys of `bucket` that start with `prefix` (`""` for all), in byte order,
    /// fetching pages of [`DEFAULT_PAGE_SIZE`] as the stream is read.
    ///
    /// Nothing is sent until the stream is polled; an invalid bucket name is the
    /// stream's first (and only) item.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> KeyStream {
        self.list_keys_with(bucket, ListOptions::new().prefix(prefix))
    }

    /// Lists keys as [`Client::list_keys`] does, with a page size and a starting point.
    pub fn list_keys_with(&self, bucket: &str, opts: ListOptions) -> KeyStream {
        // The state: the client, the bucket, and the options of the next page to fetch
        // (`None` once the last page has been).
        let state = (self.clone(), bucket.to_owned(), Some(opts));
        let pages = stream::try_unfold(state, |(client, bucket, opts)| async move {
            let Some(opts) = opts else {
                return Ok(None);
            };
            let page = client.list_page(&bucket, &opts).await?;
            let next = page.next.map(|cursor| ListOptions {
                start_after: Some(cursor),
                ..opts
            });
            Ok(Some((page.keys, (client, bucket, next))))
        });
        let keys = pages
            .map_ok(|keys| stream::iter(keys.into_iter().map(Ok)))
            .try_flatten();
        KeyStream {
            inner: Box::pin(keys),
        }
    }

    /// Fetches one page of a listing: the keys after `opts.start_after`.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for an invalid bucket name or a page size outside 1
    /// to [`MAX_PAGE_SIZE`] (`invalid_parameter`), before anything is sent;
    /// [`ClientError::Api`] for an error answer (after transient ones were retried):
    /// `invalid_key` for a prefix or start_after over 1024 bytes, `forbidden` without
    /// `read` on the bucket, `quorum_unavailable` when some partition has no answering
    /// replica (the page would miss its keys); [`ClientError::Decode`] when a page's
    /// `next` does not move past its `start_after` (paging would never end).
    pub async fn list_page(&self, bucket: &str, opts: &ListOptions) -> Result<KeyList, ClientError> {
        let bucket = bucket_name(bucket)?;
        let mut call = Call::new(Method::GET, format!("/v1/kv/{}", segment(bucket.as_str())))
            .accept_json()
            .query("list", "");
        if !opts.prefix.is_empty() {
            call = call.query("prefix", &opts.prefix);
        }
        if let Some(after) = &opts.start_after {
            call = call.query("start_after", after);
        }
        if let Some(size) = opts.page_size {
            if !(1..=MAX_PAGE_SIZE).contains(&size) {
                return Err(ClientError::InvalidInput {
                    code: ErrorCode::InvalidParameter,
                    message: format!("the page size must be 1..={MAX_PAGE_SIZE}, got {size}"),
                });
            }
            call = call.query("limit", size);
        }
        let reply = self.send(call).await?;
        if reply.status != 200 {
            return Err(reply.unexpected("expected 200 with a page of keys"));
        }
        let page: KeyList = reply.json()?;
        // Every key is at least one byte, so a first page's `next` is past "". A `next`
        // that does not move forward would have this stream ask for the same page forever.
        let after = opts.start_after.as_deref().unwrap_or_default();
        if let Some(next) = &page.next
            && next.as_str() <= after
        {
            return Err(reply.unexpected(format!(
                "the page's next ({next:?}) does not come after its start_after ({after:?})"
            )));
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_build_up() {
        let opts = ListOptions::new().prefix("p/").start_after("p/1").page_size(7);
        assert_eq!(
            opts,
            ListOptions {
                prefix: "p/".into(),
                start_after: Some("p/1".into()),
                page_size: Some(7),
            }
        );
        assert_eq!(MAX_PAGE_SIZE, 1000);
    }

    #[test]
    fn pages_decode_with_and_without_next() {
        let page: KeyList = serde_json::from_str(r#"{"keys":["a","b"],"next":"b"}"#).expect("page");
        assert_eq!(page.next.as_deref(), Some("b"));
        let last: KeyList = serde_json::from_str(r#"{"keys":[],"next":null}"#).expect("page");
        assert_eq!(last.next, None);
    }
}
