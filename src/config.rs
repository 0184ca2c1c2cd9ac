//! One validated [`Config`] from `idmint.toml`, `IDMINT_*` environment variables and flags,
//! in that order of precedence (flags win).
//!
//! Every layer is merged as a TOML table, then read once into a strict schema, so a typo in
//! any layer is an error naming the key rather than a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ca::{self, Mode, UpstreamFiles};
use crate::ids::Ttl;
use crate::renewal::schedule::{self, parse_fraction, Schedule};
use crate::spiffe::{IdTemplate, TrustDomain};
use crate::store;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read config file {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("config file {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("unknown environment variable {0}; known: {known}", known = env_names().join(", "))]
    UnknownEnv(String),
    #[error("--set takes KEY=VALUE with a known key, got {0:?}")]
    BadOverride(String),
    #[error("{key}: {detail}")]
    Invalid { key: &'static str, detail: String },
}

/// Every setting a layer may give, as `section.key`. Environment names derive from these:
/// `ca.leaf_ttl` is `IDMINT_CA_LEAF_TTL`.
pub const KEYS: &[&str] = &[
    "trust_domain",
    "data_dir",
    "spiffe_id_template",
    "store.url",
    "ca.mode",
    "ca.kek_file",
    "ca.root_ttl",
    "ca.intermediate_ttl",
    "ca.leaf_ttl",
    "ca.root_rotate_at",
    "ca.root_activation_max_wait",
    "ca.clock_skew",
    "ca.upstream.intermediate_cert",
    "ca.upstream.intermediate_key",
    "ca.upstream.root_bundle",
    "admin.listen",
    "admin.socket",
    "admin.credential",
    "admin.server_name",
    "admin.max_body",
    "server.listen",
    "server.cells_register_own",
    "server.agent_ack_grace",
    "server.cell_sign_rate",
    "server.cell_sign_burst",
    "server.denial_records",
    "server.max_handshakes",
    "server.cell_instances",
    "server.max_message",
    "agent.sds_dir",
    "agent.instance_dir",
    "agent.renew_at",
    "agent.renew_jitter",
    "agent.ack_report_every",
    "agent.max_streams_per_socket",
    "agent.max_streams",
    "agent.max_message",
    "agent.sds_socket_mode",
    "bundle_endpoint.spiffe_listen",
    "bundle_endpoint.web_listen",
    "bundle_endpoint.web_cert_file",
    "bundle_endpoint.web_key_file",
    "bundle_endpoint.refresh_hint",
    "jwt.svid_ttl",
    "jwt.key_ttl",
    "policy.default_mode",
    "policy.source",
    "policy.server.url",
    "policy.server.ca_file",
    "policy.server.cert_file",
    "policy.server.key_file",
    "policy.server.poll_every",
    "policy.server.timeout",
    "policy.server.max_answer_bytes",
];

/// Environment variables that are read elsewhere, not settings.
const OTHER_ENV: &[&str] = &["IDMINT_CONFIG", "IDMINT_LOG"];

fn env_name(key: &str) -> String {
    format!("IDMINT_{}", key.replace('.', "_").to_ascii_uppercase())
}

fn env_names() -> Vec<String> {
    KEYS.iter().map(|k| env_name(k)).collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    trust_domain: Option<String>,
    data_dir: Option<PathBuf>,
    spiffe_id_template: Option<String>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    ca: RawCa,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    bundle_endpoint: RawBundleEndpoint,
    #[serde(default)]
    federation: Vec<RawForeign>,
}

/// One `[[federation]]` table: a foreign trust domain's bundle endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForeign {
    trust_domain: Option<String>,
    bundle_endpoint_url: Option<String>,
    profile: Option<String>,
    endpoint_spiffe_id: Option<String>,
    bundle_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBundleEndpoint {
    spiffe_listen: Option<String>,
    web_listen: Option<String>,
    web_cert_file: Option<PathBuf>,
    web_key_file: Option<PathBuf>,
    refresh_hint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    svid_ttl: Option<String>,
    key_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default_mode: Option<String>,
    source: Option<String>,
    #[serde(default)]
    server: RawPolicyServer,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicyServer {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    poll_every: Option<String>,
    timeout: Option<String>,
    max_answer_bytes: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    cells_register_own: Option<toml::Value>,
    agent_ack_grace: Option<String>,
    cell_sign_rate: Option<toml::Value>,
    cell_sign_burst: Option<toml::Value>,
    denial_records: Option<toml::Value>,
    max_handshakes: Option<toml::Value>,
    cell_instances: Option<toml::Value>,
    max_message: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    sds_dir: Option<PathBuf>,
    instance_dir: Option<PathBuf>,
    renew_at: Option<toml::Value>,
    renew_jitter: Option<toml::Value>,
    ack_report_every: Option<String>,
    max_streams_per_socket: Option<toml::Value>,
    max_streams: Option<toml::Value>,
    max_message: Option<toml::Value>,
    sds_socket_mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCa {
    mode: Option<String>,
    kek_file: Option<PathBuf>,
    root_ttl: Option<String>,
    intermediate_ttl: Option<String>,
    leaf_ttl: Option<String>,
    root_rotate_at: Option<toml::Value>,
    root_activation_max_wait: Option<String>,
    clock_skew: Option<String>,
    #[serde(default)]
    upstream: RawUpstream,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    intermediate_cert: Option<PathBuf>,
    intermediate_key: Option<PathBuf>,
    root_bundle: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    socket: Option<PathBuf>,
    credential: Option<PathBuf>,
    server_name: Option<String>,
    max_body: Option<toml::Value>,
}

/// Admin HTTP settings.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// Where the admin HTTP server listens: plain HTTP for health, metrics and the bundle,
    /// mutual TLS with a role credential for the rest.
    pub listen: SocketAddr,
    /// The admin API's Unix socket for the CLI on this host, open to the service's user
    /// alone; `None` when set empty.
    pub socket: Option<PathBuf>,
    /// For the CLI: the directory of the role credential (`idmint role enroll`) to call the
    /// admin API with over mutual TLS; unset, the CLI uses the socket.
    pub credential: Option<PathBuf>,
    /// For the CLI: the name the server's certificate carries (`idmint server --name`).
    pub server_name: String,
    /// The largest request body the admin API reads, in bytes: 8 MiB by default, room for
    /// about 40,000 policies in one request.
    pub max_body: usize,
}

/// Server API settings.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Where the server API listens (mutual TLS).
    pub listen: SocketAddr,
    /// Whether a cell may register and deregister instances on itself; unset, each command
    /// has its own default (on in `idmint dev`, off in `idmint server`).
    pub cells_register_own: Option<bool>,
    /// How long an agent's last report of its sidecars' trust bundles counts: an agent silent
    /// longer (gone, or cut off) no longer holds back a new root.
    pub agent_ack_grace: std::time::Duration,
    /// What one client may cost the server.
    pub limits: crate::server::limits::Settings,
}

/// Agent settings.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Directory holding one SDS socket per registered instance.
    pub sds_dir: PathBuf,
    /// Directory holding one directory of Diego identity files per instance.
    pub instance_dir: PathBuf,
    /// When in their lifetime certificates are renewed.
    pub renewal: Schedule,
    /// How often `idmint agent` tells the server which trust bundles its sidecars hold when
    /// nothing changed: well inside the servers' `server.agent_ack_grace`.
    pub ack_report_every: std::time::Duration,
    /// The most SDS streams one instance's socket holds open at once.
    pub max_streams_per_socket: usize,
    /// The most SDS streams the agent holds open at once, over all its sockets.
    pub max_streams: usize,
    /// The largest request message an SDS socket reads, in bytes.
    pub max_message: usize,
    /// Permission bits of each instance's SDS socket: 0600 (the agent's user alone) unless the
    /// sidecar runs as another user. The SDS directory is 0700 whatever this says.
    pub sds_socket_mode: u32,
}

/// Container-to-container policy settings.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    /// The foundation's enforcement mode until an operator sets one.
    pub default_mode: crate::policy::Mode,
    /// CF's policy server, when the policies in force come from it (`policy.source =
    /// "policy-server"`); `None`: from idmint's own store.
    pub server: Option<PolicyServerSettings>,
}

