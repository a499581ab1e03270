//! SPIFFE identifiers, parsed exactly as the SPIFFE-ID specification says.
//!
//! A SPIFFE ID is `spiffe://<trust-domain>[/<segment>]*`:
//! - the scheme is exactly `spiffe` (lowercase);
//! - the trust domain is non-empty, at most 255 bytes, of `[a-z0-9._-]` — so no uppercase, port,
//!   userinfo or percent-encoding;
//! - each path segment is non-empty, of `[a-zA-Z0-9._-]`, and neither `.` nor `..`; there is no
//!   trailing slash, query or fragment;
//! - the whole ID is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID accepted, in bytes (SPIFFE-ID spec §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name accepted, in bytes (SPIFFE-ID spec §2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a SPIFFE ID, trust domain, or path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("empty")]
    Empty,
    #[error("must start with \"spiffe://\" (the scheme is lowercase `spiffe`)")]
    WrongScheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error(
        "the trust domain may contain only lowercase letters, digits, '.', '-' and '_' (found {0:?}); ports, userinfo and percent-encoding are not allowed"
    )]
    BadTrustDomainChar(char),
    #[error("longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("a path segment is empty (double or trailing slash)")]
    EmptySegment,
    #[error("'.' and '..' are not allowed as path segments")]
    DotSegment,
    #[error(
        "a path segment may contain only letters, digits, '.', '-' and '_' (found {0:?}); query, fragment and percent-encoding are not allowed"
    )]
    BadPathChar(char),
}

/// A SPIFFE trust domain: the root of one ringzero cluster's namespace of identities.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`). `spiffe://example.org` is also accepted.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let name = name.strip_prefix(SCHEME_PREFIX).unwrap_or(name);
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name, without scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://example.org`), as carried by CA
    /// certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME_PREFIX}{}", self.0),
            td_end: SCHEME_PREFIX.len() + self.0.len(),
        }
    }

    /// The SPIFFE ID with the given path segments in this trust domain.
    pub fn id_with_path<S: AsRef<str>>(&self, segments: &[S]) -> Result<SpiffeId, IdError> {
        let mut uri = format!("{SCHEME_PREFIX}{}", self.0);
        for s in segments {
            validate_segment(s.as_ref())?;
            uri.push('/');
            uri.push_str(s.as_ref());
        }
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(SpiffeId {
            td_end: SCHEME_PREFIX.len() + self.0.len(),
            uri,
        })
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A parsed SPIFFE ID. Construction validates it, so holding one means it is well formed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the trust domain ends (and the path, if any, starts).
    td_end: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME_PREFIX).ok_or(IdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            // `path` starts with '/'; every segment after it must be valid.
            for segment in path[1..].split('/') {
                validate_segment(segment)?;
            }
        }
        Ok(Self {
            uri: s.to_owned(),
            td_end: SCHEME_PREFIX.len() + td.len(),
        })
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name.
    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len()..self.td_end]
    }

    /// The trust domain, as an owned value.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// Whether this ID belongs to the given trust domain.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The path segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let path = self.path();
        path.get(1..)
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
    }
}

