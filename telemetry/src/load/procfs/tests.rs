use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

/// An address as the kernel prints it (native-order 32-bit words of network-order bytes).
fn hex_ip(ip: IpAddr) -> String {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

fn row(sl: u32, ip: IpAddr, port: u16, state: u8, inode: u64) -> String {
    format!(
        "   {sl}: {}:{port:04X} 00000000:0000 {state:02X} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0",
        hex_ip(ip)
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn kernel_format_round_trips() {
    #[cfg(target_endian = "little")]
    assert_eq!(hex_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), "0100007F");
    for ip in [
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6("2001:db8::1:2".parse().unwrap()),
    ] {
        assert_eq!(parse_hex_ip(&hex_ip(ip)), Some(ip));
    }
}

#[test]
fn finds_the_listen_row_of_an_address() {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let table = [
        HEADER.to_owned(),
        // An established connection from the port: not a listener.
        row(0, lo, 7000, 0x01, 111),
        row(1, lo, 7000, TCP_LISTEN, 222),
        row(2, lo, 7001, TCP_LISTEN, 333),
        row(3, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7002, TCP_LISTEN, 444),
        row(
            4,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            7003,
            TCP_LISTEN,
            555,
        ),
    ]
    .join("\n");
    assert_eq!(listen_inodes(&table, addr("127.0.0.1:7000")), vec![222]);
    assert_eq!(listen_inodes(&table, addr("127.0.0.1:7001")), vec![333]);
    // A wildcard listener serves loopback…
    assert_eq!(listen_inodes(&table, addr("127.0.0.1:7002")), vec![444]);
    // …but is not taken for a remote machine's port.
    assert!(listen_inodes(&table, addr("10.0.0.2:7002")).is_empty());
    assert_eq!(listen_inodes(&table, addr("10.0.0.9:7003")), vec![555]);
    assert!(listen_inodes(&table, addr("127.0.0.1:9999")).is_empty());
    // IPv6 table: [::] and ::1, and an IPv4 target matching a v4-mapped row.
    let table6 = [
        HEADER.to_owned(),
        row(0, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8000, TCP_LISTEN, 666),
        row(1, IpAddr::V6(Ipv6Addr::LOCALHOST), 8001, TCP_LISTEN, 777),
        row(
            2,
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            8002,
            TCP_LISTEN,
            888,
        ),
    ]
    .join("\n");
    assert_eq!(listen_inodes(&table6, addr("127.0.0.1:8000")), vec![666]);
    assert_eq!(listen_inodes(&table6, addr("[::1]:8001")), vec![777]);
    assert_eq!(listen_inodes(&table6, addr("127.0.0.1:8002")), vec![888]);
}

#[test]
fn hostile_tables_never_panic() {
    let target = addr("127.0.0.1:7000");
    for table in [
        "",
        "\n\n\n",
        "garbage",
        "header\n0: 0100007F:1B58",
        "header\n0: 0100007F 00000000:0000 0A 0 0 0 0 0 5",
        "header\n0: 0100007F:1B58 0:0 0A a b c d e f",
        "header\n0: 0100007F:FFFFFF 0:0 0A a b c d e 5",
        "header\n0: 0100007F:1B58 0:0 ZZ a b c d e 5",
        "header\n0: 0100007F:1B58 0:0 0A a b c d e 99999999999999999999999",
        "header\n0: 0100007F:1B58 0:0 0A a b c d e -1",
        "header\n0: 0100007\u{e9}:1B58 0:0 0A a b c d e 5",
        "header\n0: \u{e9}\u{e9}\u{e9}\u{e9}:1B58 0:0 0A a b c d e 5",
        "header\n0: 0100007F0:1B58 0:0 0A a b c d e 5",
        "header\n0: :1B58 0:0 0A a b c d e 5",
        "header\n0: 0100007F:1B58:1 0:0 0A a b c d e 5",
        "header\n0: 000000000000000000000000000000\u{e9}:1B58 0:0 0A a b c d e 5",
    ] {
        assert!(listen_inodes(table, target).is_empty(), "{table:?}");
    }
    // The same shorthand, well formed, is found.
    let table = format!("{HEADER}\n0: 0100007F:1B58 0:0 0A a b c d e 5");
    #[cfg(target_endian = "little")]
    assert_eq!(listen_inodes(&table, target), vec![5]);
    let _ = table;
}

#[test]
fn stat_fields_after_a_hostile_command_name() {
    // utime (14th field) 250, stime (15th) 50.
    let line = "4242 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
    assert_eq!(stat_cpu_ticks(line), Some(300));
    assert_eq!(stat_cpu_ticks("1 (x) R 1 2 3 4 5 6 7 8 9 10 1"), None);
    assert_eq!(stat_cpu_ticks("1 x R 1 2 3 4 5 6 7 8 9 10 1 2"), None);
    assert_eq!(stat_cpu_ticks("1 (x) R 1 2 3 4 5 6 7 8 9 10 -1 2"), None);
    assert_eq!(
        stat_cpu_ticks(&format!("1 (x) R 1 2 3 4 5 6 7 8 9 10 {} 1", u64::MAX)),
        None
    );
    assert_eq!(stat_cpu_ticks(""), None);
    assert_eq!(stat_cpu_ticks(")"), None);
}

#[test]
fn cpu_between_samples() {
    assert_eq!(
        ticks_between(Some(100), Some(350)),
        Some(Duration::from_millis(2500))
    );
    // Unknown, or a counter going backwards (the PID was reused): unknown, not a wrap.
    assert_eq!(ticks_between(None, Some(1)), None);
    assert_eq!(ticks_between(Some(5), None), None);
    assert_eq!(ticks_between(Some(5), Some(4)), None);
}

#[test]
fn finds_the_owner_in_a_fake_proc() {
    let proc = tempfile::tempdir().unwrap();
    let p = proc.path();
    std::fs::create_dir_all(p.join("net")).unwrap();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let table = [HEADER.to_owned(), row(0, lo, 7000, TCP_LISTEN, 4242)].join("\n");
    std::fs::write(p.join("net/tcp"), table).unwrap();
    // net/tcp6 missing; a non-numeric entry; a process without fd; another with the socket.
    std::fs::create_dir_all(p.join("self/fd")).unwrap();
    std::fs::create_dir_all(p.join("17")).unwrap();
    std::fs::create_dir_all(p.join("23/fd")).unwrap();
    std::os::unix::fs::symlink("socket:[99]", p.join("23/fd/3")).unwrap();
    std::os::unix::fs::symlink("/dev/null", p.join("23/fd/0")).unwrap();
    std::fs::create_dir_all(p.join("31/fd")).unwrap();
    std::os::unix::fs::symlink("socket:[4242]", p.join("31/fd/7")).unwrap();
    assert_eq!(listening_pid(p, "127.0.0.1:7000"), Some(31));
    assert_eq!(listening_pid(p, "127.0.0.1:7001"), None);
    assert_eq!(listening_pid(p, "not an address"), None);
    assert_eq!(listening_pid(&p.join("missing"), "127.0.0.1:7000"), None);
}

#[test]
fn finds_this_process_listening() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    let probe = CpuProbe::new(&[a.clone(), "192.0.2.1:1".into()]);
    assert_eq!(probe.pids(), vec![Some(std::process::id()), None]);
    let before = probe.sample();
    let after = probe.sample();
    let usage = probe.usage(&before, &after);
    assert!(usage.own.is_some());
    assert_eq!(usage.nodes.len(), 2);
    assert_eq!(usage.nodes[0].address, a);
    assert!(usage.nodes[0].cpu.is_some());
    assert_eq!(usage.nodes[1].cpu, None);
}
