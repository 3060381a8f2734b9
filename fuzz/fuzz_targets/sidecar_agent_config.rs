//! The agent configuration (JSON in $KVMOUNT_AGENT_CONFIG) must parse and plan, or be refused,
//! without a panic; errors never repeat the input.
#![no_main]

use kvmount_sidecar::config::{AgentConfig, Plan};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match AgentConfig::from_json("fuzz", text) {
        Ok(config) => {
            let _ = Plan::new(&config);
        }
        Err(e) => {
            if text.len() > 16 {
                assert!(!e.to_string().contains(text));
            }
        }
    }
});
