//! Workload selectors: what an agent observed about a process, and what a registration entry
//! requires of one.
//!
//! A selector is `<type>:<key>:<value>`, in SPIRE's notation:
//!
//! | selector | observed from | value |
//! |---|---|---|
//! | `unix:uid:1000` | the peer credentials of the socket | a decimal `u32`, no sign or leading zero |
//! | `unix:gid:0` | the peer credentials of the socket | a decimal `u32`, no sign or leading zero |
//! | `unix:user:alice` | the uid, named by the user database | a name, no `:` or whitespace |
//! | `unix:group:wheel` | the gid, named by the group database | a name, no `:` or whitespace |
//! | `unix:path:/usr/bin/foo` | the process's executable | an absolute, normalized path |
//! | `unix:sha256:<64 hex>` | the SHA-256 of the executable | exactly 64 lowercase hex digits |
//! | `ringzero:job:<alloc id>` | the peer is in the process group of a task the agent launched for that allocation | 16 characters `[a-z0-9]` |
//!
//! Parsing is strict so that equality is exact: a value has exactly one spelling
//! (`unix:uid:01000` and `unix:path:/usr//bin/foo` are refused rather than silently never
//! matching), nothing contains a control character, and lengths are capped. An unknown type or
//! key is an error that names it; new types are added as new [`SelectorKind`] variants.
//!
//! `ringzero:` selectors are [reserved](SelectorKind::is_reserved): only the authority derives
//! them (an allocation's entry), never a user-written entry.
//!
//! An entry matches a workload when **every** selector of the entry is among the workload's
//! ([`matches()`], SPIRE's semantics). Entries that select only on what a file is (path, hash)
//! and not on who runs it are [weak](is_weak): any user who can run that binary gets the
//! identity, so ringzero refuses them unless explicitly allowed.

use std::fmt;
use std::str::FromStr;

/// The longest selector accepted, in bytes (type, key and value with their separators).
pub const MAX_SELECTOR_LEN: usize = 4200;
/// The longest `unix:path` value accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// The longest user or group name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The longest piece of hostile input an error message repeats.
const MAX_ECHO: usize = 32;

/// What a selector observes. Non-exhaustive: more types are added over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SelectorKind {
    /// `unix:uid`: the numeric user id of the peer.
    UnixUid,
    /// `unix:gid`: the numeric primary group id of the peer.
    UnixGid,
    /// `unix:user`: the name of the peer's uid.
    UnixUser,
    /// `unix:group`: the name of the peer's gid.
    UnixGroup,
    /// `unix:path`: the absolute path of the peer's executable.
    UnixPath,
    /// `unix:sha256`: the SHA-256 of the peer's executable, lowercase hex.
    UnixSha256,
    /// `ringzero:job`: the allocation whose task's process group the peer belongs to.
    RingzeroJob,
}

impl SelectorKind {
    /// Every kind, in a stable order.
    pub const ALL: [SelectorKind; 7] = [
        SelectorKind::UnixUid,
        SelectorKind::UnixGid,
        SelectorKind::UnixUser,
        SelectorKind::UnixGroup,
        SelectorKind::UnixPath,
        SelectorKind::UnixSha256,
        SelectorKind::RingzeroJob,
    ];

    /// The selector type, the part before the first `:` (`unix`).
    pub fn type_name(self) -> &'static str {
        match self {
            SelectorKind::UnixUid
            | SelectorKind::UnixGid
            | SelectorKind::UnixUser
            | SelectorKind::UnixGroup
            | SelectorKind::UnixPath
            | SelectorKind::UnixSha256 => "unix",
            SelectorKind::RingzeroJob => "ringzero",
        }
    }

    /// The key within the type (`uid`, `path`, …).
    pub fn key(self) -> &'static str {
        match self {
            SelectorKind::UnixUid => "uid",
            SelectorKind::UnixGid => "gid",
            SelectorKind::UnixUser => "user",
            SelectorKind::UnixGroup => "group",
            SelectorKind::UnixPath => "path",
            SelectorKind::UnixSha256 => "sha256",
            SelectorKind::RingzeroJob => "job",
        }
    }

    /// Whether this kind says who runs a process (as opposed to what the process runs).
    pub fn identifies_principal(self) -> bool {
        matches!(
            self,
            SelectorKind::UnixUid
                | SelectorKind::UnixGid
                | SelectorKind::UnixUser
                | SelectorKind::UnixGroup
        )
    }

    /// Whether only the authority may write this kind into an entry (`ringzero:*`): the agent
    /// observes it for processes it launched itself, so a user-written entry naming it would
    /// claim another principal's task.
    pub fn is_reserved(self) -> bool {
        matches!(self, SelectorKind::RingzeroJob)
    }

    fn validate(self, value: &str) -> Result<(), &'static str> {
        match self {
            SelectorKind::UnixUid | SelectorKind::UnixGid => validate_id(value),
            SelectorKind::UnixUser | SelectorKind::UnixGroup => validate_name(value),
            SelectorKind::UnixPath => validate_path(value),
            SelectorKind::UnixSha256 => validate_sha256(value),
            SelectorKind::RingzeroJob => validate_alloc_id(value),
        }
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.type_name(), self.key())
    }
}

