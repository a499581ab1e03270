//! Parsing the parts of X.509 certificates the SVID profile looks at, shared by issuance and
//! validation (so neither depends on the other).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::SvidError;

pub(super) fn parse_err(what: &'static str, e: impl std::fmt::Display) -> SvidError {
    SvidError::Parse {
        what,
        detail: e.to_string(),
    }
}

pub(super) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| parse_err("subject alternative name", e))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

pub(super) fn parse_cert<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, SvidError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| parse_err("certificate", e))?;
    if !rest.is_empty() {
        return Err(parse_err("certificate", "trailing bytes"));
    }
    Ok(cert)
}
