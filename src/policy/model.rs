//! The policy model and the policy server's JSON for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::{Error, PolicyError};
use crate::ids::Guid;
use crate::spiffe::SpiffeId;

/// The transport a policy opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl FromStr for Protocol {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Protocol, PolicyError> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(PolicyError::Protocol(other.to_string())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Ports `start` to `end`, both included, within 1–65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// The range, if it is one.
    pub fn new(start: i64, end: i64) -> Result<PortRange, PolicyError> {
        let port = |p: i64| u16::try_from(p).ok().filter(|p| *p != 0);
        match (port(start), port(end)) {
            (Some(s), Some(e)) if s <= e => Ok(PortRange { start: s, end: e }),
            _ => Err(PolicyError::Ports { start, end }),
        }
    }

    /// The first port.
    pub fn start(&self) -> u16 {
        self.start
    }

    /// The last port.
    pub fn end(&self) -> u16 {
        self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Where policies come from: `policy.source` says which is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// idmint's own store, changed with `idmint policy add|remove`.
    Store,
    /// Cloud Foundry's policy server, polled.
    PolicyServer,
}

impl Origin {
    /// The name the config and the store use.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Store => "store",
            Origin::PolicyServer => "policy-server",
        }
    }

    /// How the ledger names it.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Store => "idmint's store",
            Origin::PolicyServer => "CF's policy server",
        }
    }
}

impl FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Origin, String> {
        match s {
            "store" => Ok(Origin::Store),
            "policy-server" => Ok(Origin::PolicyServer),
            other => Err(format!(
                "{other:?} is neither \"store\" nor \"policy-server\""
            )),
        }
    }
}

/// Who a policy lets in: an app of this foundation, by GUID, or a workload of a federated
/// trust domain, by SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An app here.
    App(Guid),
    /// A workload of another trust domain (boxed: apps are the common case and stay small).
    Foreign(Box<SpiffeId>),
}

impl Source {
    /// The app, when the source is one of ours.
    pub fn app(&self) -> Option<&Guid> {
        match self {
            Source::App(g) => Some(g),
            Source::Foreign(_) => None,
        }
    }
}

impl From<Guid> for Source {
    fn from(g: Guid) -> Source {
        Source::App(g)
    }
}

impl FromStr for Source {
    type Err = PolicyError;

    /// A SPIFFE ID when it starts `spiffe://`, an app GUID otherwise.
    fn from_str(s: &str) -> Result<Source, PolicyError> {
        if s.starts_with("spiffe://") {
            let id: SpiffeId = s
                .parse()
                .map_err(|e: crate::spiffe::Error| PolicyError::Source(e.to_string()))?;
            return Ok(Source::Foreign(Box::new(id)));
        }
        s.parse::<Guid>()
            .map(Source::App)
            .map_err(|error| PolicyError::App {
                side: "source",
                error,
            })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::App(g) => f.write_str(g.as_str()),
            Source::Foreign(id) => f.write_str(id.as_str()),
        }
    }
}

/// Instances of `source` may connect to instances of app `destination` over `protocol` on
/// `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Policy {
    /// What opens connections: an app here, or a federated trust domain's workload.
    pub source: Source,
    /// The app that accepts them.
    pub destination: Guid,
    /// Over what.
    pub protocol: Protocol,
    /// On which of the destination's ports.
    pub ports: PortRange,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}:{}",
            self.source, self.destination, self.protocol, self.ports
        )
    }
}

