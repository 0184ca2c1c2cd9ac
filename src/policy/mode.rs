//! Enforcement modes: whether a provider's sidecar accepts any workload of the trust domain
//! (`trust-domain`, what it did before policies existed) or only the apps policies allow
//! (`policy`). Set for the foundation, a space or an app; the narrowest one set wins, so a
//! foundation can move to policies one space or app at a time.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::Guid;

/// What a provider's sidecar accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Any SPIFFE ID of the trust domain.
    TrustDomain,
    /// Only the SPIFFE IDs of the apps a policy allows.
    Policy,
}

impl Mode {
    /// The name operators type and the store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TrustDomain => "trust-domain",
            Mode::Policy => "policy",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "trust-domain" => Ok(Mode::TrustDomain),
            "policy" => Ok(Mode::Policy),
            other => Err(format!(
                "enforcement mode {other:?} is neither \"trust-domain\" nor \"policy\""
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a mode is set for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every app without a narrower setting.
    Foundation,
    /// The apps of one space without a setting of their own.
    Space(Guid),
    /// One app.
    App(Guid),
}

impl Scope {
    /// The scope's kind as the store keeps it.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Foundation => "foundation",
            Scope::Space(_) => "space",
            Scope::App(_) => "app",
        }
    }

    /// The GUID it names; empty for the foundation.
    pub fn id(&self) -> &str {
        match self {
            Scope::Foundation => "",
            Scope::Space(g) | Scope::App(g) => g.as_str(),
        }
    }

    /// The scope of a stored `(kind, id)`.
    pub fn parse(kind: &str, id: &str) -> Result<Scope, String> {
        let guid = || {
            id.parse::<Guid>()
                .map_err(|e| format!("{kind} {id:?}: {e}"))
        };
        match kind {
            "foundation" if id.is_empty() => Ok(Scope::Foundation),
            "space" => Ok(Scope::Space(guid()?)),
            "app" => Ok(Scope::App(guid()?)),
            other => Err(format!("no enforcement scope {other:?} {id:?}")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Foundation => f.write_str("the foundation"),
            Scope::Space(g) => write!(f, "space {g}"),
            Scope::App(g) => write!(f, "app {g}"),
        }
    }
}

/// Every mode set, over the configured default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Modes {
    /// The foundation's mode when nobody set one: the config's `policy.default_mode`.
    configured: Mode,
    set: BTreeMap<Scope, Mode>,
}

impl Modes {
    /// Nothing set yet: every app is in `configured`.
    pub fn new(configured: Mode) -> Modes {
        Modes {
            configured,
            set: BTreeMap::new(),
        }
    }

    /// Sets (`Some`) or clears (`None`) the mode of `scope`. Returns whether anything changed.
    pub fn set(&mut self, scope: Scope, mode: Option<Mode>) -> bool {
        match mode {
            Some(m) => self.set.insert(scope, m) != Some(m),
            None => self.set.remove(&scope).is_some(),
        }
    }

    /// The mode of an app in `space` (when known): the app's own, else its space's, else the
    /// foundation's, else the configured default.
    pub fn of(&self, app: &Guid, space: Option<&Guid>) -> Mode {
        let get = |s: Scope| self.set.get(&s).copied();
        get(Scope::App(app.clone()))
            .or_else(|| space.and_then(|s| get(Scope::Space(s.clone()))))
            .or_else(|| get(Scope::Foundation))
            .unwrap_or(self.configured)
    }

    /// Every mode set, narrowest last.
    pub fn iter(&self) -> impl Iterator<Item = (&Scope, Mode)> {
        self.set.iter().map(|(s, m)| (s, *m))
    }

    /// The mode the foundation has when nobody set one.
    pub fn configured(&self) -> Mode {
        self.configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u8) -> Guid {
        format!("{n:08x}-0000-4000-8000-000000000000")
            .parse()
            .unwrap()
    }

    #[test]
    fn the_narrowest_mode_set_wins() {
        let mut modes = Modes::new(Mode::TrustDomain);
        let (app, other, space) = (g(1), g(2), g(3));
        assert_eq!(modes.of(&app, Some(&space)), Mode::TrustDomain);
        assert!(modes.set(Scope::Foundation, Some(Mode::Policy)));
        assert_eq!(modes.of(&app, Some(&space)), Mode::Policy);
        assert!(modes.set(Scope::Space(space.clone()), Some(Mode::TrustDomain)));
        assert_eq!(modes.of(&app, Some(&space)), Mode::TrustDomain);
        assert_eq!(modes.of(&app, None), Mode::Policy, "space unknown");
        assert!(modes.set(Scope::App(app.clone()), Some(Mode::Policy)));
        assert_eq!(modes.of(&app, Some(&space)), Mode::Policy);
        assert_eq!(modes.of(&other, Some(&space)), Mode::TrustDomain);
        assert!(
            !modes.set(Scope::App(app.clone()), Some(Mode::Policy)),
            "unchanged"
        );
        assert!(modes.set(Scope::App(app.clone()), None));
        assert!(
            !modes.set(Scope::App(app.clone()), None),
            "nothing to clear"
        );
        assert_eq!(modes.of(&app, Some(&space)), Mode::TrustDomain);
    }

    #[test]
    fn modes_and_scopes_read_back_what_they_write() {
        for m in [Mode::TrustDomain, Mode::Policy] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert!("Policy".parse::<Mode>().is_err());
        for s in [Scope::Foundation, Scope::Space(g(1)), Scope::App(g(2))] {
            assert_eq!(Scope::parse(s.kind(), s.id()), Ok(s.clone()));
        }
        assert!(Scope::parse("foundation", "x").is_err());
        assert!(Scope::parse("space", "not-a-guid").is_err());
        assert!(Scope::parse("org", "").is_err());
    }
}
