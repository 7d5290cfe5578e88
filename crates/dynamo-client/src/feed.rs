//! The change feed: `GET /v1/feed/{bucket}`, page after page, as a [`Stream`] of
//! [`Change`]s.
//!
//! [`Client::feed`] returns a [`ChangeStream`] that long-polls the coordinator without
//! end: a page with no change is followed by the next poll, with the new cursor. Each
//! change says "this key changed": read the key for its current value, or write with the
//! change's [`Change::context`], which covers what that change held. [`Client::feed_page`]
//! fetches one page, for a caller that drives the polling itself.
//!
//! ```no_run
//! # async fn demo(client: dynamo_client::Client) -> Result<(), dynamo_client::ClientError> {
//! use dynamo_client::{ErrorCode, FeedCursor, FeedOptions};
//!
//! // A cursor saved by an earlier run, if any (None: start from now).
//! let saved: Option<FeedCursor> = None;
//! let mut changes = client.feed("orders", FeedOptions::new().cursor(saved));
//! loop {
//!     match changes.try_next().await {
//!         Ok(Some(change)) => {
//!             // Handle the change (re-read the key), then save where to resume.
//!             println!("{} changed", change.key);
//!             let _save_me: &FeedCursor = &change.cursor;
//!         }
//!         Ok(None) => break,
//!         Err(e) if e.code() == Some(ErrorCode::CursorExpired) => {
//!             // Changes were dropped: start from now and list the bucket to catch up.
//!             break;
//!         }
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What it promises (`docs/api.md`, the change feed)
//! - **At least once.** Every write acknowledged after a cursor was issued appears at
//!   least once in the changes that follow it. Changes repeat (a change logged by
//!   several replicas, data moved by a handoff or a repair), and a replica that was
//!   behind may bring an older change of a key in a later page: deduplicate, or simply
//!   treat every change as "re-read this key".
//! - **Resuming never skips.** Each change carries the cursor to save once it is handled
//!   ([`Change::cursor`]); a feed started from it delivers every change after that one.
//!   The server's cursor marks a whole page, not a change within it, so resuming may
//!   repeat that change and those before it in its page.
//! - **Retention.** A cursor older than the feed's retention (one hour by default) is
//!   `410 cursor_expired`: the stream's last item, [`ClientError::Api`] with
//!   [`ErrorCode::CursorExpired`]. Start again without a cursor, and list the bucket
//!   ([`Client::list_keys`]) to catch up on what was missed.
//!
//! A page asks every storage node: the feed costs a call to each per poll, which the
//! long poll ([`FeedOptions::wait_ms`]) keeps to one per node every few seconds while the
//! bucket is quiet.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Poll, ready};
use std::time::Duration;

use dynamo_core::ErrorCode;
use dynamo_core::wire::internal::MAX_FEED_PAGE;
use dynamo_core::wire::public::FeedPage;
use futures::stream::{Stream, StreamExt as _};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::bucket::bucket_name;
use crate::client::{Call, Client, segment};
use crate::error::ClientError;
use crate::object::Context;

/// The page size the server uses when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// The largest page size the server accepts.
pub const MAX_PAGE_SIZE: u32 = MAX_FEED_PAGE as u32;

/// How long a poll waits for a change by default, in milliseconds: long enough that a
/// quiet bucket costs a poll every 20 s, below the server's cap of 30 000.
pub const DEFAULT_WAIT_MS: u64 = 20_000;

/// The least time between two polls that found no change. With a short
/// [`FeedOptions::wait_ms`] the server answers an empty page at once, and without this
/// pause a quiet bucket would be polled in a tight loop.
const MIN_EMPTY_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A position in a bucket's change feed: opaque, issued by the server with every page.
///
/// It serializes as its token (a JSON string), so an application can save it and resume
/// after a restart, through any coordinator. It is valid for one bucket only, and for the
/// feed's retention (one hour by default), after which it is `cursor_expired`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeedCursor(String);

impl FeedCursor {
    /// Wraps a token saved earlier (from a file, a flag, a database).
    pub fn new(token: impl Into<String>) -> FeedCursor {
        FeedCursor(token.into())
    }

    /// Returns the token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the token, consuming the cursor.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FeedCursor {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<FeedCursor, Self::Err> {
        Ok(FeedCursor(s.to_owned()))
    }
}

