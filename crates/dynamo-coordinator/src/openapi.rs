//! The OpenAPI document of the public API, generated from the handlers' annotations and
//! served at `/v1/openapi.json`.
//!
//! # Annotating an endpoint
//!
//! The document must say exactly what the server answers: `tests/contract` fuzzes the
//! served document against a live cluster (`make contract-check`) and fails on any 5xx and
//! on any status, header, media type or body the document does not list. So a handler's
//! `#[utoipa::path]` (and the new path in [`ApiDoc`]'s `paths(...)`):
//!
//! - types every input as tightly as the server checks it: a bucket is `pattern =
//!   "^[a-z0-9._-]{1,63}$"` (`dynamo_core::wire::BUCKET_NAME_PATTERN`) wherever it appears,
//!   in a path, a query or a body; a key `min_length = 1, max_length = 1024`; quorums
//!   `minimum = 1, maximum = 7`, `timeout_ms` `minimum = 1`; a context header or field
//!   `pattern = "^[A-Za-z0-9_-]{1,4096}$"`; enums are the core's types (`Permission`,
//!   `ConflictMode`), never `String`; request bodies are `deny_unknown_fields` types;
//! - never lets an optional parameter be `null` (it would be sent as the text `null`):
//!   a query struct carries `#[into_params(parameter_in = Query)]`, an optional header
//!   `nullable = false`;
//! - gives every answer its body type (`body = ...`, a core `ToSchema` type, also for
//!   successes; a raw value is `content(("*/*"))`) and its headers;
//! - lists every status its extractors and its own code can answer, each with `body =
//!   ErrorBody` and the error codes in its description: `400` for any path or query
//!   parameter or body (`invalid_request`, `invalid_parameter`, `invalid_json`,
//!   `request_timeout`), `413` for any body, `415` for a JSON body, `403` naming the
//!   permission it requires, and its domain errors (`404`, `409`, `410`, `412`, `422`, a
//!   `503` with its own reason);
//! - leaves out what every route answers whatever its handler: [`CommonResponses`] adds
//!   `401`, `414`, `429` and `503` (with `Retry-After`) to every operation, and `404
//!   route_not_found` to every operation with a path parameter; where a handler lists one
//!   of these itself, its description is kept and the common reason appended.
//!
//! The tests below hold every operation to these rules.

use utoipa::OpenApi;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};

use dynamo_core::crdt::CrdtType;
use dynamo_core::error::ErrorDetail;
use dynamo_core::wire::cluster::{
    AntiEntropyStatus, ChangeKindName, ChangeProgress, ChangeSummary, ClusterView, Handoff, KeyPlacement,
    NodeRegistration, NodeState, NodeStatus, Permission,
};
use dynamo_core::wire::public::{
    BatchOp, BatchOpKind, BatchRequest, BatchResponse, BatchResult, FeedChange, FeedPage, KeyList, NewToken,
    RingView, TokenInfo, TokenList, TokenRequest,
};
use dynamo_core::wire::{BucketProps, BucketPropsPatch, ConflictMode, SiblingView, SiblingsEnvelope};
use dynamo_core::{ErrorBody, ErrorCode};

use crate::api;

/// The public API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dynamo", description = "A Dynamo-style key-value store: the public REST API (v1)."),
    paths(
        api::get_object, api::put_object, api::delete_object, api::list_keys, api::get_feed,
        api::get_crdt, api::post_crdt, api::batch,
        api::get_bucket, api::put_bucket,
        api::get_cluster, api::get_ring, api::join_node, api::decommission_node, api::replace_node,
        api::retry_change, api::abort_change,
        api::create_token, api::list_tokens, api::delete_token,
    ),
    components(schemas(
        SiblingsEnvelope, SiblingView, ErrorBody, ErrorDetail, ErrorCode,
        BucketProps, BucketPropsPatch, ConflictMode, CrdtType, TokenRequest, NewToken, TokenInfo, TokenList,
        Permission, RingView, KeyPlacement, RingAnswer, NodeRegistration, ClusterView, NodeStatus, NodeState,
        AntiEntropyStatus, Handoff, ChangeProgress, ChangeSummary, ChangeKindName, CrdtOperation,
        BatchRequest, BatchOp, BatchOpKind, BatchResult, BatchResponse, KeyList, FeedChange, FeedPage,
    )),
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The answers every `/v1` operation can give whatever its handler, because the layers in
/// front of every handler give them (`api::routes`, `dynamo_server::serve`): status,
/// name in `components/responses`, and reason.
const COMMON: &[(u16, &str, &str)] = &[
    (
        401,
        "Unauthorized",
        "No bearer token, or one the cluster does not know or that has expired (`unauthorized`)",
    ),
    (
        414,
        "UriTooLong",
        "The request URI is longer than 8192 bytes (`uri_too_long`)",
    ),
    (
        429,
        "RateLimited",
        "The token is over its rate limit (`rate_limited`); retry after `Retry-After` seconds",
    ),
    (
        503,
        "Unavailable",
        "The coordinator is at its concurrency limit (`overloaded`), has not yet heard from the ring service, or has not heard from it for too long to confirm a scoped token (`ring_unavailable`); retry after `Retry-After` seconds",
    ),
];

