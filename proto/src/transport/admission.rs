//! Who gets a connection slot, and for how long.
//!
//! A connection takes two slots in turn: a handshake slot (global, and per source IP) while its
//! TLS handshake runs, then a slot in the pool of its [`ConnectionClass`]. The pools are
//! separate so that no class can take another's capacity: anonymous clients cannot crowd out
//! authenticated ones, and nobody but the authority members can take the members' reserved
//! pool, so Raft keeps working when everything else is full. Each class also has its own idle
//! timeout and maximum age, enforced by [`Lifetime`] on the connection's I/O.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Context;
use std::time::{Duration, SystemTime};

use ringzero_policy::spiffe::Principal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::PeerInfo;

/// Bounds on what network peers may cost a server, per connection class.
///
/// The defaults keep the total of every pool (1,600 connections) well under the usual
/// file-descriptor limit of a service; a server with a lower `RLIMIT_NOFILE` should lower them.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// TLS handshakes in progress; a connection beyond this is closed as soon as it is accepted.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source IP (one IPv6 /64).
    pub max_handshakes_per_ip: usize,
    /// How long a client may take to complete the TLS handshake before it is disconnected.
    pub handshake_timeout: Duration,
    /// Connections reserved for authority members ([`ConnectionClass::Member`]). A member that
    /// finds this pool full falls back to the general pool.
    pub max_member_connections: usize,
    /// Connections of clients with a verified SVID ([`ConnectionClass::Authenticated`]).
    pub max_connections: usize,
    /// Connections without a client certificate ([`ConnectionClass::Anonymous`]).
    pub max_anonymous_connections: usize,
    /// Anonymous connections from one source IP (one IPv6 /64).
    pub max_anonymous_per_ip: usize,
    /// An anonymous connection is closed after this long without a byte in either direction.
    pub anonymous_idle_timeout: Duration,
    /// An anonymous connection is closed this long after its handshake, whatever it does.
    pub anonymous_max_age: Duration,
    /// An authenticated or member connection is closed after this long without a byte in either
    /// direction. Live streams are never idle this long (the entry feed beats every 10 s).
    pub idle_timeout: Duration,
    /// The age at which an authenticated or member connection is asked to close (HTTP/2
    /// GOAWAY, by a server built with [`ServerPolicy::server`](super::ServerPolicy::server)),
    /// after which it has `max_connection_age_grace` to finish its calls before it is cut. In
    /// any case a connection is cut when its client certificate expires.
    pub max_connection_age: Duration,
    /// See `max_connection_age`.
    pub max_connection_age_grace: Duration,
    /// TCP keepalive: idle time before the first probe (then every 10 s, 3 probes), so that a
    /// peer that vanished without a FIN does not hold a slot until the idle timeout.
    pub tcp_keepalive: Option<Duration>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            max_handshakes_per_ip: 32,
            handshake_timeout: Duration::from_secs(5),
            max_member_connections: 64,
            max_connections: 1024,
            max_anonymous_connections: 256,
            max_anonymous_per_ip: 16,
            anonymous_idle_timeout: Duration::from_secs(10),
            anonymous_max_age: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(5 * 60),
            max_connection_age: Duration::from_secs(3600),
            max_connection_age_grace: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(60)),
        }
    }
}

/// What a connection is, once its handshake has told who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClass {
    /// An authority member: `ringzero/authority/<n>` in an SVID signed directly by member
    /// `<n>`'s own CA (the only SVID the authority accepts for a member).
    Member(u64),
    /// Any other client with a verified SVID.
    Authenticated,
    /// No client certificate: may make first-contact calls only.
    Anonymous,
}

impl ConnectionClass {
    /// The class of a client as its handshake established it.
    pub fn of(peer: &PeerInfo) -> Self {
        let Some(id) = &peer.spiffe_id else {
            return Self::Anonymous;
        };
        match (id.principal(), peer.issuer_authority) {
            (Some(Principal::Authority(n)), Some(issuer)) if n == issuer => Self::Member(n),
            _ => Self::Authenticated,
        }
    }
}

/// The source a per-IP limit counts: the IPv4 address, or the /64 of an IPv6 address (an
/// attacker usually holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts per source IP, each capped; entries disappear at zero so the map stays as small as
/// the connections it counts.
#[derive(Debug)]
struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = source_key(ip);
        // A poisoned lock only means another thread panicked while counting: the counts
        // themselves are still consistent (every update is one statement).
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: Arc::clone(self),
            key,
        })
    }
}

/// One of a source IP's slots, given back on drop.
#[derive(Debug)]
struct IpSlot {
    owner: Arc<PerIp>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What a connection holds while it is open: its pool slot and, for an anonymous one, its
/// source IP's slot. Both are given back when the connection is dropped.
#[derive(Debug)]
pub(super) struct Slot {
    _pool: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
}

/// What a handshake in progress holds.
#[derive(Debug)]
pub(super) struct HandshakeSlot {
    _global: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// Every pool of one listener.
#[derive(Debug)]
pub(super) struct Pools {
    limits: ServerLimits,
    handshakes: Arc<Semaphore>,
    handshakes_per_ip: Arc<PerIp>,
    members: Arc<Semaphore>,
    general: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    anonymous_per_ip: Arc<PerIp>,
}

fn semaphore(n: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))
}