/// Why a string is not a selector. Messages quote at most a short, escaped prefix of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    #[error("empty selector")]
    Empty,
    #[error("selector longer than {MAX_SELECTOR_LEN} bytes")]
    TooLong,
    #[error("selector contains a control character")]
    ControlChar,
    #[error("selector must be <type>:<key>:<value>, e.g. unix:uid:1000")]
    Malformed,
    #[error("unknown selector type {0:?} (known types: unix, ringzero)")]
    UnknownType(String),
    #[error(
        "unknown selector key {key:?} for type {ty:?} (known: uid, gid, user, group, path, sha256; ringzero: job)"
    )]
    UnknownKey { ty: String, key: String },
    #[error("bad value for {kind}: {reason}")]
    BadValue {
        kind: SelectorKind,
        reason: &'static str,
    },
}

/// One selector: a kind and a value valid for it. Built only by [`Selector::new`] or parsing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    kind: SelectorKind,
    value: String,
}

impl Selector {
    /// A selector of `kind` with `value`, validated as parsing would.
    pub fn new(kind: SelectorKind, value: &str) -> Result<Self, SelectorError> {
        if value.is_empty() {
            return Err(SelectorError::BadValue {
                kind,
                reason: "empty value",
            });
        }
        if value.chars().any(char::is_control) {
            return Err(SelectorError::ControlChar);
        }
        if kind.type_name().len() + kind.key().len() + 2 + value.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong);
        }
        kind.validate(value)
            .map_err(|reason| SelectorError::BadValue { kind, reason })?;
        Ok(Self {
            kind,
            value: value.to_owned(),
        })
    }

    /// `unix:uid:<uid>`.
    pub fn uid(uid: u32) -> Self {
        Self {
            kind: SelectorKind::UnixUid,
            value: uid.to_string(),
        }
    }

    /// `unix:gid:<gid>`.
    pub fn gid(gid: u32) -> Self {
        Self {
            kind: SelectorKind::UnixGid,
            value: gid.to_string(),
        }
    }

    /// `ringzero:job:<alloc id>`.
    pub fn job(alloc_id: &str) -> Result<Self, SelectorError> {
        Self::new(SelectorKind::RingzeroJob, alloc_id)
    }

    /// `unix:sha256:<hex>` of a digest.
    pub fn sha256(digest: &[u8; 32]) -> Self {
        Self {
            kind: SelectorKind::UnixSha256,
            value: hex::encode(digest),
        }
    }

    /// Parses `<type>:<key>:<value>`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(SelectorError::ControlChar);
        }
        let (ty, rest) = s.split_once(':').ok_or(SelectorError::Malformed)?;
        if ty.is_empty() {
            return Err(SelectorError::Malformed);
        }
        if ty != "unix" && ty != "ringzero" {
            return Err(SelectorError::UnknownType(echo(ty)));
        }
        let (key, value) = rest.split_once(':').ok_or(SelectorError::Malformed)?;
        let kind = SelectorKind::ALL
            .into_iter()
            .find(|k| k.type_name() == ty && k.key() == key)
            .ok_or_else(|| SelectorError::UnknownKey {
                ty: echo(ty),
                key: echo(key),
            })?;
        Self::new(kind, value)
    }

    /// What this selector observes.
    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    /// The value, in its one canonical spelling.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether a set of entry selectors is weak: it says nothing about who runs the process (no
/// uid, gid, user or group selector), only what the process runs. An empty set is weak.
pub fn is_weak(selectors: &[Selector]) -> bool {
    !selectors.iter().any(|s| s.kind.identifies_principal())
}

