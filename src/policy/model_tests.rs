use super::*;

const A: &str = "a0a0a0a0-0000-4000-8000-00000000000a";
const B: &str = "b0b0b0b0-0000-4000-8000-00000000000b";
const C: &str = "c0c0c0c0-0000-4000-8000-00000000000c";

fn policy_json(source: &str, destination: &str, protocol: &str, start: i64, end: i64) -> String {
    format!(
        r#"{{"source":{{"id":"{source}","tag":"0001"}},"destination":{{"id":"{destination}","tag":"0002","protocol":"{protocol}","ports":{{"start":{start},"end":{end}}}}}}}"#
    )
}

fn answer(policies: &[String]) -> String {
    format!(
        r#"{{"total_policies":{},"policies":[{}]}}"#,
        policies.len(),
        policies.join(",")
    )
}

fn guid(s: &str) -> Guid {
    s.parse().unwrap()
}

#[test]
fn the_policy_servers_answer_is_read_whole_and_duplicates_count_once() {
    let json = answer(&[
        policy_json(A, B, "tcp", 8080, 8080),
        policy_json(C, B, "udp", 9000, 9100),
        policy_json(A, B, "tcp", 8080, 8080),
    ]);
    let policies = parse_policy_server_answer(json.as_bytes()).unwrap();
    assert_eq!(policies.len(), 2);
    let first = policies
        .iter()
        .find(|p| p.source == guid(A).into())
        .unwrap();
    assert_eq!(first.destination, guid(B));
    assert_eq!(first.protocol, Protocol::Tcp);
    assert_eq!((first.ports.start(), first.ports.end()), (8080, 8080));
    assert_eq!(first.to_string(), format!("{A} -> {B} tcp:8080"));
    let second = policies
        .iter()
        .find(|p| p.source == guid(C).into())
        .unwrap();
    assert_eq!(second.to_string(), format!("{C} -> {B} udp:9000-9100"));
    // Tags are optional; upper-case GUIDs are the same apps.
    let bare = r#"{"total_policies":1,"policies":[{"source":{"id":"A0A0A0A0-0000-4000-8000-00000000000A"},"destination":{"id":"b0b0b0b0-0000-4000-8000-00000000000b","protocol":"tcp","ports":{"start":1,"end":65535}}}]}"#;
    let read = parse_policy_server_answer(bare.as_bytes()).unwrap();
    assert_eq!(read.iter().next().unwrap().source, guid(A).into());
    assert!(parse_policy_server_answer(answer(&[]).as_bytes())
        .unwrap()
        .is_empty());
}

#[test]
fn each_bad_policy_is_refused_by_position_and_field() {
    let refused = |policy: String| {
        let json = answer(&[policy_json(A, B, "tcp", 80, 80), policy]);
        parse_policy_server_answer(json.as_bytes()).unwrap_err()
    };
    let at_1 = |why| Error::Policy { index: 1, why };
    assert!(matches!(
        refused(policy_json("not-a-guid", B, "tcp", 80, 80)),
        Error::Policy {
            index: 1,
            why: PolicyError::App { side: "source", .. }
        }
    ));
    assert!(matches!(
        refused(policy_json(A, "", "tcp", 80, 80)),
        Error::Policy {
            index: 1,
            why: PolicyError::App {
                side: "destination",
                ..
            }
        }
    ));
    assert_eq!(
        refused(policy_json(A, B, "icmp", 80, 80)),
        at_1(PolicyError::Protocol("icmp".into()))
    );
    assert_eq!(
        refused(policy_json(A, B, "TCP", 80, 80)),
        at_1(PolicyError::Protocol("TCP".into()))
    );
    for (start, end) in [(0, 80), (80, 65536), (9000, 8080), (-1, 5), (1, 1 << 40)] {
        assert_eq!(
            refused(policy_json(A, B, "tcp", start, end)),
            at_1(PolicyError::Ports { start, end }),
            "{start}-{end}"
        );
    }
    let message = refused(policy_json(A, B, "tcp", 9000, 8080)).to_string();
    assert_eq!(
        message,
        "policy 1: destination.ports: 9000-8080 is not a port range (1-65535, start <= end)"
    );
}

