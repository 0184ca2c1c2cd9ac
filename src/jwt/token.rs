//! JWT-SVIDs as the SPIFFE JWT-SVID standard profiles them: compact JWS tokens, signed here
//! with ES256, and checked here against any of the algorithms a foreign trust domain may use.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{json, Map, Value};

use super::jwks::{Jwk, JwkKey};
use crate::spiffe::SpiffeId;

/// The longest token accepted for validation: a JWT-SVID is a few hundred bytes; anything
/// far past that is not one.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Most audiences one token may name.
pub const MAX_AUDIENCES: usize = 16;
/// Longest audience, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 256;

/// Checks an audience list asked for: one to [`MAX_AUDIENCES`] values, each non-empty,
/// printable and at most [`MAX_AUDIENCE_BYTES`] long.
pub fn check_audience(audience: &[String]) -> Result<(), String> {
    if audience.is_empty() {
        return Err("a JWT-SVID needs at least one audience".into());
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(format!(
            "{} audiences asked for; a JWT-SVID names at most {MAX_AUDIENCES}",
            audience.len()
        ));
    }
    for a in audience {
        if a.is_empty() || a.len() > MAX_AUDIENCE_BYTES || a.chars().any(char::is_control) {
            return Err(format!(
                "audience {:?} must be 1 to {MAX_AUDIENCE_BYTES} bytes of printable text",
                a.chars().take(40).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// An ES256 key that signs JWT-SVIDs, known to relying parties by its key ID.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The token header, base64url: the same for every token this key signs.
    header: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// The key in PKCS#8 DER (ECDSA P-256); its key ID is the SHA-256 of its public key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| format!("not an ECDSA P-256 PKCS#8 key: {e}"))?;
        let kid = key_id(pair.public_key().as_ref());
        let header = B64.encode(json!({"alg": "ES256", "kid": kid, "typ": "JWT"}).to_string());
        Ok(SigningKey {
            kid,
            pair,
            rng,
            header,
        })
    }

    /// A fresh key, and its PKCS#8 DER for sealing.
    pub fn generate() -> Result<(SigningKey, zeroize::Zeroizing<Vec<u8>>), String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "the system random number generator failed".to_string())?;
        let pkcs8 = zeroize::Zeroizing::new(doc.as_ref().to_vec());
        Ok((SigningKey::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// The key ID written into every token's header and the bundle.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as the bundle publishes it.
    pub fn public(&self) -> Jwk {
        Jwk::p256(self.kid.clone(), self.pair.public_key().as_ref())
    }

    /// A token saying `claims`, signed.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            sub: &'a str,
            aud: &'a [String],
            exp: i64,
            iat: i64,
            jti: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            sub: &claims.subject,
            aud: &claims.audience,
            exp: claims.expires_at,
            iat: claims.issued_at,
            jti: &claims.token_id,
        })
        .map_err(|e| e.to_string())?;
        let signing_input = format!("{}.{}", self.header, B64.encode(body));
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| "ES256 signing failed".to_string())?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }
}

/// The key ID of an EC public key (its uncompressed point): the SHA-256, hex.
pub fn key_id(point: &[u8]) -> String {
    crate::ca::sha256_hex(point)
}

/// What a JWT-SVID issued here says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: the app's SPIFFE ID.
    pub subject: String,
    /// `aud`: never empty.
    pub audience: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `jti`: unique, so that no two tokens are alike (the issuing millisecond, then 80
    /// random bits, hex); the ledger records the token under it.
    pub token_id: String,
}

/// Why a token does not validate. Each says what to fix or what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalid {
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes: not a JWT-SVID")]
    TooLong,
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs (ES256/384, RS256/384/512, PS256/384/512 are)")]
    Algorithm(String),
    #[error("the token's header names no key (kid)")]
    NoKeyId,
    #[error("claim {0}: {1}")]
    Claim(&'static str, String),
    #[error("no bundle is held for trust domain {0}")]
    UnknownTrustDomain(String),
    #[error("key {kid:?} is not in the bundle of {trust_domain}")]
    UnknownKey { kid: String, trust_domain: String },
    #[error("key {0:?} cannot check an {1} signature")]
    KeyMismatch(String, String),
    #[error("the signature does not verify")]
    Signature,
    #[error("the token expired at {0} (Unix seconds)")]
    Expired(i64),
    #[error("the token is for audiences {got:?}, not {wanted:?}")]
    Audience { wanted: String, got: Vec<String> },
}

/// A token that validated: its subject and every claim it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// `sub`.
    pub subject: SpiffeId,
    /// Every claim, as sent.
    pub claims: Map<String, Value>,
}

