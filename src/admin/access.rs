//! Who may do what on the admin API. A caller is known by how it connected: plain HTTP names
//! no one; mutual TLS names the principal of its certificate; the Unix socket, open to the
//! service's user alone, is that user. Each route needs one [`Operation`], and each role is
//! allowed a fixed set of them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::ca::{Principal, PrincipalError, Settings};
use crate::store::{EntryKind, LedgerRecord};

/// What a route does, as far as access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read the ledger (`GET /v1/ledger`).
    ReadLedger,
    /// List registered instances.
    ReadPlacements,
    /// Register or deregister instances.
    Place,
    /// Rotate the CA.
    RotateCa,
    /// List policies and enforcement modes.
    ReadPolicies,
    /// Add or remove policies, or set enforcement modes.
    ChangePolicies,
    /// Revoke certificates, apps or cells.
    Revoke,
}

impl Operation {
    /// Every operation, for tests and documentation.
    pub const ALL: [Operation; 7] = [
        Operation::ReadLedger,
        Operation::ReadPlacements,
        Operation::Place,
        Operation::RotateCa,
        Operation::ReadPolicies,
        Operation::ChangePolicies,
        Operation::Revoke,
    ];
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::ReadLedger => "read the ledger",
            Operation::ReadPlacements => "list instances",
            Operation::Place => "register or deregister instances",
            Operation::RotateCa => "rotate the CA",
            Operation::ReadPolicies => "read policies",
            Operation::ChangePolicies => "change policies",
            Operation::Revoke => "revoke certificates",
        })
    }
}

/// A role of the admin API, as a principal's credential grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Operators: everything.
    Admin,
    /// Security teams: the ledger, nothing else.
    Auditor,
    /// What places instances on cells: placements.
    Orchestrator,
}

impl Role {
    /// Whether the role may do `op`.
    pub fn allows(self, op: Operation) -> bool {
        use Operation::*;
        match self {
            Role::Admin => true,
            Role::Auditor => op == ReadLedger,
            Role::Orchestrator => matches!(op, ReadPlacements | Place),
        }
    }

    fn of(principal: &Principal) -> Option<Role> {
        match principal {
            Principal::Admin(_) => Some(Role::Admin),
            Principal::Auditor(_) => Some(Role::Auditor),
            Principal::Orchestrator => Some(Role::Orchestrator),
            Principal::Cell(_) | Principal::Server { .. } => None,
        }
    }
}

/// Who is on the other end of an admin connection.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Plain HTTP: no one in particular.
    Anonymous,
    /// Mutual TLS whose certificate names a principal; and the certificate's serial (hex).
    Principal(Principal, String),
    /// Mutual TLS whose certificate chains to our roots but names no principal.
    Unrecognised(PrincipalError),
    /// The Unix socket, from the service's own user (or root).
    Socket {
        /// The connecting process's user id.
        uid: u32,
    },
}

/// Why a caller may not do an operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It said who it is by no credential: 401.
    Unauthenticated,
    /// It is someone who may not: 403, recorded.
    Forbidden(String),
}

impl Caller {
    /// Whether this caller may do `op`.
    pub fn may(&self, op: Operation, settings: &Settings) -> Result<(), Refusal> {
        match self {
            Caller::Anonymous => Err(Refusal::Unauthenticated),
            Caller::Socket { .. } => Ok(()),
            Caller::Unrecognised(why) => Err(Refusal::Forbidden(why.to_string())),
            Caller::Principal(p, _) => match Role::of(p) {
                Some(role) if role.allows(op) => Ok(()),
                Some(role) => Err(Refusal::Forbidden(format!(
                    "{} has the {} role, which may not {op}",
                    p.spiffe_id(settings),
                    format!("{role:?}").to_lowercase()
                ))),
                None => Err(Refusal::Forbidden(format!(
                    "{} is not an admin, auditor or orchestrator; the admin API serves those roles only",
                    p.spiffe_id(settings)
                ))),
            },
        }
    }

    /// Who this is, as the ledger records it.
    pub fn describe(&self, settings: &Settings) -> String {
        match self {
            Caller::Anonymous => "an unauthenticated client".into(),
            Caller::Principal(p, _) => p.spiffe_id(settings),
            Caller::Unrecognised(why) => format!("a client certificate that {why}"),
            Caller::Socket { uid } => format!("the admin socket (uid {uid})"),
        }
    }
}

/// How many admin requests were refused, by why.
#[derive(Debug, Default)]
pub struct Refusals {
    unauthenticated: AtomicU64,
    forbidden: AtomicU64,
    too_large: AtomicU64,
}

impl Refusals {
    fn unauthenticated(&self) {
        self.unauthenticated.fetch_add(1, Ordering::Relaxed);
    }

    fn forbidden(&self) {
        self.forbidden.fetch_add(1, Ordering::Relaxed);
    }

