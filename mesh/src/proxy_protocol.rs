//! PROXY protocol version 2 headers (HAProxy's `proxy-protocol.txt`, §2.2), telling the
//! target who called: the client's address, and its verified SVID.
//!
//! The TLVs follow ghostunnel's `tls-full` mode (ghostunnel `proxy/proxy_protocol.go`,
//! `buildSSLTLV`; documented at ghostunnel.dev, "PROXY protocol"): one `PP2_TYPE_SSL` (0x20)
//! whose client field sets `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS` and
//! whose verify field is 0 (the sidecar verified the certificate), followed by the sub-TLVs
//! `PP2_SUBTYPE_SSL_VERSION` (0x21, `"TLS 1.3"`) and `PP2_SUBTYPE_SSL_CLIENT_CERT` (0x28, the
//! client's leaf certificate in DER, go-proxyproto's extension of the spec). Ghostunnel sends
//! no SPIFFE ID as such — an app finds it as the URI SAN of that certificate — so ringzero adds
//! it as text in a TLV of the spec's custom range (0xE0–0xEF): [`PP2_TYPE_SPIFFE_ID`] (0xE0),
//! for apps that would rather not parse X.509.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// `PP2_TYPE_SSL`: TLS facts about the client connection.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`: the TLS version, as text.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_SUBTYPE_SSL_CLIENT_CERT`: the client's leaf certificate, DER (ghostunnel, go-proxyproto).
pub const PP2_SUBTYPE_SSL_CLIENT_CERT: u8 = 0x28;
/// ringzero's TLV: the caller's verified SPIFFE ID, UTF-8 (the first type of the custom range).
pub const PP2_TYPE_SPIFFE_ID: u8 = 0xE0;
/// `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS`.
const CLIENT_FLAGS: u8 = 0x01 | 0x02 | 0x04;
/// The TLS version text ghostunnel sends (Go's `tls.VersionName`).
const TLS13: &[u8] = b"TLS 1.3";
/// Version 2, command PROXY.
const VERSION_COMMAND: u8 = 0x21;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// Why a header cannot be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyProtocolError {
    #[error("PROXY header would exceed 65535 bytes")]
    TooLong,
    #[error("not a PROXY v2 header")]
    BadSignature,
    #[error("incomplete PROXY v2 header")]
    Incomplete,
    #[error("unsupported PROXY v2 version, command or address family")]
    Unsupported,
    #[error("malformed PROXY v2 header: {0}")]
    Malformed(&'static str),
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// The client's address (the TLS peer).
    pub source: SocketAddr,
    /// The address the client connected to (the inbound listener).
    pub destination: SocketAddr,
    /// The caller's verified SPIFFE ID.
    pub spiffe_id: &'a str,
    /// The caller's leaf certificate (DER), if it is to be sent.
    pub client_cert: Option<&'a [u8]>,
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), ProxyProtocolError> {
    let len = u16::try_from(value.len()).map_err(|_| ProxyProtocolError::TooLong)?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Encodes `header`. Addresses of different families are both sent as IPv6 (an IPv4 address
/// as IPv4-mapped).
pub fn encode(header: &Header<'_>) -> Result<Vec<u8>, ProxyProtocolError> {
    let mut body = Vec::with_capacity(64 + header.client_cert.map_or(0, <[u8]>::len));
    let family = match (header.source.ip(), header.destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            TCP4
        }
        (s, d) => {
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            TCP6
        }
    };
    body.extend_from_slice(&header.source.port().to_be_bytes());
    body.extend_from_slice(&header.destination.port().to_be_bytes());

    let mut ssl = vec![CLIENT_FLAGS, 0, 0, 0, 0];
    push_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, TLS13)?;
    if let Some(cert) = header.client_cert {
        push_tlv(&mut ssl, PP2_SUBTYPE_SSL_CLIENT_CERT, cert)?;
    }
    push_tlv(&mut body, PP2_TYPE_SSL, &ssl)?;
    push_tlv(&mut body, PP2_TYPE_SPIFFE_ID, header.spiffe_id.as_bytes())?;

    let len = u16::try_from(body.len()).map_err(|_| ProxyProtocolError::TooLong)?;
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_COMMAND);
    out.push(family);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A header as read back (by tests, fuzzing, or a Rust app behind the sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub spiffe_id: Option<String>,
    pub client_cert: Option<Vec<u8>>,
    pub tls_version: Option<String>,
    /// The header's length in bytes: the payload starts after it.
    pub len: usize,
}

