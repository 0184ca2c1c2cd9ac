//! Entry points for the fuzz targets in `fuzz/`: each takes arbitrary bytes, runs them through
//! the code a client's input reaches, and panics only on a defect (a panic inside, or an
//! invariant broken). The corpus test replays the committed seeds through the same functions,
//! so every crash found and fixed stays fixed.

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::{self, CertificateAuthority};
use crate::placement::Placement;
use crate::proto as pb;
use crate::sds::service::Sds;
use crate::sds::slots::{SdsLimits, Slots};
use crate::sds::{Bundle, Identity, SdsMetrics, Workload};

/// The CA every target signs with, made once.
fn authority() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        let now = crate::clock::Clock::system().now();
        let settings = crate::config::Config::from_toml_str("")
            .expect("the defaults are a configuration")
            .ca;
        ca::in_memory(settings, now).expect("an in-memory CA")
    })
}

/// The placement the targets issue for.
fn placement() -> Placement {
    let guid = |s: &str| s.parse().expect("a valid GUID");
    Placement {
        instance_guid: guid("1a1a1a1a-0000-4000-8000-000000000004"),
        app_guid: guid("2b2b2b2b-0000-4000-8000-000000000001"),
        space_guid: Some(guid("3c3c3c3c-0000-4000-8000-000000000002")),
        org_guid: Some(guid("4d4d4d4d-0000-4000-8000-000000000003")),
        cell_id: "cell-1".parse().expect("a valid cell"),
        container_ip: None,
    }
}

/// A CSR (DER or PEM, as a client sends it) through issuance: refused with an error, or
/// certified as a leaf naming the placement's SPIFFE ID and the CSR's key, returned (DER) for
/// the caller to read strictly.
pub fn csr_issuance(data: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let ca = authority();
    let now = crate::clock::Clock::system().now();
    let issued = ca.issue(&placement(), data, None, now).ok()?;
    let (rest, cert) = X509Certificate::from_der(&issued.cert_der).expect("a leaf reads back");
    assert!(rest.is_empty(), "nothing after the leaf");
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN");
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [issued.spiffe_id.as_str()]);
    let checked = crate::ca::csr::check(data).expect("a certified CSR checks");
    assert_eq!(
        cert.tbs_certificate.subject_pki.raw,
        checked.spki_der.as_slice(),
        "the leaf certifies the CSR's key"
    );
    Some(issued.cert_der)
}

/// The served instance the SDS targets talk to, with a certificate and the bundle.
fn sds() -> Sds {
    static WORKLOAD: OnceLock<Workload> = OnceLock::new();
    let workload = WORKLOAD.get_or_init(|| {
        let ca = authority();
        let now = crate::clock::Clock::system().now();
        let (key, csr) = crate::agent::new_key_and_csr().expect("a key and CSR");
        let issued = ca
            .issue(&placement(), &csr, None, now)
            .expect("a certificate");
        let mut chain_pem = ca::cert_pem(&issued.cert_der);
        for der in &issued.chain_der {
            chain_pem.push_str(&ca::cert_pem(der));
        }
        let identity = Identity {
            spiffe_id: issued.spiffe_id.clone(),
            chain_pem,
            key_pem: zeroize::Zeroizing::new(ca::pem_encode("PRIVATE KEY", &key)),
            serial_hex: issued.serial_hex.clone(),
            not_after: issued.validity.not_after,
            issuer_sha256: Some(issued.issuer_fingerprint.clone()),
        };
        let bundle = Bundle {
            trust_domain: ca.settings().trust_domain.clone(),
            roots_pem: ca.roots_pem(),
            generation: 1,
            crls_pem: String::new(),
            jwt_keys_json: String::new(),
            federated: Vec::new(),
        };
        let allowed = crate::policy::AllowList {
            mode: crate::policy::Mode::Policy,
            sources: [issued.spiffe_id.clone()].into(),
        };
        // The senders are kept so the receivers never see them closed.
        let (identity_tx, identity) = watch::channel(Some(Arc::new(identity)));
        let (bundle_tx, bundle) = watch::channel(Arc::new(bundle));
        let (allowed_tx, allowed) = watch::channel(Some(Arc::new(allowed)));
        std::mem::forget((identity_tx, bundle_tx, allowed_tx));
        Workload {
            placement: placement(),
            spiffe_id: issued.spiffe_id,
            identity,
            bundle,
            allowed,
            jwt: None,
        }
    });
    let metrics = Arc::new(SdsMetrics::default());
    let limits = SdsLimits {
        per_socket: 1,
        total: 1,
        max_message: 1 << 20,
    };
    Sds::new(
        workload.clone(),
        metrics.clone(),
        Slots::new(limits, metrics),
        CancellationToken::new(),
    )
}

