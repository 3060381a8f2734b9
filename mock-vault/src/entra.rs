//! The Entra side: `POST /{tenant}/oauth2/v2.0/token` (client credentials with a client secret or a
//! federated client assertion), OpenID configuration, instance discovery and JWKS documents.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde_json::json;
use zeroize::Zeroizing;

use crate::exchange::{Outcome, Reply, Req, State};
use crate::seed::{FEDERATION_AUDIENCE, Identity};

/// Lifetime of issued access tokens, as Entra's `expires_in`.
pub(crate) const TOKEN_LIFETIME: i64 = 3599;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew Entra tolerates on assertion times.
const SKEW_SECONDS: i64 = 300;
const MAX_FORM: usize = 64 * 1024;

/// An Entra error, before it is rendered.
pub(crate) struct EntraError {
    error: &'static str,
    code: u32,
    description: String,
}

fn entra_err(error: &'static str, code: u32, description: impl Into<String>) -> EntraError {
    EntraError {
        error,
        code,
        description: description.into(),
    }
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl EntraError {
    fn reply(&self, state: &State, status: StatusCode) -> Reply {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let now = crate::now();
        let timestamp = time::OffsetDateTime::from_unix_timestamp(now)
            .ok()
            .and_then(|d| {
                d.format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]Z"
                ))
                .ok()
            })
            .unwrap_or_default();
        let description = format!(
            "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
            self.code, self.description
        );
        Reply::json(
            status,
            &json!({
                "error": self.error,
                "error_description": description,
                "error_codes": [self.code],
                "timestamp": timestamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id,
                "error_uri": format!("{}/error?code={}", state.base_url, self.code),
            }),
        )
    }
}

fn tenant_not_found(tenant: &str) -> EntraError {
    entra_err(
        "invalid_request",
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(state: &State, req: &Req, tenant: &str) -> Outcome {
    let form = parse_form(&req.body);
    let client_id = form
        .as_ref()
        .ok()
        .and_then(|f| f.get("client_id"))
        .map(|c| c.to_ascii_lowercase())
        .unwrap_or_default();
    let hit = state.faults.hit("", "token", &client_id);
    if !hit.latency.is_zero() {
        tokio::time::sleep(hit.latency).await;
    }
    req.cut_if(hit.reset);
    let reply = if let Some((status, retry_after)) = hit.status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let err = if status == 429 || status >= 500 {
            entra_err(
                "temporarily_unavailable",
                50196,
                "The server is temporarily unavailable (injected fault).",
            )
        } else {
            entra_err(
                "invalid_request",
                90000,
                format!("Injected fault with status {status}."),
            )
        };
        let reply = err.reply(state, code);
        match retry_after {
            Some(s) => reply.with_header(hyper::header::RETRY_AFTER, &s.to_string()),
            None => reply,
        }
    } else {
        match form.and_then(|f| issue(state, tenant, &f)) {
            Ok(body) => Reply::json(StatusCode::OK, &body),
            Err(e) => e.reply(state, StatusCode::BAD_REQUEST),
        }
    };
    Outcome {
        reply,
        vault: String::new(),
        route: "token",
        object: client_id,
    }
}

pub(crate) type Form = BTreeMap<String, Zeroizing<String>>;

/// Parses an `application/x-www-form-urlencoded` body; a repeated field is an error.
pub(crate) fn parse_form(body: &[u8]) -> Result<Form, EntraError> {
    if body.len() > MAX_FORM {
        return Err(entra_err(
            "invalid_request",
            90014,
            "The request body is larger than 64 KiB.",
        ));
    }
    let mut form = Form::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        let k = k.into_owned();
        if form.contains_key(&k) {
            return Err(entra_err(
                "invalid_request",
                90014,
                format!("The request body contains the parameter '{k}' more than once."),
            ));
        }
        form.insert(k, Zeroizing::new(v.into_owned()));
    }
    Ok(form)
}

fn required<'a>(form: &'a Form, name: &str) -> Result<&'a str, EntraError> {
    match form.get(name) {
        Some(v) if !v.is_empty() => Ok(v.as_str()),
        _ => Err(entra_err(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )),
    }
}

