//! `template-<file>` texts must parse or be refused without a panic; a parsed template has at
//! least one reference and its text parts contain no unescaped placeholder.
#![no_main]

use kvmount_sidecar::template::{Part, Template};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Template::parse(text) {
        assert!(!t.references().is_empty());
        for part in &t.parts {
            if let Part::Object(r) = part {
                assert!(!r.name.is_empty());
            }
        }
    }
});