/// Length-delimited protobuf messages, as many as decode, in order.
fn messages<M: Message + Default>(mut data: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while !data.is_empty() {
        match M::decode_length_delimited(&mut data) {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
    }
    out
}

/// A `StreamSecrets` conversation: the requests decoded from `data`, through one stream's
/// state machine. Whatever is sent is a secret this instance may have.
pub fn sds_sotw(data: &[u8]) {
    let requests: Vec<DiscoveryRequest> = messages(data);
    let (sent, _) = sds().replay_sotw(requests);
    for response in sent {
        assert_eq!(response.type_url, crate::sds::SECRET_TYPE);
        assert!(!response.nonce.is_empty(), "every response has a nonce");
    }
}

/// A `DeltaSecrets` conversation, as [`sds_sotw`].
pub fn sds_delta(data: &[u8]) {
    let requests: Vec<DeltaDiscoveryRequest> = messages(data);
    let (sent, _) = sds().replay_delta(requests);
    for response in sent {
        assert_eq!(response.type_url, crate::sds::SECRET_TYPE);
        assert!(!response.nonce.is_empty(), "every response has a nonce");
    }
}

/// A server API request as the server decodes it: the first byte picks the method, the rest
/// is its message.
pub fn server_api_request(data: &[u8]) {
    let Some((&method, body)) = data.split_first() else {
        return;
    };
    match method % 5 {
        0 => {
            if let Ok(r) = pb::SignStreamRequest::decode(body) {
                if let Some(r) = r.request {
                    sign_request(r);
                }
            }
        }
        1 => {
            if let Ok(r) = pb::SignRequest::decode(body) {
                sign_request(r);
            }
        }
        2 => {
            if let Ok(p) = pb::Placement::decode(body) {
                if let Ok(placement) = pb::placement_from_wire(p) {
                    // What is taken in goes back out unchanged.
                    let again = pb::placement_from_wire(pb::placement_to_wire(&placement));
                    assert_eq!(again.as_ref(), Ok(&placement));
                }
            }
        }
        3 => {
            if let Ok(r) = pb::DeregisterRequest::decode(body) {
                let _ = pb::parse_field::<crate::ids::Guid>("instance_guid", &r.instance_guid);
            }
        }
        _ => {
            if let Ok(r) = pb::BundleAckReport::decode(body) {
                let held = r
                    .held
                    .into_iter()
                    .map(|h| (h.root_sha256, h.sidecars))
                    .collect();
                let _ = crate::server::fleet::check_report(held);
            }
        }
    }
}

fn sign_request(r: pb::SignRequest) {
    let Ok(instance) = pb::parse_field::<crate::ids::Guid>("instance_guid", &r.instance_guid)
    else {
        return;
    };
    let ttl = match r.ttl_seconds {
        0 => None,
        s => crate::ids::Ttl::from_secs(s.into()),
    };
    let placement = Placement {
        instance_guid: instance,
        ..placement()
    };
    let now = crate::clock::Clock::system().now();
    let _ = authority().issue(&placement, &r.csr, ttl, now);
}

/// A config file: refused with an error naming what is wrong, or a configuration whose
/// redacted form reads back as the same configuration.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = crate::config::Config::from_toml_str(text) else {
        return;
    };
    let shown = config.to_redacted_toml();
    let again = crate::config::Config::from_toml_str(&shown)
        .unwrap_or_else(|e| panic!("the shown config does not read back: {e}\n{shown}"));
    assert_eq!(again.to_redacted_toml(), shown);
}

/// A ledger record's canonical encoding: bytes that read back as a record are exactly that
/// record's encoding, and a record made from the bytes reads back as itself.
pub fn ledger_record(data: &[u8]) {
    if let Ok(record) = crate::ledger::decode(data) {
        assert_eq!(crate::ledger::canonical(&record), data);
    }
    let record = record_from(data);
    let bytes = crate::ledger::canonical(&record);
    assert_eq!(crate::ledger::decode(&bytes).as_ref(), Ok(&record));
}

/// A record whose fields are cut from `data`.
fn record_from(data: &[u8]) -> crate::store::LedgerRecord {
    use crate::store::{EntryKind, LedgerRecord};
    let mut parts = data.split(|b| *b == 0xff);
    let mut text = || {
        parts
            .next()
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
    };
    let kinds = [
        EntryKind::Issued,
        EntryKind::Denied,
        EntryKind::Ca,
        EntryKind::Policy,
        EntryKind::Placement,
    ];
    let kind = kinds[data.first().copied().unwrap_or(0) as usize % kinds.len()];
    let at = data.len() as i64 * 1_000 - 7;
    LedgerRecord {
        serial: text(),
        spiffe_id: text(),
        instance_guid: text(),
        app_guid: text(),
        cell_id: text(),
        reason: text(),
        not_before: text().map(|t| t.len() as i64),
        not_after: Some(-at),
        cert_der: text().map(String::into_bytes),
        ..LedgerRecord::bare(
            kind,
            time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(at),
        )
    }
}