/// The policy server's answer: `{"total_policies": N, "policies": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireList {
    total_policies: usize,
    policies: Vec<WirePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePolicy {
    source: WireSource,
    destination: WireDestination,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSource {
    id: String,
    /// The overlay tag the policy server assigns; not used for mTLS.
    #[serde(default, rename = "tag")]
    _tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDestination {
    id: String,
    #[serde(default, rename = "tag")]
    _tag: Option<String>,
    protocol: String,
    ports: WirePorts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePorts {
    start: i64,
    end: i64,
}

impl WirePolicy {
    fn parse(self) -> Result<Policy, PolicyError> {
        let app = |side: &'static str, id: &str| {
            id.parse::<Guid>()
                .map_err(|error| PolicyError::App { side, error })
        };
        Ok(Policy {
            source: self.source.id.parse()?,
            destination: app("destination", &self.destination.id)?,
            protocol: self.destination.protocol.parse()?,
            ports: PortRange::new(self.destination.ports.start, self.destination.ports.end)?,
        })
    }
}

/// Reads the policy server's answer to `GET /networking/v1/internal/policies`: every policy
/// must be whole and valid, or none is taken. The same policy listed twice counts once.
pub fn parse_policy_server_answer(json: &[u8]) -> Result<BTreeSet<Policy>, Error> {
    let list: WireList =
        serde_json::from_slice(json).map_err(|e| Error::Malformed(e.to_string()))?;
    if list.total_policies != list.policies.len() {
        return Err(Error::Count {
            said: list.total_policies,
            held: list.policies.len(),
        });
    }
    list.policies
        .into_iter()
        .enumerate()
        .map(|(index, p)| p.parse().map_err(|why| Error::Policy { index, why }))
        .collect()
}

/// A list of policies as CF's external API takes it (`{"policies": [...]}`, no count): what
/// `POST /v1/policies` reads. Every policy must be valid, or none is taken.
pub fn parse_policy_list(json: &[u8]) -> Result<BTreeSet<Policy>, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct List {
        policies: Vec<WirePolicy>,
    }
    let list: List = serde_json::from_slice(json).map_err(|e| Error::Malformed(e.to_string()))?;
    list.policies
        .into_iter()
        .enumerate()
        .map(|(index, p)| p.parse().map_err(|why| Error::Policy { index, why }))
        .collect()
}

/// `policies` in the policy server's format, `{"total_policies": N, "policies": [...]}`.
pub fn policy_list_json<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> serde_json::Value {
    let list: Vec<serde_json::Value> = policies
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "source": {"id": p.source.to_string()},
                "destination": {
                    "id": p.destination.as_str(),
                    "protocol": p.protocol.to_string(),
                    "ports": {"start": p.ports.start(), "end": p.ports.end()},
                },
            })
        })
        .collect();
    serde_json::json!({"total_policies": list.len(), "policies": list})
}

/// For each destination app, the source apps that may reach it: what its sidecar accepts. Kept
/// up to date one policy at a time, since several policies (other ports, other protocol) may
/// allow the same pair of apps and the pair stays allowed until the last of them goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowSets {
    /// Destination → source → how many policies allow that pair.
    by_destination: HashMap<Guid, BTreeMap<Source, usize>>,
    /// Source app → the destinations it may reach (a foreign source's SPIFFE ID never
    /// changes, so nothing follows it).
    by_source: HashMap<Guid, BTreeSet<Guid>>,
}

impl AllowSets {
    /// The allow sets `policies` make. Protocol and ports do not narrow them: mTLS cannot see
    /// either.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> AllowSets {
        let mut sets = AllowSets::default();
        for p in policies {
            sets.add(p);
        }
        sets
    }

    /// Counts one more policy. Returns whether its destination gained a source.
    pub fn add(&mut self, p: &Policy) -> bool {
        let count = self
            .by_destination
            .entry(p.destination.clone())
            .or_default()
            .entry(p.source.clone())
            .or_default();
        *count += 1;
        if *count > 1 {
            return false;
        }
        if let Some(app) = p.source.app() {
            self.by_source
                .entry(app.clone())
                .or_default()
                .insert(p.destination.clone());
        }
        true
    }

    /// Counts one policy fewer (one that was added). Returns whether its destination lost a
    /// source.
    pub fn remove(&mut self, p: &Policy) -> bool {
        let Some(sources) = self.by_destination.get_mut(&p.destination) else {
            return false;
        };
        let Some(count) = sources.get_mut(&p.source) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        sources.remove(&p.source);
        if sources.is_empty() {
            self.by_destination.remove(&p.destination);
        }
        if let Some(app) = p.source.app() {
            if let Some(destinations) = self.by_source.get_mut(app) {
                destinations.remove(&p.destination);
                if destinations.is_empty() {
                    self.by_source.remove(app);
                }
            }
        }
        true
    }

    /// What may reach `destination`; empty when nothing may.
    pub fn sources(&self, destination: &Guid) -> impl Iterator<Item = &Source> {
        self.by_destination
            .get(destination)
            .into_iter()
            .flat_map(|s| s.keys())
    }

    /// The apps `source` may reach.
    pub fn destinations_of(&self, source: &Guid) -> impl Iterator<Item = &Guid> {
        self.by_source.get(source).into_iter().flatten()
    }

    /// How many destination apps have at least one allowed source.
    pub fn destinations(&self) -> usize {
        self.by_destination.len()
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
