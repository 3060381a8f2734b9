//! The Key Vault data plane for secrets: routing, api-version, bearer auth, access checks,
//! and the operations themselves.

use std::collections::BTreeMap;

use hyper::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::admin::{glob, lock};
use crate::bodies::{Attributes, bad, page, paging};
use crate::exchange::{Outcome, Reply, Req, State};
use crate::seed::{Identity, MAX_VALUE_BYTES, Permission, is_secret_name};
use crate::store::{
    DeletedItem, RECOVERABLE_DAYS, RECOVERY_LEVEL, SecretItem, SecretVersion, VaultState,
};

const MAX_TAGS: usize = 15;
/// Clock skew allowed on token `nbf`.
const SKEW_SECONDS: i64 = 300;

#[derive(Debug, Clone)]
enum Op {
    Get { name: String, version: String },
    ListVersions { name: String },
    List,
    Set { name: String },
    Update { name: String, version: String },
    Delete { name: String },
    DeletedGet { name: String },
    DeletedList,
    Purge { name: String },
    Recover { name: String },
    KeyGet { name: String, version: String },
    KeyVersions { name: String },
    CertGet { name: String, version: String },
    CertVersions { name: String },
    Unknown,
}

impl Op {
    fn parse(method: &Method, path: &str) -> Op {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let s = |x: &&str| x.to_string();
        match (method, segs.as_slice()) {
            (&Method::GET, ["secrets"] | ["secrets", ""]) => Op::List,
            (&Method::GET, ["secrets", name]) => Op::Get {
                name: s(name),
                version: String::new(),
            },
            (&Method::GET, ["secrets", name, "versions"]) => Op::ListVersions { name: s(name) },
            (&Method::GET, ["secrets", name, version]) => Op::Get {
                name: s(name),
                version: s(version),
            },
            (&Method::PUT, ["secrets", name]) => Op::Set { name: s(name) },
            (&Method::PATCH, ["secrets", name]) => Op::Update {
                name: s(name),
                version: String::new(),
            },
            (&Method::PATCH, ["secrets", name, version]) => Op::Update {
                name: s(name),
                version: s(version),
            },
            (&Method::DELETE, ["secrets", name]) => Op::Delete { name: s(name) },
            (&Method::GET, ["deletedsecrets"] | ["deletedsecrets", ""]) => Op::DeletedList,
            (&Method::GET, ["deletedsecrets", name]) => Op::DeletedGet { name: s(name) },
            (&Method::DELETE, ["deletedsecrets", name]) => Op::Purge { name: s(name) },
            (&Method::POST, ["deletedsecrets", name, "recover"]) => Op::Recover { name: s(name) },
            (&Method::GET, ["keys", name] | ["keys", name, ""]) => Op::KeyGet {
                name: s(name),
                version: String::new(),
            },
            (&Method::GET, ["keys", name, "versions"]) => Op::KeyVersions { name: s(name) },
            (&Method::GET, ["keys", name, version]) => Op::KeyGet {
                name: s(name),
                version: s(version),
            },
            (&Method::GET, ["certificates", name] | ["certificates", name, ""]) => Op::CertGet {
                name: s(name),
                version: String::new(),
            },
            (&Method::GET, ["certificates", name, "versions"]) => {
                Op::CertVersions { name: s(name) }
            }
            (&Method::GET, ["certificates", name, version]) => Op::CertGet {
                name: s(name),
                version: s(version),
            },
            _ => Op::Unknown,
        }
    }

