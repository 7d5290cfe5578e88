//! The door of the internal routes: the member and control keys from flags, the client
//! that signs every internal request, and the layer that lets only signed requests in.
//!
//! The rules (what is signed, the two roles, the clock window, replays) are
//! [`dynamo_core::signature`]'s; this module carries them over HTTP. A service's internal
//! router gets [`require_signature`] with a [`Door`]; everything it calls another service
//! with is an [`InternalClient`] built by [`client`], which signs in one place so no call
//! site can forget.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dynamo_core::keys::{Key, KeyRing};
use dynamo_core::signature::{
    Role, SIGNATURE_HEADER, Signature, SignatureError, SignedParts, Verifier, body_digest, check_principal,
};

use crate::ApiError;
use crate::clock::now_ms;
use crate::config::{ConfigError, Secret};

/// A client for internal routes: every request it sends is signed.
pub type InternalClient = reqwest_middleware::ClientWithMiddleware;
/// The error of an [`InternalClient`]'s `send`.
pub type SendError = reqwest_middleware::Error;

/// Member keys and the signature window, flags every service takes.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct MemberArgs {
    /// The member keys: the lines of a key file (`<id>:<base64url secret>`, the signing
    /// key first). Every service of a cluster holds them; they sign and admit every
    /// internal request of the data plane. Prefer `--member-key-file`.
    #[arg(long, env = "DYNAMO_MEMBER_KEY", default_value = "", hide_env_values = true)]
    pub member_key: Secret,

    /// A file holding the member keys (see `--member-key`), e.g. `<data-dir>/member-key`.
    #[arg(long, env = "DYNAMO_MEMBER_KEY_FILE")]
    pub member_key_file: Option<PathBuf>,

    /// How far a signed internal request's timestamp may be from this server's clock
    /// (both ways); further is `401`. Also how long a signature is remembered against
    /// replay.
    #[arg(long, env = "DYNAMO_MAX_CLOCK_SKEW_MS", default_value_t = 15_000)]
    pub max_clock_skew_ms: u64,

    /// Most signatures remembered against replay (about 60 bytes each); past it, new
    /// internal requests get `503 overloaded` until old ones leave the window.
    #[arg(long, env = "DYNAMO_MAX_REPLAY_ENTRIES", default_value_t = 1 << 20)]
    pub max_replay_entries: usize,
}

impl Default for MemberArgs {
    fn default() -> Self {
        MemberArgs {
            member_key: Secret::default(),
            member_key_file: None,
            max_clock_skew_ms: 15_000,
            max_replay_entries: 1 << 20,
        }
    }
}

/// Control keys, a flag of the services that take or send control requests (the ring
/// service and coordinators; never storage nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ControlArgs {
    /// The control keys (as `--member-key`): they sign and admit membership changes,
    /// tokens and bucket properties. Prefer `--control-key-file`.
    #[arg(long, env = "DYNAMO_CONTROL_KEY", default_value = "", hide_env_values = true)]
    pub control_key: Secret,

    /// A file holding the control keys, e.g. `<data-dir>/control-key`.
    #[arg(long, env = "DYNAMO_CONTROL_KEY_FILE")]
    pub control_key_file: Option<PathBuf>,
}

impl MemberArgs {
    /// Checks the window and the guard's size (the keys are read by [`MemberArgs::keys`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_clock_skew_ms == 0 {
            return Err(ConfigError::new("max-clock-skew-ms", "must be at least 1"));
        }
        if self.max_replay_entries == 0 {
            return Err(ConfigError::new("max-replay-entries", "must be at least 1"));
        }
        Ok(())
    }

    /// Reads the member keys.
    ///
    /// # Errors
    /// [`ConfigError`] when none are given, the file cannot be read or a line is bad.
    pub fn keys(&self) -> Result<KeyRing, ConfigError> {
        load_keys(
            ("member-key", &self.member_key),
            ("member-key-file", self.member_key_file.as_ref()),
        )
    }
}

impl ControlArgs {
    /// Reads the control keys.
    ///
    /// # Errors
    /// [`ConfigError`] when none are given, the file cannot be read or a line is bad.
    pub fn keys(&self) -> Result<KeyRing, ConfigError> {
        load_keys(
            ("control-key", &self.control_key),
            ("control-key-file", self.control_key_file.as_ref()),
        )
    }
}

/// Reads a key ring from an inline flag (preferred when set) or a file; one of the two
/// is required.
///
/// # Errors
/// [`ConfigError`] naming the flag: neither given, an unreadable file, a bad key.
pub fn load_keys(
    (inline_flag, inline): (&'static str, &Secret),
    (file_flag, file): (&'static str, Option<&PathBuf>),
) -> Result<KeyRing, ConfigError> {
    let (field, text) = if !inline.0.is_empty() {
        (inline_flag, inline.0.clone())
    } else if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(file_flag, format!("{}: {e}", path.display())))?;
        (file_flag, text)
    } else {
        return Err(ConfigError::new(
            inline_flag,
            format!(
                "keys are required (--{inline_flag}, its environment variable or --{file_flag}; \
                 `dynamo keygen` writes one)"
            ),
        ));
    };
    KeyRing::parse(&text).map_err(|e| ConfigError::new(field, e.to_string()))
}

/// Signs requests as one principal in one role.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Key,
    role: Role,
    principal: String,
}

impl Signer {
    /// A signer for `principal` (1–128 bytes of `[a-z0-9._/:-]`) in `role`, with the
    /// signing key of `keys`.
    ///
    /// # Errors
    /// [`SignatureError::InvalidPrincipal`].
    pub fn new(keys: &KeyRing, role: Role, principal: impl Into<String>) -> Result<Signer, SignatureError> {
        let principal = principal.into();
        check_principal(&principal)?;
        Ok(Signer {
            key: keys.signing().clone(),
            role,
            principal,
        })
    }

