//! Raw connections to a node's port, below TLS and gRPC: from a chosen loopback source
//! address, and with bytes the server must answer by closing the connection.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A TCP connection to `addr` from `source` (an address of 127.0.0.0/8): handshakes in
/// progress are capped per source address, so a test holding many keeps them apart from its
/// client's.
pub fn connect_from(source: Ipv4Addr, addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// Writes `bytes` on a fresh connection and waits (at most 15 s) for the server to close it.
pub fn send_and_expect_close(addr: &str, what: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may close before everything is written.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{what}: the server kept the connection open for {:?}",
                    t.elapsed()
                )
            }
            Err(_) => break, // reset
        }
    }
}