    fn route(&self) -> &'static str {
        match self {
            Op::Get { .. } => "secret.get",
            Op::ListVersions { .. } => "secret.list_versions",
            Op::List => "secret.list",
            Op::Set { .. } => "secret.set",
            Op::Update { .. } => "secret.update",
            Op::Delete { .. } => "secret.delete",
            Op::DeletedGet { .. } => "deleted_secret.get",
            Op::DeletedList => "deleted_secret.list",
            Op::Purge { .. } => "deleted_secret.purge",
            Op::Recover { .. } => "deleted_secret.recover",
            Op::KeyGet { .. } => "key.get",
            Op::KeyVersions { .. } => "key.list_versions",
            Op::CertGet { .. } => "certificate.get",
            Op::CertVersions { .. } => "certificate.list_versions",
            Op::Unknown => "unknown",
        }
    }

    /// The object type in access patterns and stats: `secret`, `key`, `certificate`.
    fn kind(&self) -> &'static str {
        match self {
            Op::KeyGet { .. } | Op::KeyVersions { .. } => "key",
            Op::CertGet { .. } | Op::CertVersions { .. } => "certificate",
            _ => "secret",
        }
    }

    /// `<kind>/<name>` for stats, logs and access checks.
    fn object(&self) -> String {
        self.name()
            .map(|n| format!("{}/{n}", self.kind()))
            .unwrap_or_default()
    }

    fn name(&self) -> Option<&str> {
        match self {
            Op::Get { name, .. }
            | Op::ListVersions { name }
            | Op::Set { name }
            | Op::Update { name, .. }
            | Op::Delete { name }
            | Op::DeletedGet { name }
            | Op::Purge { name }
            | Op::Recover { name }
            | Op::KeyGet { name, .. }
            | Op::KeyVersions { name }
            | Op::CertGet { name, .. }
            | Op::CertVersions { name } => Some(name),
            Op::List | Op::DeletedList | Op::Unknown => None,
        }
    }

    fn permission(&self) -> Permission {
        match self {
            Op::Get { .. } | Op::KeyGet { .. } | Op::CertGet { .. } => Permission::Get,
            Op::KeyVersions { .. } | Op::CertVersions { .. } => Permission::List,
            Op::ListVersions { .. }
            | Op::List
            | Op::DeletedGet { .. }
            | Op::DeletedList
            | Op::Unknown => Permission::List,
            Op::Set { .. } | Op::Update { .. } => Permission::Set,
            Op::Delete { .. } => Permission::Delete,
            Op::Purge { .. } => Permission::Purge,
            Op::Recover { .. } => Permission::Recover,
        }
    }
}

/// Serves one data-plane request.
pub(crate) async fn handle(state: &State, req: &Req) -> Outcome {
    let op = Op::parse(&req.method, &req.path);
    let route = op.route();
    let object = op.object();
    let vault_idx = match state.pick_vault(&req.host) {
        Ok(i) => i,
        Err(unknown) => {
            let msg = format!(
                "Vault '{unknown}' does not exist in this mock. Known vaults: {}.",
                state.vault_names.join(", ")
            );
            return Outcome {
                reply: Reply::kv_error(StatusCode::NOT_FOUND, "VaultNotFound", &msg),
                vault: unknown,
                route,
                object,
            };
        }
    };
    let vault = state
        .vault_names
        .get(vault_idx)
        .cloned()
        .unwrap_or_default();
    let reply = serve(state, req, &op, vault_idx, &vault).await;
    Outcome {
        reply,
        vault,
        route,
        object,
    }
}