impl Pools {
    pub(super) fn new(limits: ServerLimits) -> Self {
        Self {
            limits,
            handshakes: semaphore(limits.max_handshakes),
            handshakes_per_ip: PerIp::new(limits.max_handshakes_per_ip),
            members: semaphore(limits.max_member_connections),
            general: semaphore(limits.max_connections),
            anonymous: semaphore(limits.max_anonymous_connections),
            anonymous_per_ip: PerIp::new(limits.max_anonymous_per_ip),
        }
    }

    pub(super) fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// A handshake slot for a new connection from `ip`, if both the global and the per-IP
    /// count allow one.
    pub(super) fn handshake(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        let ip_slot = self.handshakes_per_ip.try_acquire(ip)?;
        let global = Arc::clone(&self.handshakes).try_acquire_owned().ok()?;
        Some(HandshakeSlot {
            _global: global,
            _ip: ip_slot,
        })
    }

    /// A slot in the pool of `class` for a connection from `ip`, or `None` when it is full.
    pub(super) fn admit(&self, class: ConnectionClass, ip: IpAddr) -> Option<Slot> {
        match class {
            ConnectionClass::Member(_) => {
                let pool = Arc::clone(&self.members)
                    .try_acquire_owned()
                    .or_else(|_| Arc::clone(&self.general).try_acquire_owned())
                    .ok()?;
                Some(Slot {
                    _pool: pool,
                    _ip: None,
                })
            }
            ConnectionClass::Authenticated => Some(Slot {
                _pool: Arc::clone(&self.general).try_acquire_owned().ok()?,
                _ip: None,
            }),
            ConnectionClass::Anonymous => {
                let ip_slot = self.anonymous_per_ip.try_acquire(ip)?;
                let pool = Arc::clone(&self.anonymous).try_acquire_owned().ok()?;
                Some(Slot {
                    _pool: pool,
                    _ip: Some(ip_slot),
                })
            }
        }
    }

    /// The idle timeout and the hard end of a connection of `class` whose client certificate
    /// (if any) expires at `not_after`.
    pub(super) fn lifetime(
        &self,
        class: ConnectionClass,
        not_after: Option<SystemTime>,
    ) -> Lifetime {
        let l = &self.limits;
        let (idle, age) = match class {
            ConnectionClass::Anonymous => (l.anonymous_idle_timeout, l.anonymous_max_age),
            ConnectionClass::Member(_) | ConnectionClass::Authenticated => (
                l.idle_timeout,
                l.max_connection_age
                    .saturating_add(l.max_connection_age_grace),
            ),
        };
        // Never past the certificate's expiry; an already expired one ends at once.
        let age = match not_after {
            Some(t) => age.min(
                t.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            ),
            None => age,
        };
        Lifetime::new(idle, age)
    }
}

/// The idle timeout and the hard end of one connection, checked whenever its I/O is polled.
///
/// Every read or write that moves bytes counts as activity. The idle timer is re-armed lazily
/// (only when it fires), so activity costs a clock read, not a timer update.
#[derive(Debug)]
pub(super) struct Lifetime {
    idle: Duration,
    last_activity: Instant,
    idle_timer: Pin<Box<Sleep>>,
    end: Pin<Box<Sleep>>,
    over: bool,
}

/// `at + d`, or about 30 years from `at` when a limit is too large to add (no panic on a
/// limit configured as "never").
fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(at)
}

impl Lifetime {
    fn new(idle: Duration, age: Duration) -> Self {
        let now = Instant::now();
        Self {
            idle,
            last_activity: now,
            idle_timer: Box::pin(tokio::time::sleep_until(after(now, idle))),
            end: Box::pin(tokio::time::sleep_until(after(now, age))),
            over: false,
        }
    }

    /// Records that bytes moved.
    pub(super) fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Whether the connection has reached its end (idle too long, or too old); registers the
    /// timers with `cx` otherwise. Once over, stays over.
    pub(super) fn poll_over(&mut self, cx: &mut Context<'_>) -> bool {
        if self.over {
            return true;
        }
        if self.end.as_mut().poll(cx).is_ready() {
            self.over = true;
            return true;
        }
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let due = after(self.last_activity, self.idle);
            if Instant::now() >= due {
                self.over = true;
                return true;
            }
            self.idle_timer.as_mut().reset(due);
        }
        false
    }

    /// The error a write on a connection past its end fails with.
    pub(super) fn over_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "connection closed: idle timeout or maximum age reached",
        )
    }
}

/// Applies TCP keepalive to an accepted connection (best effort: a failure leaves the
/// connection to its idle timeout).
pub(super) fn set_keepalive(tcp: &tokio::net::TcpStream, idle: Option<Duration>) {
    if let Some(idle) = idle {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn per_ip_counts_cap_and_free_their_entries() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = per_ip.try_acquire(a).unwrap();
        let s2 = per_ip.try_acquire(a).unwrap();
        assert!(per_ip.try_acquire(a).is_none());
        let s3 = per_ip.try_acquire(b).unwrap();
        drop(s1);
        let s4 = per_ip.try_acquire(a).unwrap();
        drop((s2, s3, s4));
        assert!(per_ip.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn a_zero_cap_refuses_and_leaves_no_entry() {
        let per_ip = PerIp::new(0);
        assert!(per_ip.try_acquire("192.0.2.1".parse().unwrap()).is_none());
        assert!(per_ip.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
