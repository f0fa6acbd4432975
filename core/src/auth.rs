//! Who may do what: principals, their permissions per role and action, and the auth file that
//! maps token hashes to principals (`--auth-file`), in the spirit of Aurora's Shiro
//! permissions. Pure: the file's text in, decisions out; the scheduler, its HTTP API and the
//! agent's log server all decide through [`AuthPolicy::check`].
//!
//! The auth file (TOML):
//!
//! ```toml
//! [[principal]]
//! name = "alice"
//! # sha256 of the token, hex (`borealis admin token` prints a token and this line)
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! # "ROLE:ACTION" (either may be `*`), or a cluster action: "maintenance", "admin"; "*": all
//! permissions = ["www:*", "db:read", "maintenance"]
//! ```
//!
//! Role-scoped actions: `create` (jobs, cron schedules and runs), `kill` (jobs, instances,
//! cron deschedules), `update`, `restart`, `quota` (setting the role's quota), `read` (a
//! role's jobs, tasks, logs, updates, quota). Cluster actions: `maintenance` (host modes),
//! `admin` (backups; implies every other permission). Any authenticated principal may read
//! what is not a role's: the list of hosts and their modes, the cluster's summary.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// An action a principal may be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Create,
    Kill,
    Update,
    Restart,
    Quota,
    Read,
    Maintenance,
    Admin,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Create,
        Action::Kill,
        Action::Update,
        Action::Restart,
        Action::Quota,
        Action::Read,
        Action::Maintenance,
        Action::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Kill => "kill",
            Action::Update => "update",
            Action::Restart => "restart",
            Action::Quota => "quota",
            Action::Read => "read",
            Action::Maintenance => "maintenance",
            Action::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == text)
    }

    /// Whether the action concerns the whole cluster rather than one role.
    pub fn is_cluster(self) -> bool {
        matches!(self, Action::Maintenance | Action::Admin)
    }

    /// Whether the action changes state (and is written to the audit log).
    pub fn is_mutation(self) -> bool {
        self != Action::Read
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One grant: an action (or all) on a role (or all), or a cluster action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    /// `None`: every role.
    pub role: Option<String>,
    /// `None`: every action.
    pub action: Option<Action>,
}

impl Permission {
    /// Parses `ROLE:ACTION` (either may be `*`), `maintenance`, `admin` or `*`.
    pub fn parse(text: &str) -> Result<Permission, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Permission {
                role: None,
                action: None,
            });
        }
        let Some((role, action)) = text.split_once(':') else {
            return match Action::parse(text) {
                Some(a) if a.is_cluster() => Ok(Permission {
                    role: None,
                    action: Some(a),
                }),
                _ => Err(format!(
                    "permission {text:?}: expected ROLE:ACTION, \"maintenance\", \"admin\" or \"*\""
                )),
            };
        };
        let role = match role {
            "*" => None,
            "" => return Err(format!("permission {text:?}: the role is empty")),
            r => Some(r.to_string()),
        };
        let action = match action {
            "*" => None,
            a => match Action::parse(a) {
                Some(a) if a.is_cluster() => {
                    return Err(format!(
                        "permission {text:?}: {a} is a cluster action; write it alone: \"{a}\""
                    ))
                }
                Some(a) => Some(a),
                None => {
                    return Err(format!(
                        "permission {text:?}: unknown action {a:?} (create, kill, update, restart, quota, read or *)"
                    ))
                }
            },
        };
        Ok(Permission { role, action })
    }

    fn allows(&self, action: Action, role: Option<&str>) -> bool {
        if self.role.is_none() && self.action == Some(Action::Admin) {
            return true;
        }
        if let Some(a) = self.action {
            if a != action {
                return false;
            }
        }
        match (&self.role, role) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => mine == theirs,
        }
    }
}

/// An authenticated identity and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub permissions: Vec<Permission>,
}

impl Principal {
    /// Whether the principal may do `action` on `role` (`None` for a cluster action).
    pub fn may(&self, action: Action, role: Option<&str>) -> bool {
        if action.is_cluster() {
            return self
                .permissions
                .iter()
                .any(|p| p.role.is_none() && p.allows(action, None));
        }
        let Some(role) = role else {
            return false;
        };
        self.permissions
            .iter()
            .any(|p| p.allows(action, Some(role)))
    }

    /// Whether the principal may read anything of `role`.
    pub fn may_read(&self, role: &str) -> bool {
        self.may(Action::Read, Some(role))
    }
}

/// A refusal: one line naming the principal, the action and the role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub principal: String,
    pub action: Action,
    pub role: Option<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.role {
            Some(role) => write!(
                f,
                "permission denied: principal {:?} may not {} jobs of role {:?}",
                self.principal, self.action, role
            ),
            None => write!(
                f,
                "permission denied: principal {:?} may not {} (a cluster permission)",
                self.principal, self.action
            ),
        }
    }
}

/// The hex SHA-256 of a token: what the auth file stores, so the file holds no secrets.
pub fn token_sha256(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Tokens are at least this long (a guessable token is no authentication).
pub const TOKEN_LEN_MIN: usize = 16;
/// And at most this long (bounds what a peer may make the scheduler hash).
pub const TOKEN_LEN_MAX: usize = 512;

/// The principals of an auth file, by token hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    by_hash: HashMap<String, std::sync::Arc<Principal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    principal: Vec<FilePrincipal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrincipal {
    name: String,
    token_sha256: String,
    #[serde(default)]
    permissions: Vec<String>,
}