/// The answer to a path whose parameter is `.` or `..`: HTTP clients remove such dot
/// segments from a URL before sending it (RFC 3986 §5.2.4), and the path left names no
/// route. Send them percent-encoded (`%2E`) to reach the route.
const DOT_SEGMENT: (&str, &str) = (
    "RouteNotFound",
    "A path parameter of `.` or `..` sent unencoded: clients remove such dot segments, and the path left names no route (`route_not_found`); send it as `%2E`",
);

/// Adds to every operation the answers its handler cannot help giving (`COMMON`, and
/// `DOT_SEGMENT` where the path has a parameter), so that handlers list only their own.
/// An answer a handler lists itself keeps its description, with the common reason
/// appended; every `429` and `503` gets its `Retry-After` header.
pub struct CommonResponses;

impl CommonResponses {
    fn error_response(description: &str, retry_after: bool) -> Response {
        let mut r = Response::new(description);
        r.content.insert(
            "application/json".to_owned(),
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
        if retry_after {
            r.headers.insert("Retry-After".to_owned(), Self::retry_after());
        }
        r
    }

    fn retry_after() -> Header {
        let mut h = Header::new(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)));
        h.description = Some("Seconds to wait before retrying".to_owned());
        h
    }

    /// Adds `name`'s answer as `status` to `op`: a reference to the shared response, or,
    /// where the handler lists the status itself, its reason appended.
    fn add(op: &mut Operation, status: u16, name: &str, reason: &str) {
        let retry_after = matches!(status, 429 | 503);
        match op.responses.responses.get_mut(&status.to_string()) {
            None => {
                op.responses
                    .responses
                    .insert(status.to_string(), RefOr::Ref(Ref::from_response_name(name)));
            }
            Some(RefOr::T(own)) => {
                own.description = format!("{}; or: {reason}", own.description);
                if retry_after {
                    own.headers
                        .entry("Retry-After".to_owned())
                        .or_insert_with(Self::retry_after);
                }
            }
            Some(RefOr::Ref(_)) => {}
        }
    }
}

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for &(status, name, reason) in COMMON {
            components.responses.insert(
                name.to_owned(),
                RefOr::T(Self::error_response(reason, matches!(status, 429 | 503))),
            );
        }
        components.responses.insert(
            DOT_SEGMENT.0.to_owned(),
            RefOr::T(Self::error_response(DOT_SEGMENT.1, false)),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_parameter = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for &(status, name, reason) in COMMON {
                    Self::add(op, status, name, reason);
                }
                if has_path_parameter {
                    Self::add(op, 404, DOT_SEGMENT.0, DOT_SEGMENT.1);
                }
            }
        }
    }
}

/// The answer of `GET /v1/ring`: the ring, or with `?bucket=&key=` that key's placement
/// (a type of the description only; the handler answers the two types themselves).
pub struct RingAnswer;

impl utoipa::PartialSchema for RingAnswer {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name("RingView"))
            .item(Ref::from_schema_name("KeyPlacement"))
            .into()
    }
}

impl utoipa::ToSchema for RingAnswer {}

/// The body of `POST /v1/crdt/{bucket}/{key}`: one operation, in the shapes
/// `dynamo_core::crdt::CrdtOp` reads (an object with exactly one of these members; an
/// `update` maps field names to operations). A type of the description only.
pub struct CrdtOperation;