    fn too_large(&self) {
        self.too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// `idmint_admin_refusals_total`, by reason.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "idmint_admin_refusals_total";
        let _ = writeln!(out, "# HELP {name} Admin API requests refused: no credential (unauthenticated), a role that may not (forbidden), or a body over the limit (too_large).");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (reason, n) in [
            ("unauthenticated", &self.unauthenticated),
            ("forbidden", &self.forbidden),
            ("too_large", &self.too_large),
        ] {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// The caller of a request that was let through, as the ledger names it: handlers that change
/// something record this.
#[derive(Clone, Debug)]
pub struct Actor(pub String);

/// Whether the request says its body is larger than `max`; a body sent without its length is
/// cut off at the same size as it is read.
fn too_large(request: &Request, max: usize) -> bool {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
}

/// The most of a refused request's path its record keeps.
const MAX_PATH_RECORDED: usize = 200;

/// What the 401 says: how to get in.
const UNAUTHENTICATED: &str = "this needs a credential: connect to admin.listen with mutual TLS \
using an admin, auditor or orchestrator credential (idmint role enroll), or use the admin \
socket (admin.socket) as the service's user";

/// Lets a request through when its caller may do `op`, with its [`Actor`] attached;
/// otherwise answers 401, or 403 with the reason and a denial record in the ledger.
pub async fn require(
    State((state, op)): State<(AdminState, Operation)>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    mut request: Request,
    next: Next,
) -> Response {
    let settings = state.ca.settings();
    let revoked = match &caller {
        Caller::Principal(_, serial) => state.revocations.now().credential_refusal(serial, None),
        _ => None,
    };
    let verdict = match revoked {
        Some(why) => Err(Refusal::Forbidden(why)),
        None => caller.may(op, settings),
    };
    match verdict {
        Ok(()) if too_large(&request, state.max_body) => {
            state.refusals.too_large();
            let msg = format!(
                "the body is larger than {} bytes, the most the admin API takes (admin.max_body)\n",
                state.max_body
            );
            (StatusCode::PAYLOAD_TOO_LARGE, msg).into_response()
        }
        Ok(()) => {
            let actor = Actor(caller.describe(settings));
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(Refusal::Unauthenticated) => {
            state.refusals.unauthenticated();
            (StatusCode::UNAUTHORIZED, format!("{UNAUTHENTICATED}\n")).into_response()
        }
        Err(Refusal::Forbidden(reason)) => {
            state.refusals.forbidden();
            let path: String = request
                .uri()
                .path()
                .chars()
                .take(MAX_PATH_RECORDED)
                .collect();
            let what = format!("{} {path}", request.method());
            let who = caller.describe(settings);
            let now = state.clock.now();
            // A caller refused in a loop gets a bounded number of records, as a cell does.
            let one_by_one = state.limits.as_ref().is_none_or(|l| {
                l.record_admin_refusal(&who, &what, &reason, crate::clock::unix_ms(now))
            });
            if one_by_one {
                let record = LedgerRecord {
                    reason: Some(format!("admin API: {who} refused {what}: {reason}")),
                    ..LedgerRecord::bare(EntryKind::Denied, now)
                };
                if let Err(e) = state.ledger.append(record).await {
                    tracing::error!(error = %e, "cannot record an admin API refusal");
                }
            }
            (StatusCode::FORBIDDEN, format!("{reason}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_is_allowed_exactly_its_operations() {
        use Operation::*;
        let s = Settings::defaults();
        let allowed = |p: Principal| -> Vec<Operation> {
            let caller = Caller::Principal(p, "40".into());
            Operation::ALL
                .into_iter()
                .filter(|op| caller.may(*op, &s).is_ok())
                .collect()
        };
        assert_eq!(allowed(Principal::Admin("ops".into())), Operation::ALL);
        assert_eq!(allowed(Principal::Auditor("sec".into())), [ReadLedger]);
        assert_eq!(allowed(Principal::Orchestrator), [ReadPlacements, Place]);
        assert_eq!(allowed(Principal::Cell("cell-1".parse().unwrap())), []);
        let server = Principal::Server {
            dns: vec![],
            ips: vec![],
        };
        assert_eq!(allowed(server), []);
    }

    #[test]
    fn no_credential_is_unauthenticated_and_the_socket_may_do_everything() {
        let s = Settings::defaults();
        for op in Operation::ALL {
            assert_eq!(Caller::Anonymous.may(op, &s), Err(Refusal::Unauthenticated));
            assert_eq!(Caller::Socket { uid: 7 }.may(op, &s), Ok(()));
        }
        let cell = Caller::Principal(Principal::Cell("cell-1".parse().unwrap()), "40".into());
        let Err(Refusal::Forbidden(why)) = cell.may(Operation::Place, &s) else {
            panic!("a cell was let in");
        };
        assert!(why.contains("spiffe://cf.internal/cell/cell-1"), "{why}");
    }
}
