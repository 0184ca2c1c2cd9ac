//! SPIFFE bundles as JWK sets (the SPIFFE Trust Domain and Bundle standard): written for the
//! bundle endpoint and the Workload API, read from foreign trust domains' endpoints.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use serde_json::{json, Map, Value};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// A public key as a JWK carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwkKey {
    /// An EC key on `crv` (`P-256`, `P-384`): its uncompressed point.
    Ec { crv: String, point: Vec<u8> },
    /// An RSA key: modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A JWT-SVID signing key, by key ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`.
    pub kid: String,
    /// The key.
    pub key: JwkKey,
}

impl Jwk {
    /// A P-256 key from its uncompressed point.
    pub fn p256(kid: String, point: &[u8]) -> Jwk {
        Jwk {
            kid,
            key: JwkKey::Ec {
                crv: "P-256".into(),
                point: point.to_vec(),
            },
        }
    }
}

/// What a SPIFFE bundle holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleDoc {
    /// Root certificates that check X.509-SVIDs, DER.
    pub x509_roots: Vec<Vec<u8>>,
    /// Keys that check JWT-SVIDs.
    pub jwt_keys: Vec<Jwk>,
    /// `spiffe_sequence`: increases at every change.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`: how often to look again, seconds.
    pub refresh_hint: Option<u64>,
}

/// The longest bundle document read: a bundle holds a handful of keys.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

impl BundleDoc {
    /// The document as JSON. Fails only for a root whose key no JWK can carry.
    pub fn to_json(&self) -> Result<String, String> {
        let mut keys = Vec::new();
        for der in &self.x509_roots {
            let mut jwk = key_members(&root_key(der)?);
            jwk.insert("use".into(), "x509-svid".into());
            jwk.insert("x5c".into(), json!([STANDARD.encode(der)]));
            keys.push(Value::Object(jwk));
        }
        keys.extend(self.jwt_keys.iter().map(jwt_key_json));
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        if let Some(s) = self.sequence {
            doc.insert("spiffe_sequence".into(), s.into());
        }
        if let Some(h) = self.refresh_hint {
            doc.insert("spiffe_refresh_hint".into(), h.into());
        }
        Ok(Value::Object(doc).to_string())
    }

    /// Reads a bundle document. Keys of a type or use this does not know are skipped, as the
    /// standard says; a known one that is malformed makes the whole document unreadable.
    pub fn parse(json: &[u8]) -> Result<BundleDoc, String> {
        if json.len() > MAX_BUNDLE_BYTES {
            return Err(format!("longer than {MAX_BUNDLE_BYTES} bytes"));
        }
        let doc: Map<String, Value> =
            serde_json::from_slice(json).map_err(|e| format!("not a JSON object: {e}"))?;
        let Some(Value::Array(keys)) = doc.get("keys") else {
            return Err("no \"keys\" array".into());
        };
        let number = |name: &str| match doc.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{name} is not a non-negative integer")),
        };
        let mut out = BundleDoc {
            sequence: number("spiffe_sequence")?,
            refresh_hint: number("spiffe_refresh_hint")?,
            ..BundleDoc::default()
        };
        for (i, key) in keys.iter().enumerate() {
            let Value::Object(key) = key else {
                return Err(format!("key {i} is not an object"));
            };
            let usage = key.get("use").and_then(Value::as_str);
            if !matches!(usage, Some("x509-svid" | "jwt-svid")) {
                continue;
            }
            let parsed = match read_key(key) {
                Ok(Some(k)) => k,
                Ok(None) => continue,
                Err(e) => return Err(format!("key {i}: {e}")),
            };
            match usage {
                Some("x509-svid") => {
                    let Some(Value::Array(x5c)) = key.get("x5c") else {
                        return Err(format!("key {i}: an x509-svid key needs x5c"));
                    };
                    let [Value::String(cert)] = x5c.as_slice() else {
                        return Err(format!("key {i}: x5c must hold exactly one certificate"));
                    };
                    let der = STANDARD
                        .decode(cert)
                        .map_err(|e| format!("key {i}: x5c is not base64: {e}"))?;
                    if root_key(&der)? != parsed {
                        return Err(format!("key {i}: x5c's key is not the JWK's key"));
                    }
                    out.x509_roots.push(der);
                }
                Some("jwt-svid") => {
                    let Some(Value::String(kid)) = key.get("kid") else {
                        return Err(format!("key {i}: a jwt-svid key needs a kid"));
                    };
                    if kid.is_empty() {
                        return Err(format!("key {i}: its kid is empty"));
                    }
                    out.jwt_keys.push(Jwk {
                        kid: kid.clone(),
                        key: parsed,
                    });
                }
                _ => continue,
            }
        }
        Ok(out)
    }
}

