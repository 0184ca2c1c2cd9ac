//! Which secret a resource name asks for, and whether this instance may have it.

use std::fmt;

/// The kinds of secret served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretKind {
    /// The instance's certificate chain and private key.
    Certificate,
    /// A validation context trusting our roots.
    Roots,
    /// A validation context using Envoy's SPIFFE certificate validator.
    SpiffeValidator,
    /// A provider's validation context: our roots, and only the SPIFFE IDs of the apps its
    /// app's policies allow (or any of the trust domain, in `trust-domain` mode).
    C2cValidation,
    /// A validation context trusting a federated trust domain's roots, for its workloads only
    /// (asked for by the trust domain's ID, `spiffe://<foreign td>`).
    ForeignRoots,
}

impl SecretKind {
    /// The metrics label: what Envoy receives.
    pub fn label(self) -> &'static str {
        match self {
            SecretKind::Certificate => "tls_certificate",
            SecretKind::Roots | SecretKind::SpiffeValidator | SecretKind::ForeignRoots => {
                "validation_context"
            }
            SecretKind::C2cValidation => "c2c_validation_context",
        }
    }
}

/// A name this instance may not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The name asked for.
    pub name: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secret {:?} is not this instance's; it may ask for its own certificate (default, its \
             SPIFFE ID, id-cert-and-key, c2c-cert-and-key), the trust bundle (ROOTCA, the trust \
             domain's ID, id-validation-context, ALL), a federated trust domain's bundle (its \
             ID) and what its app accepts as a provider (c2c-validation-context)",
            self.name
        )
    }
}

/// Classifies `name` for an instance whose SPIFFE ID is `own_id` in trust domain `td_id`
/// (`spiffe://<td>`). Names follow SPIRE (`default`, `ROOTCA`, `ALL`, the SPIFFE ID) and Diego
/// (`id-cert-and-key`, `c2c-cert-and-key`, `id-validation-context`).
pub fn classify(name: &str, own_id: &str, td_id: &str) -> Result<SecretKind, Refused> {
    match name {
        "default" | "id-cert-and-key" | "c2c-cert-and-key" => Ok(SecretKind::Certificate),
        "ROOTCA" | "id-validation-context" => Ok(SecretKind::Roots),
        "ALL" => Ok(SecretKind::SpiffeValidator),
        "c2c-validation-context" => Ok(SecretKind::C2cValidation),
        n if n == own_id => Ok(SecretKind::Certificate),
        n if n == td_id => Ok(SecretKind::Roots),
        n if foreign_trust_domain(n).is_some() => Ok(SecretKind::ForeignRoots),
        _ => Err(Refused {
            name: name.to_string(),
        }),
    }
}

/// The trust domain a trust domain ID (`spiffe://<td>`, no path) names.
pub fn foreign_trust_domain(name: &str) -> Option<crate::spiffe::TrustDomain> {
    name.strip_prefix("spiffe://")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "spiffe://cf.internal/org/o/space/s/app/a";
    const TD: &str = "spiffe://cf.internal";

    #[test]
    fn spire_and_diego_names_map_to_their_secrets() {
        for n in ["default", "id-cert-and-key", "c2c-cert-and-key", OWN] {
            assert_eq!(classify(n, OWN, TD), Ok(SecretKind::Certificate), "{n}");
        }
        for n in ["ROOTCA", "id-validation-context", TD] {
            assert_eq!(classify(n, OWN, TD), Ok(SecretKind::Roots), "{n}");
        }
        assert_eq!(classify("ALL", OWN, TD), Ok(SecretKind::SpiffeValidator));
        assert_eq!(
            classify("c2c-validation-context", OWN, TD),
            Ok(SecretKind::C2cValidation)
        );
        // Another trust domain's ID: its federated bundle, served once held.
        assert_eq!(
            classify("spiffe://other.org", OWN, TD),
            Ok(SecretKind::ForeignRoots)
        );
    }

    #[test]
    fn another_workloads_id_and_unknown_names_are_refused() {
        for n in [
            "spiffe://cf.internal/org/o/space/s/app/b",
            "spiffe://other.org/app",
            "spiffe://Other.org",
            "rootca",
            "",
            "default ",
        ] {
            assert!(classify(n, OWN, TD).is_err(), "{n:?}");
        }
    }
}
