//! Reads of keys and certificates (`GET /keys/...`, `GET /certificates/...`): the public JWK of
//! a key, the DER of a certificate, and their version lists. Keys and certificates are made
//! from the seed at start and never change.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::bodies::{Attributes, page, paging};
use crate::exchange::{Reply, Req};
use crate::pki::PublicJwk;
use crate::store::{CertVersion, KeyVersion, RECOVERABLE_DAYS, RECOVERY_LEVEL, VaultState};

fn attributes(
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    created: i64,
    updated: i64,
) -> Attributes {
    Attributes {
        enabled,
        nbf,
        exp,
        created,
        updated,
        recovery_level: RECOVERY_LEVEL,
        recoverable_days: RECOVERABLE_DAYS,
    }
}

fn not_found(code: &str, what: &str, name: &str, version: &str) -> Reply {
    let id = if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}/{version}")
    };
    Reply::kv_error(
        StatusCode::NOT_FOUND,
        code,
        &format!("A {what} with (name/id) {id} was not found in this key vault."),
    )
}

fn disabled(what: &str) -> Reply {
    Reply::json(
        StatusCode::FORBIDDEN,
        &json!({"error": {"code": "Forbidden", "message": format!("Operation get is not allowed on a disabled {what}."), "innererror": {"code": format!("{}Disabled", capitalised(what))}}}),
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn pick<'a, T>(versions: &'a [T], version: &str, id: impl Fn(&T) -> &str) -> Option<&'a T> {
    if version.is_empty() {
        versions.last()
    } else {
        versions
            .iter()
            .find(|v| id(v).eq_ignore_ascii_case(version))
    }
}

fn key_id(host: &str, name: &str, v: &KeyVersion) -> String {
    format!("https://{host}/keys/{name}/{}", v.version)
}

fn key_body(host: &str, name: &str, v: &KeyVersion) -> Value {
    let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let mut key = match &v.public {
        PublicJwk::Rsa { n, e } => json!({"kty": v.kty, "n": b(n), "e": b(e),
            "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]}),
        PublicJwk::Ec { crv, x, y } => json!({"kty": v.kty, "crv": crv, "x": b(x), "y": b(y),
            "key_ops": ["sign", "verify"]}),
    };
    key["kid"] = json!(key_id(host, name, v));
    let mut body = json!({
        "key": key,
        "attributes": attributes(v.enabled, v.nbf, v.exp, v.created, v.updated),
    });
    if v.managed {
        body["managed"] = json!(true);
    }
    body
}

/// `GET /keys/{name}[/{version}]`.
pub(crate) fn key_get(v: &VaultState, host: &str, name: &str, version: &str) -> Reply {
    let Some((spelled, versions)) = v.keys.get(&name.to_ascii_lowercase()) else {
        return not_found("KeyNotFound", "key", name, version);
    };
    let Some(kv) = pick(versions, version, |k| &k.version) else {
        return not_found("KeyNotFound", "key", name, version);
    };
    if !kv.enabled {
        return disabled("key");
    }
    Reply::json(StatusCode::OK, &key_body(host, spelled, kv))
}

/// `GET /keys/{name}/versions`.
pub(crate) fn key_versions(v: &VaultState, host: &str, name: &str, req: &Req) -> Reply {
    let (size, start) = match paging(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some((spelled, versions)) = v.keys.get(&name.to_ascii_lowercase()) else {
        return not_found("KeyNotFound", "key", name, "");
    };
    let items: Vec<Value> = versions
        .iter()
        .map(|k| {
            let mut item = json!({
                "kid": key_id(host, spelled, k),
                "attributes": attributes(k.enabled, k.nbf, k.exp, k.created, k.updated),
            });
            if k.managed {
                item["managed"] = json!(true);
            }
            item
        })
        .collect();
    page(req, items, size, start)
}

fn cert_body(host: &str, name: &str, c: &CertVersion, full: bool) -> Value {
    let mut body = json!({
        "id": format!("https://{host}/certificates/{name}/{}", c.version),
        "x5t": c.x5t,
        "attributes": attributes(c.enabled, c.nbf, c.exp, c.created, c.updated),
    });
    if full {
        body["kid"] = json!(format!("https://{host}/keys/{name}/{}", c.version));
        body["sid"] = json!(format!("https://{host}/secrets/{name}/{}", c.version));
        body["cer"] = json!(STANDARD.encode(&c.der));
        body["contentType"] = json!(c.content_type);
        body["policy"] = json!({
            "id": format!("https://{host}/certificates/{name}/policy"),
            "secret_props": {"contentType": c.content_type},
            "key_props": {"exportable": true, "reuse_key": false},
        });
    }
    body
}

/// `GET /certificates/{name}[/{version}]`.
pub(crate) fn cert_get(v: &VaultState, host: &str, name: &str, version: &str) -> Reply {
    let Some((spelled, versions)) = v.certs.get(&name.to_ascii_lowercase()) else {
        return not_found("CertificateNotFound", "certificate", name, version);
    };
    let Some(cv) = pick(versions, version, |c| &c.version) else {
        return not_found("CertificateNotFound", "certificate", name, version);
    };
    if !cv.enabled {
        return disabled("certificate");
    }
    Reply::json(StatusCode::OK, &cert_body(host, spelled, cv, true))
}

/// `GET /certificates/{name}/versions`.
pub(crate) fn cert_versions(v: &VaultState, host: &str, name: &str, req: &Req) -> Reply {
    let (size, start) = match paging(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some((spelled, versions)) = v.certs.get(&name.to_ascii_lowercase()) else {
        return not_found("CertificateNotFound", "certificate", name, "");
    };
    let items: Vec<Value> = versions
        .iter()
        .map(|c| cert_body(host, spelled, c, false))
        .collect();
    page(req, items, size, start)
}