impl PolicySettings {
    /// Where the policies in force come from.
    pub fn origin(&self) -> crate::policy::Origin {
        match self.server {
            Some(_) => crate::policy::Origin::PolicyServer,
            None => crate::policy::Origin::Store,
        }
    }
}

/// How CF's policy server is polled.
#[derive(Clone, Debug)]
pub struct PolicyServerSettings {
    /// `https://host:port` of its internal API.
    pub url: String,
    /// The CA its certificate chains to, PEM.
    pub ca_file: PathBuf,
    /// idmint's client certificate (and intermediates), PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM.
    pub key_file: PathBuf,
    /// How often it is asked (moved at random by up to a tenth either way).
    pub poll_every: std::time::Duration,
    /// The longest one poll may take, answer included.
    pub timeout: std::time::Duration,
    /// The largest answer taken, in bytes.
    pub max_answer_bytes: usize,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where local state lives (SQLite database, KEK file by default).
    pub data_dir: PathBuf,
    /// Database.
    pub store: store::Settings,
    /// Certificate authority.
    pub ca: ca::Settings,
    /// Admin HTTP.
    pub admin: AdminSettings,
    /// The server API.
    pub server: ServerSettings,
    /// The agent half.
    pub agent: AgentSettings,
    /// Container-to-container policies.
    pub policy: PolicySettings,
    /// JWT-SVIDs and their signing keys.
    pub jwt: crate::jwt::Settings,
    /// The SPIFFE bundle endpoint, when served.
    pub bundle_endpoint: crate::server::bundle_endpoint::Settings,
    /// The foreign trust domains federated with this one (`[[federation]]`, file only).
    pub federation: Vec<crate::server::federation::Foreign>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
}

/// Where configuration comes from, besides the environment.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// An explicit config file (must exist). Without it, `./idmint.toml` is read if present.
    pub file: Option<PathBuf>,
    /// Flag overrides as (key, value), applied last.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// Parses a `--set KEY=VALUE` flag.
    pub fn parse_override(s: &str) -> Result<(String, String), Error> {
        match s.split_once('=') {
            Some((k, v)) if KEYS.contains(&k) => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::BadOverride(s.to_string())),
        }
    }
}