fn issue(state: &State, tenant: &str, form: &Form) -> Result<serde_json::Value, EntraError> {
    if !tenant.eq_ignore_ascii_case(&state.tenant_id) {
        return Err(tenant_not_found(tenant));
    }
    let grant = required(form, "grant_type")?;
    if grant != "client_credentials" {
        return Err(entra_err(
            "unsupported_grant_type",
            70003,
            format!(
                "The app requested an unsupported grant type '{grant}'. The mock serves client_credentials only."
            ),
        ));
    }
    let client_id = required(form, "client_id")?;
    let scope = required(form, "scope")?;
    let identity = state.identities.iter().find(|i| i.client_id.eq_ignore_ascii_case(client_id)).ok_or_else(|| {
        entra_err(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", state.tenant_id),
        )
    })?;

    let credential = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(_), Some(_)) => {
            return Err(entra_err(
                "invalid_request",
                90014,
                "Send either client_secret or client_assertion, not both.",
            ));
        }
        (Some(secret), None) => {
            check_secret(identity, secret)?;
            "1"
        }
        (None, Some(assertion)) => {
            match form.get("client_assertion_type").map(|t| t.as_str()) {
                Some(JWT_BEARER) => {}
                _ => {
                    return Err(entra_err(
                        "invalid_request",
                        900144,
                        format!(
                            "The request body must contain the following parameter: 'client_assertion_type' with the value '{JWT_BEARER}'."
                        ),
                    ));
                }
            }
            check_assertion(state, identity, assertion)?;
            "2"
        }
        (None, None) => {
            return Err(entra_err(
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };

    let resource = resource_of(scope)?;
    if resource.trim_end_matches('/') != state.resource() {
        return Err(entra_err(
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant. (The mock's vault resource is {}.)",
                state.tenant_id,
                state.resource()
            ),
        ));
    }

    let now = crate::now();
    let oid = identity.object_id();
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", state.tenant_id),
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_LIFETIME,
        "appid": identity.client_id,
        "azp": identity.client_id,
        "appidacr": credential,
        "idtyp": "app",
        "oid": oid,
        "sub": oid,
        "tid": state.tenant_id,
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    let access_token = state.token_signer.sign(&claims).map_err(|e| {
        entra_err(
            "server_error",
            50000,
            format!("Signing the token failed: {e}"),
        )
    })?;
    tracing::info!(client_id = %identity.client_id, identity = %identity.name, "access token issued");
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME,
        "ext_expires_in": TOKEN_LIFETIME,
        "access_token": access_token,
    }))
}

/// `<resource>/.default` -> resource; reserved OIDC scopes are ignored.
fn resource_of(scope: &str) -> Result<String, EntraError> {
    let scopes: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| !matches!(*s, "openid" | "profile" | "offline_access"))
        .collect();
    match scopes.as_slice() {
        [one] if one.ends_with("/.default") => Ok(one.trim_end_matches("/.default").to_string()),
        _ => Err(entra_err(
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )),
    }
}

fn check_secret(identity: &Identity, presented: &str) -> Result<(), EntraError> {
    let ok = identity.client_secret.as_ref().is_some_and(|expected| {
        // Compare digests so the time taken does not depend on where the strings differ.
        let a = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
        let b = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        a.as_ref()
            .iter()
            .zip(b.as_ref())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    });
    if ok {
        Ok(())
    } else {
        Err(entra_err(
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                identity.client_id
            ),
        ))
    }
}