    /// Returns the signature header of a request.
    fn header(&self, method: &str, path_and_query: &str, body: &[u8]) -> Result<HeaderValue, SignatureError> {
        let parts = SignedParts {
            method,
            path_and_query,
            body_digest: body_digest(body),
        };
        let sig = Signature::sign(
            &self.key,
            self.role,
            &self.principal,
            now_ms(),
            rand::random(),
            &parts,
        )?;
        HeaderValue::from_str(&sig.to_header()).map_err(|_| SignatureError::Malformed)
    }
}

/// A request whose body cannot be signed (a stream): internal requests send buffered
/// bodies only.
#[derive(Debug, thiserror::Error)]
#[error("an internal request with a streamed body cannot be signed")]
pub struct UnsignableBody;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Signer {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let body = match req.body() {
            None => &[][..],
            Some(b) => b
                .as_bytes()
                .ok_or_else(|| reqwest_middleware::Error::middleware(UnsignableBody))?,
        };
        let url = req.url();
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let header = self
            .header(req.method().as_str(), &path_and_query, body)
            .map_err(reqwest_middleware::Error::middleware)?;
        req.headers_mut().insert(SIGNATURE_HEADER, header);
        next.run(req, extensions).await
    }
}

/// Builds the internal client of a service: `http` with every request signed by `signer`.
pub fn client(http: reqwest::Client, signer: Signer) -> InternalClient {
    reqwest_middleware::ClientBuilder::new(http).with(signer).build()
}

/// Which role a route needs: given the method and the matched route template (`None`
/// when no route matched).
pub type Policy = fn(&Method, Option<&str>) -> Role;

/// The policy of a service whose every internal route is the data plane's.
pub fn members_only(_: &Method, _: Option<&str>) -> Role {
    Role::Member
}

/// What [`require_signature`] checks requests against.
pub struct Door {
    verifier: Mutex<Verifier>,
    policy: Policy,
    max_body_bytes: usize,
}

impl Door {
    /// A door admitting requests signed with `member` keys (and `control` keys, where the
    /// service holds them) under `args`' window, each at least the role `policy` names
    /// for its route; bodies are read up to `max_body_bytes` to be checked.
    pub fn new(
        args: &MemberArgs,
        member: KeyRing,
        control: Option<KeyRing>,
        policy: Policy,
        max_body_bytes: usize,
    ) -> Arc<Door> {
        Arc::new(Door {
            verifier: Mutex::new(Verifier::new(
                member,
                control,
                args.max_clock_skew_ms,
                args.max_replay_entries,
            )),
            policy,
            max_body_bytes,
        })
    }

    fn verifier(&self) -> std::sync::MutexGuard<'_, Verifier> {
        // The verifier's state is a replay set that every operation leaves consistent, so
        // a panic elsewhere while it was held cannot have broken it.
        self.verifier.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Puts `routes` behind `door` ([`require_signature`]).
pub fn guard(routes: axum::Router, door: Arc<Door>) -> axum::Router {
    routes.layer(axum::middleware::from_fn_with_state(door, require_signature))
}

/// Middleware for internal routes: a request passes only with a valid signature of a role
/// its route allows, not seen before. Refusals are `401 unauthorized` (unproven caller),
/// `403 forbidden` (a member on a control route) or `503 overloaded` (replay guard full),
/// and the handler never runs.
pub async fn require_signature(State(door): State<Arc<Door>>, req: Request, next: Next) -> Response {
    let header = req.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let sig = match door.verifier().precheck(header, now_ms()) {
        Ok(sig) => sig,
        Err(e) => return refuse(e),
    };
    let needed = (door.policy)(
        req.method(),
        req.extensions().get::<MatchedPath>().map(MatchedPath::as_str),
    );
    let (parts, body) = req.into_parts();
    let bytes = match crate::extract::read_body(body, door.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let signed = SignedParts {
        method: parts.method.as_str(),
        path_and_query,
        body_digest: body_digest(&bytes),
    };
    if let Err(e) = door.verifier().verify(&sig, &signed, needed, now_ms()) {
        return refuse(e);
    }
    tracing::debug!(principal = %sig.principal, role = %sig.role, "signed internal request");
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn refuse(e: SignatureError) -> Response {
    tracing::debug!(error = %e, "internal request refused");
    let err = ApiError::new(e.code(), e.to_string());
    match e {
        SignatureError::ReplayGuardFull => err.retry_after(1).into_response(),
        _ => err.into_response(),
    }
}

/// Keys for tests only (public, so never for a real cluster): what every test cluster
/// shares, and a signer with them (`dynamo-testkit` builds its clients on it).
pub mod testing {
    use dynamo_core::keys::KeyRing;
    use dynamo_core::signature::Role;

    use super::Signer;

    /// A member key file.
    pub const TEST_MEMBER_KEY: &str = "1:dGVzdC1vbmx5LW1lbWJlci1rZXktbmV2ZXItaW4tcHJvZHVjdGlvbg";
    /// A control key file.
    pub const TEST_CONTROL_KEY: &str = "1:dGVzdC1vbmx5LWNvbnRyb2wta2V5LW5ldmVyLWluLXByb2R1Y3Rpb24";

    /// A signer with the test key of `role`, as principal `test`.
    pub fn signer(role: Role) -> Signer {
        let key = match role {
            Role::Member => TEST_MEMBER_KEY,
            Role::Control => TEST_CONTROL_KEY,
        };
        let keys = KeyRing::parse(key).expect("the test keys parse");
        Signer::new(&keys, role, "test").expect("`test` is a valid principal")
    }
}