/// Where a feed starts and how it polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOptions {
    /// The cursor to continue from (a saved [`Change::cursor`] or
    /// [`ChangeStream::current_cursor`]); `None` starts from now: the first page is empty
    /// and only carries a cursor.
    pub cursor: Option<FeedCursor>,
    /// Changes per page, 1 to [`MAX_PAGE_SIZE`]; `None` for the server's default
    /// ([`DEFAULT_PAGE_SIZE`]).
    pub page_size: Option<u32>,
    /// How long the server may wait for a change when there is none, in milliseconds
    /// (at most 30 000, the server's cap; more is `invalid_parameter`). Default:
    /// [`DEFAULT_WAIT_MS`]. Sent only with a cursor: a page from now never waits.
    pub wait_ms: u64,
}

impl Default for FeedOptions {
    fn default() -> FeedOptions {
        FeedOptions {
            cursor: None,
            page_size: None,
            wait_ms: DEFAULT_WAIT_MS,
        }
    }
}

impl FeedOptions {
    /// Returns options that start from now, with the default page size and wait.
    pub fn new() -> FeedOptions {
        FeedOptions::default()
    }

    /// Continues from `cursor` (`None`: from now).
    pub fn cursor(mut self, cursor: impl Into<Option<FeedCursor>>) -> FeedOptions {
        self.cursor = cursor.into();
        self
    }

    /// Fetches at most `size` changes per page (1 to [`MAX_PAGE_SIZE`]).
    pub fn page_size(mut self, size: u32) -> FeedOptions {
        self.page_size = Some(size);
        self
    }

    /// Lets the server wait up to `ms` milliseconds for a change (at most 30 000).
    pub fn wait_ms(mut self, ms: u64) -> FeedOptions {
        self.wait_ms = ms;
        self
    }
}

/// One change of the feed: the key changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// The key's context after the change: write with it to build on what the change
    /// held (a read gives the current one).
    pub context: Context,
    /// True when the key held no live value after the change.
    pub deleted: bool,
    /// The cursor to save once this change is handled: a feed started from it delivers
    /// every change after this one, at least once. The server's cursors mark whole pages,
    /// so this is the cursor the change's page was fetched with (the cursor after the
    /// page for the page's last change): resuming from it may repeat this change and
    /// those before it in its page, and never skips one after it.
    pub cursor: FeedCursor,
}

/// One page of the feed, as [`Client::feed_page`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes, each key's in causal order within the page; none when the wait
    /// ended without a change, or when the page was asked without a cursor.
    pub changes: Vec<Change>,
    /// The cursor after this page: pass it to the next call.
    pub cursor: FeedCursor,
}

impl ChangePage {
    /// Builds the typed page from the wire's, giving each change its resume cursor.
    ///
    /// Invariant relied on: a page asked without a cursor (from now) holds no change;
    /// one that does would leave its changes without a cursor that resumes before them.
    fn from_wire(page: FeedPage, asked_with: Option<&FeedCursor>) -> Result<ChangePage, String> {
        let after = FeedCursor::new(page.cursor);
        let last = page.changes.len().saturating_sub(1);
        let before = match asked_with {
            Some(cursor) => cursor,
            None if page.changes.is_empty() => &after,
            None => return Err("a page asked without a cursor holds changes".into()),
        };
        let changes = page
            .changes
            .into_iter()
            .enumerate()
            .map(|(i, c)| Change {
                key: c.key,
                context: Context::new(c.context),
                deleted: c.deleted,
                cursor: if i == last { after.clone() } else { before.clone() },
            })
            .collect();
        Ok(ChangePage {
            changes,
            cursor: after,
        })
    }
}

/// A bucket's changes, long-polled page by page without end: a [`Stream`] of
/// `Result<Change, ClientError>` (use `futures::StreamExt`/`TryStreamExt`, or
/// [`ChangeStream::try_next`]).
///
/// A page is fetched when the changes already fetched run out; a page without changes is
/// followed by the next poll with the page's new cursor (after a pause that keeps polls
/// that found nothing at least a second apart). Transient errors are retried within the
/// client's budget, on the next coordinator ([`crate::RetryPolicy`]). Any error that
/// remains is the stream's last item: `cursor_expired` ([`ErrorCode::CursorExpired`])
/// when the cursor outlived the feed's retention; otherwise resume with
/// [`ChangeStream::current_cursor`].
///
/// Dropping it, or the future of [`ChangeStream::try_next`], loses nothing: a page being
/// fetched is kept inside the stream (so `try_next` is cancel-safe, e.g. in a
/// `tokio::select!`), and nothing is kept on the server.
pub struct ChangeStream {
    client: Client,
    bucket: String,
    /// The options of the next page to fetch: its cursor is the one after the last page.
    next: FeedOptions,
    /// The changes of the last page not yielded yet.
    pending: VecDeque<Change>,
    /// The cursor that resumes after every change yielded so far.
    current: Option<FeedCursor>,
    state: State,
}

