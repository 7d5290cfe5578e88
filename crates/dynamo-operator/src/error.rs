//! The operator's errors: what makes a reconcile fail (and be retried with backoff).
//!
//! A failing Dynamo API is *not* one of them: the plan observes it as "no cluster view"
//! and takes no unsafe step, and the status says so. These are failures to talk to
//! Kubernetes itself.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (after kube's own retries).
    #[error("kubernetes api call failed: {what}")]
    Kube {
        /// What was asked.
        what: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed, or the apply or cleanup inside it.
    #[error("finalizer step failed")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The `DynamoCluster` lacks what the operator needs (a namespace).
    #[error("invalid DynamoCluster: {0}")]
    Invalid(String),
}

impl Error {
    /// A short stable label for metrics (`dynamo_operator_reconcile_errors_total{error}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(s),
                ..
            } if s.code == 409 => "conflict",
            Error::Kube { .. } => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Invalid(_) => "invalid",
        }
    }

    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}
