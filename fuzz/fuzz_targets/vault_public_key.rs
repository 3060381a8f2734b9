//! A JWK public key (RSA n/e, EC crv/x/y) as PKIX DER: an error or DER, never a panic.
#![no_main]

use kvmount_vault::pem::{PublicKey, public_key_der};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mid = rest.len() / 2;
    let (a, b) = rest.split_at(mid);
    let key = match selector % 4 {
        0 => PublicKey::Rsa { n: a, e: b },
        1 => PublicKey::Ec {
            crv: "P-256",
            x: a,
            y: b,
        },
        2 => PublicKey::Ec {
            crv: "P-384",
            x: a,
            y: b,
        },
        _ => PublicKey::Ec {
            crv: "P-521",
            x: a,
            y: b,
        },
    };
    let _ = public_key_der(key);
});