/// Inputs that reach deep into each target, for its seed corpus: (target, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let (_, csr) = crate::agent::new_key_and_csr().expect("a key and CSR");
    out.push(("csr_issuance", csr.clone()));
    let csr_pem = ca::pem_encode("CERTIFICATE REQUEST", &csr);
    out.push(("csr_issuance", csr_pem.into_bytes()));

    let delimited = |messages: Vec<Vec<u8>>| messages.concat();
    let sotw = |names: &[&str], nonce: &str| {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: crate::sds::SECRET_TYPE.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
        .encode_length_delimited_to_vec()
    };
    let id = authority().settings().trust_domain.id_string();
    out.push((
        "sds_sotw",
        delimited(vec![
            sotw(&["default", "ROOTCA"], ""),
            sotw(&["default", "ROOTCA"], "1"),
            sotw(&["c2c-validation-context"], "2"),
        ]),
    ));
    out.push(("sds_sotw", delimited(vec![sotw(&[&id], "")])));
    let delta = |subscribe: &[&str], unsubscribe: &[&str], nonce: &str| {
        DeltaDiscoveryRequest {
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            type_url: crate::sds::SECRET_TYPE.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
        .encode_length_delimited_to_vec()
    };
    out.push((
        "sds_delta",
        delimited(vec![
            delta(&["default", "ROOTCA"], &[], ""),
            delta(&[], &[], "1"),
            delta(&["c2c-validation-context"], &["ROOTCA"], "2"),
        ]),
    ));

    let method = |m: u8, body: Vec<u8>| [vec![m], body].concat();
    let p = placement();
    out.push((
        "server_api_request",
        method(
            0,
            pb::SignStreamRequest {
                id: 7,
                request: Some(pb::SignRequest {
                    instance_guid: p.instance_guid.to_string(),
                    csr: csr.clone(),
                    ttl_seconds: 600,
                }),
            }
            .encode_to_vec(),
        ),
    ));
    out.push((
        "server_api_request",
        method(2, pb::placement_to_wire(&p).encode_to_vec()),
    ));
    out.push((
        "server_api_request",
        method(
            3,
            pb::DeregisterRequest {
                instance_guid: p.instance_guid.to_string(),
            }
            .encode_to_vec(),
        ),
    ));
    out.push((
        "server_api_request",
        method(
            4,
            pb::BundleAckReport {
                held: vec![pb::HeldBundle {
                    root_sha256: vec![authority().roots()[0].fingerprint.clone()],
                    sidecars: 3,
                }],
            }
            .encode_to_vec(),
        ),
    ));

    let full = crate::config::Config::from_toml_str("")
        .expect("the defaults are a configuration")
        .to_redacted_toml();
    out.push(("config_text", full.into_bytes()));
    out.push((
        "config_text",
        b"trust_domain = \"example.org\"\n[ca]\nleaf_ttl = \"30m\"\n[agent]\nsds_socket_mode = \"0660\"\n"
            .to_vec(),
    ));

    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let issued = authority()
        .issue(&p, &csr, None, crate::clock::Clock::system().now())
        .expect("a certificate");
    let mut record = crate::store::LedgerRecord {
        serial: Some(issued.serial_hex),
        spiffe_id: Some(issued.spiffe_id),
        instance_guid: Some(p.instance_guid.to_string()),
        app_guid: Some(p.app_guid.to_string()),
        cell_id: Some(p.cell_id.to_string()),
        not_before: Some(issued.validity.not_before.unix_timestamp()),
        not_after: Some(issued.validity.not_after.unix_timestamp()),
        cert_der: Some(issued.cert_der),
        ..crate::store::LedgerRecord::bare(crate::store::EntryKind::Issued, now)
    };
    out.push(("ledger_record", crate::ledger::canonical(&record)));
    record.kind = crate::store::EntryKind::Denied;
    record.reason = Some("instance not placed on this cell".into());
    record.cert_der = None;
    out.push(("ledger_record", crate::ledger::canonical(&record)));
    out
}

/// Runs `input` through `target`'s entry point; false for a target that does not exist.
pub fn run(target: &str, input: &[u8]) -> bool {
    match target {
        "csr_issuance" => {
            csr_issuance(input);
        }
        "sds_sotw" => sds_sotw(input),
        "sds_delta" => sds_delta(input),
        "server_api_request" => server_api_request(input),
        "config_text" => config_text(input),
        "ledger_record" => ledger_record(input),
        _ => return false,
    }
    true
}

/// Every target's name.
pub const TARGETS: [&str; 6] = [
    "csr_issuance",
    "sds_sotw",
    "sds_delta",
    "server_api_request",
    "config_text",
    "ledger_record",
];
