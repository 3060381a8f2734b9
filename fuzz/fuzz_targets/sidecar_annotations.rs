//! Pod annotations (one `key=value` per line) must parse or be refused without a panic; an
//! accepted set must produce a patch for a plain pod, or a denial naming an annotation.
#![no_main]

use std::collections::BTreeMap;

use kvmount_sidecar::webhook::{self, Decision, WebhookConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut annotations = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            annotations.insert(format!("kvmount.io/{k}"), v.to_owned());
        }
    }
    annotations.insert("kvmount.io/inject".to_owned(), "true".to_owned());
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "fuzz",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "fuzz",
            "object": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": "app", "command": ["/app"]}]}
            }
        }
    });
    let body = serde_json::to_vec(&review).expect("json");
    let (_, decision) =
        webhook::review_offline(&WebhookConfig::default(), &body).expect("well-formed review");
    match &decision {
        Decision::Patch(p) => assert!(!p.is_empty()),
        Decision::Deny(message) => assert!(message.contains("kvmount.io/"), "{message}"),
        Decision::Skip(_) => {}
    }
    let out: serde_json::Value =
        serde_json::from_slice(&webhook::response("fuzz", &decision)).expect("response json");
    assert_eq!(out["response"]["uid"], "fuzz");
});