/// A JWK set of JWT-SVID keys only: what `FetchJWTBundles` gives per trust domain.
pub fn jwt_keys_json(keys: &[Jwk]) -> String {
    json!({ "keys": keys.iter().map(jwt_key_json).collect::<Vec<_>>() }).to_string()
}

fn jwt_key_json(k: &Jwk) -> Value {
    let mut jwk = key_members(&k.key);
    jwk.insert("kid".into(), k.kid.clone().into());
    jwk.insert("use".into(), "jwt-svid".into());
    Value::Object(jwk)
}

fn key_members(key: &JwkKey) -> Map<String, Value> {
    let mut m = Map::new();
    match key {
        JwkKey::Ec { crv, point } => {
            let half = (point.len() - 1) / 2;
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), crv.clone().into());
            m.insert("x".into(), B64.encode(&point[1..1 + half]).into());
            m.insert("y".into(), B64.encode(&point[1 + half..]).into());
        }
        JwkKey::Rsa { n, e } => {
            m.insert("kty".into(), "RSA".into());
            m.insert("n".into(), B64.encode(n).into());
            m.insert("e".into(), B64.encode(e).into());
        }
    }
    m
}

/// The key a JWK describes; `None` for a key type this does not know.
fn read_key(key: &Map<String, Value>) -> Result<Option<JwkKey>, String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let Some(Value::String(v)) = key.get(name) else {
            return Err(format!("{name} is missing"));
        };
        B64.decode(v)
            .map_err(|e| format!("{name} is not base64url: {e}"))
    };
    match key.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            let crv = key.get("crv").and_then(Value::as_str).unwrap_or_default();
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Ok(None),
            };
            let (x, y) = (field("x")?, field("y")?);
            if x.len() != size || y.len() != size {
                return Err(format!("x and y of a {crv} key are {size} bytes each"));
            }
            let point = [&[4u8][..], &x, &y].concat();
            Ok(Some(JwkKey::Ec {
                crv: crv.into(),
                point,
            }))
        }
        Some("RSA") => Ok(Some(JwkKey::Rsa {
            n: strip_zeros(field("n")?),
            e: strip_zeros(field("e")?),
        })),
        _ => Ok(None),
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// The public key of a root certificate, as a JWK would carry it.
fn root_key(der: &[u8]) -> Result<JwkKey, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("bytes after the certificate".into());
    }
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let crv = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "P-256",
                Some("1.3.132.0.34") => "P-384",
                other => return Err(format!("EC curve {other:?} has no JWK name here")),
            };
            Ok(JwkKey::Ec {
                crv: crv.into(),
                point: point.data().to_vec(),
            })
        }
        Ok(PublicKey::RSA(rsa)) => Ok(JwkKey::Rsa {
            n: strip_zeros(rsa.modulus.to_vec()),
            e: strip_zeros(rsa.exponent.to_vec()),
        }),
        Ok(_) => Err("the certificate's key is neither EC nor RSA".into()),
        Err(e) => Err(format!("the certificate's key is unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_bundle_reads_back_as_written() {
        let (key, _) = super::super::token::SigningKey::generate().unwrap();
        let doc = BundleDoc {
            x509_roots: vec![root(), root()],
            jwt_keys: vec![key.public()],
            sequence: Some(7),
            refresh_hint: Some(300),
        };
        let json = doc.to_json().unwrap();
        assert_eq!(BundleDoc::parse(json.as_bytes()).unwrap(), doc);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][2]["use"], "jwt-svid");
        assert_eq!(v["keys"][2]["kid"], key.kid());
    }

    #[test]
    fn unknown_keys_are_skipped_and_malformed_ones_refused() {
        let skipped = r#"{"keys":[{"kty":"OKP","use":"jwt-svid","kid":"a"},
            {"kty":"EC","crv":"P-256","use":"other","x":"","y":""}]}"#;
        assert_eq!(
            BundleDoc::parse(skipped.as_bytes()).unwrap(),
            BundleDoc::default()
        );
        for bad in [
            "[]",
            "{}",
            r#"{"keys":{}}"#,
            r#"{"keys":[1]}"#,
            r#"{"keys":[],"spiffe_sequence":-1}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","use":"jwt-svid","x":"AA","y":"AA","kid":"k"}]}"#,
            r#"{"keys":[{"kty":"RSA","use":"jwt-svid","n":"AQAB","e":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"RSA","use":"x509-svid","n":"AQAB","e":"AQAB","x5c":["!"]}]}"#,
        ] {
            assert!(BundleDoc::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        // An x5c whose key is not the JWK's.
        let doc = BundleDoc {
            x509_roots: vec![root()],
            ..BundleDoc::default()
        };
        let mut v: Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        v["keys"][0]["x5c"] = json!([STANDARD.encode(root())]);
        assert!(BundleDoc::parse(v.to_string().as_bytes())
            .unwrap_err()
            .contains("not the JWK's key"));
    }
}