impl AuthPolicy {
    /// Parses an auth file's text. Errors name the principal and what is wrong with it.
    pub fn parse(text: &str) -> Result<AuthPolicy, String> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| e.to_string())?;
        if doc.principal.is_empty() {
            return Err("no [[principal]] entries: nobody could authenticate".into());
        }
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for p in doc.principal {
            let name = p.name.trim().to_string();
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(format!(
                    "principal {:?}: the name must be 1 to 128 printable characters",
                    p.name
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("principal {name:?} is listed twice"));
            }
            let hash = p.token_sha256.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "principal {name:?}: token_sha256 must be 64 hex digits (borealis admin token prints one)"
                ));
            }
            let mut permissions = Vec::with_capacity(p.permissions.len());
            for text in &p.permissions {
                permissions
                    .push(Permission::parse(text).map_err(|e| format!("principal {name:?}: {e}"))?);
            }
            let principal = std::sync::Arc::new(Principal { name, permissions });
            if by_hash.insert(hash, principal.clone()).is_some() {
                return Err(format!(
                    "principal {:?}: its token hash is another principal's too",
                    principal.name
                ));
            }
        }
        Ok(AuthPolicy { by_hash })
    }

    /// The principal a token authenticates, if any.
    pub fn authenticate(&self, token: &str) -> Option<std::sync::Arc<Principal>> {
        if token.len() < TOKEN_LEN_MIN || token.len() > TOKEN_LEN_MAX {
            return None;
        }
        self.by_hash.get(&token_sha256(token)).cloned()
    }

    pub fn principals(&self) -> usize {
        self.by_hash.len()
    }

    /// The one authorization decision: may `principal` do `action` on `role`?
    pub fn check(principal: &Principal, action: Action, role: Option<&str>) -> Result<(), Denied> {
        if principal.may(action, role) {
            Ok(())
        } else {
            Err(Denied {
                principal: principal.name.clone(),
                action,
                role: role.map(str::to_string),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(perms: &[&str]) -> Principal {
        Principal {
            name: "p".into(),
            permissions: perms
                .iter()
                .map(|p| Permission::parse(p).unwrap())
                .collect(),
        }
    }

    #[test]
    fn role_scoped_permissions_stay_in_their_role() {
        let p = principal(&["www:*", "db:read"]);
        assert!(p.may(Action::Create, Some("www")));
        assert!(p.may(Action::Kill, Some("www")));
        assert!(p.may(Action::Read, Some("db")));
        assert!(!p.may(Action::Kill, Some("db")));
        assert!(!p.may(Action::Create, Some("ads")));
        assert!(!p.may(Action::Maintenance, None));
        assert!(!p.may(Action::Admin, None));
    }

    #[test]
    fn wildcards_and_cluster_actions() {
        let reader = principal(&["*:read"]);
        assert!(reader.may(Action::Read, Some("anything")));
        assert!(!reader.may(Action::Kill, Some("anything")));
        assert!(!reader.may(Action::Maintenance, None));
        let ops = principal(&["maintenance"]);
        assert!(ops.may(Action::Maintenance, None));
        assert!(!ops.may(Action::Admin, None));
        assert!(!ops.may(Action::Read, Some("www")));
        let admin = principal(&["admin"]);
        for a in Action::ALL {
            assert!(admin.may(a, Some("www")), "{a}");
            assert!(admin.may(a, None) || !a.is_cluster(), "{a}");
        }
        let all = principal(&["*"]);
        assert!(all.may(Action::Admin, None));
        assert!(all.may(Action::Quota, Some("db")));
    }

    #[test]
    fn bad_permissions_are_named() {
        assert!(Permission::parse("www:destroy")
            .unwrap_err()
            .contains("destroy"));
        assert!(Permission::parse("www:admin")
            .unwrap_err()
            .contains("cluster action"));
        assert!(Permission::parse("read").is_err());
        assert!(Permission::parse(":read").is_err());
    }

    #[test]
    fn the_file_maps_token_hashes_to_principals() {
        let token = "a-long-enough-token-1";
        let text = format!(
            "[[principal]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\"]\n",
            token_sha256(token)
        );
        let policy = AuthPolicy::parse(&text).unwrap();
        let alice = policy.authenticate(token).unwrap();
        assert_eq!(alice.name, "alice");
        assert!(policy.authenticate("a-long-enough-token-2").is_none());
        assert!(policy.authenticate("short").is_none());
        let denied = AuthPolicy::check(&alice, Action::Kill, Some("db")).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "permission denied: principal \"alice\" may not kill jobs of role \"db\""
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_principal_named() {
        assert!(AuthPolicy::parse("")
            .unwrap_err()
            .contains("no [[principal]]"));
        let e = AuthPolicy::parse("[[principal]]\nname = \"bob\"\ntoken_sha256 = \"xyz\"\n")
            .unwrap_err();
        assert!(e.contains("bob") && e.contains("64 hex"), "{e}");
        let h = token_sha256("x");
        let twice = format!(
            "[[principal]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\n[[principal]]\nname = \"b\"\ntoken_sha256 = \"{h}\"\n"
        );
        assert!(AuthPolicy::parse(&twice)
            .unwrap_err()
            .contains("another principal"));
        let unknown = format!("[[principal]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\nrole = 1\n");
        assert!(AuthPolicy::parse(&unknown).is_err());
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            token_sha256("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