/// Whether an entry with `entry` selectors applies to a workload attested with `workload`
/// selectors: every entry selector must be among the workload's. An entry without selectors
/// matches nothing.
pub fn matches(entry: &[Selector], workload: &[Selector]) -> bool {
    !entry.is_empty() && entry.iter().all(|e| workload.contains(e))
}

/// A short, escaped prefix of hostile input, for error messages.
fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

fn validate_id(v: &str) -> Result<(), &'static str> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be a decimal number");
    }
    if v.len() > 1 && v.starts_with('0') {
        return Err("must have no leading zero");
    }
    v.parse::<u32>()
        .map(|_| ())
        .map_err(|_| "must fit in 32 bits")
}

fn validate_name(v: &str) -> Result<(), &'static str> {
    if v.len() > MAX_NAME_LEN {
        return Err("name too long");
    }
    if v.contains(':') || v.chars().any(char::is_whitespace) {
        return Err("name must contain no ':' or whitespace");
    }
    Ok(())
}

fn validate_path(v: &str) -> Result<(), &'static str> {
    if v.len() > MAX_PATH_LEN {
        return Err("path too long");
    }
    let Some(rest) = v.strip_prefix('/') else {
        return Err("path must be absolute");
    };
    if rest.is_empty() {
        return Err("path must name a file");
    }
    for segment in rest.split('/') {
        match segment {
            "" => return Err("path must have no empty segment or trailing '/'"),
            "." | ".." => return Err("path must have no '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

fn validate_alloc_id(v: &str) -> Result<(), &'static str> {
    if v.len() != 16 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'z')) {
        return Err("must be exactly 16 characters [a-z0-9]");
    }
    Ok(())
}

