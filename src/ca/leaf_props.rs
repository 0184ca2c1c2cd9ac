//! Property test of the leaf profile: whatever GUIDs, container IP, TTL, trust domain and
//! SPIFFE ID template an operator and the platform give us, the leaf is canonical DER (a strict
//! decoder reads it and re-encodes it to the same bytes) and reads back exactly the Diego
//! fields and the SPIFFE ID that went in.

use std::net::IpAddr;
use std::sync::OnceLock;

use proptest::prelude::*;
use time::OffsetDateTime;

use super::strict_der::{self, oid};
use super::{CertificateAuthority, Settings};
use crate::ids::{Guid, Ttl};
use crate::placement::Placement;
use crate::spiffe::{IdTemplate, TrustDomain};

/// One path segment of a generated template.
#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Org,
    Space,
    App,
}

impl Segment {
    fn text(&self) -> String {
        match self {
            Segment::Literal(s) => s.clone(),
            Segment::Org => "{org_guid}".into(),
            Segment::Space => "{space_guid}".into(),
            Segment::App => "{app_guid}".into(),
        }
    }
}

fn guid_text() -> impl Strategy<Value = String> {
    (any::<[u8; 16]>(), any::<bool>()).prop_map(|(b, upper)| {
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let g = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        if upper {
            g.to_ascii_uppercase()
        } else {
            g
        }
    })
}

fn trust_domain() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789.-_".to_vec()),
        1..40,
    )
    .prop_map(|b| String::from_utf8(b).unwrap())
}

fn literal_segment() -> impl Strategy<Value = Segment> {
    proptest::collection::vec(
        proptest::sample::select(
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_".to_vec(),
        ),
        1..12,
    )
    .prop_filter("not . or ..", |b| b != b"." && b != b"..")
    .prop_map(|b| Segment::Literal(String::from_utf8(b).unwrap()))
}

/// Templates: the app GUID somewhere, org and space GUIDs perhaps, literal segments between.
fn template() -> impl Strategy<Value = Vec<Segment>> {
    (
        proptest::collection::vec(literal_segment(), 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(literals, org, space)| {
            let mut segs = literals;
            segs.push(Segment::App);
            if org {
                segs.push(Segment::Org);
            }
            if space {
                segs.push(Segment::Space);
            }
            Just(segs).prop_shuffle()
        })
}

fn container_ip() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        Just(None),
        any::<[u8; 4]>().prop_map(|b| Some(IpAddr::from(b))),
        any::<[u8; 16]>().prop_map(|b| Some(IpAddr::from(b))),
    ]
}

/// CSRs for the key types a workload may use, made once.
fn csrs() -> &'static [Vec<u8>] {
    static CSRS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CSRS.get_or_init(|| {
        [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ]
        .into_iter()
        .map(|alg| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.serialize_request(&key).unwrap().der().to_vec()
        })
        .collect()
    })
}

/// A self-signed CA held in memory for `settings`.
fn ca_for(settings: Settings, now: OffsetDateTime) -> CertificateAuthority {
    super::bootstrap::in_memory(settings, now).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn every_leaf_is_canonical_der_and_reads_back_what_went_in(
        td in trust_domain(),
        segments in template(),
        app in guid_text(),
        space in proptest::option::of(guid_text()),
        org in proptest::option::of(guid_text()),
        instance in guid_text(),
        ip in container_ip(),
        ttl_secs in 1u64..=30 * 86_400,
        csr_index in 0usize..2,
        offset_secs in 0i64..364 * 86_400,
    ) {
        let uses = |s: fn(&Segment) -> bool| segments.iter().any(s);
        // A template that names the org or space needs them given.
        let org = if uses(|s| matches!(s, Segment::Org)) { org.or(Some(app.clone())) } else { org };
        let space =
            if uses(|s| matches!(s, Segment::Space)) { space.or(Some(app.clone())) } else { space };
        let template_text = format!(
            "spiffe://{{trust_domain}}/{}",
            segments.iter().map(Segment::text).collect::<Vec<_>>().join("/")
        );
        let trust_domain: TrustDomain = td.parse().unwrap();
        let mut settings = Settings::defaults();
        settings.id_template = IdTemplate::new(&template_text, &trust_domain).unwrap();
        settings.trust_domain = trust_domain;
        let ca_start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ca = ca_for(settings, ca_start);
        let placement = Placement {
            instance_guid: instance.parse::<Guid>().unwrap(),
            app_guid: app.parse().unwrap(),
            space_guid: space.as_deref().map(|g| g.parse().unwrap()),
            org_guid: org.as_deref().map(|g| g.parse().unwrap()),
            cell_id: "cell-1".parse().unwrap(),
            container_ip: ip,
        };
        let now = ca_start + time::Duration::seconds(offset_secs);
        let ttl = Ttl::from_secs(ttl_secs).unwrap();
        let issued = ca.issue(&placement, &csrs()[csr_index], Some(ttl), now).unwrap();

        let view = strict_der::certificate("leaf", &issued.cert_der);

        // The SPIFFE ID, filled in here without the template code.
        let lower = |s: &str| s.to_ascii_lowercase();
        let expected_id = segments.iter().fold(format!("spiffe://{td}"), |id, s| {
            let seg = match s {
                Segment::Literal(l) => l.clone(),
                Segment::Org => lower(org.as_deref().unwrap()),
                Segment::Space => lower(space.as_deref().unwrap()),
                Segment::App => lower(&app),
            };
            format!("{id}/{seg}")
        });
        prop_assert_eq!(&view.san_uris, &vec![expected_id.clone()]);
        prop_assert_eq!(&issued.spiffe_id, &expected_id);

        // The Diego fields: the OUs that were given, as one RDN; the CN; DNS and IP SANs.
        let mut units = vec![format!("app:{}", lower(&app))];
        units.extend(space.as_deref().map(|s| format!("space:{}", lower(s))));
        units.extend(org.as_deref().map(|o| format!("organization:{}", lower(o))));
        let mut got_units: Vec<String> = view.subject[0]
            .iter()
            .map(|(o, v)| {
                assert_eq!(o, oid::OU);
                v.clone()
            })
            .collect();
        got_units.sort();
        units.sort();
        prop_assert_eq!(got_units, units);
        prop_assert_eq!(view.subject.len(), 2);
        prop_assert_eq!(&view.subject[1], &vec![(oid::CN.to_string(), lower(&instance))]);
        prop_assert_eq!(&view.san_dns, &vec![lower(&instance)]);
        prop_assert_eq!(&view.san_ips, &ip.into_iter().collect::<Vec<_>>());

        // Validity as the CA computed it, capped at the intermediate's end.
        prop_assert_eq!(view.not_before as i64, issued.validity.not_before.unix_timestamp());
        prop_assert_eq!(view.not_after as i64, issued.validity.not_after.unix_timestamp());
        let wanted_end = now.unix_timestamp() + ttl_secs as i64;
        let ca_end = ca.intermediate().not_after.unix_timestamp();
        prop_assert_eq!(view.not_after as i64, wanted_end.min(ca_end));
        prop_assert_eq!(view.serial.len(), 16);
        prop_assert_eq!(view.basic_constraints, Some((true, false, None)));
    }
}
