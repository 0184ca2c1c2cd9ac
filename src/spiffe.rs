//! SPIFFE names: trust domains and SPIFFE IDs as parse-only newtypes.
//!
//! Everything that holds one of these has already been checked against the SPIFFE ID standard,
//! so code further in never re-validates a name.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a trust domain or SPIFFE ID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain {0:?} may contain only lowercase letters, digits, '.', '-' and '_'")]
    BadTrustDomain(String),
    #[error("SPIFFE ID {0:?} must start with \"spiffe://\"")]
    MissingScheme(String),
    #[error("SPIFFE ID {0:?} has an empty path segment, '.' or '..', or a trailing '/'")]
    BadPathSegment(String),
    #[error("SPIFFE ID {0:?} path may contain only letters, digits, '.', '-' and '_' between '/'")]
    BadPathCharacter(String),
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
}

/// A SPIFFE trust domain, e.g. `cf.internal`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain name, without scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>`, used to name its bundle.
    pub fn id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::EmptyTrustDomain);
        }
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
        if !ok {
            return Err(Error::BadTrustDomain(s.to_string()));
        }
        Ok(TrustDomain(s.to_string()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID: `spiffe://<trust domain>/<path>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    trust_domain_len: usize,
}

impl SpiffeId {
    /// The whole ID as a URI string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        let start = "spiffe://".len();
        TrustDomain(self.full[start..start + self.trust_domain_len].to_string())
    }

    /// The path, starting with '/', or empty for the trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.full["spiffe://".len() + self.trust_domain_len..]
    }
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() > 2048 {
            return Err(Error::TooLong);
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| Error::MissingScheme(s.to_string()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td: TrustDomain = td.parse()?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(Error::BadPathSegment(s.to_string()));
                }
                let ok = segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
                if !ok {
                    return Err(Error::BadPathCharacter(s.to_string()));
                }
            }
        }
        Ok(SpiffeId {
            full: s.to_string(),
            trust_domain_len: td.0.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_app_ids() {
        let id: SpiffeId = "spiffe://cf.internal/org/o/space/s/app/a".parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), "cf.internal");
        assert_eq!(id.path(), "/org/o/space/s/app/a");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "http://cf.internal/a",
            "spiffe://CF.internal/a",
            "spiffe:///a",
            "spiffe://cf.internal/a//b",
            "spiffe://cf.internal/a/",
            "spiffe://cf.internal/../a",
            "spiffe://cf.internal/a?b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} accepted");
        }
    }
}

/// How an app's SPIFFE ID is written, e.g.
/// `spiffe://{trust_domain}/org/{org_guid}/space/{space_guid}/app/{app_guid}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTemplate(String);

/// Why a template cannot be used, or cannot be filled for one app.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    #[error(
        "SPIFFE ID template {0:?} must contain {{app_guid}}, or every app would share one identity"
    )]
    MissingAppGuid(String),
    #[error("SPIFFE ID template {template:?} has an unknown placeholder {{{name}}}; known: trust_domain, org_guid, space_guid, app_guid")]
    UnknownPlaceholder { template: String, name: String },
    #[error("SPIFFE ID template {template:?} does not give a valid SPIFFE ID: {source}")]
    Invalid { template: String, source: Error },
    #[error("SPIFFE ID template {template:?} leaves the trust domain {trust_domain}")]
    OtherTrustDomain {
        template: String,
        trust_domain: String,
    },
    #[error("the SPIFFE ID template needs {{{0}}}, which was not given for this app")]
    MissingValue(&'static str),
    #[error("SPIFFE ID template {template:?} puts apps under /{segment}/, where idmint's own principals (cells, admins, auditors, the orchestrator, the server) live: an app would be taken for one")]
    Reserved { template: String, segment: String },
}

/// The first path segments of the principals' SPIFFE IDs (`spiffe://<td>/cell/<id>`, …): no
/// app identity may start with one, or an app's certificate would pass for a principal's.
pub const PRINCIPAL_SEGMENTS: [&str; 5] = ["cell", "admin", "auditor", "orchestrator", "server"];

