//! The agent configuration (JSON in $KVMOUNT_AGENT_CONFIG) must parse and plan, or be refused,
//! without a panic; JSON errors never repeat the input.
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
            // Built from the parser's category and position only, never from the input.
            let message = e.to_string();
            assert!(
                message.starts_with("fuzz: not a kvmount agent configuration ("),
                "{message}"
            );
            assert!(message.len() < 120, "{message}");
        }
    }
});
