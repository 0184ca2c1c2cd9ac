//! JWT-SVIDs: the keys that sign them, the tokens, and SPIFFE bundles as JWK sets.

pub mod jwks;
pub mod keys;
pub mod token;

pub use jwks::{jwt_keys_json, BundleDoc, Jwk, JwkKey, MAX_BUNDLE_BYTES};
pub use keys::{IssuedJwt, JwtKeys, Settings};
pub use token::{Claims, Invalid, SigningKey, Validated};