impl Config {
    /// Builds the configuration from `sources` and the process environment.
    pub fn load(sources: &Sources) -> Result<Config, Error> {
        Self::load_with_env(sources, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        sources: &Sources,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Error> {
        let default_file = Path::new("idmint.toml");
        let file = match &sources.file {
            Some(f) => Some(f.clone()),
            None => default_file.exists().then(|| default_file.to_path_buf()),
        };
        let mut table = match &file {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        for (name, value) in env {
            if !name.starts_with("IDMINT_") || OTHER_ENV.contains(&name.as_str()) {
                continue;
            }
            let key = KEYS
                .iter()
                .find(|k| env_name(k) == name)
                .ok_or_else(|| Error::UnknownEnv(name.clone()))?;
            set(&mut table, key, value);
        }
        for (key, value) in &sources.overrides {
            set(&mut table, key, value.clone());
        }
        let origin = file
            .clone()
            .unwrap_or_else(|| PathBuf::from("(environment and flags)"));
        let mut config = from_table(table, origin)?;
        config.file = file;
        Ok(config)
    }

    /// The configuration a file with `text` gives, and nothing else (no environment, no
    /// flags): what `idmint.toml` alone means.
    pub fn from_toml_str(text: &str) -> Result<Config, Error> {
        let origin = PathBuf::from("(text)");
        let table = text.parse::<toml::Table>().map_err(|e| Error::Parse {
            path: origin.clone(),
            detail: e.message().to_string(),
        })?;
        from_table(table, origin)
    }

    /// The agent's settings: its SDS and instance-file directories, trust domain, ID template
    /// and renewal schedule, serving every instance it is given.
    pub fn agent_settings(&self) -> crate::agent::Settings {
        crate::agent::Settings {
            sds_dir: self.agent.sds_dir.clone(),
            trust_domain: self.ca.trust_domain.clone(),
            id_template: self.ca.id_template.clone(),
            renewal: self.agent.renewal,
            instance_dir: Some(self.agent.instance_dir.clone()),
            cell: None,
            clock: crate::clock::Clock::system(),
            streams: crate::sds::SdsLimits {
                per_socket: self.agent.max_streams_per_socket,
                total: self.agent.max_streams,
                max_message: self.agent.max_message,
            },
            socket_mode: self.agent.sds_socket_mode,
        }
    }

    /// The configuration as TOML in the same schema `idmint.toml` uses, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let text = |s: &str| toml::Value::String(s.to_string());
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        let mut root = toml::Table::new();
        root.insert("trust_domain".into(), text(self.ca.trust_domain.as_str()));
        root.insert("data_dir".into(), path(&self.data_dir));
        root.insert(
            "spiffe_id_template".into(),
            text(self.ca.id_template.as_str()),
        );
        let mut store = toml::Table::new();
        store.insert("url".into(), text(&store::redact_url(&self.store.url)));
        let mut ca = toml::Table::new();
        match &self.ca.mode {
            Mode::SelfSigned => {
                ca.insert("mode".into(), text("self-signed"));
            }
            Mode::Upstream(files) => {
                ca.insert("mode".into(), text("upstream"));
                let mut up = toml::Table::new();
                up.insert("intermediate_cert".into(), path(&files.intermediate_cert));
                up.insert("intermediate_key".into(), path(&files.intermediate_key));
                up.insert("root_bundle".into(), path(&files.root_bundle));
                ca.insert("upstream".into(), toml::Value::Table(up));
            }
        }
        ca.insert("kek_file".into(), path(&self.ca.kek_file));
        ca.insert("root_ttl".into(), text(&self.ca.root_ttl.to_string()));
        ca.insert(
            "intermediate_ttl".into(),
            text(&self.ca.intermediate_ttl.to_string()),
        );
        let pct = |f: f64| text(&format!("{}%", (f * 1000.0).round() / 10.0));
        ca.insert("leaf_ttl".into(), text(&self.ca.leaf_ttl.to_string()));
        ca.insert("root_rotate_at".into(), pct(self.ca.root_rotate_at));
        ca.insert(
            "root_activation_max_wait".into(),
            text(&self.ca.root_activation_max_wait.to_string()),
        );
        ca.insert("clock_skew".into(), text(&self.ca.clock_skew.to_string()));
        let mut admin = toml::Table::new();
        admin.insert("listen".into(), text(&self.admin.listen.to_string()));
        let socket = self.admin.socket.clone().unwrap_or_default();
        admin.insert("socket".into(), path(&socket));
        if let Some(credential) = &self.admin.credential {
            admin.insert("credential".into(), path(credential));
        }
        admin.insert("server_name".into(), text(&self.admin.server_name));
        admin.insert(
            "max_body".into(),
            toml::Value::Integer(self.admin.max_body as i64),
        );
        let mut jwt = toml::Table::new();
        jwt.insert("svid_ttl".into(), text(&self.jwt.svid_ttl.to_string()));
        jwt.insert("key_ttl".into(), text(&self.jwt.key_ttl.to_string()));
        root.insert("jwt".into(), toml::Value::Table(jwt));
        let mut endpoint = toml::Table::new();
        let be = &self.bundle_endpoint;
        if let Some(listen) = be.spiffe_listen {
            endpoint.insert("spiffe_listen".into(), text(&listen.to_string()));
        }
        if let Some(web) = &be.web {
            endpoint.insert("web_listen".into(), text(&web.listen.to_string()));
            endpoint.insert("web_cert_file".into(), path(&web.cert_file));
            endpoint.insert("web_key_file".into(), path(&web.key_file));
        }
        endpoint.insert(
            "refresh_hint".into(),
            text(&format!("{}s", be.refresh_hint.as_secs())),
        );
        root.insert("bundle_endpoint".into(), toml::Value::Table(endpoint));
        let federation: Vec<toml::Value> = self
            .federation
            .iter()
            .map(|f| {
                use crate::server::federation::Profile;
                let mut t = toml::Table::new();
                t.insert("trust_domain".into(), text(f.trust_domain.as_str()));
                t.insert("bundle_endpoint_url".into(), text(&f.url.to_string()));
                t.insert("profile".into(), text(f.profile.name()));
                match &f.profile {
                    Profile::Web { ca_file: Some(ca) } => {
                        t.insert("ca_file".into(), path(ca));
                    }
                    Profile::Web { ca_file: None } => {}
                    Profile::Spiffe { endpoint_id } => {
                        t.insert("endpoint_spiffe_id".into(), text(endpoint_id.as_str()));
                    }
                }
                if let Some(file) = &f.bundle_file {
                    t.insert("bundle_file".into(), path(file));
                }
                toml::Value::Table(t)
            })
            .collect();
        if !federation.is_empty() {
            root.insert("federation".into(), toml::Value::Array(federation));
        }
        root.insert("store".into(), toml::Value::Table(store));
        root.insert("ca".into(), toml::Value::Table(ca));
        root.insert("admin".into(), toml::Value::Table(admin));
        let mut server = toml::Table::new();
        server.insert("listen".into(), text(&self.server.listen.to_string()));
        if let Some(own) = self.server.cells_register_own {
            server.insert("cells_register_own".into(), toml::Value::Boolean(own));
        }
        server.insert(
            "agent_ack_grace".into(),
            text(&format!("{}ms", self.server.agent_ack_grace.as_millis())),
        );
        let count = |n: u64| toml::Value::Integer(n as i64);
        let limits = &self.server.limits;
        server.insert("cell_sign_rate".into(), count(limits.sign_rate.into()));
        server.insert("cell_sign_burst".into(), count(limits.sign_burst.into()));
        server.insert("denial_records".into(), count(limits.denial_records.into()));
        server.insert("cell_instances".into(), count(limits.cell_instances.into()));
        server.insert("max_handshakes".into(), count(limits.max_handshakes as u64));
        server.insert("max_message".into(), count(limits.max_message as u64));
        root.insert("server".into(), toml::Value::Table(server));
        let mut agent = toml::Table::new();
        agent.insert("sds_dir".into(), path(&self.agent.sds_dir));
        agent.insert("instance_dir".into(), path(&self.agent.instance_dir));
        agent.insert("renew_at".into(), pct(self.agent.renewal.point()));
        agent.insert("renew_jitter".into(), pct(self.agent.renewal.jitter()));
        agent.insert(
            "ack_report_every".into(),
            text(&format!("{}ms", self.agent.ack_report_every.as_millis())),
        );
        agent.insert(
            "max_streams_per_socket".into(),
            count(self.agent.max_streams_per_socket as u64),
        );
        agent.insert("max_streams".into(), count(self.agent.max_streams as u64));
        agent.insert("max_message".into(), count(self.agent.max_message as u64));
        agent.insert(
            "sds_socket_mode".into(),
            text(&format!("{:04o}", self.agent.sds_socket_mode)),
        );
        root.insert("agent".into(), toml::Value::Table(agent));
        let mut policy = toml::Table::new();
        policy.insert(
            "default_mode".into(),
            text(self.policy.default_mode.as_str()),
        );
        policy.insert("source".into(), text(self.policy.origin().as_str()));
        if let Some(ps) = &self.policy.server {
            let mut server = toml::Table::new();
            server.insert("url".into(), text(&ps.url));
            server.insert("ca_file".into(), path(&ps.ca_file));
            server.insert("cert_file".into(), path(&ps.cert_file));
            server.insert("key_file".into(), path(&ps.key_file));
            server.insert(
                "poll_every".into(),
                text(&format!("{}ms", ps.poll_every.as_millis())),
            );
            server.insert(
                "timeout".into(),
                text(&format!("{}ms", ps.timeout.as_millis())),
            );
            server.insert(
                "max_answer_bytes".into(),
                toml::Value::Integer(ps.max_answer_bytes as i64),
            );
            policy.insert("server".into(), toml::Value::Table(server));
        }
        root.insert("policy".into(), toml::Value::Table(policy));
        toml::to_string(&root).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The configuration `table` gives; `origin` names where it came from in errors.
fn from_table(table: toml::Table, origin: PathBuf) -> Result<Config, Error> {
    let raw: Raw = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Parse {
            path: origin,
            detail: e.message().to_string(),
        })?;
    validate(raw)
}

fn read_table(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    text.parse::<toml::Table>().map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        detail: e.message().to_string(),
    })
}

fn set(table: &mut toml::Table, key: &str, value: String) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("keys are not empty");
    let mut t = table;
    for part in parts {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.to_string(), toml::Value::String(value));
}