async fn serve(state: &State, req: &Req, op: &Op, vault_idx: usize, vault: &str) -> Reply {
    if let Err(reply) = check_api_version(req.query("api-version")) {
        return reply;
    }
    let object = op.object();
    let caller = match authenticate(state, req) {
        Ok(c) => c,
        Err(reply) => {
            let latency = state.faults.latency(vault, op.route(), &object);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            return reply;
        }
    };
    let hit = state.faults.hit(vault, op.route(), &object);
    if !hit.latency.is_zero() {
        tokio::time::sleep(hit.latency).await;
    }
    req.cut_if(hit.reset);
    if let Some((status, retry_after)) = hit.status {
        if status == 401 {
            // Key Vault turns a token down with its challenge, so the client can try again.
            return challenge(state, "Unauthorized (injected fault).");
        }
        return fault_reply(status, retry_after);
    }
    if let Op::Unknown = op {
        return Reply::kv_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "{} {} is not served by the kvmount mock vault (it serves secrets, and reads of keys and certificates).",
                req.method, req.path
            ),
        );
    }
    let Some(vault_lock) = state.vaults.get(vault_idx) else {
        return Reply::kv_error(StatusCode::NOT_FOUND, "VaultNotFound", "Vault not found.");
    };
    let identity = state
        .identities
        .iter()
        .find(|i| i.client_id.eq_ignore_ascii_case(&caller.appid));
    let mut v = lock(vault_lock);
    let perm = op.permission();
    if !allowed(&v, identity, perm, op.kind(), op.name()) {
        let msg = format!(
            "The user, group or application 'appid={};oid={};iss=https://sts.windows.net/{}/' does not have {}s {} permission on key vault '{};location=local'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
            caller.appid,
            caller.oid,
            state.tenant_id,
            op.kind(),
            perm.as_str(),
            v.name
        );
        return Reply::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": {"code": "Forbidden", "message": msg, "innererror": {"code": "AccessDenied"}}}),
        );
    }
    let ctx = Ctx {
        host: &req.host,
        identity,
    };
    match op {
        Op::Get { name, version } => get(&v, &ctx, name, version),
        Op::ListVersions { name } => list_versions(&v, &ctx, req, name),
        Op::List => list(&v, &ctx, req),
        Op::Set { name } => set(&mut v, &ctx, req, name),
        Op::Update { name, version } => update(&mut v, &ctx, req, name, version),
        Op::Delete { name } => delete(&mut v, &ctx, name),
        Op::DeletedGet { name } => deleted_get(&v, &ctx, name),
        Op::DeletedList => deleted_list(&v, &ctx, req),
        Op::Purge { name } => purge(&mut v, name),
        Op::Recover { name } => recover(&mut v, &ctx, name),
        Op::KeyGet { name, version } => crate::objects::key_get(&v, ctx.host, name, version),
        Op::KeyVersions { name } => crate::objects::key_versions(&v, ctx.host, name, req),
        Op::CertGet { name, version } => crate::objects::cert_get(&v, ctx.host, name, version),
        Op::CertVersions { name } => crate::objects::cert_versions(&v, ctx.host, name, req),
        Op::Unknown => Reply::kv_error(StatusCode::NOT_FOUND, "NotFound", "Not found."),
    }
}

struct Ctx<'a> {
    host: &'a str,
    identity: Option<&'a Identity>,
}

/// A Key Vault-shaped error for an injected fault.
pub(crate) fn fault_reply(status: u16, retry_after: Option<u64>) -> Reply {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (err, msg) = match status {
        429 => (
            "Throttled",
            format!(
                "Rate limit is exceeded. Try again in {} seconds.",
                retry_after.unwrap_or(1)
            ),
        ),
        403 => ("Forbidden", "Forbidden (injected fault).".to_string()),
        404 => ("SecretNotFound", "Not found (injected fault).".to_string()),
        400 => (
            "BadParameter",
            "Bad parameter (injected fault).".to_string(),
        ),
        409 => ("Conflict", "Conflict (injected fault).".to_string()),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable (injected fault).".to_string(),
        ),
        _ => (
            "InternalServerError",
            format!("Injected fault with status {status}."),
        ),
    };
    let reply = Reply::kv_error(code, err, &msg);
    match retry_after {
        Some(s) => reply.with_header(RETRY_AFTER, &s.to_string()),
        None => reply,
    }
}

