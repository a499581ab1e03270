//! The rights vocabulary: operations, resources, rights and the built-in roles.
//!
//! A **right** is an [`Operation`] on a [`Resource`] prefix. Resources are slash-separated paths
//! (`cluster`, `authority/<node>`, `node/<name>`, `ns/<namespace>[/<service>…]`, `user/<name>`,
//! `audit`, `token`); a prefix covers a resource by whole segments, so `ns/a` covers `ns/a` and
//! `ns/a/x` but never `ns/ab`, and the empty prefix covers everything.

use std::fmt;
use std::str::FromStr;

use crate::spiffe::{IdError, validate_segment};

/// The longest resource path accepted, in bytes.
pub const MAX_RESOURCE_LEN: usize = 512;

macro_rules! operations {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal ),+ $(,)?) => {
        /// An operation a capability may allow. The set is closed: a token naming anything else
        /// grants nothing, and the CLI refuses it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Operation {
            $( $(#[$doc])* $variant, )+
        }

        impl Operation {
            /// Every operation, in a stable order.
            pub const ALL: &'static [Operation] = &[ $( Operation::$variant, )+ ];

            /// The operation's name, `subsystem:verb`.
            pub const fn as_str(self) -> &'static str {
                match self { $( Operation::$variant => $name, )+ }
            }
        }

        impl FromStr for Operation {
            type Err = UnknownOperation;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $name => Ok(Operation::$variant), )+
                    _ => Err(UnknownOperation(s.chars().take(64).collect())),
                }
            }
        }
    };
}

operations! {
    /// Cluster-wide administration: authority membership, join tokens for authority nodes,
    /// break-glass. Only the admin role holds it.
    ClusterAdmin => "cluster:admin",
    /// Read authority membership, status and the trust bundle.
    AuthorityRead => "authority:read",
    /// Issue a one-time join token for an agent node.
    NodeEnroll => "node:enroll",
    /// List and show enrolled nodes.
    NodeRead => "node:read",
    /// Evict a node: its SVIDs are no longer renewed and its serials are revoked.
    NodeEvict => "node:evict",
    /// Ban a node name: it can never enroll again.
    NodeBan => "node:ban",
    /// Read registration entries.
    EntryRead => "entry:read",
    /// Create, update and delete registration entries.
    EntryWrite => "entry:write",
    /// Obtain X.509-SVIDs for workloads (held by agents, for their own node).
    SvidMint => "svid:mint",
    /// Mint capability tokens through the cluster (never wider than the caller's own).
    TokenMint => "token:mint",
    /// Revoke capability tokens.
    TokenRevoke => "token:revoke",
    /// List users.
    UserRead => "user:read",
    /// Add, invite and remove users.
    UserWrite => "user:write",
    /// List and show roles.
    RoleRead => "role:read",
    /// Apply custom roles.
    RoleWrite => "role:write",
    /// Submit jobs to the scheduler.
    SchedSubmit => "sched:submit",
    /// Cancel jobs.
    SchedCancel => "sched:cancel",
    /// List and show jobs.
    SchedRead => "sched:read",
    /// Launch a job on a node (held by the scheduler, delegated per job).
    JobLaunch => "job:launch",
    /// Read a job's stdout and stderr.
    LogsRead => "logs:read",
    /// Inspect a running job: process status, stacks, a command in its context.
    DebugAttach => "debug:attach",
    /// Query, tail, export and verify the audit log.
    AuditRead => "audit:read",
    /// Seal old audit records into signed segments.
    AuditSeal => "audit:seal",
    /// Select processes in a registration entry: on `selector/unix/<uid|gid|user|group>/<value>/node/<node>`
    /// (`selector/unix/any/node/<node>` for an entry that names no user or group). Granted by an admin,
    /// so a namespace's entries can only select the processes it was given.
    EntrySelect => "entry:select",
    /// Put a DNS name in the SVIDs of a registration entry: on `dns/<labels, last first>`
    /// (`api.payments.internal` is `dns/internal/payments/api`; `*.payments.internal` is
    /// `dns/internal/payments/_wildcard`).
    EntryDns => "entry:dns",
    /// Allow or deny mesh traffic to the identities under a namespace path: on the `to`
    /// pattern's path (`spiffe://TD/ns/shop/db` and `spiffe://TD/ns/shop/*` are `ns/shop/db` and
    /// `ns/shop`), so a namespace decides who may reach its own workloads, and only those.
    MeshPolicy => "mesh:policy",
    /// List mesh policies: on a resource prefix (`ns/shop`), the rules whose `to` lies under it.
    MeshRead => "mesh:read",
}