impl utoipa::PartialSchema for CrdtOperation {
    fn schema() -> RefOr<Schema> {
        let strings = || ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String));
        let one = |member: &str, description: &str, value: RefOr<Schema>| {
            ObjectBuilder::new()
                .property(member, value)
                .required(member)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .description(Some(description))
        };
        let int64 = ObjectBuilder::new().schema_type(Type::Integer).format(Some(
            utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64),
        ));
        let fields = ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(Ref::from_schema_name("CrdtOperation")));
        OneOfBuilder::new()
            .item(one(
                "increment",
                "Counter: add (negative: subtract)",
                int64.into(),
            ))
            .item(one("add", "Set: add the elements", strings().into()))
            .item(one(
                "remove",
                "Set: remove what the observed context saw of the elements (send `X-Dynamo-Context`)",
                strings().into(),
            ))
            .item(one(
                "assign",
                "Register: write the value (any JSON)",
                ObjectBuilder::new().schema_type(SchemaType::AnyValue).into(),
            ))
            .item(one(
                "update",
                "Map: apply each operation to its field",
                fields.into(),
            ))
            .item(one(
                "remove_fields",
                "Map: remove what the observed context saw of the fields (send `X-Dynamo-Context`)",
                strings().into(),
            ))
            .into()
    }
}

impl utoipa::ToSchema for CrdtOperation {}

/// The document, serialized once: it is served without a token, so a request must cost
/// no more than a copy.
static DOCUMENT: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| {
    bytes::Bytes::from(serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_default())
});