/// Reads a PROXY v2 header (command PROXY, TCP over IPv4 or IPv6) at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Decoded, ProxyProtocolError> {
    let fixed = bytes.get(..16).ok_or(ProxyProtocolError::Incomplete)?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyProtocolError::BadSignature);
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let body = bytes
        .get(16..16 + len)
        .ok_or(ProxyProtocolError::Incomplete)?;
    let addr_len = match (fixed[12], fixed[13]) {
        (VERSION_COMMAND, TCP4) => 12,
        (VERSION_COMMAND, TCP6) => 36,
        _ => return Err(ProxyProtocolError::Unsupported),
    };
    let addrs = body
        .get(..addr_len)
        .ok_or(ProxyProtocolError::Malformed("address block"))?;
    let (source, destination) = if addr_len == 12 {
        let ip = |i: usize| IpAddr::from([addrs[i], addrs[i + 1], addrs[i + 2], addrs[i + 3]]);
        let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |i: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&addrs[i..i + 16]);
            IpAddr::from(o)
        };
        let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    let mut decoded = Decoded {
        source,
        destination,
        spiffe_id: None,
        client_cert: None,
        tls_version: None,
        len: 16 + len,
    };
    for (kind, value) in tlvs(&body[addr_len..])? {
        match kind {
            PP2_TYPE_SPIFFE_ID => {
                let id = std::str::from_utf8(value)
                    .map_err(|_| ProxyProtocolError::Malformed("SPIFFE ID is not UTF-8"))?;
                decoded.spiffe_id = Some(id.to_owned());
            }
            PP2_TYPE_SSL => {
                let subs = value
                    .get(5..)
                    .ok_or(ProxyProtocolError::Malformed("short SSL TLV"))?;
                for (sub, v) in tlvs(subs)? {
                    match sub {
                        PP2_SUBTYPE_SSL_VERSION => {
                            decoded.tls_version = Some(String::from_utf8_lossy(v).into_owned());
                        }
                        PP2_SUBTYPE_SSL_CLIENT_CERT => decoded.client_cert = Some(v.to_vec()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(decoded)
}

/// Splits a TLV sequence.
fn tlvs(mut bytes: &[u8]) -> Result<Vec<(u8, &[u8])>, ProxyProtocolError> {
    let mut out = Vec::new();
    while let [kind, hi, lo, rest @ ..] = bytes {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value = rest
            .get(..len)
            .ok_or(ProxyProtocolError::Malformed("TLV overruns the header"))?;
        out.push((*kind, value));
        bytes = &rest[len..];
    }
    if !bytes.is_empty() {
        return Err(ProxyProtocolError::Malformed("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_header_bytes() {
        let h = Header {
            source: addr("10.0.0.1:51000"),
            destination: addr("10.0.0.2:8443"),
            spiffe_id: "spiffe://td/a",
            client_cert: None,
        };
        let bytes = encode(&h).unwrap();
        assert_eq!(&bytes[..12], &SIGNATURE);
        assert_eq!(bytes[12], 0x21);
        assert_eq!(bytes[13], 0x11);
        let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        assert_eq!(bytes.len(), 16 + len);
        assert_eq!(&bytes[16..20], &[10, 0, 0, 1]);
        assert_eq!(&bytes[20..24], &[10, 0, 0, 2]);
        assert_eq!(&bytes[24..26], &51000u16.to_be_bytes());
        assert_eq!(&bytes[26..28], &8443u16.to_be_bytes());
        // PP2_TYPE_SSL: flags 0x07, verify 0, then the version sub-TLV.
        assert_eq!(bytes[28], PP2_TYPE_SSL);
        assert_eq!(&bytes[31..36], &[0x07, 0, 0, 0, 0]);
        assert_eq!(bytes[36], PP2_SUBTYPE_SSL_VERSION);
        assert_eq!(&bytes[39..46], b"TLS 1.3");
        // The SPIFFE ID TLV ends the header.
        let tail = &bytes[bytes.len() - 16..];
        assert_eq!(tail[0], PP2_TYPE_SPIFFE_ID);
        assert_eq!(&tail[1..3], &13u16.to_be_bytes());
        assert_eq!(&tail[3..], b"spiffe://td/a");
    }

    #[test]
    fn round_trips() {
        let cert = vec![0x30, 0x03, 1, 2, 3];
        for (s, d) in [
            ("127.0.0.1:1", "127.0.0.1:2"),
            ("[::1]:1", "[::1]:2"),
            ("127.0.0.1:1", "[::1]:2"),
        ] {
            let h = Header {
                source: addr(s),
                destination: addr(d),
                spiffe_id: "spiffe://example.org/ns/shop/web",
                client_cert: Some(&cert),
            };
            let mut bytes = encode(&h).unwrap();
            let header_len = bytes.len();
            bytes.extend_from_slice(b"payload");
            let back = decode(&bytes).unwrap();
            assert_eq!(back.len, header_len);
            assert_eq!(back.spiffe_id.as_deref(), Some(h.spiffe_id));
            assert_eq!(back.client_cert.as_deref(), Some(&cert[..]));
            assert_eq!(back.tls_version.as_deref(), Some("TLS 1.3"));
            assert_eq!(back.source.port(), 1);
            assert_eq!(back.destination.port(), 2);
            if h.source.is_ipv4() == h.destination.is_ipv4() {
                assert_eq!((back.source, back.destination), (h.source, h.destination));
            }
        }
    }

    #[test]
    fn oversized_values_are_refused() {
        let big = vec![0u8; 70_000];
        let h = Header {
            source: addr("127.0.0.1:1"),
            destination: addr("127.0.0.1:2"),
            spiffe_id: "spiffe://td/a",
            client_cert: Some(&big),
        };
        assert_eq!(encode(&h), Err(ProxyProtocolError::TooLong));
        let cert = vec![0u8; 65_500];
        let h = Header {
            client_cert: Some(&cert),
            ..h
        };
        assert_eq!(encode(&h), Err(ProxyProtocolError::TooLong));
    }

    #[test]
    fn hostile_input_is_refused() {
        let good = encode(&Header {
            source: addr("127.0.0.1:1"),
            destination: addr("127.0.0.1:2"),
            spiffe_id: "spiffe://td/a",
            client_cert: None,
        })
        .unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(ProxyProtocolError::BadSignature));
        let mut bad = good.clone();
        bad[13] = 0x31;
        assert_eq!(decode(&bad), Err(ProxyProtocolError::Unsupported));
        let mut bad = good.clone();
        let last_tlv = bad.len() - 16;
        bad[last_tlv + 2] = 0xff;
        assert!(decode(&bad).is_err());
    }
}