/// Accepts 7.4 and later (7.x, then date versions from 2025 on); refuses older ones.
pub(crate) fn check_api_version(v: Option<&str>) -> Result<(), Reply> {
    const SUPPORTED: &str = "7.4, 7.5, 7.6, 2025-07-01 (and later)";
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Err(Reply::kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!(
                "The 'api-version' query parameter is required. Supported versions: {SUPPORTED}."
            ),
        ));
    };
    let base = v.split_once("-preview").map(|(b, _)| b).unwrap_or(v);
    let ok = if let Some((major, minor)) = base.split_once('.') {
        match (major.parse::<u32>(), minor.parse::<u32>()) {
            (Ok(7), Ok(minor)) => minor >= 4,
            (Ok(major), Ok(_)) => major > 7,
            _ => false,
        }
    } else {
        let parts: Vec<&str> = base.split('-').collect();
        match parts.as_slice() {
            [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
                match (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) {
                    (Ok(y), Ok(m), Ok(d)) => {
                        y >= 2025 && (1..=12).contains(&m) && (1..=31).contains(&d)
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Reply::kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!(
                "The specified api-version '{v}' is not supported. Supported versions: {SUPPORTED}."
            ),
        ))
    }
}

struct Caller {
    appid: String,
    oid: String,
}

fn challenge(state: &State, message: &str) -> Reply {
    let header = format!(
        "Bearer authorization=\"{}/{}\", resource=\"{}\"",
        state.base_url,
        state.tenant_id,
        state.resource()
    );
    Reply::kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message)
        .with_header(WWW_AUTHENTICATE, &header)
}

fn authenticate(state: &State, req: &Req) -> Result<Caller, Reply> {
    let header = req
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = match header.and_then(|h| h.split_once(' ')) {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            token.trim()
        }
        _ => {
            return Err(challenge(
                state,
                "AKV10000: Request is missing a Bearer or PoP token.",
            ));
        }
    };
    let jwt = crate::jwt::decode(token)
        .map_err(|e| challenge(state, &format!("Token is not valid: {e}.")))?;
    jwt.verify(&state.token_key).map_err(|_| {
        challenge(
            state,
            "Token signature is not valid (not issued by this mock's token endpoint).",
        )
    })?;
    let resource = state.resource();
    let aud_ok = jwt
        .audiences()
        .iter()
        .any(|a| a.trim_end_matches('/') == resource);
    if !aud_ok {
        let found = jwt.audiences().join(",");
        return Err(challenge(
            state,
            &format!("Invalid audience. Expected {resource}, found: {found}."),
        ));
    }
    let issuer = format!("https://sts.windows.net/{}/", state.tenant_id);
    if jwt.str_claim("iss") != Some(issuer.as_str())
        || jwt.str_claim("tid") != Some(state.tenant_id.as_str())
    {
        return Err(challenge(
            state,
            &format!("Invalid issuer or tenant. Expected {issuer}."),
        ));
    }
    let now = crate::now();
    match jwt.time_claim("exp") {
        Some(exp) if exp > now => {}
        _ => return Err(challenge(state, "Token is expired.")),
    }
    if jwt
        .time_claim("nbf")
        .is_some_and(|nbf| nbf > now + SKEW_SECONDS)
    {
        return Err(challenge(state, "Token is not yet valid."));
    }
    let appid = jwt
        .str_claim("appid")
        .or_else(|| jwt.str_claim("azp"))
        .unwrap_or_default()
        .to_string();
    let oid = jwt.str_claim("oid").unwrap_or_default().to_string();
    Ok(Caller { appid, oid })
}

/// Whether `identity` holds `perm` on `name` (or, for vault-wide lists, on anything).
fn allowed(
    v: &VaultState,
    identity: Option<&Identity>,
    perm: Permission,
    kind: &str,
    name: Option<&str>,
) -> bool {
    let Some(identity) = identity else {
        return false;
    };
    match &v.access {
        None => matches!(perm, Permission::Get | Permission::List),
        Some(entries) => entries.iter().any(|e| {
            e.identity == identity.name
                && e.permissions.contains(&perm)
                && match name {
                    None => true,
                    Some(n) => e.objects.iter().any(|p| object_matches(p, kind, n)),
                }
        }),
    }
}

fn object_matches(pattern: &str, kind: &str, name: &str) -> bool {
    match pattern.split_once('/') {
        Some((k, p)) => {
            (k == kind || k == "*") && glob(&p.to_ascii_lowercase(), &name.to_ascii_lowercase())
        }
        None => false,
    }
}

