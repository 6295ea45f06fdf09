//! Reading PEM files: certificate chains, private keys and CA bundles.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::TlsError;

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, err: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        detail: err.to_string(),
    }
}

/// Parses every certificate in `bytes` (the contents of `path`); other PEM
/// sections, such as a key in a combined file, are skipped. Errors if there
/// is none.
pub(crate) fn certificates(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, err))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(err) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(TlsError::BadCertificate {
                path: path.to_path_buf(),
                index: i + 1,
                detail: err.to_string(),
            });
        }
    }
    Ok(certs)
}

/// Parses the one private key in `bytes` (the contents of `path`):
/// PKCS#8, SEC1 or PKCS#1. Other PEM sections are skipped.
pub(crate) fn private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let encrypted =
        || contains(bytes, b"ENCRYPTED PRIVATE KEY") || contains(bytes, b"Proc-Type: 4,ENCRYPTED");
    let keys = match PrivateKeyDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>() {
        Ok(keys) => keys,
        // Legacy OpenSSL encryption puts headers into the key block, which
        // fail to decode as base64.
        Err(_) if encrypted() => {
            return Err(TlsError::EncryptedPrivateKey {
                path: path.to_path_buf(),
            })
        }
        Err(err) => return Err(pem_error(path, err)),
    };
    let count = keys.len();
    let mut keys = keys.into_iter();
    match (keys.next(), count) {
        (Some(key), 1) => Ok(key),
        (None, _) if encrypted() => Err(TlsError::EncryptedPrivateKey {
            path: path.to_path_buf(),
        }),
        (None, _) => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        (Some(_), count) => Err(TlsError::MultiplePrivateKeys {
            path: path.to_path_buf(),
            count,
        }),
    }
}

/// Reads a PEM bundle of trusted CA certificates into a root store. Every
/// certificate in it must be usable as a trust anchor.
pub(crate) fn root_store(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let certs = match certificates(path, bytes) {
        Ok(certs) => certs,
        Err(TlsError::NoCertificate { path }) => {
            return Err(TlsError::CaBundle {
                path,
                detail: "it holds no certificate; it must hold one or more PEM CA certificates \
                         (`-----BEGIN CERTIFICATE-----`)"
                    .to_string(),
            })
        }
        Err(err) => return Err(err),
    };
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|err| TlsError::CaBundle {
            path: path.to_path_buf(),
            detail: format!(
                "certificate #{} is not a usable trust anchor ({err}); remove it or replace it \
                 with the CA certificate itself",
                i + 1
            ),
        })?;
    }
    Ok(roots)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
