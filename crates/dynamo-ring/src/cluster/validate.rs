//! The rules for what a caller may put in the state: addresses, zones, token records.

use super::*;

/// Longest node address accepted, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;
/// Longest zone name, in bytes.
pub const MAX_ZONE_BYTES: usize = 63;
/// Longest token id, in bytes.
pub const MAX_TOKEN_ID_BYTES: usize = 64;
/// Most buckets one token may name.
pub const MAX_TOKEN_BUCKETS: usize = 1000;

/// Checks a node address: an absolute `http` or `https` URL with a host and nothing after
/// it but an optional `/` (paths are appended to it), at most [`MAX_ADDRESS_BYTES`].
///
/// # Errors
/// `invalid_request` naming the rule.
pub fn validate_address(address: &str) -> Result<(), ClusterError> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid(format!(
            "address is longer than {MAX_ADDRESS_BYTES} bytes"
        )));
    }
    let url = reqwest::Url::parse(address).map_err(|e| invalid(format!("address is not a URL: {e}")))?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/"
        && !address.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(invalid(
            "address must be an http(s) URL with a host and no path, e.g. http://10.0.0.1:7100",
        ));
    }
    Ok(())
}

fn validate_zone(zone: &Option<String>) -> Result<(), ClusterError> {
    if let Some(z) = zone
        && (z.is_empty()
            || z.len() > MAX_ZONE_BYTES
            || !z
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return Err(invalid(format!(
            "zone must be 1-{MAX_ZONE_BYTES} bytes of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// Checks a registration's address and zone (the id is a [`NodeId`], valid by type).
///
/// # Errors
/// `invalid_request`.
pub fn validate_registration(r: &NodeRegistration) -> Result<(), ClusterError> {
    validate_address(&r.address)?;
    validate_zone(&r.zone)
}

/// Checks a token record: an id of 1–64 bytes of `[A-Za-z0-9._-]`, a SHA-256 as 64
/// lowercase hex digits, at least one permission, and 1–1000 named buckets (or `"*"`).
///
/// # Errors
/// `invalid_request` naming the rule.
pub fn validate_token(t: &TokenRecord) -> Result<(), ClusterError> {
    if t.id.is_empty()
        || t.id.len() > MAX_TOKEN_ID_BYTES
        || !t
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(format!(
            "token id must be 1-{MAX_TOKEN_ID_BYTES} bytes of [A-Za-z0-9._-]"
        )));
    }
    if t.sha256.len() != 64
        || !t
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("sha256 must be 64 lowercase hex digits"));
    }
    if t.permissions.is_empty() {
        return Err(invalid("a token needs at least one permission"));
    }
    if let Some(rps) = t.rate_limit_rps
        && !(1..=dynamo_core::wire::cluster::MAX_TOKEN_RATE_LIMIT_RPS).contains(&rps)
    {
        return Err(invalid(format!(
            "rate_limit_rps must be 1 to {}",
            dynamo_core::wire::cluster::MAX_TOKEN_RATE_LIMIT_RPS
        )));
    }
    if let BucketScope::Only(list) = &t.buckets
        && (list.is_empty() || list.len() > MAX_TOKEN_BUCKETS)
    {
        return Err(invalid(format!(
            "a token names 1-{MAX_TOKEN_BUCKETS} buckets, or \"*\""
        )));
    }
    if let Some(e) = t.expires_ms
        && (e <= t.created_ms || e - t.created_ms > MAX_TOKEN_TTL_S * 1000)
    {
        return Err(invalid("a token expires after it is created, within ten years"));
    }
    Ok(())
}