fn check_assertion(state: &State, identity: &Identity, assertion: &str) -> Result<(), EntraError> {
    let jwt = crate::jwt::decode(assertion).map_err(|e| {
        entra_err(
            "invalid_request",
            50027,
            format!("JWT token is invalid or malformed ({e})."),
        )
    })?;
    let now = crate::now();
    let exp = jwt.time_claim("exp");
    let nbf = jwt.time_claim("nbf").or_else(|| jwt.time_claim("iat"));
    let expired = exp.is_none_or(|e| e + SKEW_SECONDS < now);
    let early = nbf.is_some_and(|n| n - SKEW_SECONDS > now);
    if expired || early {
        return Err(entra_err(
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.",
                rfc3339(now),
                nbf.map(rfc3339).unwrap_or_else(|| "(none)".into()),
                exp.map(rfc3339).unwrap_or_else(|| "(none)".into()),
            ),
        ));
    }
    let iss = jwt.str_claim("iss").unwrap_or_default();
    let sub = jwt.str_claim("sub").unwrap_or_default();
    let auds = jwt.audiences();
    let no_match = || {
        entra_err(
            "invalid_client",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                auds.join(",")
            ),
        )
    };
    let keys: Vec<_> = state
        .issuers
        .iter()
        .filter(|(i, _)| i == iss)
        .map(|(_, k)| k)
        .collect();
    if keys.is_empty() {
        return Err(no_match());
    }
    if !keys.iter().any(|k| jwt.verify(k).is_ok()) {
        return Err(entra_err(
            "invalid_client",
            50013,
            format!(
                "Assertion failed signature validation. [Reason - The key was not found or the signature does not verify with the keys of issuer '{iss}'.]"
            ),
        ));
    }
    if !auds.contains(&FEDERATION_AUDIENCE)
        && !identity
            .federated
            .iter()
            .any(|f| f.audiences.iter().any(|a| auds.contains(&a.as_str())))
    {
        return Err(entra_err(
            "invalid_client",
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                auds.join(",")
            ),
        ));
    }
    let matched = identity.federated.iter().any(|f| {
        f.issuer == iss
            && f.subject == sub
            && f.audiences.iter().any(|a| auds.contains(&a.as_str()))
    });
    if matched { Ok(()) } else { Err(no_match()) }
}

fn openid_doc(state: &State) -> serde_json::Value {
    let b = &state.base_url;
    let t = &state.tenant_id;
    json!({
        "token_endpoint": format!("{b}/{t}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{b}/{t}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{b}/{t}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{b}/oidc/userinfo"),
        "authorization_endpoint": format!("{b}/{t}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{b}/{t}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{b}/{t}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "appid", "azp"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "kvmount.local",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    })
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(state: &State, _req: &Req, tenant: &str) -> Outcome {
    let reply = if tenant.eq_ignore_ascii_case(&state.tenant_id) {
        Reply::json(StatusCode::OK, &openid_doc(state))
    } else {
        tenant_not_found(tenant).reply(state, StatusCode::BAD_REQUEST)
    };
    Outcome {
        reply,
        vault: String::new(),
        route: "openid",
        object: String::new(),
    }
}

/// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=...` (MSAL's instance discovery).
pub(crate) async fn instance_discovery(state: &State, req: &Req) -> Outcome {
    let host = state.base_url.trim_start_matches("https://").to_string();
    let reply = Reply::json(
        StatusCode::OK,
        &json!({
            "tenant_discovery_endpoint": format!("{}/{}/v2.0/.well-known/openid-configuration", state.base_url, state.tenant_id),
            "api-version": req.query("api-version").unwrap_or("1.1"),
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }),
    );
    Outcome {
        reply,
        vault: String::new(),
        route: "instance_discovery",
        object: String::new(),
    }
}

/// `GET /{tenant}/discovery/v2.0/keys`: the access-token signing key.
pub(crate) async fn jwks(state: &State, tenant: &str) -> Outcome {
    let reply = if tenant.eq_ignore_ascii_case(&state.tenant_id) {
        Reply::json(StatusCode::OK, &json!({"keys": [state.token_signer.jwk()]}))
    } else {
        tenant_not_found(tenant).reply(state, StatusCode::BAD_REQUEST)
    };
    Outcome {
        reply,
        vault: String::new(),
        route: "jwks",
        object: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let f = parse_form(b"a=1&b=x%20y")
            .map_err(|e| e.description)
            .expect("form");
        assert_eq!(f.get("b").map(|v| v.as_str()), Some("x y"));
        assert!(parse_form(b"a=1&a=2").is_err());
        assert!(parse_form(&[0xff, b'=', 0xfe]).is_ok());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            resource_of("https://vault.localhost/.default")
                .ok()
                .as_deref(),
            Some("https://vault.localhost")
        );
        assert_eq!(
            resource_of("openid https://vault.localhost/.default profile")
                .ok()
                .as_deref(),
            Some("https://vault.localhost")
        );
        assert!(resource_of("https://vault.localhost/read").is_err());
        assert!(resource_of("a/.default b/.default").is_err());
    }
}