/// `GET /v1/openapi.json` (no token needed).
pub async fn serve() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every operation of `doc` as `(method, path, operation)`.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// The answer of `op` with `status`, a shared one resolved.
    fn response<'a>(doc: &'a Value, op: &'a Value, status: &str) -> Option<&'a Value> {
        let r = op["responses"].get(status)?;
        match r["$ref"].as_str() {
            Some(name) => {
                let name = name
                    .strip_prefix("#/components/responses/")
                    .expect("a response ref");
                doc["components"]["responses"].get(name)
            }
            None => Some(r),
        }
    }

    /// Calls `f` with every object in `v` and the key it sits under.
    fn walk<'a>(v: &'a Value, under: &str, f: &mut impl FnMut(&str, &'a Value)) {
        match v {
            Value::Object(m) => {
                f(under, v);
                for (k, x) in m {
                    walk(x, k, f);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, under, f)),
            _ => {}
        }
    }

    // Goal: every operation lists what its inputs and the layers in front of every
    // handler can answer (the module's rules for annotating an endpoint), so the contract
    // check finds no status the document does not list. Method: read the generated
    // document; each operation's parameters and body say which statuses it needs.
    #[test]
    fn every_operation_lists_what_its_inputs_and_the_layers_answer() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let ops = operations(&doc);
        assert!(ops.len() >= 18, "{} operations", ops.len());
        for (method, path, op) in &ops {
            let at = format!("{method} {path}");
            let has = |status: &str| response(&doc, op, status).is_some();
            for status in ["401", "414", "429", "503"] {
                assert!(has(status), "{at}: {status} missing");
            }
            for status in ["429", "503"] {
                let r = response(&doc, op, status).expect("listed");
                assert!(
                    r["headers"]["Retry-After"].is_object(),
                    "{at}: {status} without Retry-After"
                );
            }
            // A batch checks each operation's permission in its own result.
            if path != "/v1/batch" {
                assert!(has("403"), "{at}: 403 missing");
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            if params.iter().any(|p| p["in"] == "path" || p["in"] == "query") {
                assert!(has("400"), "{at}: a parameter, and no 400");
            }
            if params.iter().any(|p| p["in"] == "path") {
                assert!(has("404"), "{at}: a path parameter, and no 404");
            }
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for status in ["400", "413"] {
                    assert!(has(status), "{at}: a body, and no {status}");
                }
                if content.contains_key("application/json") {
                    assert!(has("415"), "{at}: a JSON body, and no 415");
                }
            }
            for (status, _) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    let r = response(&doc, op, status).expect("resolves");
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                        "{at}: {status} is not an ErrorBody"
                    );
                }
            }
        }
    }

    // Goal: a handler's own answer for a common status keeps its reason and gains the
    // common one and `Retry-After`; the others point at the shared answers.
    #[test]
    fn common_answers_merge_with_the_handlers_own() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let get = &doc["paths"]["/v1/kv/{bucket}/{key}"]["get"];
        let own = &get["responses"]["503"];
        let text = own["description"].as_str().expect("description");
        assert!(text.starts_with("Fewer than R replicas answered"), "{text}");
        assert!(text.contains("overloaded"), "{text}");
        assert!(own["headers"]["Retry-After"].is_object());
        assert_eq!(
            get["responses"]["401"]["$ref"],
            "#/components/responses/Unauthorized"
        );
        let not_found = get["responses"]["404"]["description"].as_str().expect("404");
        assert!(
            not_found.contains("`not_found`") && not_found.contains("route_not_found"),
            "{not_found}"
        );
        let reason = COMMON.iter().find(|c| c.0 == 414).expect("414").2;
        assert!(reason.contains(&api::MAX_URI_BYTES.to_string()), "{reason}");
    }

    // Goal: every bucket the document names (path, query, body, token scope) carries the
    // bucket-name rule, and every node id the node-id rule, as the server checks them.
    #[test]
    fn every_bucket_and_node_id_has_its_pattern() {
        use dynamo_core::wire::{BUCKET_NAME_PATTERN, NODE_ID_PATTERN};
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let (mut buckets, mut nodes) = (0, 0);
        for (method, path, op) in operations(&doc) {
            for p in op["parameters"].as_array().cloned().unwrap_or_default() {
                let pattern = &p["schema"]["pattern"];
                match p["name"].as_str() {
                    Some("bucket") => {
                        assert_eq!(pattern, BUCKET_NAME_PATTERN, "{method} {path}");
                        buckets += 1;
                    }
                    Some("node") => {
                        assert_eq!(pattern, NODE_ID_PATTERN, "{method} {path}");
                        nodes += 1;
                    }
                    _ => {}
                }
            }
        }
        walk(&doc["components"]["schemas"], "", &mut |under, v| {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (name, schema) in props {
                    let pattern = &schema["pattern"];
                    match name.as_str() {
                        "bucket" => {
                            assert_eq!(pattern, BUCKET_NAME_PATTERN, "{under}.{name}");
                            buckets += 1;
                        }
                        "node_id" | "node" | "from" | "to" => {
                            assert_eq!(pattern, NODE_ID_PATTERN, "{under}.{name}");
                            nodes += 1;
                        }
                        "buckets" => assert_eq!(
                            schema["$ref"], "#/components/schemas/BucketScope",
                            "{under}.{name}"
                        ),
                        _ => {}
                    }
                }
            }
        });
        let scope = &doc["components"]["schemas"]["BucketScope"]["oneOf"];
        assert_eq!(scope[0]["enum"], serde_json::json!(["*"]));
        assert_eq!(scope[1]["items"]["pattern"], BUCKET_NAME_PATTERN);
        assert!(buckets >= 9 && nodes >= 5, "{buckets} buckets, {nodes} node ids");
    }

    // Goal: the CRDT operation body names exactly the operations the core reads, and a
    // value of each documented shape is one the core accepts.
    #[test]
    fn the_crdt_operation_schema_is_the_cores() {
        use dynamo_core::crdt::CrdtOp;
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let shapes = doc["components"]["schemas"]["CrdtOperation"]["oneOf"]
            .as_array()
            .expect("one shape per operation");
        let samples = serde_json::json!({
            "increment": -3, "add": ["a"], "remove": ["a"], "assign": {"any": [1, null]},
            "update": {"f": {"increment": 1}}, "remove_fields": ["f"],
        });
        assert_eq!(shapes.len(), samples.as_object().expect("samples").len());
        for shape in shapes {
            let name = shape["required"][0].as_str().expect("one member");
            let op = CrdtOp::from_value(serde_json::json!({ name: samples[name] }))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(op.name(), name);
            assert_eq!(shape["additionalProperties"], false, "{name}");
        }
    }

    // Goal: the limits the document states are the server's own constants, and the
    // enums list exactly what the server reads.
    #[test]
    fn limits_and_enums_are_the_servers() {
        use dynamo_core::limits::{MAX_BATCH_REQUEST_OPS, MAX_KEY_BYTES, MAX_N, MAX_SIBLINGS_LIMIT};
        use dynamo_core::wire::cluster::{MAX_TOKEN_BUCKETS, MAX_TOKEN_RATE_LIMIT_RPS, MAX_TOKEN_TTL_S};
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let schemas = &doc["components"]["schemas"];
        for props in ["BucketProps", "BucketPropsPatch"] {
            for field in ["n", "r", "w"] {
                let f = &schemas[props]["properties"][field];
                assert_eq!(
                    (&f["minimum"], &f["maximum"]),
                    (&1.into(), &MAX_N.into()),
                    "{props}.{field}"
                );
            }
            let f = &schemas[props]["properties"]["max_siblings"];
            assert_eq!(
                (&f["minimum"], &f["maximum"]),
                (&1.into(), &MAX_SIBLINGS_LIMIT.into())
            );
        }
        let token = &schemas["TokenRequest"]["properties"];
        assert_eq!(token["ttl_s"]["maximum"], MAX_TOKEN_TTL_S);
        assert_eq!(token["rate_limit_rps"]["maximum"], MAX_TOKEN_RATE_LIMIT_RPS);
        assert_eq!(token["permissions"]["minItems"], 1);
        assert_eq!(schemas["BucketScope"]["oneOf"][1]["maxItems"], MAX_TOKEN_BUCKETS);
        assert_eq!(
            schemas["BatchRequest"]["properties"]["ops"]["maxItems"],
            MAX_BATCH_REQUEST_OPS
        );
        for op in schemas["BatchOp"]["oneOf"].as_array().expect("kinds") {
            assert_eq!(op["properties"]["key"]["maxLength"], MAX_KEY_BYTES);
        }
        let permissions: Vec<Value> = [Permission::Read, Permission::Write, Permission::Admin]
            .iter()
            .map(|p| serde_json::to_value(p).expect("json"))
            .collect();
        assert_eq!(schemas["Permission"]["enum"], Value::Array(permissions));
        let context = format!(
            "^[A-Za-z0-9_-]{{1,{}}}$",
            dynamo_core::limits::MAX_CONTEXT_TOKEN_BYTES
        );
        assert_eq!(
            schemas["BatchOp"]["oneOf"][1]["properties"]["context"]["pattern"],
            context
        );
        for (method, path, op) in operations(&doc) {
            for p in op["parameters"].as_array().cloned().unwrap_or_default() {
                let at = format!("{method} {path} {}", p["name"]);
                match p["name"].as_str() {
                    Some("r" | "w") => {
                        assert_eq!(
                            (&p["schema"]["minimum"], &p["schema"]["maximum"]),
                            (&1.into(), &MAX_N.into()),
                            "{at}"
                        );
                    }
                    Some("key") => assert_eq!(p["schema"]["maxLength"], MAX_KEY_BYTES, "{at}"),
                    Some("timeout_ms") => assert_eq!(p["schema"]["minimum"], 1, "{at}"),
                    Some("X-Dynamo-Context") => assert_eq!(p["schema"]["pattern"], context, "{at}"),
                    Some("Idempotency-Key") => assert_eq!(
                        p["schema"]["pattern"],
                        format!("^[!-~]{{1,{}}}$", api::MAX_IDEMPOTENCY_KEY_BYTES),
                        "{at}"
                    ),
                    _ => {}
                }
                // An absent parameter is not sent; `null` would be sent as the text "null".
                assert!(p["schema"]["type"].is_string(), "{at}: a parameter is never null");
            }
        }
    }

    /// Every `$ref` in `v`, as `#/components/schemas/Name` strings.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_describes_the_wire_types_themselves() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let schemas = &doc["components"]["schemas"];
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let defined = match r.strip_prefix("#/components/responses/") {
                Some(name) => &doc["components"]["responses"][name],
                None => &schemas[r.strip_prefix("#/components/schemas/").expect("a schema ref")],
            };
            assert!(defined.is_object(), "{r} is not defined");
        }
        // Error codes are the core's enum, every code listed.
        let codes = schemas["ErrorCode"]["enum"].as_array().expect("an enum of codes");
        for code in ["invalid_request", "quorum_unavailable", "idempotency_key_reused"] {
            assert!(codes.iter().any(|c| c == code), "{code} missing");
        }
        // A bucket update takes the patch (every field optional), and answers the
        // effective properties (every field required).
        let put = &doc["paths"]["/v1/buckets/{bucket}"]["put"];
        let body = &put["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(body, "#/components/schemas/BucketPropsPatch");
        assert!(schemas["BucketPropsPatch"]["required"].is_null());
        let required = schemas["BucketProps"]["required"].as_array().expect("required");
        assert!(required.iter().any(|f| f == "n"));
        // A sibling's value is base64 text.
        assert_eq!(schemas["SiblingView"]["properties"]["value"]["type"], "string");
    }

    // Goal: conditional writes are in the document: the If-Match and If-None-Match
    // headers on PUT and DELETE, their 412, and the ETag every answer that found
    // something carries.
    #[test]
    fn the_document_describes_conditional_writes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let object = &doc["paths"]["/v1/kv/{bucket}/{key}"];
        for method in ["put", "delete"] {
            let op = &object[method];
            let params = op["parameters"].as_array().expect("parameters");
            for header in ["If-Match", "If-None-Match", "Idempotency-Key", "X-Dynamo-Context"] {
                assert!(
                    params.iter().any(|p| p["name"] == header && p["in"] == "header"),
                    "{method}: {header} missing"
                );
            }
            assert!(op["responses"]["412"].is_object(), "{method}: 412 missing");
            assert!(
                op["responses"]["204"]["headers"]["ETag"].is_object(),
                "{method}: ETag missing"
            );
        }
        for status in ["200", "300"] {
            assert!(
                object["get"]["responses"][status]["headers"]["ETag"].is_object(),
                "get {status}"
            );
        }
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("codes");
        assert!(codes.iter().any(|c| c == "precondition_failed"));
    }

    // Goal: the batch route is in the document with its request and answer schemas
    // (the operation kinds, the at-most-100 bound, base64 values) and its statuses.
    #[test]
    fn the_document_describes_batches() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let batch = &doc["paths"]["/v1/batch"]["post"];
        let body = &batch["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(body, "#/components/schemas/BatchRequest");
        let answer = &batch["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(answer, "#/components/schemas/BatchResponse");
        for status in ["400", "401", "413", "415"] {
            assert!(batch["responses"][status].is_object(), "{status} missing");
        }
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["BatchRequest"]["properties"]["ops"]["maxItems"], 100);
        let kinds = schemas["BatchOpKind"]["enum"].as_array().expect("kinds");
        assert_eq!(kinds.len(), 3);
        // One schema per kind, each taking exactly the fields the kind takes.
        let ops = schemas["BatchOp"]["oneOf"]
            .as_array()
            .expect("one schema per kind");
        assert_eq!(ops.len(), 3);
        for op in ops {
            assert_eq!(op["properties"]["bucket"]["pattern"], "^[a-z0-9._-]{1,63}$");
            assert_eq!(op["additionalProperties"], false);
        }
        assert_eq!(ops[0]["properties"]["value"]["type"], "null");
        assert!(
            ops[1]["required"]
                .as_array()
                .expect("required")
                .iter()
                .any(|f| f == "value")
        );
        assert!(
            schemas["BatchResult"]["required"]
                .as_array()
                .expect("required")
                .iter()
                .any(|f| f == "status")
        );
    }

    // Goal: the replace route is in the document: its path parameter, the new node's
    // registration as its body, and every status it answers.
    #[test]
    fn the_document_describes_replace() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let replace = &doc["paths"]["/v1/cluster/nodes/{node}/replace"]["post"];
        assert!(replace.is_object(), "the replace route is described");
        assert_eq!(replace["parameters"][0]["name"], "node");
        let body = &replace["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(body, "#/components/schemas/NodeRegistration");
        for status in ["202", "400", "403", "404", "409", "503"] {
            assert!(replace["responses"][status].is_object(), "{status} missing");
        }
    }

    // Goal: the retry and abort routes are in the document, each with no body and the
    // statuses it answers: the ring service's success (202 for a retry, which runs on,
    // 200 for an abort, which is done), its relayed 409, 403 and 503.
    #[test]
    fn the_document_describes_retry_and_abort() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        for (path, success) in [
            ("/v1/cluster/change/retry", "202"),
            ("/v1/cluster/change/abort", "200"),
        ] {
            let op = &doc["paths"][path]["post"];
            assert!(op.is_object(), "{path} is described");
            assert!(op["requestBody"].is_null(), "{path} takes no body");
            for status in [success, "403", "409", "503"] {
                assert!(op["responses"][status].is_object(), "{path}: {status} missing");
            }
        }
    }
}
