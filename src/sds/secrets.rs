//! Secrets built from the instance's identity and the trust bundle, with content versions.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, DataSource, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, spiffe_cert_validator_config, subject_alt_name_matcher::SanType,
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, SubjectAltNameMatcher,
    TlsCertificate,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::watch;

use super::names::SecretKind;
use super::{Bundle, ForeignBundle, Identity, Workload};
use crate::ca::sha256_hex;
use crate::policy::{AllowList, Mode};

/// The type URL of an SDS secret.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// Accepts a request's type URL: ours, or empty (implicit on an SDS stream).
pub fn check_type(type_url: &str) -> Result<(), tonic::Status> {
    if type_url.is_empty() || type_url == SECRET_TYPE {
        return Ok(());
    }
    Err(tonic::Status::invalid_argument(format!(
        "this is the secret discovery service; type {type_url} is not served"
    )))
}

/// A short version derived from content: equal content, equal version.
pub fn content_version(bytes: &[u8]) -> String {
    sha256_hex(bytes)[..16].to_string()
}

/// One secret ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    /// The secret, packed.
    pub any: Any,
    /// A version derived from the content: equal content, equal version.
    pub version: String,
}

/// What an instance's secrets are made from, and a way to wait for either to change.
#[derive(Clone)]
pub struct Sources {
    identity: watch::Receiver<Option<Arc<Identity>>>,
    bundle: watch::Receiver<Arc<Bundle>>,
    allowed: watch::Receiver<Option<Arc<AllowList>>>,
}

impl Sources {
    /// The sources of `w`.
    pub fn of(w: &Workload) -> Sources {
        Sources {
            identity: w.identity.clone(),
            bundle: w.bundle.clone(),
            allowed: w.allowed.clone(),
        }
    }

    /// The secret named `name` of `kind` now, or `None` while it does not exist yet.
    pub fn build(&self, name: &str, kind: SecretKind) -> Option<Built> {
        let secret = match kind {
            SecretKind::Certificate => {
                let identity = self.identity.borrow().clone()?;
                tls_certificate(name, &identity)
            }
            SecretKind::Roots => roots(name, &self.bundle.borrow()),
            SecretKind::SpiffeValidator => spiffe_validator(name, &self.bundle.borrow()),
            SecretKind::C2cValidation => {
                let allowed = self.allowed.borrow().clone()?;
                c2c_validation(name, &self.bundle.borrow(), &allowed)
            }
            // Held until the federated trust domain's bundle is there.
            SecretKind::ForeignRoots => foreign_roots(name, &self.bundle.borrow())?,
        };
        let bytes = secret.encode_to_vec();
        Some(Built {
            version: content_version(&bytes),
            any: Any {
                type_url: SECRET_TYPE.to_string(),
                value: bytes,
            },
        })
    }

    /// Resolves when the identity, the bundle or the app's allow list changes. Never resolves
    /// once every sender is gone (the stream then ends through its cancellation instead).
    pub async fn changed(&mut self) {
        tokio::select! {
            Ok(()) = self.identity.changed() => {}
            Ok(()) = self.bundle.changed() => {}
            Ok(()) = self.allowed.changed() => {}
            else => std::future::pending().await,
        }
    }
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(text.to_string())),
        ..Default::default()
    })
}

fn tls_certificate(name: &str, identity: &Identity) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&identity.chain_pem),
            private_key: inline(&identity.key_pem),
            ..Default::default()
        })),
    }
}

