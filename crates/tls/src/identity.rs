//! What a verified client certificate says.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, Tag, ToDer};
use x509_parser::extensions::GeneralName;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use crate::LOG_TARGET;

/// What a verified client certificate says, parsed once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject as an RFC 4514 string, most specific part first, e.g.
    /// `CN=alice,O=Acme`.
    pub subject: String,
    /// The subject's (most specific) common name, if it has one.
    pub common_name: Option<String>,
    /// The subject alternative names as text, in certificate order: DNS
    /// names, URIs (e.g. `spiffe://example.org/ns/prod/sa/web`), email
    /// addresses and IP addresses (`192.0.2.1`, `2001:db8::1`). Other kinds
    /// are left out.
    pub sans: Vec<String>,
    /// SHA-256 of the certificate's DER encoding, 64 lowercase hex digits.
    pub fingerprint_sha256: String,
}

impl ClientIdentity {
    /// Parses a DER certificate; `None` if it is not a valid X.509
    /// certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let der = cert.as_ref();
        let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = x509.subject();
        let common_name = subject
            .iter_common_name()
            .last()
            .and_then(|cn| attribute_text(cn.attr_value()));
        let sans = match x509.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(general_name_text)
                .collect(),
            _ => Vec::new(),
        };
        Some(ClientIdentity {
            subject: rfc4514(subject),
            common_name,
            sans,
            fingerprint_sha256: hex::encode(Sha256::digest(der)),
        })
    }
}

/// The identity in the certificate a client presented and the server
/// verified, or `None` if the client presented none (possible when a client
/// CA is set, since certificates are optional at the handshake).
///
/// Call it once the handshake is complete, e.g. with
/// `tls_stream.get_ref().1`.
pub fn client_identity(connection: &rustls::ServerConnection) -> Option<ClientIdentity> {
    let cert = connection.peer_certificates()?.first()?;
    let identity = ClientIdentity::from_certificate(cert);
    if identity.is_none() {
        // rustls verified it, so this does not happen; treat the client as
        // anonymous rather than guess.
        tracing::warn!(
            target: LOG_TARGET,
            "a verified client certificate could not be parsed; treating the client as anonymous"
        );
    }
    identity
}

fn general_name_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
            Some((*s).to_string())
        }
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let octets: [u8; 4] = (*bytes).try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(octets)).to_string())
            }
            16 => {
                let octets: [u8; 16] = (*bytes).try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(octets)).to_string())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Formats a distinguished name as RFC 4514 does: relative names in
/// reverse order separated by `,`, multi-valued ones joined by `+`.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            write_attribute(&mut out, attr);
        }
    }
    out
}

fn write_attribute(out: &mut String, attr: &AttributeTypeAndValue<'_>) {
    let oid = attr.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.5" => Some("SERIALNUMBER"),
        "2.5.4.6" => Some("C"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.9" => Some("STREET"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "2.5.4.17" => Some("POSTALCODE"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        _ => None,
    };
    out.push_str(short.unwrap_or(&oid));
    out.push('=');
    // RFC 4514 2.4: types without a short name use the hex form.
    let text = short.and(attribute_text(attr.attr_value()));
    match text {
        Some(text) => escape_into(out, &text),
        None => {
            out.push('#');
            match attr.attr_value().to_der_vec() {
                Ok(der) => out.push_str(&hex::encode(der)),
                Err(_) => out.push_str(&hex::encode(attr.attr_value().as_bytes())),
            }
        }
    }
}

/// The value of a directory string, whatever its string type; `None` for
/// other types or invalid encodings.
fn attribute_text(value: &Any<'_>) -> Option<String> {
    let data = value.as_bytes();
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::GeneralString
        | Tag::GraphicString => std::str::from_utf8(data).ok().map(str::to_string),
        // Teletex is in practice Latin-1.
        Tag::T61String => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let chunks = data.chunks_exact(2);
            if !chunks.remainder().is_empty() {
                return None;
            }
            let units: Vec<u16> = chunks.map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => {
            let chunks = data.chunks_exact(4);
            if !chunks.remainder().is_empty() {
                return None;
            }
            chunks
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// Escapes an attribute value as RFC 4514 2.4 requires.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c if c.is_control() => {
                for b in c.to_string().bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, s);
        out
    }

    #[test]
    fn escapes_special_characters() {
        assert_eq!(escaped("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escaped("#1 "), "\\#1\\ ");
        assert_eq!(escaped(" a+b;c<d>e\"f\\"), "\\ a\\+b\\;c\\<d\\>e\\\"f\\\\");
        assert_eq!(escaped("nul\0"), "nul\\00");
        assert_eq!(escaped("plain"), "plain");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn formats_subject_most_specific_first() {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("alice.example".try_into().unwrap()),
            rcgen::SanType::IpAddress("::1".parse().unwrap()),
            rcgen::SanType::Rfc822Name("alice@example.org".try_into().unwrap()),
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = ClientIdentity::from_certificate(cert.der()).unwrap();
        assert_eq!(id.subject, "CN=alice,O=Acme\\, Inc.,C=DE");
        assert_eq!(id.common_name.as_deref(), Some("alice"));
        assert_eq!(id.sans, ["alice.example", "::1", "alice@example.org"]);
        assert_eq!(id.fingerprint_sha256.len(), 64);
    }

    #[test]
    fn garbage_is_not_an_identity() {
        assert!(ClientIdentity::from_certificate(&CertificateDer::from(vec![1, 2, 3])).is_none());
    }
}