fn listable(v: &VaultState, ctx: &Ctx<'_>, name: &str) -> bool {
    allowed(v, ctx.identity, Permission::List, "secret", Some(name))
}

// ---- response bodies ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a BTreeMap<String, String>>,
    attributes: Attributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    managed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_purge_date: Option<i64>,
}

fn bundle<'a>(
    host: &str,
    name: &str,
    v: &'a SecretVersion,
    with_value: bool,
    with_version: bool,
) -> Bundle<'a> {
    let id = if with_version {
        format!("https://{host}/secrets/{name}/{}", v.version)
    } else {
        format!("https://{host}/secrets/{name}")
    };
    Bundle {
        value: with_value.then_some(v.value.as_str()),
        id,
        content_type: v.content_type.as_deref(),
        tags: (!v.tags.is_empty()).then_some(&v.tags),
        attributes: Attributes {
            enabled: v.enabled,
            nbf: v.nbf,
            exp: v.exp,
            created: v.created,
            updated: v.updated,
            recovery_level: RECOVERY_LEVEL,
            recoverable_days: RECOVERABLE_DAYS,
        },
        kid: v
            .certificate_backed
            .then(|| format!("https://{host}/keys/{name}/{}", v.version)),
        managed: v.certificate_backed.then_some(true),
        recovery_id: None,
        deleted_date: None,
        scheduled_purge_date: None,
    }
}

fn deleted_bundle<'a>(
    host: &str,
    name: &str,
    d: &'a DeletedItem,
    with_version: bool,
) -> Option<Bundle<'a>> {
    let latest = d.item.latest()?;
    let mut b = bundle(host, name, latest, false, with_version);
    b.recovery_id = Some(format!("https://{host}/deletedsecrets/{name}"));
    b.deleted_date = Some(d.deleted_date);
    b.scheduled_purge_date = Some(d.scheduled_purge_date);
    Some(b)
}

fn not_found(name: &str, version: &str) -> Reply {
    let id = if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}/{version}")
    };
    Reply::kv_error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!(
            "A secret with (name/id) {id} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
    )
}

fn deleted_not_found(name: &str) -> Reply {
    Reply::kv_error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!("Deleted Secret not found: {name}"),
    )
}

// ---- operations ----

fn get(v: &VaultState, ctx: &Ctx<'_>, name: &str, version: &str) -> Reply {
    let Some((spelled, item)) = v.secrets.get(&name.to_ascii_lowercase()) else {
        return not_found(name, version);
    };
    let found = if version.is_empty() {
        item.latest()
    } else {
        item.version(version)
    };
    let Some(sv) = found else {
        return not_found(name, version);
    };
    if !sv.enabled {
        return Reply::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": {"code": "Forbidden", "message": "Operation get is not allowed on a disabled secret.", "innererror": {"code": "SecretDisabled"}}}),
        );
    }
    Reply::json(StatusCode::OK, &bundle(ctx.host, spelled, sv, true, true))
}