fn invalid(key: &'static str, detail: impl ToString) -> Error {
    Error::Invalid {
        key,
        detail: detail.to_string(),
    }
}

fn ttl(key: &'static str, value: Option<String>, default: &str) -> Result<Ttl, Error> {
    value
        .as_deref()
        .unwrap_or(default)
        .parse()
        .map_err(|e| invalid(key, e))
}

/// How long JWT-SVIDs and their keys live: a token at most as long as its key signs, and a
/// key for at least a minute, so that its successor is published for at least ten seconds.
fn jwt_settings(raw: RawJwt, clock_skew: Ttl) -> Result<crate::jwt::Settings, Error> {
    let svid_ttl = ttl("jwt.svid_ttl", raw.svid_ttl, "5m")?;
    let key_ttl = ttl("jwt.key_ttl", raw.key_ttl, "24h")?;
    if key_ttl.as_secs() < 60 {
        return Err(invalid(
            "jwt.key_ttl",
            format!("{key_ttl} is shorter than 1m"),
        ));
    }
    if svid_ttl > key_ttl {
        return Err(invalid(
            "jwt.svid_ttl",
            format!("{svid_ttl} is longer than jwt.key_ttl {key_ttl}"),
        ));
    }
    Ok(crate::jwt::Settings {
        svid_ttl,
        key_ttl,
        clock_skew: clock_skew.duration(),
    })
}

/// Where the SPIFFE bundle endpoint listens: each profile only when its address is set, and
/// `https_web` only with its certificate and key.
fn bundle_endpoint_settings(
    raw: RawBundleEndpoint,
) -> Result<crate::server::bundle_endpoint::Settings, Error> {
    use crate::server::bundle_endpoint::{Settings, WebProfile};
    let address = |key: &'static str, v: Option<String>| -> Result<Option<SocketAddr>, Error> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|e| invalid(key, format!("not an address:port: {e}"))),
        }
    };
    let spiffe_listen = address("bundle_endpoint.spiffe_listen", raw.spiffe_listen)?;
    let web_listen = address("bundle_endpoint.web_listen", raw.web_listen)?;
    let given = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let (cert, key) = (given(raw.web_cert_file), given(raw.web_key_file));
    let web = match (web_listen, cert, key) {
        (None, None, None) => None,
        (Some(listen), Some(cert_file), Some(key_file)) => Some(WebProfile {
            listen,
            cert_file,
            key_file,
        }),
        (None, _, _) => {
            return Err(invalid(
                "bundle_endpoint.web_listen",
                "required when bundle_endpoint.web_cert_file or web_key_file is set",
            ))
        }
        (Some(_), None, _) => {
            return Err(invalid(
                "bundle_endpoint.web_cert_file",
                "required for the https_web profile (the web-PKI certificate chain, PEM)",
            ))
        }
        (Some(_), _, None) => {
            return Err(invalid(
                "bundle_endpoint.web_key_file",
                "required for the https_web profile (the certificate's private key, PEM)",
            ))
        }
    };
    let refresh_hint = short_duration("bundle_endpoint.refresh_hint", raw.refresh_hint, "5m")?;
    if refresh_hint.as_secs() < 1 {
        return Err(invalid("bundle_endpoint.refresh_hint", "at least 1s"));
    }
    Ok(Settings {
        web,
        spiffe_listen,
        refresh_hint,
    })
}