/// A token read but not yet checked.
struct Parts<'a> {
    alg: String,
    kid: Option<String>,
    claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn parse(token: &str) -> Result<Parts<'_>, Invalid> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Invalid::TooLong);
    }
    let mut pieces = token.split('.');
    let (Some(h), Some(b), Some(s), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(Invalid::Malformed(
            "expected three base64url parts separated by '.'".into(),
        ));
    };
    let decode = |part: &str, what: &str| {
        B64.decode(part)
            .map_err(|e| Invalid::Malformed(format!("the {what} is not base64url: {e}")))
    };
    let object = |bytes: Vec<u8>, what: &str| match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Invalid::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    };
    let header = object(decode(h, "header")?, "header")?;
    let claims = object(decode(b, "payload")?, "payload")?;
    let signature = decode(s, "signature")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Invalid::Malformed("the header has no alg".into())),
    };
    let kid = match header.get("kid") {
        Some(Value::String(k)) => Some(k.clone()),
        None => None,
        Some(_) => return Err(Invalid::Malformed("kid is not a string".into())),
    };
    if let Some(Value::String(typ)) = header.get("typ") {
        if typ != "JWT" && typ != "JOSE" {
            return Err(Invalid::Malformed(format!(
                "typ {typ:?} is not JWT or JOSE"
            )));
        }
    }
    Ok(Parts {
        alg,
        kid,
        claims,
        signing_input: &token[..h.len() + 1 + b.len()],
        signature,
    })
}

fn subject_of(claims: &Map<String, Value>) -> Result<SpiffeId, Invalid> {
    match claims.get("sub") {
        Some(Value::String(s)) => s
            .parse()
            .map_err(|e: crate::spiffe::Error| Invalid::Claim("sub", e.to_string())),
        _ => Err(Invalid::Claim("sub", "missing or not a string".into())),
    }
}

/// Checks `token` for `audience` at `now` (Unix seconds) against `keys`, the JWT keys of
/// the trust domain its subject names (`None` when no bundle is held for it).
pub fn validate(
    token: &str,
    audience: &str,
    keys: impl FnOnce(&str) -> Option<Vec<Jwk>>,
    now: i64,
) -> Result<Validated, Invalid> {
    let parts = parse(token)?;
    // Refused before any key is looked up: `none` and the HMAC family carry no public-key
    // signature, and accepting them is the classic JWT forgery.
    let verifier = Verifier::for_alg(&parts.alg)?;
    let subject = subject_of(&parts.claims)?;
    let kid = parts.kid.clone().ok_or(Invalid::NoKeyId)?;
    let trust_domain = subject.trust_domain();
    let bundle = keys(trust_domain.as_str())
        .ok_or_else(|| Invalid::UnknownTrustDomain(trust_domain.to_string()))?;
    let key = bundle
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| Invalid::UnknownKey {
            kid: kid.clone(),
            trust_domain: trust_domain.to_string(),
        })?;
    verifier.verify(key, parts.signing_input.as_bytes(), &parts.signature)?;
    let exp = match parts.claims.get("exp") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| Invalid::Claim("exp", "not a number".into()))?,
        _ => return Err(Invalid::Claim("exp", "missing or not a number".into())),
    };
    if exp <= now {
        return Err(Invalid::Expired(exp));
    }
    let got: Vec<String> = match parts.claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| Invalid::Claim("aud", "holds a value that is not a string".into()))?,
        _ => return Err(Invalid::Claim("aud", "missing".into())),
    };
    if got.is_empty() {
        return Err(Invalid::Claim("aud", "empty".into()));
    }
    if !got.iter().any(|a| a == audience) {
        return Err(Invalid::Audience {
            wanted: audience.to_string(),
            got,
        });
    }
    Ok(Validated {
        subject,
        claims: parts.claims,
    })
}

/// How a signature of one JWS algorithm is checked.
enum Verifier {
    Ec(&'static signature::EcdsaVerificationAlgorithm, &'static str),
    Rsa(&'static signature::RsaParameters),
}

impl Verifier {
    fn for_alg(alg: &str) -> Result<Verifier, Invalid> {
        Ok(match alg {
            "ES256" => Verifier::Ec(&signature::ECDSA_P256_SHA256_FIXED, "P-256"),
            "ES384" => Verifier::Ec(&signature::ECDSA_P384_SHA384_FIXED, "P-384"),
            "RS256" => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            "PS256" => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
            "PS384" => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
            "PS512" => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
            other => return Err(Invalid::Algorithm(other.to_string())),
        })
    }

