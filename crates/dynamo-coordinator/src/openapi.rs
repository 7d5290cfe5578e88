//! The OpenAPI document of the public API, generated from the handlers' annotations and
//! served at `/v1/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use dynamo_core::crdt::CrdtType;
use dynamo_core::error::ErrorDetail;
use dynamo_core::wire::cluster::NodeRegistration;
use dynamo_core::wire::public::{
    BatchOp, BatchOpKind, BatchRequest, BatchResponse, BatchResult, NewToken, RingView, TokenInfo, TokenList,
    TokenRequest,
};
use dynamo_core::wire::{BucketProps, BucketPropsPatch, ConflictMode, SiblingView, SiblingsEnvelope};
use dynamo_core::{ErrorBody, ErrorCode};

use crate::api;

/// The public API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dynamo", description = "A Dynamo-style key-value store: the public REST API (v1)."),
    paths(
        api::get_object, api::put_object, api::delete_object, api::batch,
        api::get_bucket, api::put_bucket,
        api::get_cluster, api::get_ring, api::join_node, api::decommission_node, api::replace_node,
        api::retry_change, api::abort_change,
        api::create_token, api::list_tokens, api::delete_token,
    ),
    components(schemas(
        SiblingsEnvelope, SiblingView, ErrorBody, ErrorDetail, ErrorCode,
        BucketProps, BucketPropsPatch, ConflictMode, CrdtType, TokenRequest, NewToken, TokenInfo, TokenList,
        RingView, NodeRegistration, BatchRequest, BatchOp, BatchOpKind, BatchResult, BatchResponse,
    )),
    modifiers(&BearerAuth),
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

/// `GET /v1/openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let name = r.strip_prefix("#/components/schemas/").expect("a schema ref");
            assert!(schemas[name].is_object(), "{r} is not defined");
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
        assert_eq!(
            schemas["BatchOp"]["properties"]["bucket"]["pattern"],
            "^[a-z0-9._-]{1,63}$"
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
