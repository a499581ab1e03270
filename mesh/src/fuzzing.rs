//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/mesh_*.rs`) and the corpus
//! replay test (`mesh/tests/fuzz_corpus.rs`). Each must return normally on every input.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{self, HostPort, Settings};
use crate::proxy_protocol::{self, Header};

/// Every config parser on the input as text, and the input as a TOML file validated. What
/// parses must print back to something that parses to the same value.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(i) = config::parse_inbound(text) {
        let again = config::parse_inbound(&format!("{}={}", i.listen, i.target))
            .expect("an inbound spec prints back to a valid one");
        assert_eq!(again, i);
    }
    if let Ok(o) = config::parse_outbound(text) {
        let again = config::parse_outbound(&format!("{}={}@{}", o.listen, o.target, o.expect))
            .expect("an outbound spec prints back to a valid one");
        assert_eq!(again, o);
    }
    if let Ok(p) = config::parse_allow(text) {
        assert_eq!(config::parse_allow(&p.to_string()).ok(), Some(p));
    }
    if let Ok(h) = HostPort::parse(text) {
        assert_eq!(HostPort::parse(&h.to_string()).ok(), Some(h));
    }
    let _ = config::parse_workload_api(text);
    let _ = config::parse_duration(text);
    let _ = config::parse_admin(text);
    if let Ok(file) = Settings::from_toml(text) {
        let _ = file.validate(Some("unix:///run/agent.sock"));
    }
}

/// Decodes the input as a PROXY v2 header, and encodes a header built from it, which must
/// decode back to the same fields.
pub fn proxy_protocol(data: &[u8]) {
    let _ = proxy_protocol::decode(data);
    let Some((head, rest)) = data.split_first_chunk::<37>() else {
        return;
    };
    let v6 = |b: &[u8]| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let (source, destination) = if head[0] & 1 == 0 {
        (
            IpAddr::V4(Ipv4Addr::new(head[1], head[2], head[3], head[4])),
            IpAddr::V4(Ipv4Addr::new(head[5], head[6], head[7], head[8])),
        )
    } else {
        (v6(&head[1..17]), v6(&head[17..33]))
    };
    let source = SocketAddr::new(source, u16::from_be_bytes([head[33], head[34]]));
    let destination = SocketAddr::new(destination, u16::from_be_bytes([head[35], head[36]]));
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let Ok(spiffe_id) = std::str::from_utf8(&rest[..split]) else {
        return;
    };
    let cert = rest.get(split + 1..);
    let header = Header {
        source,
        destination,
        spiffe_id,
        client_cert: cert,
    };
    let Ok(bytes) = proxy_protocol::encode(&header) else {
        return;
    };
    let back = proxy_protocol::decode(&bytes).expect("an encoded header decodes");
    assert_eq!(back.len, bytes.len());
    assert_eq!(back.spiffe_id.as_deref(), Some(spiffe_id));
    assert_eq!(back.client_cert.as_deref(), cert);
    assert_eq!(back.source.port(), source.port());
    assert_eq!(back.destination.port(), destination.port());
    if source.is_ipv4() == destination.is_ipv4() {
        assert_eq!((back.source, back.destination), (source, destination));
    }
}
