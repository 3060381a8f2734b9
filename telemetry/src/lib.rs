//! What every kvmount binary shares to report on itself: log setup and the `--log-level`
//! and `--log-format` values, checked when the flags are parsed.

pub mod logging;