/// What a [`ChangeStream`] is doing between polls.
enum State {
    /// Yielding `pending`, or about to fetch the next page.
    Ready,
    /// Fetching a page.
    Fetching(Pin<Box<dyn Future<Output = Result<ChangePage, ClientError>> + Send>>),
    /// Pausing after a page without changes.
    Pausing(Pin<Box<tokio::time::Sleep>>),
    /// Ended by an error.
    Done,
}

impl fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeStream")
            .field("bucket", &self.bucket)
            .field("pending", &self.pending.len())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Stream for ChangeStream {
    type Item = Result<Change, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the futures are boxed), so the stream is.
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Pausing(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state = State::Ready;
                }
                State::Ready => {
                    if let Some(change) = this.pending.pop_front() {
                        this.current = Some(change.cursor.clone());
                        return Poll::Ready(Some(Ok(change)));
                    }
                    let (client, bucket, opts) =
                        (this.client.clone(), this.bucket.clone(), this.next.clone());
                    this.state =
                        State::Fetching(Box::pin(async move { client.feed_page(&bucket, &opts).await }));
                }
                State::Fetching(fetch) => match ready!(fetch.as_mut().poll(cx)) {
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok(page) => {
                        let waited = this.next.cursor.is_some();
                        this.next.cursor = Some(page.cursor.clone());
                        if page.changes.is_empty() {
                            // Nothing to yield: everything yielded is before this cursor.
                            this.current = Some(page.cursor);
                            let pause = empty_poll_pause(this.next.wait_ms);
                            // The first page from now answers at once by design: no pause.
                            this.state = if waited && !pause.is_zero() {
                                State::Pausing(Box::pin(tokio::time::sleep(pause)))
                            } else {
                                State::Ready
                            };
                        } else {
                            this.pending = page.changes.into();
                            this.state = State::Ready;
                        }
                    }
                },
            }
        }
    }
}

/// The pause after a poll that found no change: what keeps such polls at least
/// [`MIN_EMPTY_POLL_INTERVAL`] apart when the server waited less (none with the default
/// wait).
fn empty_poll_pause(wait_ms: u64) -> Duration {
    MIN_EMPTY_POLL_INTERVAL.saturating_sub(Duration::from_millis(wait_ms))
}

impl ChangeStream {
    /// Returns the next change, fetching pages (long-polling) until there is one.
    /// `Ok(None)` only after an error was returned.
    ///
    /// Cancel-safe: dropping the future keeps the page being fetched for the next call.
    ///
    /// # Errors
    /// As [`Client::feed_page`]; the stream ends after it.
    pub async fn try_next(&mut self) -> Result<Option<Change>, ClientError> {
        self.next().await.transpose()
    }

    /// Returns the cursor that resumes after every change yielded so far, repeating at
    /// most the earlier changes of the last one's page (see [`Change::cursor`]): what to
    /// save when stopping. `None` until the first page answered when the stream started
    /// from now.
    pub fn current_cursor(&self) -> Option<&FeedCursor> {
        self.current.as_ref()
    }

    /// Returns the bucket whose changes these are.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

impl Client {
    /// Follows the changes of `bucket` from `opts.cursor` (or from now), long-polling
    /// without end as the stream is read.
    ///
    /// Nothing is sent until the stream is polled; an invalid bucket name or page size
    /// is the stream's first (and only) item.
    pub fn feed(&self, bucket: &str, opts: FeedOptions) -> ChangeStream {
        ChangeStream {
            client: self.clone(),
            bucket: bucket.to_owned(),
            current: opts.cursor.clone(),
            next: opts,
            pending: VecDeque::new(),
            state: State::Ready,
        }
    }

