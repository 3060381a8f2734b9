//! A small JWT (JWS compact) reader and ES256 signer on top of `ring`.
//!
//! Only what the mock needs: ES256 for tokens the mock signs, ES256 or RS256 to verify
//! assertions from seed-declared issuers. Parsing never panics; every failure is a [`JwtError`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER of the rsaEncryption algorithm identifier OID.
const RSA_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// Why a token or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The text is not a JWS compact serialization with JSON header and claims.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm the mock does not verify.
    #[error("unsupported JWT algorithm {0:?} (accepted: ES256, RS256)")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with the key.
    #[error("JWT signature does not verify")]
    BadSignature,
    /// A public key could not be read.
    #[error("public key: {0}")]
    BadKey(&'static str),
}

/// A decoded, not yet verified token. Its `Debug` shows the header only: the rest is a credential.
#[derive(Clone)]
pub struct UnverifiedJwt {
    /// The `alg` header.
    pub alg: String,
    /// The `kid` header, if any.
    pub kid: Option<String>,
    /// The claims object.
    pub claims: Map<String, Value>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl std::fmt::Debug for UnverifiedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Splits and decodes a compact JWS without checking the signature.
pub fn decode(token: &str) -> Result<UnverifiedJwt, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let claims = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| JwtError::Malformed("claims are not base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&claims)
        .map_err(|_| JwtError::Malformed("claims are not a JSON object"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("header has no alg"))?
        .to_string();
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let signing_input = token.as_bytes()[..h.len() + 1 + c.len()].to_vec();
    Ok(UnverifiedJwt {
        alg,
        kid,
        claims,
        signing_input,
        signature,
    })
}

impl UnverifiedJwt {
    /// Checks the signature with `key`; the header's `alg` must fit the key.
    pub fn verify(&self, key: &VerifyKey) -> Result<(), JwtError> {
        let (alg, der): (&'static dyn signature::VerificationAlgorithm, &[u8]) =
            match (self.alg.as_str(), key) {
                ("ES256", VerifyKey::Es256(point)) => (&signature::ECDSA_P256_SHA256_FIXED, point),
                ("RS256", VerifyKey::Rs256(pkcs1)) => {
                    (&signature::RSA_PKCS1_2048_8192_SHA256, pkcs1)
                }
                ("ES256" | "RS256", _) => return Err(JwtError::BadSignature),
                (other, _) => return Err(JwtError::UnsupportedAlgorithm(other.to_string())),
            };
        signature::UnparsedPublicKey::new(alg, der)
            .verify(&self.signing_input, &self.signature)
            .map_err(|_| JwtError::BadSignature)
    }

    /// A string claim.
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric (NumericDate) claim.
    pub fn time_claim(&self, name: &str) -> Option<i64> {
        let v = self.claims.get(name)?;
        v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
    }

    /// The `aud` claim as a list (a single string counts as one).
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// A public key that verifies signatures.
#[derive(Clone, Debug)]
pub enum VerifyKey {
    /// P-256, as the 65-byte uncompressed point.
    Es256(Vec<u8>),
    /// RSA, as a PKCS#1 `RSAPublicKey` DER.
    Rs256(Vec<u8>),
}

impl VerifyKey {
    /// Reads a `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) PEM holding a P-256 or RSA key.
    pub fn from_pem(pem: &str) -> Result<VerifyKey, JwtError> {
        use rustls::pki_types::SubjectPublicKeyInfoDer;
        use rustls::pki_types::pem::{self, PemObject};
        let spki =
            SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
                pem::Error::NoItemsFound => JwtError::BadKey("no PUBLIC KEY block in the PEM"),
                _ => JwtError::BadKey("PUBLIC KEY block is not valid PEM"),
            })?;
        Self::from_spki_der(spki.as_ref())
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<VerifyKey, JwtError> {
        if der.len() == P256_SPKI_PREFIX.len() + 65 && der.starts_with(&P256_SPKI_PREFIX) {
            return Ok(VerifyKey::Es256(der[P256_SPKI_PREFIX.len()..].to_vec()));
        }
        // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0x00, RSAPublicKey } }
        let (outer, rest) = der_element(der, 0x30)?;
        if !rest.is_empty() {
            return Err(JwtError::BadKey(
                "trailing bytes after SubjectPublicKeyInfo",
            ));
        }
        let (alg, rest) = der_element(outer, 0x30)?;
        if !alg.starts_with(&RSA_OID) {
            return Err(JwtError::BadKey(
                "only P-256 EC and RSA public keys are accepted",
            ));
        }
        let (bits, _) = der_element(rest, 0x03)?;
        match bits.split_first() {
            Some((0, key)) => Ok(VerifyKey::Rs256(key.to_vec())),
            _ => Err(JwtError::BadKey("RSA key bit string has unused bits")),
        }
    }

    /// SubjectPublicKeyInfo DER of a P-256 key.
    pub fn spki_der(&self) -> Option<Vec<u8>> {
        match self {
            VerifyKey::Es256(point) => {
                let mut der = P256_SPKI_PREFIX.to_vec();
                der.extend_from_slice(point);
                Some(der)
            }
            VerifyKey::Rs256(_) => None,
        }
    }
}

/// One DER element with `tag`: returns (contents, rest).
fn der_element(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), JwtError> {
    let (&t, rest) = input
        .split_first()
        .ok_or(JwtError::BadKey("truncated DER"))?;
    if t != tag {
        return Err(JwtError::BadKey("unexpected DER tag"));
    }
    let (&len0, rest) = rest
        .split_first()
        .ok_or(JwtError::BadKey("truncated DER"))?;
    let (len, rest) = if len0 < 0x80 {
        (len0 as usize, rest)
    } else {
        let n = (len0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(JwtError::BadKey("bad DER length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(JwtError::BadKey("truncated DER"));
    }
    Ok(rest.split_at(len))
}

/// An ES256 signing key (P-256), kept as PKCS#8.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Generates a new key; returns the signer and its PKCS#8 DER.
    pub fn generate() -> Result<(Signer, zeroize::Zeroizing<Vec<u8>>), JwtError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JwtError::BadKey("cannot generate a P-256 key"))?;
        let der = zeroize::Zeroizing::new(pkcs8.as_ref().to_vec());
        Ok((Self::from_pkcs8(&der)?, der))
    }

    /// Loads a P-256 PKCS#8 DER key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, JwtError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| JwtError::BadKey("not a P-256 PKCS#8 private key"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Signer { key, kid })
    }

    /// The key id put in the `kid` header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The matching public key.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey::Es256(self.key.public_key().as_ref().to_vec())
    }

    /// The public key as a `PUBLIC KEY` PEM.
    pub fn public_key_pem(&self) -> String {
        let der = self.verify_key().spki_der().unwrap_or_default();
        crate::pki::pem_block("PUBLIC KEY", &der)
    }

    /// The public key as a JWK (for `jwks_uri` documents).
    pub fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        // An uncompressed P-256 point is 0x04 || X (32) || Y (32).
        let (x, y) = if point.len() == 65 {
            (&point[1..33], &point[33..])
        } else {
            (&point[..0], &point[..0])
        };
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        })
    }

    /// Signs `claims` as a compact JWS with header `{"alg":"ES256","typ":"JWT","kid":...}`.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self
            .key
            .sign(&SystemRandom::new(), out.as_bytes())
            .map_err(|_| JwtError::BadKey("signing failed"))?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let (signer, _) = Signer::generate().expect("key");
        let token = signer
            .sign(&serde_json::json!({"sub": "x", "aud": ["a", "b"], "exp": 5}))
            .expect("sign");
        let jwt = decode(&token).expect("decode");
        jwt.verify(&signer.verify_key()).expect("verify");
        assert_eq!(jwt.str_claim("sub"), Some("x"));
        assert_eq!(jwt.audiences(), vec!["a", "b"]);
        assert_eq!(jwt.time_claim("exp"), Some(5));
        let (other, _) = Signer::generate().expect("key");
        assert_eq!(jwt.verify(&other.verify_key()), Err(JwtError::BadSignature));
        let pem_key = VerifyKey::from_pem(&signer.public_key_pem()).expect("pem");
        jwt.verify(&pem_key).expect("verify with PEM key");
    }

    #[test]
    fn garbage_is_an_error() {
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            "e30.e30.",
            "eyJhbGciOjF9.e30.AA",
        ] {
            assert!(decode(t).is_err(), "{t}");
        }
        assert!(VerifyKey::from_pem("nope").is_err());
        assert!(VerifyKey::from_spki_der(&[0x30, 0x82, 0xff]).is_err());
    }
}
