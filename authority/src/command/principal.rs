//! Which principal a record of the users table is: a user (`alice`, SVID `user/alice`) or a
//! scheduler (`sched:<name>`, SVID `ringzero/sched/<name>`).
//!
//! Schedulers are recorded in the users table, under a key no user can have (user names are
//! DNS labels, never with `:`), always with the built-in `scheduler` role: they are enrolled
//! with an invite (a pinned one-time token), log in and renew, and are cut off exactly like
//! users — recorded serials and capabilities, revoked with their lineage on removal — without a
//! third credential flow. Only the key and the SVID's path tell them apart.

use super::{Invalid, User, invalid};

/// The key prefix of a scheduler in the users table.
pub const SCHED_KEY_PREFIX: &str = "sched:";

/// The only role a scheduler record may have.
pub const SCHED_ROLE: &str = "scheduler";

/// The users-table key of scheduler `name`.
pub fn sched_key(name: &str) -> String {
    format!("{SCHED_KEY_PREFIX}{name}")
}

/// The scheduler name of a users-table key, if the key is a scheduler's.
pub fn sched_name(key: &str) -> Option<&str> {
    key.strip_prefix(SCHED_KEY_PREFIX)
}

/// The SPIFFE ID path of the principal recorded under `key`, without the trust domain
/// (`user/alice`, `ringzero/sched/sched`).
pub fn principal_path(key: &str) -> String {
    match sched_name(key) {
        Some(name) => format!("ringzero/sched/{name}"),
        None => format!("user/{key}"),
    }
}

/// Checks a users-table key: a node-name-like user name, or `sched:` and one.
pub fn check_principal_key(key: &str) -> Result<(), Invalid> {
    super::validate::check_node_name(sched_name(key).unwrap_or(key))
}

impl User {
    /// The record of scheduler `name` (built-in `scheduler` role, optionally one namespace).
    pub fn sched(name: &str, namespace: Option<String>) -> Self {
        User {
            name: sched_key(name),
            role: SCHED_ROLE.into(),
            namespace,
        }
    }

    /// The scheduler's name, if this record is a scheduler's.
    pub fn sched_name(&self) -> Option<&str> {
        sched_name(&self.name)
    }

    /// A scheduler record holds the `scheduler` role and nothing else.
    pub(super) fn check_kind(&self) -> Result<(), Invalid> {
        if self.sched_name().is_some() && self.role != SCHED_ROLE {
            return Err(invalid(format!(
                "a scheduler has the {SCHED_ROLE} role, not {}",
                self.role
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sched_keys() {
        assert_eq!(sched_key("s1"), "sched:s1");
        assert_eq!(sched_name("sched:s1"), Some("s1"));
        assert_eq!(sched_name("alice"), None);
        assert_eq!(principal_path("sched:s1"), "ringzero/sched/s1");
        assert_eq!(principal_path("alice"), "user/alice");
        assert!(check_principal_key("sched:s1").is_ok());
        assert!(check_principal_key("alice").is_ok());
        for bad in ["sched:", "sched:a/b", "sched:sched:a", "a:b", "", "Sched:A"] {
            assert!(check_principal_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scheduler_record_has_the_scheduler_role_only() {
        assert!(User::sched("s1", None).validate().is_ok());
        assert!(User::sched("s1", Some("shop".into())).validate().is_ok());
        let mut admin = User::sched("s1", None);
        admin.role = "admin".into();
        assert!(admin.validate().is_err());
        // A user's name can never be a scheduler's key, nor the reverse.
        let user = User {
            name: "s1".into(),
            role: "admin".into(),
            namespace: None,
        };
        assert!(user.validate().is_ok() && user.sched_name().is_none());
    }
}
