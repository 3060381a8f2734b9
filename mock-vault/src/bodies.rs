//! Response parts every Key Vault object kind shares (secrets in `keyvault`, keys and
//! certificates in `objects`): attributes, paged lists and the BadParameter error.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::StatusCode;
use serde::Serialize;

use crate::exchange::{Reply, Req};

/// Key Vault's largest (and default) page of a list.
const DEFAULT_PAGE: usize = 25;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Attributes {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub recovery_level: &'static str,
    pub recoverable_days: i64,
}

/// Page size and start offset from `maxresults` and `$skiptoken`.
pub(crate) fn paging(req: &Req) -> Result<(usize, usize), Reply> {
    let size = match req.query("maxresults") {
        None | Some("") => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=DEFAULT_PAGE).contains(&n) => n,
            _ => {
                return Err(bad(&format!(
                    "Invalid maxresults '{s}': it must be an integer from 1 to 25."
                )));
            }
        },
    };
    let start = match req.query("$skiptoken") {
        None | Some("") => 0,
        Some(t) => URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.strip_prefix("kvmount:")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .ok_or_else(|| {
                bad("The $skiptoken is not valid. Use the nextLink returned by the previous page.")
            })?,
    };
    Ok((size, start))
}

pub(crate) fn page<T: Serialize>(req: &Req, items: Vec<T>, size: usize, start: usize) -> Reply {
    let total = items.len();
    let value: Vec<T> = items.into_iter().skip(start).take(size).collect();
    let next = start + size;
    let next_link = (next < total).then(|| {
        let token = URL_SAFE_NO_PAD.encode(format!("kvmount:{next}"));
        let api = req.query("api-version").unwrap_or_default();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("api-version", api)
            .append_pair("$skiptoken", &token)
            .append_pair("maxresults", &size.to_string());
        format!("https://{}{}?{}", req.host, req.path, q.finish())
    });
    Reply::json(
        StatusCode::OK,
        &serde_json::json!({"value": value, "nextLink": next_link}),
    )
}

/// A Key Vault BadParameter error.
pub(crate) fn bad(message: &str) -> Reply {
    Reply::kv_error(StatusCode::BAD_REQUEST, "BadParameter", message)
}