impl Operation {
    /// The subsystem: the part before the colon.
    pub fn subsystem(self) -> &'static str {
        let s = self.as_str();
        s.split_once(':').map_or(s, |(sub, _)| sub)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation name outside the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?} (known: {known})", known = Operation::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownOperation(pub String);

/// A resource path, or a resource prefix when used in a right. The empty path is the root: as
/// a prefix it covers everything.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Resource(String);

/// Why a string is not a resource path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    #[error("longer than {MAX_RESOURCE_LEN} bytes")]
    TooLong,
    #[error(
        "{0} (resources are slash-separated names like ns/default/web, without leading or trailing slash)"
    )]
    Segment(#[from] IdError),
}

impl Resource {
    /// The root: the empty prefix, which covers every resource.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a resource path; `""` is the root.
    pub fn parse(s: &str) -> Result<Self, ResourceError> {
        if s.len() > MAX_RESOURCE_LEN {
            return Err(ResourceError::TooLong);
        }
        if !s.is_empty() {
            for segment in s.split('/') {
                validate_segment(segment)?;
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// Builds `a/b/c` from already-valid parts, validating each.
    pub fn from_segments<S: AsRef<str>>(segments: &[S]) -> Result<Self, ResourceError> {
        let joined = segments
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join("/");
        for s in segments {
            validate_segment(s.as_ref())?;
        }
        if joined.len() > MAX_RESOURCE_LEN {
            return Err(ResourceError::TooLong);
        }
        Ok(Self(joined))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root (empty) prefix.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this prefix covers `resource`, by whole segments.
    pub fn covers(&self, resource: &Resource) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match resource.0.strip_prefix(&self.0) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Every prefix that covers this resource, shortest first: `""`, `ns`, `ns/a`, `ns/a/x`.
    /// The authorizer states these as facts so that Datalog matches prefixes by equality.
    pub fn covering_prefixes(&self) -> impl Iterator<Item = &str> {
        let path = self.0.as_str();
        std::iter::once("").chain(
            path.match_indices('/')
                .map(move |(i, _)| &path[..i])
                .chain((!path.is_empty()).then_some(path)),
        )
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(all)")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resource({:?})", self.0)
    }
}

impl FromStr for Resource {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A node name, as it appears in `spiffe://TD/ringzero/node/<name>` and `node/<name>`.
/// The resource `entry:dns` is checked on for a DNS name: its labels, last first, under `dns`
/// (`api.payments.internal` → `dns/internal/payments/api`), so a right on `dns/internal/payments`
/// covers every name below `payments.internal`, by whole labels. A leading wildcard label
/// becomes `_wildcard` (not a DNS label), which only a right on the parent name covers.
pub fn dns_resource(name: &str) -> Result<Resource, ResourceError> {
    let lower = name.to_ascii_lowercase();
    let mut segments: Vec<&str> = lower.split('.').collect();
    if let Some(first) = segments.first_mut()
        && *first == "*"
    {
        *first = "_wildcard";
    }
    if segments
        .iter()
        .any(|s| s.is_empty() || s.contains('_') && *s != "_wildcard")
    {
        return Err(ResourceError::Segment(IdError::EmptySegment));
    }
    segments.reverse();
    let mut all = vec!["dns"];
    all.extend(segments);
    Resource::from_segments(&all)
}

/// The resource `entry:select` is checked on for a selector of an entry parented to `node`:
/// `selector/unix/uid/1000/node/n7`, so a right on `selector/unix/uid/1000` covers that uid on
/// every node. Only selectors that say who runs a process have one (`None` for path and hash:
/// they narrow an entry, never widen it); an entry with none of those is checked on
/// `selector/unix/any/node/<node>` (see [`any_principal_resource`]).
pub fn selector_resource(
    selector: &crate::selector::Selector,
    node: &NodeName,
) -> Option<Result<Resource, ResourceError>> {
    let kind = selector.kind();
    if !kind.identifies_principal() {
        return None;
    }
    Some(Resource::from_segments(&[
        "selector",
        kind.type_name(),
        kind.key(),
        selector.value(),
        "node",
        node.as_str(),
    ]))
}

/// The resource `entry:select` is checked on for an entry that selects processes of every user
/// (only a path or a hash, allowed with `--allow-weak-selectors`).
pub fn any_principal_resource(node: &NodeName) -> Result<Resource, ResourceError> {
    Resource::from_segments(&["selector", "unix", "any", "node", node.as_str()])
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// Parses a node name: one path segment of at most 63 bytes.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate_segment(s)?;
        if s.len() > 63 {
            return Err(IdError::TooLong);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeName({})", self.0)
    }
}

impl FromStr for NodeName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One right: an operation on every resource a prefix covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Right {
    pub operation: Operation,
    pub prefix: Resource,
}

impl Right {
    pub fn new(operation: Operation, prefix: Resource) -> Self {
        Self { operation, prefix }
    }

    /// Whether this right allows `operation` on `resource`.
    pub fn allows(&self, operation: Operation, resource: &Resource) -> bool {
        self.operation == operation && self.prefix.covers(resource)
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.operation, self.prefix)
    }
}

/// Where a role's right applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every resource.
    All,
    /// Exactly this fixed prefix.
    Fixed(&'static str),
    /// `ns/<namespace>` of the user the role is given to.
    Namespace,
    /// `ns/<namespace>` when the user has a namespace, else this fixed prefix (a role that is
    /// either confined to one namespace or cluster-wide).
    NamespaceOr(&'static str),
}

/// The built-in roles: named sets of rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, everywhere.
    Admin,
    /// Runs the cluster day to day: nodes, entries, mesh policy, jobs, logs, debug, tokens, audit; not
    /// membership, users or roles.
    Operator,
    /// Works inside one namespace: jobs, logs, entries, mesh policy and delegation there. Not
    /// `debug:attach` (`job exec`): a role file grants it where it is wanted.
    Developer,
    /// Reads everything that describes the cluster, changes nothing.
    Auditor,
    /// The scheduler daemon: reads jobs and allocations and places, stops and marks lost
    /// allocations (`sched:read`, `job:launch`) in its namespace, or everywhere without one;
    /// reads node health (`node:read` on `node`). Nothing else: no user, role, key,
    /// membership, entry or token right.
    Scheduler,
}

impl Role {
    pub const ALL: &'static [Role] = &[
        Role::Admin,
        Role::Operator,
        Role::Developer,
        Role::Auditor,
        Role::Scheduler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Auditor => "auditor",
            Role::Scheduler => "scheduler",
        }
    }

    /// The role's rights, as (operation, scope) pairs.
    pub fn grants(self) -> Vec<(Operation, Scope)> {
        use Operation::*;
        match self {
            Role::Admin => Operation::ALL.iter().map(|&o| (o, Scope::All)).collect(),
            Role::Operator => [
                AuthorityRead,
                NodeEnroll,
                NodeRead,
                NodeEvict,
                NodeBan,
                EntryRead,
                EntryWrite,
                EntrySelect,
                EntryDns,
                MeshPolicy,
                MeshRead,
                TokenMint,
                TokenRevoke,
                UserRead,
                RoleRead,
                SchedSubmit,
                SchedCancel,
                SchedRead,
                LogsRead,
                DebugAttach,
                AuditRead,
            ]
            .into_iter()
            .map(|o| (o, Scope::All))
            .collect(),
            Role::Developer => {
                let mut v: Vec<(Operation, Scope)> = [
                    EntryRead,
                    EntryWrite,
                    MeshPolicy,
                    MeshRead,
                    TokenMint,
                    SchedSubmit,
                    SchedCancel,
                    SchedRead,
                    LogsRead,
                ]
                .into_iter()
                .map(|o| (o, Scope::Namespace))
                .collect();
                v.push((AuthorityRead, Scope::Fixed("authority")));
                v
            }
            Role::Auditor => [
                AuthorityRead,
                NodeRead,
                EntryRead,
                MeshRead,
                UserRead,
                RoleRead,
                SchedRead,
                AuditRead,
            ]
            .into_iter()
            .map(|o| (o, Scope::All))
            .collect(),
            Role::Scheduler => vec![
                (SchedRead, Scope::NamespaceOr("")),
                (JobLaunch, Scope::NamespaceOr("ns")),
                (NodeRead, Scope::Fixed("node")),
            ],
        }
    }

    /// Whether the role's rights are confined to a namespace, which must then be given.
    pub fn needs_namespace(self) -> bool {
        self.grants().iter().any(|(_, s)| *s == Scope::Namespace)
    }

    /// Whether the role takes a namespace, when given one (required or optional).
    pub fn takes_namespace(self) -> bool {
        self.grants()
            .iter()
            .any(|(_, s)| matches!(s, Scope::Namespace | Scope::NamespaceOr(_)))
    }

    /// The concrete rights of this role for a user of `namespace`.
    pub fn rights(self, namespace: Option<&str>) -> Result<Vec<Right>, RoleError> {
        let ns = match (self.needs_namespace(), self.takes_namespace(), namespace) {
            (true, _, None) => return Err(RoleError::NamespaceRequired(self.name())),
            (_, false, Some(_)) => return Err(RoleError::NamespaceNotApplicable(self.name())),
            (_, _, ns) => ns,
        };
        self.grants()
            .into_iter()
            .map(|(op, scope)| {
                let prefix = match scope {
                    Scope::All => Resource::root(),
                    Scope::Fixed(p) => Resource::parse(p)?,
                    Scope::Namespace => Resource::from_segments(&["ns", ns.unwrap_or_default()])?,
                    Scope::NamespaceOr(p) => match ns {
                        Some(ns) => Resource::from_segments(&["ns", ns])?,
                        None => Resource::parse(p)?,
                    },
                };
                Ok(Right::new(op, prefix))
            })
            .collect()
    }
}

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .iter()
            .copied()
            .find(|r| r.name() == s)
            .ok_or_else(|| RoleError::Unknown(s.chars().take(64).collect()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a role cannot be given as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    #[error("unknown role {0:?} (built-in roles: admin, operator, developer, auditor, scheduler)")]
    Unknown(String),
    #[error("role {0} is confined to a namespace: give one")]
    NamespaceRequired(&'static str),
    #[error("role {0} is cluster-wide: a namespace does not apply")]
    NamespaceNotApplicable(&'static str),
    #[error("bad namespace: {0}")]
    Namespace(#[from] ResourceError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resource {
        Resource::parse(s).unwrap()
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().unwrap(), *op);
            assert!(op.as_str().contains(':'));
        }
        for name in [
            "audit:read",
            "node:evict",
            "node:enroll",
            "entry:write",
            "svid:mint",
            "token:mint",
            "token:revoke",
            "sched:submit",
            "sched:cancel",
            "job:launch",
            "logs:read",
            "debug:attach",
            "cluster:admin",
            "mesh:policy",
        ] {
            assert!(name.parse::<Operation>().is_ok(), "{name}");
        }
        assert!("audit:write".parse::<Operation>().is_err());
        assert!("AUDIT:READ".parse::<Operation>().is_err());
        assert_eq!(Operation::NodeEvict.subsystem(), "node");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(r("ns/a").covers(&r("ns/a")));
        assert!(r("ns/a").covers(&r("ns/a/x")));
        assert!(!r("ns/a").covers(&r("ns/ab")));
        assert!(!r("ns/a").covers(&r("ns")));
        assert!(!r("ns/a/x").covers(&r("ns/a")));
        assert!(Resource::root().covers(&r("ns/a")));
        assert!(Resource::root().covers(&Resource::root()));
        assert!(!r("ns").covers(&Resource::root()));
        assert!(r("ns/default/web").covers(&r("ns/default/web/x")));
        assert!(!r("ns/default/web").covers(&r("ns/default/webhook")));
    }

    #[test]
    fn covering_prefixes() {
        let res = r("ns/a/x");
        let got: Vec<_> = res.covering_prefixes().collect();
        assert_eq!(got, ["", "ns", "ns/a", "ns/a/x"]);
        let root = Resource::root();
        let got: Vec<_> = root.covering_prefixes().collect();
        assert_eq!(got, [""]);
        // Every listed prefix covers the resource, and nothing else of the form does.
        let res = r("ns/default/web");
        for p in res.covering_prefixes() {
            assert!(r(p).covers(&res));
        }
    }

    #[test]
    fn bad_resources() {
        for bad in [
            "/ns", "ns/", "ns//a", "ns/../a", "ns/a b", "ns/a?b", "ns/%2e",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
        assert!(Resource::parse(&"a".repeat(MAX_RESOURCE_LEN + 1)).is_err());
        assert!(NodeName::parse("n7").is_ok());
        assert!(NodeName::parse("n/7").is_err());
        assert!(NodeName::parse(&"n".repeat(64)).is_err());
    }

    #[test]
    fn roles() {
        let admin = Role::Admin.rights(None).unwrap();
        assert_eq!(admin.len(), Operation::ALL.len());
        assert!(Role::Developer.rights(None).is_err());
        assert!(Role::Admin.rights(Some("x")).is_err());
        let dev = Role::Developer.rights(Some("team-a")).unwrap();
        assert!(dev.iter().any(|r| r.allows(
            Operation::SchedSubmit,
            &Resource::parse("ns/team-a/web").unwrap()
        )));
        assert!(!dev.iter().any(|r| r.allows(
            Operation::SchedSubmit,
            &Resource::parse("ns/team-b").unwrap()
        )));
        assert!(dev.iter().any(|r| r.allows(
            Operation::MeshPolicy,
            &Resource::parse("ns/team-a/db").unwrap()
        )));
        assert!(!dev.iter().any(|r| r.allows(
            Operation::MeshPolicy,
            &Resource::parse("ns/team-b/db").unwrap()
        )));
        // Reads its own logs, but exec (debug:attach) is granted by a role file, never built in.
        assert!(dev.iter().any(|r| r.allows(
            Operation::LogsRead,
            &Resource::parse("ns/team-a/web").unwrap()
        )));
        assert!(!dev.iter().any(|r| r.operation == Operation::DebugAttach));
        assert!(Role::Developer.rights(Some("a/b")).is_err());
        let aud = Role::Auditor.rights(None).unwrap();
        assert!(aud.iter().all(|r| r.operation.as_str().ends_with(":read")));
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn scheduler_role_places_and_reads_only() {
        let r = |s: &str| Resource::parse(s).unwrap();
        let cluster = Role::Scheduler.rights(None).unwrap();
        let shop = Role::Scheduler.rights(Some("shop")).unwrap();
        let allows = |rights: &[Right], op, res: &str| rights.iter().any(|x| x.allows(op, &r(res)));
        // Cluster-wide: every job, the lease of the cluster (`ns`), all reads of jobs/allocs.
        assert!(allows(&cluster, Operation::JobLaunch, "ns"));
        assert!(allows(&cluster, Operation::JobLaunch, "ns/any/job"));
        assert!(allows(&cluster, Operation::SchedRead, ""));
        assert!(allows(&cluster, Operation::NodeRead, "node"));
        // In a namespace: that namespace only.
        assert!(allows(&shop, Operation::JobLaunch, "ns/shop/web"));
        assert!(!allows(&shop, Operation::JobLaunch, "ns/other/web"));
        assert!(!allows(&shop, Operation::JobLaunch, "ns"));
        assert!(allows(&shop, Operation::SchedRead, "ns/shop"));
        assert!(!allows(&shop, Operation::SchedRead, ""));
        // Nothing else, anywhere.
        for rights in [&cluster, &shop] {
            assert_eq!(rights.len(), 3);
            for x in rights.iter() {
                assert!(matches!(
                    x.operation,
                    Operation::SchedRead | Operation::JobLaunch | Operation::NodeRead
                ));
            }
        }
        assert!(!Role::Scheduler.needs_namespace() && Role::Scheduler.takes_namespace());
        assert!(Role::Scheduler.rights(Some("a/b")).is_err());
        assert_eq!("scheduler".parse::<Role>().unwrap(), Role::Scheduler);
    }
}