/// The principals whose SPIFFE IDs the authority issues itself, under the reserved paths
/// `ringzero/…` and `user/…`. No registration entry and no workload SVID may carry a reserved
/// path, and a certificate claiming one is trusted only if the right issuer made it (an
/// authority member's chains to that member's own CA; a node's or user's serial is one the
/// authority recorded issuing to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal<'a> {
    /// `ringzero/authority/<id>`: authority member `<id>`.
    Authority(u64),
    /// `ringzero/node/<name>`: an enrolled agent node.
    Node(&'a str),
    /// `user/<name>`: a user.
    User(&'a str),
    /// `ringzero/sched/<name>`: a scheduler enrolled with a `sched token`.
    Sched(&'a str),
    /// Any other reserved path (`ringzero/sched` alone, a malformed `ringzero/authority/x`, …):
    /// reserved, but no principal the authority has enrolled.
    OtherReserved,
}

/// The first path segments the authority reserves (compared case-insensitively, so that a
/// look-alike such as `RingZero/…` cannot be registered either).
pub const RESERVED_FIRST_SEGMENTS: &[&str] = &["ringzero", "user"];

impl SpiffeId {
    /// Whether the path is reserved for principals the authority enrolls itself.
    pub fn is_reserved(&self) -> bool {
        self.segments().next().is_some_and(|first| {
            RESERVED_FIRST_SEGMENTS
                .iter()
                .any(|r| first.eq_ignore_ascii_case(r))
        })
    }

    /// The principal a reserved ID names, or `None` for an unreserved (workload) ID.
    pub fn principal(&self) -> Option<Principal<'_>> {
        if !self.is_reserved() {
            return None;
        }
        let segs: Vec<&str> = self.segments().collect();
        Some(match segs.as_slice() {
            ["ringzero", "authority", n] => match n.parse::<u64>() {
                // Canonical decimal only: `01` would name member 1 twice.
                Ok(id) if id.to_string() == *n => Principal::Authority(id),
                _ => Principal::OtherReserved,
            },
            ["ringzero", "node", name] => Principal::Node(name),
            ["ringzero", "sched", name] => Principal::Sched(name),
            ["user", name] => Principal::User(name),
            _ => Principal::OtherReserved,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

/// Which SPIFFE IDs a peer may present: used by the TLS verifiers and by authorization rules.
///
/// Text form: `spiffe://td/exact/path` matches that ID only; `spiffe://td/prefix/*` matches any ID
/// with that path prefix and at least one more segment (`spiffe://td/*`: any workload ID in the
/// trust domain).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum SpiffeIdPattern {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID strictly below this one, by whole path segments.
    Below(SpiffeId),
}

impl SpiffeIdPattern {
    /// Parses the text form described on the type.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.strip_suffix("/*") {
            Some(base) => Ok(Self::Below(SpiffeId::parse(base)?)),
            None => Ok(Self::Exact(SpiffeId::parse(s)?)),
        }
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::Below(base) => id
                .as_str()
                .strip_prefix(base.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
        }
    }

    /// The trust domain the pattern is confined to.
    pub fn trust_domain_name(&self) -> &str {
        match self {
            Self::Exact(id) | Self::Below(id) => id.trust_domain_name(),
        }
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::Below(id) => write!(f, "{id}/*"),
        }
    }
}

impl fmt::Debug for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeIdPattern({self})")
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(IdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

/// Validates one path segment: non-empty, not `.`/`..`, of `[a-zA-Z0-9._-]`. The same rule is
/// used for resource path segments and node names, so every name that ends up in a SPIFFE ID
/// is already valid there.
pub(crate) fn validate_segment(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::EmptySegment);
    }
    if s == "." || s == ".." {
        return Err(IdError::DotSegment);
    }
    match s
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(IdError::BadPathChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, expected error or `None` when valid)
    fn table() -> Vec<(String, Option<IdError>)> {
        use IdError::*;
        let mut t: Vec<(String, Option<IdError>)> = [
            // valid
            ("spiffe://example.org", None),
            ("spiffe://example.org/", Some(EmptySegment)),
            ("spiffe://example.org/ns/default/web", None),
            ("spiffe://a", None),
            ("spiffe://1.2.3.4", None),
            ("spiffe://my_td-1.example", None),
            ("spiffe://example.org/Upper/Case_ok", None),
            ("spiffe://example.org/a.b/c-d/e_f/0", None),
            ("spiffe://example.org/...", None),
            ("spiffe://example.org/.a", None),
            ("spiffe://example.org/ringzero/node/n7", None),
            ("spiffe://td/user/alice", None),
            // scheme
            ("", Some(Empty)),
            ("example.org", Some(WrongScheme)),
            ("SPIFFE://example.org", Some(WrongScheme)),
            ("Spiffe://example.org", Some(WrongScheme)),
            ("https://example.org/a", Some(WrongScheme)),
            ("spiffe:/example.org", Some(WrongScheme)),
            ("spiffe:example.org", Some(WrongScheme)),
            (" spiffe://example.org", Some(WrongScheme)),
            // trust domain
            ("spiffe://", Some(EmptyTrustDomain)),
            ("spiffe:///path", Some(EmptyTrustDomain)),
            ("spiffe://Example.org", Some(BadTrustDomainChar('E'))),
            ("spiffe://example.org:8443/a", Some(BadTrustDomainChar(':'))),
            ("spiffe://user@example.org", Some(BadTrustDomainChar('@'))),
            (
                "spiffe://user:pw@example.org/a",
                Some(BadTrustDomainChar(':')),
            ),
            ("spiffe://exa%6dple.org", Some(BadTrustDomainChar('%'))),
            ("spiffe://example.org?x=1", Some(BadTrustDomainChar('?'))),
            ("spiffe://example.org#frag", Some(BadTrustDomainChar('#'))),
            ("spiffe://exam ple.org", Some(BadTrustDomainChar(' '))),
            ("spiffe://exämple.org", Some(BadTrustDomainChar('ä'))),
            ("spiffe://[::1]/a", Some(BadTrustDomainChar('['))),
            ("spiffe://example.org\n/a", Some(BadTrustDomainChar('\n'))),
            // path
            ("spiffe://example.org//a", Some(EmptySegment)),
            ("spiffe://example.org/a//b", Some(EmptySegment)),
            ("spiffe://example.org/a/", Some(EmptySegment)),
            ("spiffe://example.org/.", Some(DotSegment)),
            ("spiffe://example.org/..", Some(DotSegment)),
            ("spiffe://example.org/a/./b", Some(DotSegment)),
            ("spiffe://example.org/a/../b", Some(DotSegment)),
            ("spiffe://example.org/a?x=1", Some(BadPathChar('?'))),
            ("spiffe://example.org/a#frag", Some(BadPathChar('#'))),
            ("spiffe://example.org/a%2Fb", Some(BadPathChar('%'))),
            ("spiffe://example.org/a b", Some(BadPathChar(' '))),
            ("spiffe://example.org/a:b", Some(BadPathChar(':'))),
            ("spiffe://example.org/a@b", Some(BadPathChar('@'))),
            ("spiffe://example.org/a\\b", Some(BadPathChar('\\'))),
            ("spiffe://example.org/a\0b", Some(BadPathChar('\0'))),
            ("spiffe://example.org/ünï", Some(BadPathChar('ü'))),
            ("spiffe://example.org/a*", Some(BadPathChar('*'))),
        ]
        .into_iter()
        .map(|(s, e)| (s.to_owned(), e))
        .collect();
        // length limits
        let long_td = "a".repeat(256);
        t.push((format!("spiffe://{long_td}"), Some(TrustDomainTooLong)));
        t.push((format!("spiffe://{}", "a".repeat(255)), None));
        let long_path = "b".repeat(MAX_SPIFFE_ID_LEN - "spiffe://td/".len());
        t.push((format!("spiffe://td/{long_path}"), None));
        t.push((format!("spiffe://td/{long_path}x"), Some(TooLong)));
        t
    }

    #[test]
    fn spiffe_id_table() {
        let table = table();
        assert!(table.len() >= 40);
        for (input, want) in table {
            let got = SpiffeId::parse(&input);
            match (&got, &want) {
                (Ok(id), None) => assert_eq!(id.as_str(), input),
                (Err(e), Some(w)) => assert_eq!(e, w, "input {input:?}"),
                _ => panic!("input {input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parts() {
        let id = SpiffeId::parse("spiffe://example.org/ns/default/web").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/default/web");
        assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "default", "web"]);
        let root = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(root.path(), "");
        assert_eq!(root.segments().count(), 0);
        let td = TrustDomain::new("example.org").unwrap();
        assert!(id.is_member_of(&td));
        assert_eq!(td.id(), root);
        assert_eq!(td.id_with_path(&["ns", "default", "web"]).unwrap(), id);
        assert_eq!(td.id_with_path(&["a", ".."]), Err(IdError::DotSegment));
        assert_eq!(TrustDomain::new("spiffe://example.org").unwrap(), td);
        assert!(TrustDomain::new("Example.org").is_err());
        assert!(TrustDomain::new("example.org/a").is_err());
    }

    #[test]
    fn patterns() {
        let p = SpiffeIdPattern::parse("spiffe://td/ringzero/authority/*").unwrap();
        let yes = SpiffeId::parse("spiffe://td/ringzero/authority/a1").unwrap();
        let deep = SpiffeId::parse("spiffe://td/ringzero/authority/a1/x").unwrap();
        let no1 = SpiffeId::parse("spiffe://td/ringzero/authority").unwrap();
        let no2 = SpiffeId::parse("spiffe://td/ringzero/authorityx/a1").unwrap();
        let no3 = SpiffeId::parse("spiffe://other/ringzero/authority/a1").unwrap();
        assert!(p.matches(&yes) && p.matches(&deep));
        assert!(!p.matches(&no1) && !p.matches(&no2) && !p.matches(&no3));
        let e = SpiffeIdPattern::parse("spiffe://td/ringzero/authority").unwrap();
        assert!(e.matches(&no1) && !e.matches(&yes));
        assert!(SpiffeIdPattern::parse("spiffe://td/a/**").is_err());
        assert_eq!(p.to_string(), "spiffe://td/ringzero/authority/*");
    }
}

#[cfg(test)]
mod principal_tests {
    use super::*;

    #[test]
    fn sched_principals() {
        let p = |s: &str| SpiffeId::parse(s).unwrap();
        let id = p("spiffe://td/ringzero/sched/sched");
        assert_eq!(id.principal(), Some(Principal::Sched("sched")));
        // Only the exact shape names a scheduler; the rest of the path stays reserved.
        for other in [
            "spiffe://td/ringzero/sched",
            "spiffe://td/ringzero/sched/a/b",
            "spiffe://td/RingZero/sched/a",
        ] {
            assert_eq!(
                p(other).principal(),
                Some(Principal::OtherReserved),
                "{other}"
            );
        }
        assert_eq!(p("spiffe://td/ns/sched/a").principal(), None);
    }
}