/// The values a template may name; `None` for those not known for an app.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdValues<'a> {
    /// The app's org GUID.
    pub org_guid: Option<&'a str>,
    /// The app's space GUID.
    pub space_guid: Option<&'a str>,
    /// The app GUID.
    pub app_guid: &'a str,
}

impl IdTemplate {
    /// The default template: one SPIFFE ID per app, under its org and space.
    pub const DEFAULT: &'static str =
        "spiffe://{trust_domain}/org/{org_guid}/space/{space_guid}/app/{app_guid}";

    /// Checks a template against a trust domain by filling it with sample values.
    pub fn new(template: &str, trust_domain: &TrustDomain) -> Result<IdTemplate, TemplateError> {
        if !template.contains("{app_guid}") {
            return Err(TemplateError::MissingAppGuid(template.to_string()));
        }
        let t = IdTemplate(template.to_string());
        let sample = "00000000-0000-4000-8000-000000000000";
        let values = IdValues {
            org_guid: Some(sample),
            space_guid: Some(sample),
            app_guid: sample,
        };
        let id = t.render(trust_domain, values).map_err(|e| match e {
            TemplateError::Invalid { source, .. } => TemplateError::Invalid {
                template: template.to_string(),
                source,
            },
            other => other,
        })?;
        let first = id.path().trim_start_matches('/').split('/').next();
        let first = first.unwrap_or("");
        if PRINCIPAL_SEGMENTS.contains(&first) {
            return Err(TemplateError::Reserved {
                template: template.to_string(),
                segment: first.to_string(),
            });
        }
        if &id.trust_domain() != trust_domain {
            return Err(TemplateError::OtherTrustDomain {
                template: template.to_string(),
                trust_domain: trust_domain.to_string(),
            });
        }
        Ok(t)
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Fills the template for one app.
    pub fn render(&self, td: &TrustDomain, v: IdValues<'_>) -> Result<SpiffeId, TemplateError> {
        let mut out = String::with_capacity(self.0.len() + 64);
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
                TemplateError::UnknownPlaceholder {
                    template: self.0.clone(),
                    name: rest[open + 1..].to_string(),
                }
            })?;
            let name = &rest[open + 1..close];
            let value = match name {
                "trust_domain" => td.as_str(),
                "app_guid" => v.app_guid,
                "org_guid" => v.org_guid.ok_or(TemplateError::MissingValue("org_guid"))?,
                "space_guid" => v
                    .space_guid
                    .ok_or(TemplateError::MissingValue("space_guid"))?,
                _ => {
                    return Err(TemplateError::UnknownPlaceholder {
                        template: self.0.clone(),
                        name: name.to_string(),
                    })
                }
            };
            out.push_str(value);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out.parse().map_err(|source| TemplateError::Invalid {
            template: self.0.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn renders_and_refuses() {
        let td: TrustDomain = "cf.internal".parse().unwrap();
        let t = IdTemplate::new(IdTemplate::DEFAULT, &td).unwrap();
        let v = IdValues {
            org_guid: Some("o"),
            space_guid: Some("s"),
            app_guid: "a",
        };
        assert_eq!(
            t.render(&td, v).unwrap().as_str(),
            "spiffe://cf.internal/org/o/space/s/app/a"
        );
        let no_org = IdValues {
            org_guid: None,
            ..v
        };
        assert_eq!(
            t.render(&td, no_org),
            Err(TemplateError::MissingValue("org_guid"))
        );
        assert!(IdTemplate::new("spiffe://{trust_domain}/x", &td).is_err());
        assert!(IdTemplate::new("spiffe://other.td/app/{app_guid}", &td).is_err());
        assert!(IdTemplate::new("spiffe://{trust_domain}/{nope}/{app_guid}", &td).is_err());
        for reserved in PRINCIPAL_SEGMENTS {
            let template = format!("spiffe://{{trust_domain}}/{reserved}/{{app_guid}}");
            let err = IdTemplate::new(&template, &td).unwrap_err();
            assert!(
                matches!(err, TemplateError::Reserved { .. }),
                "{template}: {err}"
            );
        }
        // Elsewhere in the path they mean nothing.
        assert!(IdTemplate::new("spiffe://{trust_domain}/apps/admin/{app_guid}", &td).is_ok());
    }
}
