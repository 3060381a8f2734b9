//! The Azure Instance Metadata Service token endpoint, for managed identities declared in the
//! seed (`managedIdentity: system | user` on an identity): plain HTTP, as IMDS is, on its own
//! listener (169.254.169.254:80 inside a test's network namespace, or any address).
//!
//! `GET /metadata/identity/oauth2/token?api-version=...&resource=...[&client_id=|object_id=|msi_res_id=]`
//! with `Metadata: true`. Numbers in the answer are strings, as IMDS sends them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::exchange::State;
use crate::seed::ManagedKind;
use crate::server::ReplyBody;

/// Route name of IMDS token requests in stats and fault rules.
pub(crate) const ROUTE: &str = "imds.token";

fn reply(status: StatusCode, body: serde_json::Value) -> Response<ReplyBody> {
    let mut resp = Response::new(ReplyBody::whole(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn bad(error: &str, description: &str) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

/// Answers one IMDS request: (status, JSON body).
pub(crate) fn token(
    state: &State,
    path: &str,
    query: &[(String, String)],
    metadata_header: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    if path.trim_end_matches('/') != "/metadata/identity/oauth2/token" {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "error_description": "The mock serves /metadata/identity/oauth2/token only."}),
        );
    }
    if !metadata_header.is_some_and(|h| h.eq_ignore_ascii_case("true")) {
        return bad("invalid_request", "Required metadata header not specified");
    }
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if q("api-version").is_none() {
        return bad(
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = q("resource") else {
        return bad(
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    if resource.trim_end_matches('/') != state.resource() {
        return bad(
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant. (The mock's vault resource is {}.)",
                state.resource()
            ),
        );
    }
    let managed = state.identities.iter().filter(|i| i.managed.is_some());
    let identity = match (q("client_id"), q("object_id"), q("msi_res_id")) {
        (Some(id), None, None) => managed
            .filter(|i| i.managed == Some(ManagedKind::User))
            .find(|i| i.client_id.eq_ignore_ascii_case(id)),
        (None, Some(id), None) => managed
            .filter(|i| i.managed == Some(ManagedKind::User))
            .find(|i| i.object_id().eq_ignore_ascii_case(id)),
        (None, None, Some(_)) => {
            return bad(
                "invalid_request",
                "msi_res_id is not served by the mock; use client_id or object_id",
            );
        }
        (None, None, None) => state
            .identities
            .iter()
            .find(|i| i.managed == Some(ManagedKind::System)),
        _ => {
            return bad(
                "invalid_request",
                "Only one of client_id, object_id and msi_res_id may be given",
            );
        }
    };
    let Some(identity) = identity else {
        return bad("invalid_request", "Identity not found");
    };
    let now = crate::now();
    let lifetime = crate::entra::TOKEN_LIFETIME;
    let oid = identity.object_id();
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", state.tenant_id),
        "iat": now, "nbf": now, "exp": now + lifetime,
        "appid": identity.client_id, "azp": identity.client_id, "appidacr": "2",
        "idtyp": "app", "oid": oid, "sub": oid, "tid": state.tenant_id,
        "xms_mirid": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/mock/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}", identity.name),
        "ver": "1.0",
    });
    let access_token = match state.token_signer.sign(&claims) {
        Ok(t) => t,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error", "error_description": format!("signing failed: {e}")}),
            );
        }
    };
    tracing::info!(client_id = %identity.client_id, identity = %identity.name, "IMDS token issued");
    (
        StatusCode::OK,
        json!({
            "access_token": access_token,
            "client_id": identity.client_id,
            "expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, std::convert::Infallible> {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let metadata = req.headers().get("metadata").and_then(|h| h.to_str().ok());
    let mut reset = false;
    let (status, body) = if req.method() == hyper::Method::GET {
        let hit = state.faults.hit("", ROUTE, "");
        reset = hit.reset;
        match hit.status {
            Some((code, _)) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                json!({"error": "injected_fault", "error_description": format!("Injected fault with status {code}.")}),
            ),
            None => token(&state, req.uri().path(), &query, metadata),
        }
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "invalid_request", "error_description": "Use GET."}),
        )
    };
    state.stats.record("", ROUTE, "", status.as_u16());
    tracing::info!(
        route = ROUTE,
        status = status.as_u16(),
        cut = reset,
        "request"
    );
    let resp = reply(status, body);
    Ok(if reset {
        crate::server::cut(resp)
    } else {
        resp
    })
}

/// Serves IMDS on `listener` until `shutdown` turns true.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "IMDS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true); // as in the Key Vault listener
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| serve(state.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "IMDS connection ended with an error");
            }
        });
    }
}