    /// Fetches one page of the feed: the changes after `opts.cursor`, waiting up to
    /// `opts.wait_ms` for one when there is none; without a cursor, an empty page whose
    /// cursor starts from now.
    ///
    /// The client's request timeout is extended by the wait, so a long poll is not taken
    /// for a hung coordinator.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for an invalid bucket name or a page size outside 1
    /// to [`MAX_PAGE_SIZE`] (`invalid_parameter`), before anything is sent;
    /// [`ClientError::Api`] for an error answer (after transient ones were retried):
    /// `cursor_expired` (410) for a cursor older than the feed's retention,
    /// `invalid_parameter` for a malformed cursor, one of another bucket or a wait over
    /// 30 000 ms, `forbidden` without `read` on the bucket; [`ClientError::Decode`] for a
    /// page asked without a cursor that holds changes.
    pub async fn feed_page(&self, bucket: &str, opts: &FeedOptions) -> Result<ChangePage, ClientError> {
        let bucket = bucket_name(bucket)?;
        let mut call = Call::new(Method::GET, format!("/v1/feed/{}", segment(bucket.as_str()))).accept_json();
        if let Some(cursor) = &opts.cursor {
            call = call
                .query("cursor", cursor.as_str())
                .query("wait_ms", opts.wait_ms)
                .long_poll_ms(opts.wait_ms);
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
            return Err(reply.unexpected("expected 200 with a page of changes"));
        }
        let page: FeedPage = reply.json()?;
        ChangePage::from_wire(page, opts.cursor.as_ref()).map_err(|why| reply.unexpected(why))
    }
}

#[cfg(test)]
mod tests {
    use dynamo_core::wire::public::FeedChange;

    use super::*;

    fn wire(keys: &[&str], cursor: &str) -> FeedPage {
        FeedPage {
            changes: keys
                .iter()
                .map(|k| FeedChange {
                    key: (*k).to_owned(),
                    context: format!("ctx-{k}"),
                    deleted: *k == "gone",
                })
                .collect(),
            cursor: cursor.to_owned(),
        }
    }

    // Goal: saving any change's cursor after handling it never skips a later change:
    // every change but the page's last resumes from before the page, the last from
    // after it.
    #[test]
    fn each_change_resumes_before_its_page_except_the_last() {
        let before = FeedCursor::new("c1");
        let page = ChangePage::from_wire(wire(&["a", "gone", "b"], "c2"), Some(&before)).expect("page");
        let cursors: Vec<&str> = page.changes.iter().map(|c| c.cursor.as_str()).collect();
        assert_eq!(cursors, ["c1", "c1", "c2"]);
        assert_eq!(page.cursor.as_str(), "c2");
        assert_eq!(page.changes[0].context.as_str(), "ctx-a");
        assert!(page.changes[1].deleted);
        assert!(!page.changes[2].deleted);

        let single = ChangePage::from_wire(wire(&["a"], "c3"), Some(&before)).expect("page");
        assert_eq!(single.changes[0].cursor.as_str(), "c3");
    }

    // Goal: a page from now is empty by contract; one that is not is refused rather than
    // given cursors that could skip its changes.
    #[test]
    fn a_page_from_now_must_be_empty() {
        let empty = ChangePage::from_wire(wire(&[], "c1"), None).expect("page");
        assert!(empty.changes.is_empty());
        assert_eq!(empty.cursor.as_str(), "c1");
        assert!(ChangePage::from_wire(wire(&["a"], "c1"), None).is_err());
    }

    // Goal: a quiet bucket is never polled in a tight loop, and a real long poll is not
    // slowed down.
    #[test]
    fn empty_polls_pause_only_when_the_server_waited_less_than_a_second() {
        assert_eq!(empty_poll_pause(0), Duration::from_secs(1));
        assert_eq!(empty_poll_pause(300), Duration::from_millis(700));
        assert_eq!(empty_poll_pause(1000), Duration::ZERO);
        assert_eq!(empty_poll_pause(DEFAULT_WAIT_MS), Duration::ZERO);
        assert_eq!(empty_poll_pause(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn cursors_persist_as_json_strings_and_options_build_up() {
        let c = FeedCursor::new("eyJ2IjoxfQ");
        let json = serde_json::to_string(&c).expect("encodes");
        assert_eq!(json, r#""eyJ2IjoxfQ""#);
        assert_eq!(serde_json::from_str::<FeedCursor>(&json).expect("decodes"), c);
        assert_eq!(
            "x".parse::<FeedCursor>().map(FeedCursor::into_string),
            Ok("x".to_owned())
        );

        let opts = FeedOptions::new().cursor(c.clone()).page_size(7).wait_ms(5);
        assert_eq!(
            opts,
            FeedOptions {
                cursor: Some(c),
                page_size: Some(7),
                wait_ms: 5,
            }
        );
        assert_eq!(FeedOptions::new().wait_ms, DEFAULT_WAIT_MS);
        assert_eq!(FeedOptions::new().cursor(None).cursor, None);
        assert_eq!(MAX_PAGE_SIZE, 1000);
    }
}