    fn verify(&self, key: &Jwk, message: &[u8], sig: &[u8]) -> Result<(), Invalid> {
        let result = match (self, &key.key) {
            (Verifier::Ec(alg, curve), JwkKey::Ec { crv, point }) if crv == curve => {
                signature::UnparsedPublicKey::new(*alg, point).verify(message, sig)
            }
            (Verifier::Rsa(params), JwkKey::Rsa { n, e }) => {
                signature::RsaPublicKeyComponents { n, e }.verify(params, message, sig)
            }
            _ => {
                return Err(Invalid::KeyMismatch(
                    key.kid.clone(),
                    match self {
                        Verifier::Ec(_, curve) => format!("ECDSA {curve}"),
                        Verifier::Rsa(_) => "RSA".into(),
                    },
                ))
            }
        };
        result.map_err(|_| Invalid::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &[&str], exp: i64) -> Claims {
        Claims {
            subject: "spiffe://td/app/a".into(),
            audience: aud.iter().map(|a| a.to_string()).collect(),
            expires_at: exp,
            issued_at: exp - 300,
            token_id: "j1".into(),
        }
    }

    fn keys_of(key: &SigningKey) -> impl Fn(&str) -> Option<Vec<Jwk>> + '_ {
        move |td| (td == "td").then(|| vec![key.public()])
    }

    #[test]
    fn a_signed_token_validates_for_its_audience_only_until_it_expires() {
        let (key, _) = SigningKey::generate().unwrap();
        let token = key.sign(&claims(&["api", "queue"], 1000)).unwrap();
        let ok = validate(&token, "queue", keys_of(&key), 999).unwrap();
        assert_eq!(ok.subject.as_str(), "spiffe://td/app/a");
        assert_eq!(ok.claims["jti"], "j1");
        assert_eq!(
            validate(&token, "other", keys_of(&key), 999),
            Err(Invalid::Audience {
                wanted: "other".into(),
                got: vec!["api".into(), "queue".into()]
            })
        );
        assert_eq!(
            validate(&token, "api", keys_of(&key), 1000),
            Err(Invalid::Expired(1000))
        );
    }

    #[test]
    fn forged_unsigned_and_unknown_key_tokens_are_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let token = key.sign(&claims(&["api"], 1000)).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let (body, _) = rest.split_once('.').unwrap();

        // Another key's signature over the same content.
        let forged_sig = other.sign(&claims(&["api"], 1000)).unwrap();
        let forged = format!("{head}.{body}.{}", forged_sig.rsplit('.').next().unwrap());
        assert_eq!(
            validate(&forged, "api", keys_of(&key), 0),
            Err(Invalid::Signature)
        );
        // alg none, with and without a signature.
        let none = B64.encode(r#"{"alg":"none","kid":"x"}"#);
        for t in [format!("{none}.{body}."), format!("{none}.{body}.AAAA")] {
            assert_eq!(
                validate(&t, "api", keys_of(&key), 0),
                Err(Invalid::Algorithm("none".into()))
            );
        }
        let hs = B64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.kid()));
        assert!(matches!(
            validate(&format!("{hs}.{body}.AAAA"), "api", keys_of(&key), 0),
            Err(Invalid::Algorithm(_))
        ));
        // A kid the bundle does not hold; a trust domain with no bundle.
        let by_other = other.sign(&claims(&["api"], 1000)).unwrap();
        assert!(matches!(
            validate(&by_other, "api", keys_of(&key), 0),
            Err(Invalid::UnknownKey { .. })
        ));
        let elsewhere = key
            .sign(&Claims {
                subject: "spiffe://elsewhere/app".into(),
                ..claims(&["api"], 1000)
            })
            .unwrap();
        assert_eq!(
            validate(&elsewhere, "api", keys_of(&key), 0),
            Err(Invalid::UnknownTrustDomain("elsewhere".into()))
        );
    }

    #[test]
    fn what_is_not_a_jwt_says_so() {
        let (key, _) = SigningKey::generate().unwrap();
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.AA"] {
            let err = validate(bad, "api", keys_of(&key), 0).unwrap_err();
            assert!(matches!(err, Invalid::Malformed(_)), "{bad:?} gave {err:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            validate(&huge, "api", keys_of(&key), 0),
            Err(Invalid::TooLong)
        );
        let no_sub = key
            .sign(&Claims {
                subject: "not-spiffe".into(),
                ..claims(&["api"], 1000)
            })
            .unwrap();
        assert!(matches!(
            validate(&no_sub, "api", keys_of(&key), 0),
            Err(Invalid::Claim("sub", _))
        ));
    }
}