fn validate_sha256(v: &str) -> Result<(), &'static str> {
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("must be exactly 64 lowercase hex digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;

    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn known_selectors_round_trip() {
        let hash = "a".repeat(64);
        for s in [
            "unix:uid:0",
            "unix:uid:1000",
            "unix:uid:4294967295",
            "unix:gid:0",
            "unix:user:alice",
            "unix:group:wheel",
            "unix:user:svc-web.1",
            "unix:path:/usr/bin/foo",
            "unix:path:/opt/a:b/c d",
            &format!("unix:sha256:{hash}"),
            "ringzero:job:0123456789abcdez",
        ] {
            let parsed = sel(s);
            assert_eq!(parsed.to_string(), s);
            assert_eq!(s.parse::<Selector>().unwrap(), parsed);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), parsed);
        }
        assert_eq!(sel("unix:path:/a:b").value(), "/a:b");
        assert_eq!(sel("unix:uid:7").kind(), SelectorKind::UnixUid);
        assert_eq!(Selector::uid(1000), sel("unix:uid:1000"));
        assert_eq!(Selector::gid(0), sel("unix:gid:0"));
        assert_eq!(
            Selector::job("aaaaaaaaaaaaaaaa").unwrap(),
            sel("ringzero:job:aaaaaaaaaaaaaaaa")
        );
        assert!(SelectorKind::RingzeroJob.is_reserved());
        assert!(!SelectorKind::RingzeroJob.identifies_principal());
        assert!(
            SelectorKind::ALL
                .iter()
                .all(|k| k.is_reserved() == (k.type_name() == "ringzero"))
        );
        assert_eq!(Selector::sha256(&[0xab; 32]).value(), "ab".repeat(32));
    }

    #[test]
    fn refuses_malformed_and_hostile_input() {
        let cases: &[(&str, SelectorError)] = &[
            ("", SelectorError::Empty),
            ("unix", SelectorError::Malformed),
            ("unix:uid", SelectorError::Malformed),
            (":uid:1", SelectorError::Malformed),
            (
                "k8s:ns:default",
                SelectorError::UnknownType("k8s".to_owned()),
            ),
            ("UNIX:uid:1", SelectorError::UnknownType("UNIX".to_owned())),
            (
                "unix:pid:1",
                SelectorError::UnknownKey {
                    ty: "unix".to_owned(),
                    key: "pid".to_owned(),
                },
            ),
            ("unix:uid:1\n", SelectorError::ControlChar),
            ("unix:path:/bin/\0sh", SelectorError::ControlChar),
            ("unix:user:al\u{7f}ice", SelectorError::ControlChar),
            ("unix:user:al\u{85}ice", SelectorError::ControlChar),
        ];
        for (input, want) in cases {
            assert_eq!(Selector::parse(input).unwrap_err(), *want, "{input:?}");
        }
        for bad in [
            "unix:uid:",
            "unix:uid:-1",
            "unix:uid:+1",
            "unix:uid:01",
            "unix:uid:4294967296",
            "unix:uid:99999999999999999999999",
            "unix:uid: 1",
            "unix:uid:1.0",
            "unix:uid:١",
            "unix:gid:0x10",
            "unix:user:a b",
            "unix:user:a:b",
            "unix:group:",
            "unix:path:usr/bin/foo",
            "unix:path:/",
            "unix:path:/usr//bin",
            "unix:path:/usr/bin/",
            "unix:path:/usr/../bin/sh",
            "unix:path:/./sh",
            "unix:sha256:abc",
            "unix:sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
            "unix:sha256:gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
            "ringzero:job:",
            "ringzero:job:0123456789abcde",
            "ringzero:job:0123456789abcdef0",
            "ringzero:job:0123456789ABCDEF",
            "ringzero:job:0123456789abcd-f",
            "ringzero:job:../../etc/passw",
        ] {
            assert!(
                matches!(Selector::parse(bad), Err(SelectorError::BadValue { .. })),
                "{bad:?} -> {:?}",
                Selector::parse(bad)
            );
        }
        let long_path = format!("unix:path:/{}", "a".repeat(MAX_PATH_LEN));
        assert!(Selector::parse(&long_path).is_err());
        let huge = format!("unix:path:/{}", "a".repeat(1 << 20));
        assert_eq!(Selector::parse(&huge), Err(SelectorError::TooLong));
        let long_name = format!("unix:user:{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(Selector::parse(&long_name).is_err());
    }

    #[test]
    fn errors_echo_only_a_short_prefix() {
        let ty = "x".repeat(3000);
        let err = Selector::parse(&format!("{ty}:a:b")).unwrap_err();
        assert!(err.to_string().len() < 120, "{err}");
        assert!(err.to_string().contains("unknown selector type"));
    }

    #[test]
    fn weak_means_no_principal() {
        let hash = format!("unix:sha256:{}", "0".repeat(64));
        assert!(is_weak(&[]));
        assert!(is_weak(&[sel("unix:path:/bin/sh")]));
        assert!(is_weak(&[sel("unix:path:/bin/sh"), sel(&hash)]));
        for strong in ["unix:uid:0", "unix:gid:0", "unix:user:a", "unix:group:b"] {
            assert!(!is_weak(&[sel("unix:path:/bin/sh"), sel(strong)]));
        }
    }

    #[test]
    fn matching_is_subset() {
        let workload = [
            sel("unix:uid:1000"),
            sel("unix:gid:100"),
            sel("unix:path:/usr/bin/web"),
        ];
        assert!(matches(&[sel("unix:uid:1000")], &workload));
        assert!(matches(
            &[sel("unix:path:/usr/bin/web"), sel("unix:uid:1000")],
            &workload
        ));
        assert!(!matches(
            &[sel("unix:uid:1000"), sel("unix:uid:0")],
            &workload
        ));
        assert!(!matches(&[sel("unix:uid:0")], &workload));
        assert!(!matches(&[], &workload));
        assert!(!matches(&[sel("unix:uid:1000")], &[]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Fuzz-style: arbitrary strings never panic, and whatever parses round-trips.
        #[test]
        fn arbitrary_input_never_panics(s in any::<String>()) {
            if let Ok(parsed) = Selector::parse(&s) {
                prop_assert_eq!(parsed.to_string(), s.clone());
                prop_assert!(!s.chars().any(char::is_control));
            }
        }

        /// Fuzz-style, biased towards the grammar.
        #[test]
        fn structured_input_never_panics(
            ty in prop::sample::select(vec!["unix", "ringzero", "", "Unix", "unix\0"]),
            key in prop::sample::select(vec!["uid", "gid", "user", "group", "path", "sha256", "", "job"]),
            value in "[\\PC\\x00-\\x1f/.:0-9a-fA-F ]{0,80}",
        ) {
            let s = format!("{ty}:{key}:{value}");
            if let Ok(parsed) = Selector::parse(&s) {
                prop_assert_eq!(parsed.to_string(), s);
                prop_assert_eq!(Selector::new(parsed.kind(), parsed.value()), Ok(parsed.clone()));
            }
        }

        #[test]
        fn ids_round_trip(id in any::<u32>()) {
            prop_assert_eq!(Selector::parse(&format!("unix:uid:{id}")), Ok(Selector::uid(id)));
        }
    }
}
