//! The OpenAPI document of the public API, generated from the handlers' annotations and
//! served at `/v1/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use dynamo_core::wire::public::{NewToken, RingView, TokenInfo, TokenList, TokenRequest};

use crate::api;

/// The public API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dynamo", description = "A Dynamo-style key-value store: the public REST API (v1)."),
    paths(
        api::get_object, api::put_object, api::delete_object,
        api::get_bucket, api::put_bucket,
        api::get_cluster, api::get_ring, api::join_node, api::decommission_node,
        api::create_token, api::list_tokens, api::delete_token,
    ),
    components(schemas(
        api::SiblingsEnvelopeDoc, api::SiblingDoc, api::ErrorBodyDoc, api::ErrorDetailDoc,
        api::BucketPropsDoc, TokenRequest, NewToken, TokenInfo, TokenList,
        RingView, api::NodeRegistrationDoc,
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