/// A validation context secret: `context`, with the CRLs added while there are any (only the
/// leaf is checked against them, so one CRL per issuing intermediate is all Envoy needs).
fn validation_context(
    name: &str,
    bundle: &Bundle,
    context: CertificateValidationContext,
) -> Secret {
    let context = if bundle.crls_pem.is_empty() {
        context
    } else {
        CertificateValidationContext {
            crl: inline(&bundle.crls_pem),
            only_verify_leaf_cert_crl: true,
            ..context
        }
    };
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

/// Our roots, and peers whose SAN matches one of `matchers` (any, when there are none).
fn trusting_roots(name: &str, bundle: &Bundle, matchers: Vec<SubjectAltNameMatcher>) -> Secret {
    validation_context(
        name,
        bundle,
        CertificateValidationContext {
            trusted_ca: inline(&bundle.roots_pem),
            match_typed_subject_alt_names: matchers,
            ..Default::default()
        },
    )
}

fn roots(name: &str, bundle: &Bundle) -> Secret {
    trusting_roots(name, bundle, Vec::new())
}

/// What a SPIFFE ID in a URI SAN can never be: the path of a SPIFFE ID is ASCII letters,
/// digits, '.', '-' and '_', and a URI SAN is an IA5String (ASCII). An exact matcher on this
/// matches no certificate, which is how "nobody" is said: Envoy takes an empty matcher list
/// to mean "any SAN".
pub const MATCHES_NO_ONE: &str = "spiffe://\u{2205}/no app may reach this one";

fn uri_matcher(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        ..Default::default()
    }
}

/// Any workload of the trust domain: its SPIFFE IDs all start so.
fn trust_domain_matcher(bundle: &Bundle) -> SubjectAltNameMatcher {
    uri_matcher(MatchPattern::Prefix(format!(
        "spiffe://{}/",
        bundle.trust_domain
    )))
}

/// A provider's validation context: our roots, and the SPIFFE IDs its app accepts. When a
/// policy lets in workloads of federated trust domains whose bundles are held, the same
/// matchers go with Envoy's SPIFFE validator instead, so that each trust domain is checked
/// against its own bundle only; that validator ignores CRLs, so while anything is revoked the
/// foreign sources are not let in (one standard context cannot keep trust domains apart).
fn c2c_validation(name: &str, bundle: &Bundle, allowed: &AllowList) -> Secret {
    let matchers = match allowed.mode {
        Mode::TrustDomain => vec![trust_domain_matcher(bundle)],
        Mode::Policy if allowed.sources.is_empty() => {
            vec![uri_matcher(MatchPattern::Exact(MATCHES_NO_ONE.to_string()))]
        }
        Mode::Policy => allowed
            .sources
            .iter()
            .map(|id| uri_matcher(MatchPattern::Exact(id.clone())))
            .collect(),
    };
    let foreign: Vec<&ForeignBundle> = match allowed.mode {
        Mode::TrustDomain => Vec::new(),
        Mode::Policy => bundle
            .federated
            .iter()
            .filter(|f| {
                let prefix = format!("spiffe://{}/", f.trust_domain);
                allowed.sources.iter().any(|id| id.starts_with(&prefix))
            })
            .collect(),
    };
    if foreign.is_empty() || !bundle.crls_pem.is_empty() {
        return trusting_roots(name, bundle, matchers);
    }
    spiffe_validation(name, bundle, foreign, matchers)
}

/// `spiffe://<foreign td>`: the federated trust domain's roots, for its SPIFFE IDs only;
/// `None` while its bundle is not held. Our CRLs say nothing of its certificates.
fn foreign_roots(name: &str, bundle: &Bundle) -> Option<Secret> {
    let td = super::names::foreign_trust_domain(name)?;
    let foreign = bundle.foreign(td.as_str())?;
    Some(Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(&foreign.roots_pem),
                match_typed_subject_alt_names: vec![uri_matcher(MatchPattern::Prefix(format!(
                    "spiffe://{td}/"
                )))],
                ..Default::default()
            },
        )),
    })
}

/// `ALL`: Envoy's SPIFFE certificate validator, each trust domain (ours, and every federated
/// one with roots) checked against its own bundle only. That validator does not check CRLs
/// (a revoked peer passes it), so while anything is revoked the same trust in our own trust
/// domain is said with the standard validator instead (our roots, any of our SPIFFE IDs, the
/// CRLs); federated peers are then trusted through `spiffe://<their td>` alone, since one
/// standard validation context cannot keep trust domains apart.
fn spiffe_validator(name: &str, bundle: &Bundle) -> Secret {
    if !bundle.crls_pem.is_empty() {
        return trusting_roots(name, bundle, vec![trust_domain_matcher(bundle)]);
    }
    spiffe_validation(name, bundle, bundle.federated.iter().collect(), Vec::new())
}