#[test]
fn what_is_not_the_models_json_is_refused_as_malformed() {
    let malformed = |json: &str| match parse_policy_server_answer(json.as_bytes()) {
        Err(Error::Malformed(why)) => why,
        other => panic!("{json}: {other:?}"),
    };
    // Syntax, a cut-off answer, the wrong type, a missing field, an unknown one.
    malformed("{");
    let whole = answer(&[policy_json(A, B, "tcp", 80, 80)]);
    malformed(&whole[..whole.len() - 3]);
    malformed(r#"{"total_policies":"1","policies":[]}"#);
    assert!(malformed(r#"{"policies":[]}"#).contains("total_policies"));
    let no_ports = r#"{"total_policies":1,"policies":[{"source":{"id":"a0a0a0a0-0000-4000-8000-00000000000a"},"destination":{"id":"b0b0b0b0-0000-4000-8000-00000000000b","protocol":"tcp"}}]}"#;
    assert!(malformed(no_ports).contains("ports"));
    let extra = answer(&[policy_json(A, B, "tcp", 80, 80)])
        .replace(r#""protocol":"tcp""#, r#""protocol":"tcp","weight":3"#);
    assert!(malformed(&extra).contains("weight"));
    let port_as_text = policy_json(A, B, "tcp", 80, 80).replace(r#""start":80"#, r#""start":"80""#);
    malformed(&answer(&[port_as_text]));
}

#[test]
fn an_answer_cut_short_is_refused_by_its_count() {
    let json = r#"{"total_policies":3,"policies":[]}"#;
    assert_eq!(
        parse_policy_server_answer(json.as_bytes()),
        Err(Error::Count { said: 3, held: 0 })
    );
}

#[test]
fn allow_sets_name_every_source_of_a_destination_whatever_the_ports() {
    let json = answer(&[
        policy_json(A, B, "tcp", 8080, 8080),
        policy_json(A, B, "udp", 53, 53),
        policy_json(C, B, "tcp", 9000, 9000),
        policy_json(B, C, "tcp", 443, 443),
    ]);
    let policies = parse_policy_server_answer(json.as_bytes()).unwrap();
    let sets = AllowSets::of(&policies);
    assert_eq!(sets.destinations(), 2);
    let to_b: Vec<&Source> = sets.sources(&guid(B)).collect();
    assert_eq!(to_b, [&guid(A).into(), &guid(C).into()]);
    let to_c: Vec<&Source> = sets.sources(&guid(C)).collect();
    assert_eq!(to_c, [&guid(B).into()]);
    assert_eq!(sets.sources(&guid(A)).count(), 0, "nobody may reach A");
}

#[test]
fn a_pair_stays_allowed_until_its_last_policy_goes() {
    let on = |port| Policy {
        source: guid(A).into(),
        destination: guid(B),
        protocol: Protocol::Tcp,
        ports: PortRange::new(port, port).unwrap(),
    };
    let mut sets = AllowSets::default();
    assert!(sets.add(&on(8080)), "B gains A");
    assert!(!sets.add(&on(9090)), "A already allowed");
    assert_eq!(
        sets.destinations_of(&guid(A)).collect::<Vec<_>>(),
        [&guid(B)]
    );
    assert!(!sets.remove(&on(8080)), "9090 still allows A");
    assert_eq!(sets.sources(&guid(B)).count(), 1);
    assert!(sets.remove(&on(9090)), "B loses A");
    assert!(!sets.remove(&on(9090)), "nothing left to remove");
    assert_eq!(sets, AllowSets::default(), "nothing left behind");
}

#[test]
fn a_list_written_reads_back_as_the_same_policies() {
    let json = answer(&[
        policy_json(A, B, "tcp", 8080, 8090),
        policy_json(C, B, "udp", 53, 53),
    ]);
    let policies = parse_policy_server_answer(json.as_bytes()).unwrap();
    let written = policy_list_json(&policies).to_string();
    assert_eq!(
        parse_policy_server_answer(written.as_bytes()),
        Ok(policies.clone())
    );
    // The external form has no count; a count there is an unknown field.
    let external = format!(
        r#"{{"policies": [{}]}}"#,
        policy_json(A, B, "tcp", 8080, 8090)
    );
    assert_eq!(parse_policy_list(external.as_bytes()).unwrap().len(), 1);
    assert!(matches!(
        parse_policy_list(written.as_bytes()),
        Err(Error::Malformed(_))
    ));
}
