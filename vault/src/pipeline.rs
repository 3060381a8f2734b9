//! Helpers for the policies kvmount adds to the SDK's request pipelines (`preauth`, and the
//! daemon's rate limit and metrics).

use std::sync::Arc;

use azure_core::http::policies::Policy;

/// The policies after one in an SDK pipeline: the next, and the ones after it.
pub type NextPolicies<'a> = (&'a Arc<dyn Policy>, &'a [Arc<dyn Policy>]);

/// The next policy of an SDK pipeline and the ones after it, for a policy of `name` to pass a
/// request on (a pipeline always ends in its transport; an error says so if not).
pub fn next_policy<'a>(
    name: &str,
    next: &'a [Arc<dyn Policy>],
) -> azure_core::Result<NextPolicies<'a>> {
    next.split_first().ok_or_else(|| {
        azure_core::Error::with_message(
            azure_core::error::ErrorKind::Other,
            format!("kvmount {name} policy: no transport after it"),
        )
    })
}
