//! What both sides of the SPIFFE Workload API share, the agent serving it and every client
//! (`agent fetch`, the mesh sidecar): the security header, the endpoint syntax of
//! `SPIFFE_ENDPOINT_SOCKET`, and the concatenated-DER certificate lists its messages carry.

use std::path::PathBuf;

use rustls_pki_types::CertificateDer;

/// The metadata key every Workload API request must carry with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The most certificates accepted in one chain or bundle of a Workload API message.
pub const MAX_CERTS: usize = 64;

/// Why an endpoint is not a local Workload API socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("unix://HOST/… names a host, not a local socket")]
    NamesAHost,
    #[error("only unix:// endpoints are supported")]
    NotUnix,
    #[error("expected unix:///absolute/path")]
    NotAbsolute,
    #[error("query, fragment or control character in the path")]
    BadPath,
}

/// The socket path of a Workload API endpoint: an absolute path, or a `unix:` URI of one
/// (`unix:///run/agent.sock` or `unix:/run/agent.sock`, as `SPIFFE_ENDPOINT_SOCKET` holds).
pub fn endpoint_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = match endpoint.strip_prefix("unix:") {
        Some(rest) => match rest.strip_prefix("//") {
            Some(after) if !after.starts_with('/') => return Err(EndpointError::NamesAHost),
            Some(after) => after,
            None => rest,
        },
        None if endpoint.contains("://") => return Err(EndpointError::NotUnix),
        None => endpoint,
    };
    if !path.starts_with('/') {
        return Err(EndpointError::NotAbsolute);
    }
    if path.contains(['?', '#']) || path.chars().any(char::is_control) {
        return Err(EndpointError::BadPath);
    }
    Ok(PathBuf::from(path))
}

/// Why a certificate list is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DerError {
    #[error("no certificate")]
    Empty,
    #[error("too many certificates")]
    TooMany,
    #[error("bad DER certificate")]
    Bad,
}

impl DerError {
    /// The message, for error types that hold a `&'static str`.
    pub fn as_str(self) -> &'static str {
        match self {
            DerError::Empty => "no certificate",
            DerError::TooMany => "too many certificates",
            DerError::Bad => "bad DER certificate",
        }
    }
}

/// Splits concatenated DER certificates (each a SEQUENCE with a definite length), at most
/// [`MAX_CERTS`]. Only the framing is checked here; the certificates are parsed where they are
/// validated.
pub fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, DerError> {
    if bytes.is_empty() {
        return Err(DerError::Empty);
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if out.len() >= MAX_CERTS {
            return Err(DerError::TooMany);
        }
        let len = der_len(bytes).ok_or(DerError::Bad)?;
        let (cert, rest) = bytes.split_at(len);
        out.push(CertificateDer::from(cert.to_vec()));
        bytes = rest;
    }
    Ok(out)
}

/// The total length (header included) of the DER SEQUENCE at the start of `b`, if it fits.
fn der_len(b: &[u8]) -> Option<usize> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = *b.get(1)?;
    let (header, body) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (2 + n, len)
    };
    let total = header.checked_add(body)?;
    (total <= b.len()).then_some(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn endpoints() {
        for (input, want) in [
            ("/run/a.sock", "/run/a.sock"),
            ("unix:///run/a.sock", "/run/a.sock"),
            ("unix:/run/a.sock", "/run/a.sock"),
        ] {
            assert_eq!(endpoint_path(input).unwrap(), PathBuf::from(want));
        }
        for (bad, why) in [
            ("", EndpointError::NotAbsolute),
            ("run/a.sock", EndpointError::NotAbsolute),
            ("unix://host/run/a.sock", EndpointError::NamesAHost),
            ("unix:run/a.sock", EndpointError::NotAbsolute),
            ("tcp://127.0.0.1:8081", EndpointError::NotUnix),
            ("unix:///a?b", EndpointError::BadPath),
            ("unix:///a#b", EndpointError::BadPath),
            ("/a\n", EndpointError::BadPath),
        ] {
            assert_eq!(endpoint_path(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn der_splitting_is_bounded() {
        let short = [0x30, 0x02, 1, 2];
        let long = {
            let mut v = vec![0x30, 0x81, 0x80];
            v.extend([7u8; 0x80]);
            v
        };
        let both: Vec<u8> = short.iter().chain(long.iter()).copied().collect();
        let certs = split_der(&both).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].len(), long.len());
        for bad in [
            &[][..],
            &[0x31, 0],
            &[0x30],
            &[0x30, 0x05, 1],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(split_der(bad).is_err(), "{bad:?}");
        }
        let many: Vec<u8> = std::iter::repeat_n([0x30u8, 0], MAX_CERTS + 1)
            .flatten()
            .collect();
        assert_eq!(split_der(&many), Err(DerError::TooMany));
    }
}