/// The `[[federation]]` tables: each a trust domain other than ours, named once, with an
/// `https` endpoint URL and what its profile needs. `https_spiffe` endpoints must be
/// self-serving (their SPIFFE ID in the trust domain they serve) and come with a first bundle.
fn federation_settings(
    raw: Vec<RawForeign>,
    own: &TrustDomain,
) -> Result<Vec<crate::server::federation::Foreign>, Error> {
    use crate::server::federation::{Foreign, Profile};
    const KEY: &str = "federation";
    let mut out: Vec<Foreign> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let at = |what: String| invalid(KEY, format!("entry {}: {what}", i + 1));
        let url_text = f
            .bundle_endpoint_url
            .ok_or_else(|| at("bundle_endpoint_url is required".into()))?;
        let url: http::Uri = url_text
            .parse()
            .map_err(|e| at(format!("bundle_endpoint_url {url_text:?}: {e}")))?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(at(format!(
                "bundle_endpoint_url {url_text:?} must be https://host[:port]/path"
            )));
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(at(
                "bundle_endpoint_url must not carry user information".into()
            ));
        }
        let named: Option<TrustDomain> = f
            .trust_domain
            .as_deref()
            .map(|t| {
                t.parse()
                    .map_err(|e: crate::spiffe::Error| at(e.to_string()))
            })
            .transpose()?;
        let (trust_domain, profile) = match f.profile.as_deref() {
            Some("https_web") => {
                if f.endpoint_spiffe_id.is_some() {
                    return Err(at(
                        "endpoint_spiffe_id is for the https_spiffe profile".into()
                    ));
                }
                let td = named.ok_or_else(|| at("trust_domain is required".into()))?;
                (td, Profile::Web { ca_file: f.ca_file })
            }
            Some("https_spiffe") => {
                let id: crate::spiffe::SpiffeId = f
                    .endpoint_spiffe_id
                    .ok_or_else(|| at("endpoint_spiffe_id is required with https_spiffe".into()))?
                    .parse()
                    .map_err(|e: crate::spiffe::Error| at(e.to_string()))?;
                let td = id.trust_domain();
                if named.as_ref().is_some_and(|n| *n != td) {
                    return Err(at(format!(
                        "the endpoint {} is not in trust domain {}: only self-serving https_spiffe endpoints are supported",
                        id.as_str(),
                        named.unwrap_or(td)
                    )));
                }
                if f.bundle_file.is_none() {
                    return Err(at("bundle_file (the trust domain's bundle, exchanged out of band) is required with https_spiffe".into()));
                }
                if f.ca_file.is_some() {
                    return Err(at("ca_file is for the https_web profile".into()));
                }
                (td, Profile::Spiffe { endpoint_id: id })
            }
            other => {
                return Err(at(format!(
                    "profile must be https_web or https_spiffe, not {other:?}"
                )))
            }
        };
        if trust_domain == *own {
            return Err(at(format!("{trust_domain} is this trust domain")));
        }
        if out.iter().any(|o| o.trust_domain == trust_domain) {
            return Err(at(format!("{trust_domain} is named twice")));
        }
        out.push(Foreign {
            trust_domain,
            url,
            profile,
            bundle_file: f.bundle_file,
        });
    }
    Ok(out)
}