/// Envoy's SPIFFE validator over our bundle and each of `foreign` with roots, then `matchers`
/// (none: any SPIFFE ID the bundles certify).
fn spiffe_validation(
    name: &str,
    bundle: &Bundle,
    foreign: Vec<&ForeignBundle>,
    matchers: Vec<SubjectAltNameMatcher>,
) -> Secret {
    let own = spiffe_cert_validator_config::TrustDomain {
        name: bundle.trust_domain.as_str().to_string(),
        trust_bundle: inline(&bundle.roots_pem),
        ..Default::default()
    };
    let foreign = foreign
        .into_iter()
        .filter(|f| !f.roots_pem.is_empty())
        .map(|f| spiffe_cert_validator_config::TrustDomain {
            name: f.trust_domain.as_str().to_string(),
            trust_bundle: inline(&f.roots_pem),
            ..Default::default()
        });
    let config = SpiffeCertValidatorConfig {
        trust_domains: std::iter::once(own).chain(foreign).collect(),
        ..Default::default()
    };
    validation_context(
        name,
        bundle,
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: "envoy.tls.cert_validator.spiffe".to_string(),
                typed_config: Some(Any {
                    type_url: SPIFFE_VALIDATOR_TYPE.to_string(),
                    value: config.encode_to_vec(),
                }),
            }),
            match_typed_subject_alt_names: matchers,
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const FOREIGN_APP: &str = "spiffe://partner.example/app/orders";

    fn bundle(crls: bool, federated: bool) -> Bundle {
        Bundle {
            trust_domain: "cf.internal".parse().unwrap(),
            roots_pem: "OUR ROOTS".into(),
            generation: 1,
            crls_pem: if crls { "CRLS".into() } else { String::new() },
            jwt_keys_json: String::new(),
            federated: if federated {
                vec![ForeignBundle {
                    trust_domain: "partner.example".parse().unwrap(),
                    roots_pem: "THEIR ROOTS".into(),
                    jwt_keys_json: String::new(),
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn context(secret: &Secret) -> &CertificateValidationContext {
        match &secret.r#type {
            Some(secret::Type::ValidationContext(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    fn trust_domains(c: &CertificateValidationContext) -> Vec<String> {
        let config = c
            .custom_validator_config
            .as_ref()
            .expect("SPIFFE validator");
        let any = config.typed_config.as_ref().unwrap();
        SpiffeCertValidatorConfig::decode(any.value.as_slice())
            .unwrap()
            .trust_domains
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    #[test]
    fn a_foreign_source_is_trusted_through_its_own_bundle_and_never_while_anything_is_revoked() {
        let allowed = AllowList {
            mode: Mode::Policy,
            sources: BTreeSet::from([
                FOREIGN_APP.to_string(),
                "spiffe://cf.internal/app/a".to_string(),
            ]),
        };
        // Held: the SPIFFE validator, each trust domain its own bundle, exact matchers.
        let secret = c2c_validation("c2c", &bundle(false, true), &allowed);
        let c = context(&secret);
        assert_eq!(trust_domains(c), ["cf.internal", "partner.example"]);
        assert_eq!(c.match_typed_subject_alt_names.len(), 2);
        assert!(c.trusted_ca.is_none(), "no merged bundle");

        // Revocations in force: our roots alone, with the CRLs; the foreign source cannot
        // chain to them.
        let secret = c2c_validation("c2c", &bundle(true, true), &allowed);
        let c = context(&secret);
        assert!(c.custom_validator_config.is_none());
        assert_eq!(c.trusted_ca, inline("OUR ROOTS"));
        assert_eq!(c.crl, inline("CRLS"));

        // Its bundle not held: our roots alone.
        let secret = c2c_validation("c2c", &bundle(false, false), &allowed);
        assert!(context(&secret).custom_validator_config.is_none());
    }
}
