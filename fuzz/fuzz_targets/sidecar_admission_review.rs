//! Any request body must give an AdmissionReview answer or a clean refusal, never a panic.
#![no_main]

use kvmount_sidecar::webhook::{self, WebhookConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((review, decision)) = webhook::review_offline(&WebhookConfig::default(), data) {
        let out: serde_json::Value =
            serde_json::from_slice(&webhook::response(&review.uid, &decision))
                .expect("response json");
        assert_eq!(out["kind"], "AdmissionReview");
    }
});