fn list_versions(v: &VaultState, ctx: &Ctx<'_>, req: &Req, name: &str) -> Reply {
    let (size, start) = match paging(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some((spelled, item)) = v.secrets.get(&name.to_ascii_lowercase()) else {
        return not_found(name, "");
    };
    let items: Vec<Bundle<'_>> = item
        .versions
        .iter()
        .map(|sv| bundle(ctx.host, spelled, sv, false, true))
        .collect();
    page(req, items, size, start)
}

fn list(v: &VaultState, ctx: &Ctx<'_>, req: &Req) -> Reply {
    let (size, start) = match paging(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let items: Vec<Bundle<'_>> = v
        .secrets
        .values()
        .filter(|(name, _)| listable(v, ctx, name))
        .filter_map(|(name, item)| {
            item.latest()
                .map(|sv| bundle(ctx.host, name, sv, false, false))
        })
        .collect();
    page(req, items, size, start)
}

fn deleted_list(v: &VaultState, ctx: &Ctx<'_>, req: &Req) -> Reply {
    let (size, start) = match paging(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let items: Vec<Bundle<'_>> = v
        .deleted
        .values()
        .filter(|(name, _)| listable(v, ctx, name))
        .filter_map(|(name, d)| deleted_bundle(ctx.host, name, d, false))
        .collect();
    page(req, items, size, start)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetBody {
    value: Option<String>,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Option<SetAttributes>,
}

#[derive(Deserialize)]
struct SetAttributes {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

/// Parses a JSON body; the error names the position and kind only, never echoes content.
fn parse_body<T: serde::de::DeserializeOwned>(req: &Req, what: &str) -> Result<T, Reply> {
    serde_json::from_slice(&req.body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io | serde_json::error::Category::Eof => "incomplete JSON",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "a field has the wrong type",
        };
        bad(&format!(
            "The request body for {what} is not valid: {kind} at line {} column {}.",
            e.line(),
            e.column()
        ))
    })
}

fn check_tags(tags: &Option<BTreeMap<String, String>>) -> Result<(), Reply> {
    if tags.as_ref().is_some_and(|t| t.len() > MAX_TAGS) {
        return Err(bad("A secret may have at most 15 tags."));
    }
    Ok(())
}

fn set(v: &mut VaultState, ctx: &Ctx<'_>, req: &Req, name: &str) -> Reply {
    if !is_secret_name(name) {
        return bad(&format!(
            "The request URI contains an invalid name: {name}. Secret names are 1-127 characters of [0-9a-zA-Z-]."
        ));
    }
    let key = name.to_ascii_lowercase();
    if v.deleted.contains_key(&key) {
        return Reply::kv_error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
            ),
        );
    }
    let body: SetBody = match parse_body(req, "SetSecret") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(value) = body.value.map(Zeroizing::new) else {
        return bad("The request body must contain the property 'value'.");
    };
    if value.len() > MAX_VALUE_BYTES {
        return bad("The secret value is longer than the limit of 25 KiB.");
    }
    if let Err(r) = check_tags(&body.tags) {
        return r;
    }
    let now = crate::now();
    let attrs = body.attributes.unwrap_or(SetAttributes {
        enabled: None,
        nbf: None,
        exp: None,
    });
    let sv = SecretVersion {
        version: uuid::Uuid::new_v4().simple().to_string(),
        value,
        content_type: body.content_type,
        tags: body.tags.unwrap_or_default(),
        enabled: attrs.enabled.unwrap_or(true),
        nbf: attrs.nbf,
        exp: attrs.exp,
        created: now,
        updated: now,
        certificate_backed: false,
    };
    let (spelled, item) = v
        .secrets
        .entry(key)
        .or_insert_with(|| (name.to_string(), SecretItem::default()));
    item.versions.push(sv);
    match item.latest() {
        Some(latest) => {
            tracing::info!(vault = %v.name, secret = %spelled, version = %latest.version, "secret version created");
            Reply::json(
                StatusCode::OK,
                &bundle(ctx.host, spelled, latest, true, true),
            )
        }
        None => not_found(name, ""),
    }
}

fn update(v: &mut VaultState, ctx: &Ctx<'_>, req: &Req, name: &str, version: &str) -> Reply {
    let body: SetBody = match parse_body(req, "UpdateSecret") {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.value.is_some() {
        return bad(
            "UpdateSecret cannot change the value; use SetSecret (PUT) to create a new version.",
        );
    }
    if let Err(r) = check_tags(&body.tags) {
        return r;
    }
    let Some((spelled, item)) = v.secrets.get_mut(&name.to_ascii_lowercase()) else {
        return not_found(name, version);
    };
    let found = if version.is_empty() {
        item.versions.last_mut()
    } else {
        item.versions
            .iter_mut()
            .find(|sv| sv.version.eq_ignore_ascii_case(version))
    };
    let Some(sv) = found else {
        return not_found(name, version);
    };
    if let Some(ct) = body.content_type {
        sv.content_type = Some(ct);
    }
    if let Some(tags) = body.tags {
        sv.tags = tags;
    }
    if let Some(a) = body.attributes {
        if let Some(e) = a.enabled {
            sv.enabled = e;
        }
        if a.nbf.is_some() {
            sv.nbf = a.nbf;
        }
        if a.exp.is_some() {
            sv.exp = a.exp;
        }
    }
    sv.updated = crate::now();
    Reply::json(StatusCode::OK, &bundle(ctx.host, spelled, sv, false, true))
}

fn delete(v: &mut VaultState, ctx: &Ctx<'_>, name: &str) -> Reply {
    let key = name.to_ascii_lowercase();
    let Some((spelled, item)) = v.secrets.remove(&key) else {
        return not_found(name, "");
    };
    let now = crate::now();
    let deleted = DeletedItem {
        item,
        deleted_date: now,
        scheduled_purge_date: now + RECOVERABLE_DAYS * 86_400,
    };
    let reply = match deleted_bundle(ctx.host, &spelled, &deleted, true) {
        Some(b) => Reply::json(StatusCode::OK, &b),
        None => not_found(name, ""),
    };
    tracing::info!(vault = %v.name, secret = %spelled, "secret soft-deleted");
    v.deleted.insert(key, (spelled, deleted));
    reply
}

fn deleted_get(v: &VaultState, ctx: &Ctx<'_>, name: &str) -> Reply {
    match v.deleted.get(&name.to_ascii_lowercase()) {
        Some((spelled, d)) => match deleted_bundle(ctx.host, spelled, d, true) {
            Some(b) => Reply::json(StatusCode::OK, &b),
            None => deleted_not_found(name),
        },
        None => deleted_not_found(name),
    }
}

fn purge(v: &mut VaultState, name: &str) -> Reply {
    match v.deleted.remove(&name.to_ascii_lowercase()) {
        Some((spelled, _)) => {
            tracing::info!(vault = %v.name, secret = %spelled, "deleted secret purged");
            Reply::empty(StatusCode::NO_CONTENT)
        }
        None => deleted_not_found(name),
    }
}

fn recover(v: &mut VaultState, ctx: &Ctx<'_>, name: &str) -> Reply {
    let key = name.to_ascii_lowercase();
    let Some((spelled, d)) = v.deleted.remove(&key) else {
        return deleted_not_found(name);
    };
    tracing::info!(vault = %v.name, secret = %spelled, "deleted secret recovered");
    let entry = v.secrets.entry(key).or_insert((spelled, d.item));
    match entry.1.latest() {
        Some(latest) => Reply::json(
            StatusCode::OK,
            &bundle(ctx.host, &entry.0, latest, false, true),
        ),
        None => not_found(name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in [
            "7.4",
            "7.5",
            "7.6",
            "7.6-preview.2",
            "2025-07-01",
            "2026-02-01-preview",
        ] {
            assert!(check_api_version(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "7.0",
            "7.1",
            "7.3",
            "2016-10-01",
            "",
            "x",
            "7",
            "7.x",
            "2025-13-01",
        ] {
            assert!(check_api_version(Some(bad)).is_err(), "{bad}");
        }
        assert!(check_api_version(None).is_err());
    }

    #[test]
    fn routes() {
        assert_eq!(Op::parse(&Method::GET, "/secrets/a/").route(), "secret.get");
        assert_eq!(
            Op::parse(&Method::GET, "/secrets/a/versions").route(),
            "secret.list_versions"
        );
        assert_eq!(Op::parse(&Method::GET, "/secrets").route(), "secret.list");
        assert_eq!(
            Op::parse(&Method::POST, "/deletedsecrets/a/recover").route(),
            "deleted_secret.recover"
        );
        assert_eq!(Op::parse(&Method::GET, "/keys/a").route(), "key.get");
        assert_eq!(
            Op::parse(&Method::GET, "/certificates/a/versions").route(),
            "certificate.list_versions"
        );
        assert_eq!(Op::parse(&Method::POST, "/keys/a/sign").route(), "unknown");
    }
}