fn validate(raw: Raw) -> Result<Config, Error> {
    let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("idmint-data"));
    let trust_domain: TrustDomain = raw
        .trust_domain
        .as_deref()
        .unwrap_or("cf.internal")
        .parse()
        .map_err(|e| invalid("trust_domain", e))?;
    let id_template = IdTemplate::new(
        raw.spiffe_id_template
            .as_deref()
            .unwrap_or(IdTemplate::DEFAULT),
        &trust_domain,
    )
    .map_err(|e| invalid("spiffe_id_template", e))?;
    let root_ttl = ttl("ca.root_ttl", raw.ca.root_ttl, "10y")?;
    let intermediate_ttl = ttl("ca.intermediate_ttl", raw.ca.intermediate_ttl, "365d")?;
    let leaf_ttl = ttl("ca.leaf_ttl", raw.ca.leaf_ttl, "1h")?;
    let root_activation_max_wait = ttl(
        "ca.root_activation_max_wait",
        raw.ca.root_activation_max_wait,
        "1h",
    )?;
    let clock_skew = ttl("ca.clock_skew", raw.ca.clock_skew, "30s")?;
    let jwt = jwt_settings(raw.jwt, clock_skew)?;
    let bundle_endpoint = bundle_endpoint_settings(raw.bundle_endpoint)?;
    let federation = federation_settings(raw.federation, &trust_domain)?;
    if intermediate_ttl > root_ttl {
        return Err(invalid(
            "ca.intermediate_ttl",
            format!("{intermediate_ttl} is longer than ca.root_ttl {root_ttl}"),
        ));
    }
    if leaf_ttl > intermediate_ttl {
        return Err(invalid(
            "ca.leaf_ttl",
            format!("{leaf_ttl} is longer than ca.intermediate_ttl {intermediate_ttl}"),
        ));
    }
    let up = raw.ca.upstream;
    let mode = match raw.ca.mode.as_deref().unwrap_or("self-signed") {
        "self-signed" => {
            if up.intermediate_cert.is_some()
                || up.intermediate_key.is_some()
                || up.root_bundle.is_some()
            {
                return Err(invalid("ca.upstream", "upstream files are set but ca.mode is \"self-signed\"; set ca.mode = \"upstream\""));
            }
            Mode::SelfSigned
        }
        "upstream" => {
            let need = |v: Option<PathBuf>, key: &'static str| {
                v.ok_or_else(|| invalid(key, "required when ca.mode = \"upstream\""))
            };
            Mode::Upstream(UpstreamFiles {
                intermediate_cert: need(up.intermediate_cert, "ca.upstream.intermediate_cert")?,
                intermediate_key: need(up.intermediate_key, "ca.upstream.intermediate_key")?,
                root_bundle: need(up.root_bundle, "ca.upstream.root_bundle")?,
            })
        }
        other => {
            return Err(invalid(
                "ca.mode",
                format!("{other:?} is not \"self-signed\" or \"upstream\""),
            ))
        }
    };
    let store_url = raw
        .store
        .url
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("idmint.db").display()));
    if !(store_url.starts_with("sqlite://")
        || store_url.starts_with("postgres://")
        || store_url.starts_with("postgresql://"))
    {
        return Err(invalid(
            "store.url",
            "must start with sqlite:// or postgres://",
        ));
    }
    let listen = raw
        .admin
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:8470")
        .parse()
        .map_err(|e| invalid("admin.listen", format!("not an address:port: {e}")))?;
    let api_listen = raw
        .server
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:8471")
        .parse()
        .map_err(|e| invalid("server.listen", format!("not an address:port: {e}")))?;
    let cells_register_own = match raw.server.cells_register_own {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(b),
        Some(toml::Value::String(s)) if s == "true" || s == "false" => Some(s == "true"),
        Some(other) => {
            return Err(invalid(
                "server.cells_register_own",
                format!("{other} is not true or false"),
            ))
        }
    };
    let fraction = |key: &'static str, v: Option<toml::Value>, default: f64| match v {
        None => Ok(default),
        Some(toml::Value::Float(f)) => parse_fraction(&f.to_string()).map_err(|e| invalid(key, e)),
        Some(toml::Value::Integer(i)) => {
            parse_fraction(&i.to_string()).map_err(|e| invalid(key, e))
        }
        Some(toml::Value::String(s)) => parse_fraction(&s).map_err(|e| invalid(key, e)),
        Some(other) => Err(invalid(
            key,
            format!("{other} is not a fraction: write 0.5 or \"50%\""),
        )),
    };
    let root_rotate_at = fraction("ca.root_rotate_at", raw.ca.root_rotate_at, 0.75)?;
    if !(0.05..=0.95).contains(&root_rotate_at) {
        return Err(invalid(
            "ca.root_rotate_at",
            "must be between 5% and 95% of the root's life",
        ));
    }
    let defaults = Schedule::default();
    let renewal = Schedule::new(
        fraction("agent.renew_at", raw.agent.renew_at, defaults.point())?,
        fraction(
            "agent.renew_jitter",
            raw.agent.renew_jitter,
            defaults.jitter(),
        )?,
    )
    .map_err(|e| match e {
        schedule::Error::PointOutOfRange(_) => invalid("agent.renew_at", e),
        _ => invalid("agent.renew_jitter", e),
    })?;
    let admin_max_body = positive("admin.max_body", raw.admin.max_body.clone(), 8 << 20)?;
    let admin_socket = match raw.admin.socket {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p),
        None => Some(data_dir.join("admin.sock")),
    };
    let sds_dir = raw.agent.sds_dir.unwrap_or_else(|| data_dir.join("sds"));
    crate::agent::check_sds_dir(&sds_dir).map_err(|e| invalid("agent.sds_dir", e))?;
    if let Some(socket) = &admin_socket {
        crate::admin::listener::check_path(socket).map_err(|e| invalid("admin.socket", e))?;
    }
    // Today's behaviour until an operator moves the foundation, a space or an app to policies.
    let default_mode = raw
        .policy
        .default_mode
        .as_deref()
        .unwrap_or("trust-domain")
        .parse()
        .map_err(|e| invalid("policy.default_mode", e))?;
    let policy_server = policy_server(raw.policy.source.as_deref(), raw.policy.server)?;
    let agent_ack_grace =
        short_duration("server.agent_ack_grace", raw.server.agent_ack_grace, "2m")?;
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let max_handshakes = positive("server.max_handshakes", raw.server.max_handshakes, 256)?;
    let limits = crate::server::limits::Settings {
        max_handshakes: max_handshakes as usize,
        sign_rate: small(positive(
            "server.cell_sign_rate",
            raw.server.cell_sign_rate,
            100,
        )?),
        sign_burst: small(positive(
            "server.cell_sign_burst",
            raw.server.cell_sign_burst,
            2_000,
        )?),
        denial_records: small(positive(
            "server.denial_records",
            raw.server.denial_records,
            60,
        )?),
        cell_instances: small(positive(
            "server.cell_instances",
            raw.server.cell_instances,
            1_000,
        )?),
        max_message: message_size(
            "server.max_message",
            raw.server.max_message,
            crate::proto::DEFAULT_MAX_MESSAGE,
        )?,
    };
    let max_streams_per_socket = positive(
        "agent.max_streams_per_socket",
        raw.agent.max_streams_per_socket,
        16,
    )?;
    let max_streams = positive("agent.max_streams", raw.agent.max_streams, 100_000)?;
    let max_sds_message = message_size("agent.max_message", raw.agent.max_message, 1 << 20)?;
    let sds_socket_mode = socket_mode(raw.agent.sds_socket_mode.as_deref())?;
    let ack_report_every =
        short_duration("agent.ack_report_every", raw.agent.ack_report_every, "30s")?;
    Ok(Config {
        ca: ca::Settings {
            trust_domain,
            id_template,
            mode,
            kek_file: raw.ca.kek_file.unwrap_or_else(|| data_dir.join("kek")),
            root_ttl,
            intermediate_ttl,
            leaf_ttl,
            root_rotate_at,
            root_activation_max_wait,
            clock_skew,
            root_min_publish: if bundle_endpoint.web.is_some()
                || bundle_endpoint.spiffe_listen.is_some()
            {
                bundle_endpoint.refresh_hint * 3
            } else {
                std::time::Duration::ZERO
            },
        },
        store: store::Settings { url: store_url },
        admin: AdminSettings {
            listen,
            socket: admin_socket,
            credential: raw.admin.credential.filter(|p| !p.as_os_str().is_empty()),
            server_name: raw
                .admin
                .server_name
                .unwrap_or_else(|| "localhost".to_string()),
            max_body: admin_max_body as usize,
        },
        server: ServerSettings {
            listen: api_listen,
            cells_register_own,
            agent_ack_grace,
            limits,
        },
        agent: AgentSettings {
            sds_dir,
            instance_dir: raw
                .agent
                .instance_dir
                .unwrap_or_else(|| data_dir.join("instances")),
            renewal,
            ack_report_every,
            max_streams_per_socket: max_streams_per_socket as usize,
            max_streams: max_streams as usize,
            max_message: max_sds_message,
            sds_socket_mode,
        },
        jwt,
        bundle_endpoint,
        federation,
        policy: PolicySettings {
            default_mode,
            server: policy_server,
        },
        data_dir,
        file: None,
    })
}

/// A positive duration of milliseconds, seconds or minutes: `100ms`, `5s`, `1m`.
/// `agent.sds_socket_mode`: octal read and write bits (`0600`, `0660`, `0666`), never execute
/// bits or more; 0600 if unset.
fn socket_mode(raw: Option<&str>) -> Result<u32, Error> {
    let Some(raw) = raw else { return Ok(0o600) };
    let mode = u32::from_str_radix(raw.trim_start_matches("0o"), 8).map_err(|_| {
        invalid(
            "agent.sds_socket_mode",
            format!("{raw:?} is not an octal mode like 0600"),
        )
    })?;
    if mode & !0o666 != 0 || mode & 0o600 != 0o600 {
        return Err(invalid(
            "agent.sds_socket_mode",
            format!("{raw}: give the owner read and write, and others at most read and write (0600, 0660 or 0666)"),
        ));
    }
    Ok(mode)
}

/// A positive whole number given as a TOML integer or a string of digits; `default` if unset.
fn positive(key: &'static str, raw: Option<toml::Value>, default: u64) -> Result<u64, Error> {
    match raw {
        None => Ok(default),
        Some(toml::Value::Integer(n)) if n > 0 => Ok(n as u64),
        Some(toml::Value::String(s)) if s.parse::<u64>().is_ok_and(|n| n > 0) => {
            Ok(s.parse().expect("checked"))
        }
        Some(other) => Err(invalid(
            key,
            format!("{other} is not a positive whole number"),
        )),
    }
}

