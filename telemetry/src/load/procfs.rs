//! CPU time from `/proc`: this process's, and that of the processes listening on given local
//! addresses (a LISTEN row of `/proc/net/tcp{,6}` gives the socket's inode; the process is the
//! one with a `socket:[inode]` descriptor in `/proc/PID/fd`). Everything read here may be
//! missing, unreadable (another user's process) or malformed: it becomes "unknown", never a
//! panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times: Linux's USER_HZ, 100 on every
/// architecture it exposes to user space through `/proc` (x86, arm, riscv, …).
const USER_HZ: u64 = 100;
/// The `st` value of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;
/// At most this many `/proc/PID` entries are scanned for a socket.
const MAX_PROCESSES: usize = 100_000;

/// CPU counters of this process and of each target, in clock ticks (`None`: unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSample {
    own: Option<u64>,
    nodes: Vec<Option<u64>>,
}

/// One target's CPU use over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCpu {
    /// The address as given.
    pub address: String,
    /// The process listening on it, if found.
    pub pid: Option<u32>,
    /// User + system time it used in the window, if known.
    pub cpu: Option<Duration>,
}

/// CPU use over a window: this process's, and each target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuUsage {
    pub own: Option<Duration>,
    pub nodes: Vec<NodeCpu>,
}

/// The processes to watch: this one, and the one listening on each address, when local.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    targets: Vec<(String, Option<u32>)>,
}

impl CpuProbe {
    /// Finds the process listening on each of `addresses` (`host:port`); one that is remote,
    /// another user's, or not resolvable stays unknown.
    pub fn new(addresses: &[String]) -> Self {
        let targets = addresses
            .iter()
            .map(|a| (a.clone(), listening_pid(Path::new("/proc"), a)))
            .collect();
        Self { targets }
    }

    /// The PIDs found, in the order of the addresses.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.targets.iter().map(|(_, p)| *p).collect()
    }

    /// Reads every counter now.
    pub fn sample(&self) -> CpuSample {
        let read = |pid: &str| {
            std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
                .ok()
                .and_then(|s| stat_cpu_ticks(&s))
        };
        CpuSample {
            own: read("self"),
            nodes: self
                .targets
                .iter()
                .map(|(_, pid)| pid.and_then(|p| read(&p.to_string())))
                .collect(),
        }
    }

    /// What was used between `before` and `after` (two samples of this probe).
    pub fn usage(&self, before: &CpuSample, after: &CpuSample) -> CpuUsage {
        CpuUsage {
            own: ticks_between(before.own, after.own),
            nodes: self
                .targets
                .iter()
                .enumerate()
                .map(|(i, (address, pid))| NodeCpu {
                    address: address.clone(),
                    pid: *pid,
                    cpu: ticks_between(
                        before.nodes.get(i).copied().flatten(),
                        after.nodes.get(i).copied().flatten(),
                    ),
                })
                .collect(),
        }
    }
}

fn ticks_between(before: Option<u64>, after: Option<u64>) -> Option<Duration> {
    let ticks = after?.checked_sub(before?)?;
    Some(Duration::from_millis(ticks.saturating_mul(1000 / USER_HZ)))
}

/// utime + stime (clock ticks) of a `/proc/PID/stat` line.
pub(crate) fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces and parentheses: the fields
    // start after the last ')'. utime and stime are fields 14 and 15 of the line, the 12th
    // and 13th after the name.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The process listening on `address` (`host:port`), found under `proc` (normally `/proc`).
pub(crate) fn listening_pid(proc: &Path, address: &str) -> Option<u32> {
    let addrs: Vec<SocketAddr> = address.to_socket_addrs().ok()?.collect();
    let mut inodes = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc.join(table)) else {
            continue;
        };
        for a in &addrs {
            inodes.extend(listen_inodes(&text, *a));
        }
    }
    inodes.retain(|i| *i != 0);
    if inodes.is_empty() {
        return None;
    }
    socket_owner(proc, &inodes)
}

/// The inodes of the LISTEN rows of a `/proc/net/tcp` or `tcp6` table that accept
/// connections to `target`: the same address and port, or a wildcard address on that port
/// when `target` is a loopback address (a remote address never matches a local wildcard).
pub(crate) fn listen_inodes(table: &str, target: SocketAddr) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(parse_tcp_row)
        .filter(|row| {
            row.state == TCP_LISTEN
                && row.port == target.port()
                && (same_ip(row.ip, target.ip())
                    || (row.ip.is_unspecified() && target.ip().is_loopback()))
        })
        .map(|row| row.inode)
        .collect()
}

/// IPv4 addresses compare equal to their IPv4-mapped IPv6 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TcpRow {
    ip: IpAddr,
    port: u16,
    state: u8,
    inode: u64,
}

/// One row: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …`.
pub(crate) fn parse_tcp_row(line: &str) -> Option<TcpRow> {
    let f: Vec<&str> = line.split_whitespace().take(10).collect();
    if f.len() < 10 {
        return None;
    }
    let (ip, port) = f[1].split_once(':')?;
    Some(TcpRow {
        ip: parse_hex_ip(ip)?,
        port: u16::from_str_radix(port, 16).ok()?,
        state: u8::from_str_radix(f[3], 16).ok()?,
        inode: f[9].parse().ok()?,
    })
}

/// The kernel prints an address as 32-bit words in native byte order, each word holding four
/// bytes of the address in network order: 8 hex digits for IPv4, 32 for IPv6.
fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.is_ascii() {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The first process under `proc` holding a descriptor for one of the socket `inodes`.
/// Processes whose descriptors cannot be read (another user's) are skipped.
fn socket_owner(proc: &Path, inodes: &[u64]) -> Option<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let entries = std::fs::read_dir(proc).ok()?;
    for entry in entries.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target
                    .to_str()
                    .is_some_and(|t| wanted.iter().any(|w| w == t))
            {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
