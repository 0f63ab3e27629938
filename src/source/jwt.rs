//! RS256 JSON Web Tokens signed with an RSA private key: Snowflake key-pair
//! authentication and Google service-account tokens both use them.
//!
//! The key is parsed once when a connection opens. [`RsaKey`] never shows key
//! material in `Debug`, and no error here quotes the PEM text or the passphrase:
//! messages say which kind of problem it is and what to do.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest as _, Sha256};

use crate::redact::Secret;

/// A parsed RSA private key, ready to sign.
#[derive(Clone)]
pub(crate) struct RsaKey {
    /// The key; never printed.
    key: RsaPrivateKey,
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaKey(****)")
    }
}

impl RsaKey {
    /// Parse a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`), encrypted PKCS#8
    /// (`BEGIN ENCRYPTED PRIVATE KEY`, needs `passphrase`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`). The error says what is wrong without quoting
    /// the key.
    pub(crate) fn from_pem(pem: &Secret, passphrase: Option<&Secret>) -> Result<Self, String> {
        let text = pem.expose().trim();
        let key = if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            let Some(passphrase) = passphrase else {
                return Err("the private key is encrypted but no passphrase is set: set private_key_passphrase_env (or _file)".to_owned());
            };
            RsaPrivateKey::from_pkcs8_encrypted_pem(text, passphrase.expose().as_bytes()).map_err(
                |_| {
                    "cannot decrypt the private key: the passphrase is wrong or the encryption is not supported (PBES2 with AES or DES3)".to_owned()
                },
            )?
        } else if text.contains("-----BEGIN PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| {
                format!(
                    "the private key is not a valid PKCS#8 RSA key ({})",
                    kind_of(&e.to_string())
                )
            })?
        } else if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(text)
                .map_err(|_| "the private key is not a valid PKCS#1 RSA key".to_owned())?
        } else {
            return Err("the private key is not in PEM format: expected a `-----BEGIN PRIVATE KEY-----` or `-----BEGIN ENCRYPTED PRIVATE KEY-----` block".to_owned());
        };
        Ok(Self { key })
    }

    /// `SHA256:` and the base64 SHA-256 of the public key's DER
    /// `SubjectPublicKeyInfo`: the fingerprint Snowflake shows as
    /// `RSA_PUBLIC_KEY_FP` in `DESCRIBE USER`.
    pub(crate) fn public_key_fingerprint(&self) -> Result<String, String> {
        let der = RsaPublicKey::from(&self.key)
            .to_public_key_der()
            .map_err(|e| format!("cannot encode the public key: {e}"))?;
        Ok(format!(
            "SHA256:{}",
            STANDARD.encode(Sha256::digest(der.as_bytes()))
        ))
    }

    /// A compact RS256 JWT over `claims` (header `{"alg":"RS256","typ":"JWT"}`
    /// plus `kid` when given).
    pub(crate) fn sign(
        &self,
        claims: &serde_json::Value,
        kid: Option<&str>,
    ) -> Result<Secret, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = serde_json::Value::String(kid.to_owned());
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        let signature = signer
            .try_sign(signing_input.as_bytes())
            .map_err(|e| format!("cannot sign the token: {e}"))?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )))
    }
}

/// A short, secret-free description of a key parsing error (the `pkcs8` crate's
/// messages name ASN.1 problems, never key bytes, but are cut to the first clause).
fn kind_of(message: &str) -> String {
    message
        .split(':')
        .next()
        .unwrap_or("unreadable")
        .trim()
        .to_owned()
}

/// The decoded claims of a compact JWT, for tests.
#[cfg(test)]
pub(crate) fn decode_claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(part).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier as _;

    /// A test-only key file under `tests/fixtures/keys/` (see its README).
    pub(crate) fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn signs_verifiable_rs256() {
        let key = RsaKey::from_pem(&Secret::new(fixture("rsa_key.p8")), None).unwrap();
        let token = key
            .sign(&serde_json::json!({"sub": "A.U", "iat": 1}), Some("k1"))
            .unwrap();
        let parts: Vec<&str> = token.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], "k1");
        assert_eq!(decode_claims(token.expose())["sub"], "A.U");
        let verifier = VerifyingKey::<Sha256>::new(RsaPublicKey::from(&key.key));
        let signature =
            Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
        verifier
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
        assert_eq!(format!("{key:?}"), "RsaKey(****)");
    }

    #[test]
    fn fingerprint_matches_openssl() {
        // Computed by `openssl rsa -pubout -outform DER | openssl dgst -sha256 -binary |
        // openssl enc -base64`, the command Snowflake's documentation gives.
        let key = RsaKey::from_pem(&Secret::new(fixture("rsa_key.p8")), None).unwrap();
        assert_eq!(
            key.public_key_fingerprint().unwrap(),
            format!("SHA256:{}", fixture("rsa_key.fingerprint").trim())
        );
    }

    #[test]
    fn encrypted_keys_need_the_right_passphrase() {
        for file in ["rsa_key_des3.p8", "rsa_key_aes.p8"] {
            let pem = Secret::new(fixture(file));
            let missing = RsaKey::from_pem(&pem, None).unwrap_err();
            assert!(missing.contains("passphrase"), "{missing}");
            let wrong = RsaKey::from_pem(&pem, Some(&Secret::new("wrong-pass"))).unwrap_err();
            assert!(wrong.contains("passphrase is wrong"), "{wrong}");
            assert!(!wrong.contains("wrong-pass"), "{wrong}");
            let key = RsaKey::from_pem(&pem, Some(&Secret::new("test-passphrase-only"))).unwrap();
            assert_eq!(
                key.public_key_fingerprint().unwrap(),
                format!("SHA256:{}", fixture("rsa_key.fingerprint").trim()),
                "{file}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_without_echo() {
        let err = RsaKey::from_pem(&Secret::new("hunter2-not-a-key"), None).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = RsaKey::from_pem(
            &Secret::new("-----BEGIN PRIVATE KEY-----\nAAAAsecretish\n-----END PRIVATE KEY-----"),
            None,
        )
        .unwrap_err();
        assert!(!err.contains("secretish"), "{err}");
    }
}