/// A gRPC message size limit: from 1 KiB, below which our own clients' requests do not fit,
/// to 64 MiB, past which one stream could hold the process's memory.
fn message_size(
    key: &'static str,
    raw: Option<toml::Value>,
    default: usize,
) -> Result<usize, Error> {
    const RANGE: std::ops::RangeInclusive<u64> = 1024..=64 << 20;
    let n = positive(key, raw, default as u64)?;
    if !RANGE.contains(&n) {
        return Err(invalid(
            key,
            format!("{n} bytes is outside 1024 (1 KiB) to 67108864 (64 MiB)"),
        ));
    }
    Ok(n as usize)
}

fn short_duration(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<std::time::Duration, Error> {
    let text = value.as_deref().unwrap_or(default);
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().unwrap_or(0);
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        _ => None,
    };
    match millis {
        Some(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(invalid(
            key,
            format!("{text:?} is not a positive duration like \"500ms\", \"5s\" or \"1m\""),
        )),
    }
}

/// The policy server's settings when `policy.source` is `policy-server`; none may be given
/// otherwise, so a half-done switch is an error rather than silently ignored.
fn policy_server(
    source: Option<&str>,
    raw: RawPolicyServer,
) -> Result<Option<PolicyServerSettings>, Error> {
    let origin: crate::policy::Origin = source
        .unwrap_or("store")
        .parse()
        .map_err(|e| invalid("policy.source", e))?;
    let any_given = raw.url.is_some()
        || raw.ca_file.is_some()
        || raw.cert_file.is_some()
        || raw.key_file.is_some()
        || raw.poll_every.is_some()
        || raw.timeout.is_some()
        || raw.max_answer_bytes.is_some();
    if origin == crate::policy::Origin::Store {
        if any_given {
            return Err(invalid(
                "policy.server",
                "policy server settings are given but policy.source is \"store\"; set policy.source = \"policy-server\"",
            ));
        }
        return Ok(None);
    }
    let need = |v: Option<PathBuf>, key: &'static str| {
        v.ok_or_else(|| invalid(key, "required when policy.source = \"policy-server\""))
    };
    let url = raw.url.ok_or_else(|| {
        invalid(
            "policy.server.url",
            "required when policy.source = \"policy-server\"",
        )
    })?;
    let url = url.trim_end_matches('/').to_string();
    let authority = url.strip_prefix("https://").unwrap_or("");
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        return Err(invalid(
            "policy.server.url",
            format!("{url:?} is not https://HOST:PORT (the internal API is mutual TLS only)"),
        ));
    }
    let poll_every = short_duration("policy.server.poll_every", raw.poll_every, "5s")?;
    let timeout = short_duration("policy.server.timeout", raw.timeout, "10s")?;
    let max_answer_bytes = positive(
        "policy.server.max_answer_bytes",
        raw.max_answer_bytes,
        64 << 20,
    )? as usize;
    Ok(Some(PolicyServerSettings {
        url,
        ca_file: need(raw.ca_file, "policy.server.ca_file")?,
        cert_file: need(raw.cert_file, "policy.server.cert_file")?,
        key_file: need(raw.key_file, "policy.server.key_file")?,
        poll_every,
        timeout,
        max_answer_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("idmint.toml");
        std::fs::write(
            &file,
            "trust_domain = \"file.td\"\n[ca]\nleaf_ttl = \"2h\"\nroot_ttl = \"5y\"\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(file),
            overrides: vec![("ca.leaf_ttl".into(), "15m".into())],
        };
        let c = Config::load_with_env(
            &sources,
            env(&[
                ("IDMINT_TRUST_DOMAIN", "env.td"),
                ("IDMINT_CA_LEAF_TTL", "3h"),
            ]),
        )
        .unwrap();
        assert_eq!(c.ca.trust_domain.as_str(), "env.td");
        assert_eq!(c.ca.leaf_ttl.to_string(), "15m");
        assert_eq!(c.ca.root_ttl.to_string(), "5y");
        assert!(c.store.url.ends_with("idmint-data/idmint.db"));
    }

    #[test]
    fn mistakes_name_the_key() {
        let s = Sources::default();
        let err = Config::load_with_env(&s, env(&[("IDMINT_CA_LEAF_TLL", "1h")])).unwrap_err();
        assert!(err.to_string().contains("IDMINT_CA_LEAF_TLL"), "{err}");
        let err = Config::load_with_env(&s, env(&[("IDMINT_CA_LEAF_TTL", "soon")])).unwrap_err();
        assert!(err.to_string().starts_with("ca.leaf_ttl:"), "{err}");
        let err = Config::load_with_env(&s, env(&[("IDMINT_CA_LEAF_TTL", "400d")])).unwrap_err();
        assert!(
            err.to_string().contains("longer than ca.intermediate_ttl"),
            "{err}"
        );
        let err = Config::load_with_env(&s, env(&[("IDMINT_CA_MODE", "upstream")])).unwrap_err();
        assert!(
            err.to_string().contains("ca.upstream.intermediate_cert"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[ca]\nleaf_tll = \"1h\"\n").unwrap();
        let err = Config::load_with_env(
            &Sources {
                file: Some(file),
                ..s.clone()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("leaf_tll"), "{err}");
        assert!(Sources::parse_override("ca.nope=1").is_err());
    }

    #[test]
    fn printed_config_reads_back_the_same() {
        let c = Config::load_with_env(&Sources::default(), env(&[("IDMINT_CA_LEAF_TTL", "20m")]))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("idmint.toml");
        std::fs::write(&file, c.to_redacted_toml()).unwrap();
        let again = Config::load_with_env(
            &Sources {
                file: Some(file),
                ..Default::default()
            },
            env(&[]),
        )
        .unwrap();
        assert_eq!(again.to_redacted_toml(), c.to_redacted_toml());
        assert_eq!(again.ca.leaf_ttl.to_string(), "20m");
    }

    #[test]
    fn an_sds_directory_too_long_for_socket_paths_is_refused() {
        let long = format!("/{}", "d".repeat(70));
        let s = Sources {
            overrides: vec![("data_dir".into(), long.clone())],
            ..Default::default()
        };
        let e = Config::load_with_env(&s, env(&[])).unwrap_err().to_string();
        assert!(e.starts_with("agent.sds_dir: "), "{e}");
        assert!(
            e.contains("too long for SDS sockets") && e.contains("at most 65 bytes"),
            "{e}"
        );
        let s = Sources {
            overrides: vec![
                ("data_dir".into(), long),
                ("agent.sds_dir".into(), "/run/idmint/sds".into()),
            ],
            ..Default::default()
        };
        Config::load_with_env(&s, env(&[])).expect("a short socket directory is fine");
    }

    #[test]
    fn passwords_are_redacted() {
        let s = Sources {
            overrides: vec![(
                "store.url".into(),
                "postgres://idmint:hunter2@db:5432/idmint".into(),
            )],
            ..Default::default()
        };
        let c = Config::load_with_env(&s, env(&[])).unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://idmint:***@db:5432/idmint"),
            "{shown}"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("postgres://idmint:***@db:5432/idmint"));
    }

    fn with(overrides: &[(&str, &str)]) -> Result<Config, Error> {
        let sources = Sources {
            file: None,
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Config::load_with_env(&sources, Vec::new())
    }

    #[test]
    fn message_limits_have_defaults_and_bounds() {
        let c = with(&[]).unwrap();
        assert_eq!(c.server.limits.max_message, 64 << 10);
        assert_eq!(c.agent_settings().streams.max_message, 1 << 20);
        let c = with(&[
            ("server.max_message", "1024"),
            ("agent.max_message", "67108864"),
        ]);
        let c = c.unwrap();
        assert_eq!(c.server.limits.max_message, 1024);
        assert_eq!(c.agent.max_message, 64 << 20);
        for (key, value) in [
            ("server.max_message", "1023"),
            ("agent.max_message", "67108865"),
            ("agent.max_message", "0"),
            ("server.max_message", "lots"),
        ] {
            let err = with(&[(key, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}:")), "{err}");
        }
    }

    #[test]
    fn the_policy_server_is_all_or_nothing_and_its_mistakes_name_the_key() {
        let c = with(&[]).unwrap();
        assert_eq!(c.policy.origin(), crate::policy::Origin::Store);
        assert_eq!(c.policy.default_mode, crate::policy::Mode::TrustDomain);
        let full = [
            ("policy.source", "policy-server"),
            (
                "policy.server.url",
                "https://policy-server.service.cf.internal:4003/",
            ),
            ("policy.server.ca_file", "ca.pem"),
            ("policy.server.cert_file", "c.pem"),
            ("policy.server.key_file", "c.key"),
        ];
        let c = with(&full).unwrap();
        let ps = c.policy.server.as_ref().unwrap();
        assert_eq!(ps.url, "https://policy-server.service.cf.internal:4003");
        assert_eq!(ps.poll_every, std::time::Duration::from_secs(5));
        assert_eq!(ps.timeout, std::time::Duration::from_secs(10));
        assert_eq!(ps.max_answer_bytes, 64 << 20);
        // What is printed reads back the same.
        let printed = c.to_redacted_toml();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("idmint.toml");
        std::fs::write(&file, &printed).unwrap();
        let again = Config::load_with_env(
            &Sources {
                file: Some(file),
                overrides: Vec::new(),
            },
            Vec::new(),
        )
        .unwrap();
        assert_eq!(again.policy.server.unwrap().url, ps.url);

        let key_of = |overrides: &[(&str, &str)]| match with(overrides) {
            Err(Error::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key_of(&[("policy.source", "cf")]), "policy.source");
        assert_eq!(
            key_of(&[("policy.default_mode", "strict")]),
            "policy.default_mode"
        );
        assert_eq!(
            key_of(&[("policy.server.url", "https://x:1")]),
            "policy.server",
            "server settings while the source is the store"
        );
        assert_eq!(key_of(&full[..4]), "policy.server.key_file");
        let mut plain = full;
        plain[1] = ("policy.server.url", "http://x:4003");
        assert_eq!(key_of(&plain), "policy.server.url");
        let mut no_port = full;
        no_port[1] = ("policy.server.url", "https://x");
        assert_eq!(key_of(&no_port), "policy.server.url");
        for bad in ["0s", "5", "1h", "-1s", "fast"] {
            let mut o = full.to_vec();
            o.push(("policy.server.poll_every", bad));
            assert_eq!(key_of(&o), "policy.server.poll_every", "{bad}");
        }
        let mut o = full.to_vec();
        o.push(("policy.server.poll_every", "250ms"));
        o.push(("policy.server.max_answer_bytes", "0"));
        assert_eq!(key_of(&o), "policy.server.max_answer_bytes");
    }

    #[test]
    fn federation_entries_are_checked_and_name_what_is_wrong() {
        let spiffe = "[[federation]]\nbundle_endpoint_url = \"https://b.example:8443/bundle\"\n\
                      profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://b.example/server\"\n\
                      bundle_file = \"b.json\"\n";
        let web = "[[federation]]\ntrust_domain = \"c.example\"\n\
                   bundle_endpoint_url = \"https://c.example/\"\nprofile = \"https_web\"\n";
        let ok = Config::from_toml_str(&format!("{spiffe}{web}")).unwrap();
        assert_eq!(ok.federation.len(), 2);
        let shown = Config::from_toml_str(&ok.to_redacted_toml()).unwrap();
        assert_eq!(shown.federation, ok.federation, "config show reads back");
        assert_eq!(ok.federation[0].trust_domain.as_str(), "b.example");
        assert_eq!(ok.federation[1].profile.name(), "https_web");
        for (bad, says) in [
            (spiffe.replace("https://b", "http://b"), "must be https"),
            (
                spiffe.replace("bundle_file = \"b.json\"\n", ""),
                "bundle_file",
            ),
            (spiffe.replace("https_spiffe", "https"), "profile must be"),
            (
                format!("{spiffe}trust_domain = \"other.example\"\n"),
                "self-serving",
            ),
            (
                web.replace("trust_domain = \"c.example\"\n", ""),
                "trust_domain is required",
            ),
            (
                web.replace("c.example\"", "cf.internal\""),
                "is this trust domain",
            ),
            (format!("{web}{web}"), "named twice"),
            (
                web.replace("https://c.example/", "https://user@c.example/"),
                "user information",
            ),
            (format!("{web}surprise = 1\n"), "surprise"),
        ] {
            let err = Config::from_toml_str(&bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
