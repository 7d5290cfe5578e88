//! Request correlation across services: the request id (`x-request-id`) and the W3C trace
//! context (`traceparent`) of the request being served, carried in a task-local so that
//! error bodies, log spans and outgoing internal calls name the same request.
//!
//! A service's edge ([`crate::serve::request_id_scope`]) reads both headers (or makes
//! them) and runs the handler inside [`scope`]. Work moved to a spawned task takes the
//! context along with [`current`] + [`scope`], because task-locals do not cross
//! `tokio::spawn`. Outgoing calls send [`TraceContext::child_traceparent`]: same trace,
//! this hop's span id as the parent, so the callee's span is a child of this one.

use std::future::Future;

tokio::task_local! {
    static TRACE: TraceContext;
}

/// The correlation data of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The request id.
    pub request_id: String,
    /// The W3C trace id (32 lowercase hex digits).
    pub trace_id: String,
    /// The span id of this hop (16 lowercase hex digits): the exported `request` span's
    /// id when the OTLP exporter is on ([`crate::telemetry::link_request_span`]).
    pub span_id: String,
}

fn hex_id(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// Builds the context of a request from its headers' values: a valid `traceparent`
    /// continues that trace, anything else starts a new one.
    pub fn from_headers(request_id: &str, traceparent: Option<&str>) -> TraceContext {
        let parsed = traceparent.and_then(|tp| {
            let mut parts = tp.split('-');
            let (version, trace, parent, _flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            (version == "00" && is_hex(trace, 32) && is_hex(parent, 16)).then(|| trace.to_owned())
        });
        TraceContext {
            request_id: request_id.to_owned(),
            trace_id: parsed.unwrap_or_else(|| hex_id(16)),
            span_id: hex_id(8),
        }
    }

    /// The `traceparent` header for a call made on behalf of this request: this trace,
    /// with this hop's span as the parent.
    pub fn child_traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// Returns the context of the request being served, if any.
pub fn current() -> Option<TraceContext> {
    TRACE.try_with(Clone::clone).ok()
}

/// Runs `fut` with `ctx` as the current request context.
pub async fn scope<F: Future>(ctx: TraceContext, fut: F) -> F::Output {
    TRACE.scope(ctx, fut).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_garbage_starts_a_new_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_headers("r1", Some(tp));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = ctx.child_traceparent();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(child, format!("00-{}-{}-01", ctx.trace_id, ctx.span_id));
        assert_ne!(child, tp, "this hop's span is the parent, not the caller's");
        for bad in [
            "",
            "00-zz-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::from_headers("r", Some(bad));
            assert_eq!(ctx.trace_id.len(), 32);
            assert!(!tp.contains(&ctx.trace_id));
        }
    }

    #[tokio::test]
    async fn the_context_follows_scope_and_not_spawn() {
        let ctx = TraceContext::from_headers("r2", None);
        let seen = scope(ctx.clone(), async { current() }).await;
        assert_eq!(seen, Some(ctx));
        assert_eq!(current(), None);
    }
}
