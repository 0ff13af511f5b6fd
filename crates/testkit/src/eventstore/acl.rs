//! Access control as the servers check it (EventStoreDB's stream ACLs): a stream's `$acl`
//! metadata (`$r`, `$w`, `$d`, `$mr`, `$mw`, each a role or an array of roles), else the
//! system settings in `$settings` (`$userStreamAcl` for user streams, `$systemStreamAcl`
//! for streams whose name starts with `$`), else the defaults: everyone (`$all`) on user
//! streams, `$admins` on system streams — `$all` itself included. Members of `$admins` may
//! do anything; `$all` cannot be written or deleted by anyone; `$$stream` is read with the
//! stream's `$mr` and written with its `$mw`. A user's roles are its login and its groups;
//! an anonymous request holds only `$all`. Synchronous and IO-free.

use serde_json::{Map, Value};

use super::store::Store;

/// The role everyone holds, anonymous requests included.
const EVERYONE: &str = "$all";
/// The administrators' group.
pub(crate) const ADMINS: &str = "$admins";
/// The operators' group.
pub(crate) const OPS: &str = "$ops";

/// What a request wants to do to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Delete,
    MetaRead,
    MetaWrite,
}

impl Access {
    /// The key of this access in an `$acl` object.
    fn key(self) -> &'static str {
        match self {
            Self::Read => "$r",
            Self::Write => "$w",
            Self::Delete => "$d",
            Self::MetaRead => "$mr",
            Self::MetaWrite => "$mw",
        }
    }
}

/// A login the emulator accepts, with the groups it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The login.
    pub login: String,
    /// The password.
    pub password: String,
    /// Groups (roles) besides the login itself, such as `$admins`.
    pub groups: Vec<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .field("groups", &self.groups)
            .finish()
    }
}

impl User {
    /// A user in `groups`.
    pub fn new(
        login: impl Into<String>,
        password: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            login: login.into(),
            password: password.into(),
            groups: groups.into_iter().map(Into::into).collect(),
        }
    }

    fn holds(&self, role: &str) -> bool {
        role == self.login || self.groups.iter().any(|g| g == role)
    }
}

/// Whether `user` (`None`: anonymous) may do `access` to `stream`.
pub(crate) fn granted(store: &Store, stream: &str, access: Access, user: Option<&User>) -> bool {
    if let Some(original) = stream.strip_prefix("$$") {
        return match access {
            Access::Read => granted(store, original, Access::MetaRead, user),
            Access::Write => granted(store, original, Access::MetaWrite, user),
            _ => false,
        };
    }
    if stream == "$all" && matches!(access, Access::Write | Access::Delete) {
        return false;
    }
    if user.is_some_and(|u| u.holds(ADMINS)) {
        return true;
    }
    let system = stream.starts_with('$');
    let from_stream = store
        .metadata(stream)
        .get("$acl")
        .and_then(|acl| roles(acl, access));
    let roles = from_stream
        .or_else(|| {
            let key = if system {
                "$systemStreamAcl"
            } else {
                "$userStreamAcl"
            };
            store.settings().get(key).and_then(|acl| roles(acl, access))
        })
        .unwrap_or_else(|| vec![if system { ADMINS } else { EVERYONE }.to_owned()]);
    roles
        .iter()
        .any(|role| role == EVERYONE || user.is_some_and(|u| u.holds(role)))
}

/// The roles an ACL object grants `access` to, when it says.
fn roles(acl: &Value, access: Access) -> Option<Vec<String>> {
    match acl
        .as_object()
        .and_then(|acl: &Map<String, Value>| acl.get(access.key()))?
    {
        Value::String(role) => Some(vec![role.clone()]),
        Value::Array(roles) => Some(
            roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::store::{ANY, metadata_event};

    fn store_with(writes: &[(&str, &str)]) -> Store {
        let mut store = Store::default();
        for (seed, (stream, json)) in writes.iter().enumerate() {
            let doc: Map<String, Value> = serde_json::from_str(json).unwrap();
            store.write(stream, ANY, vec![metadata_event(&doc, seed)], 0);
        }
        store
    }

    fn admin() -> User {
        User::new("admin", "changeit", [ADMINS])
    }

    fn alice() -> User {
        User::new("alice", "pw", ["readers"])
    }

    #[test]
    fn defaults_open_user_streams_and_close_system_streams() {
        let s = Store::default();
        for access in [Access::Read, Access::Write, Access::Delete] {
            assert!(granted(&s, "orders", access, None), "{access:?}");
        }
        assert!(granted(&s, "$$orders", Access::Read, None));
        assert!(granted(&s, "$$orders", Access::Write, Some(&alice())));
        for stream in ["$all", "$settings", "$ce-orders", "$$$settings"] {
            assert!(!granted(&s, stream, Access::Read, None), "{stream}");
            assert!(
                !granted(&s, stream, Access::Read, Some(&alice())),
                "{stream}"
            );
            assert!(
                granted(&s, stream, Access::Read, Some(&admin())),
                "{stream}"
            );
        }
        assert!(!granted(&s, "$all", Access::Write, Some(&admin())));
        assert!(!granted(&s, "$all", Access::Delete, Some(&admin())));
    }

    #[test]
    fn a_stream_acl_names_roles_users_or_everyone() {
        let s = store_with(&[(
            "$$ledger",
            r#"{"$acl": {"$r": ["readers", "bob"], "$w": "alice", "$d": "$admins", "$mr": "$all"}}"#,
        )]);
        let bob = User::new("bob", "pw", Vec::<String>::new());
        assert!(
            granted(&s, "ledger", Access::Read, Some(&alice())),
            "by group"
        );
        assert!(granted(&s, "ledger", Access::Read, Some(&bob)), "by login");
        assert!(!granted(&s, "ledger", Access::Read, None), "anonymous");
        assert!(granted(&s, "ledger", Access::Write, Some(&alice())));
        assert!(!granted(&s, "ledger", Access::Write, Some(&bob)));
        assert!(!granted(&s, "ledger", Access::Delete, Some(&alice())));
        assert!(granted(&s, "ledger", Access::Delete, Some(&admin())));
        assert!(granted(&s, "$$ledger", Access::Read, None), "$mr is $all");
        assert!(
            granted(&s, "$$ledger", Access::Write, Some(&bob)),
            "$mw unset: the default for user streams"
        );
    }

    #[test]
    fn system_settings_apply_where_the_stream_says_nothing() {
        let s = store_with(&[
            (
                "$settings",
                r#"{"$userStreamAcl": {"$r": "readers", "$w": "$admins"},
                    "$systemStreamAcl": {"$r": ["$admins", "readers"]}}"#,
            ),
            ("$$open", r#"{"$acl": {"$w": "$all"}}"#),
        ]);
        assert!(granted(&s, "orders", Access::Read, Some(&alice())));
        assert!(!granted(&s, "orders", Access::Read, None));
        assert!(!granted(&s, "orders", Access::Write, Some(&alice())));
        assert!(
            granted(&s, "orders", Access::Delete, None),
            "$d unset in the settings: the default"
        );
        assert!(
            granted(&s, "open", Access::Write, None),
            "the stream's own $acl wins"
        );
        assert!(granted(&s, "$all", Access::Read, Some(&alice())));
        assert!(!granted(&s, "$settings", Access::Write, Some(&alice())));
    }
}
