//! Development certificates: a local CA and certificates it signs.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::DnsName;
use time::{Duration, OffsetDateTime};

use crate::{pem, CertFiles, TlsError};

/// The common name of the development CA.
const CA_NAME: &str = "Gantry development CA";
/// File names in a development certificate directory.
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const LEAF_CERT: &str = "cert.pem";
const LEAF_KEY: &str = "key.pem";
/// How long the CA and the certificates it issues are valid.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 365;
/// How far `not_before` lies in the past, for clocks that lag.
const BACKDATE_DAYS: i64 = 1;

/// The files [`dev_certs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// The development CA's certificate (`ca.pem`): what clients must trust.
    /// Its key is `ca-key.pem` beside it.
    pub ca_cert: PathBuf,
    /// The server certificate (`cert.pem`): the leaf certificate alone,
    /// without the CA.
    pub cert: PathBuf,
    /// The server certificate's private key (`key.pem`, PKCS#8, mode 0600).
    pub key: PathBuf,
    /// Whether the CA was created now (rather than reused from `dir`).
    pub created_ca: bool,
}

impl DevCerts {
    /// The server certificate and key, as [`crate::ServerOptions`] takes
    /// them.
    pub fn cert_files(&self) -> CertFiles {
        CertFiles::new(&self.cert, &self.key)
    }
}

/// Creates (or reuses) a local development CA in `dir` and issues a server
/// certificate for `names` with it.
///
/// - The CA is `dir/ca.pem` with its key `dir/ca-key.pem` (mode 0600):
///   ECDSA P-256, common name "Gantry development CA", valid 10 years,
///   allowed to sign only end-entity certificates. An existing pair is
///   reused, so clients that trust it keep working.
/// - The server certificate is `dir/cert.pem` (the leaf alone) with its key
///   `dir/key.pem` (mode 0600): ECDSA P-256, valid one year, for TLS
///   servers, with every name of `names` as a DNS name (`localhost`,
///   `*.example.test`) or IP address (`127.0.0.1`, `::1`) alternative name.
///   Existing files are replaced (atomically, each one).
///
/// `dir` is created if needed. Keys come from the operating system's
/// random number generator.
pub fn dev_certs(dir: &Path, names: &[String]) -> Result<DevCerts, TlsError> {
    let sans = server_sans(names)?;
    let (ca, created_ca) = DevCa::open_or_create(dir)?;
    let files = ca.issue(
        dir,
        LEAF_CERT,
        LEAF_KEY,
        names.first().map(String::as_str).unwrap_or_default(),
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    Ok(DevCerts {
        ca_cert: ca.cert_path,
        cert: files.cert,
        key: files.key,
        created_ca,
    })
}

/// Issues a server certificate for `names` into `dir/cert.pem` and
/// `dir/key.pem`, signed by the development CA in `ca_dir` (created if
/// missing). For tests that need several certificates from one CA.
#[doc(hidden)]
pub fn server_cert_for_tests(
    dir: &Path,
    ca_dir: &Path,
    names: &[String],
) -> Result<CertFiles, TlsError> {
    let sans = server_sans(names)?;
    let (ca, _) = DevCa::open_or_create(ca_dir)?;
    create_dir(dir)?;
    ca.issue(
        dir,
        LEAF_CERT,
        LEAF_KEY,
        names.first().map(String::as_str).unwrap_or_default(),
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

/// Issues a client certificate into `dir/client-<name>.pem` and
/// `dir/client-<name>-key.pem`, signed by the development CA in `ca_dir`
/// (created if missing): common name `common_name`, the URI alternative
/// name `spiffe://gantry.test/<common_name>`, for TLS clients. For tests of
/// mutual TLS, e.g. with `curl --cert ... --key ...`.
#[doc(hidden)]
pub fn client_cert_for_tests(
    dir: &Path,
    ca_dir: &Path,
    common_name: &str,
) -> Result<CertFiles, TlsError> {
    if common_name.is_empty() {
        return Err(TlsError::InvalidName {
            name: String::new(),
            detail: "the common name is empty".to_string(),
        });
    }
    let uri = format!("spiffe://gantry.test/{}", percent_encode(common_name));
    let uri = Ia5String::try_from(uri).map_err(|err| TlsError::InvalidName {
        name: common_name.to_string(),
        detail: err.to_string(),
    })?;
    let (ca, _) = DevCa::open_or_create(ca_dir)?;
    create_dir(dir)?;
    let stem: String = common_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    ca.issue(
        dir,
        &format!("client-{stem}.pem"),
        &format!("client-{stem}-key.pem"),
        common_name,
        vec![SanType::URI(uri)],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

/// Alternative names for a server certificate; errors name the bad one.
fn server_sans(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    if names.is_empty() {
        return Err(TlsError::InvalidName {
            name: String::new(),
            detail: "no name given; a certificate needs at least one name".to_string(),
        });
    }
    names.iter().map(|name| server_san(name)).collect()
}

fn server_san(name: &str) -> Result<SanType, TlsError> {
    let invalid = |detail: String| TlsError::InvalidName {
        name: name.to_string(),
        detail,
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let base = name.strip_prefix("*.").unwrap_or(&name);
    DnsName::try_from(base).map_err(|err| invalid(err.to_string()))?;
    Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|err| invalid(err.to_string()))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn generate_error(err: rcgen::Error) -> TlsError {
    TlsError::Generate {
        detail: err.to_string(),
    }
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// The development CA: its certificate file and what signs with it.
struct DevCa {
    cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    /// Opens the CA in `dir`, or creates it there if neither of its files
    /// exists. Returns whether it was created.
    fn open_or_create(dir: &Path) -> Result<(DevCa, bool), TlsError> {
        create_dir(dir)?;
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((DevCa::open(cert_path, &key_path)?, false)),
            (false, false) => Ok((DevCa::create(cert_path, &key_path)?, true)),
            (true, false) => Err(TlsError::DevCa {
                path: key_path,
                detail: format!(
                    "{CA_CERT} exists but its key {CA_KEY} is missing; restore {CA_KEY}, or remove \
                     {CA_CERT} to create a new CA (clients must then trust the new {CA_CERT})"
                ),
            }),
            (false, true) => Err(TlsError::DevCa {
                path: cert_path,
                detail: format!(
                    "{CA_KEY} exists but the certificate {CA_CERT} is missing; restore {CA_CERT}, \
                     or remove {CA_KEY} to create a new CA (clients must then trust the new {CA_CERT})"
                ),
            }),
        }
    }

    fn open(cert_path: PathBuf, key_path: &Path) -> Result<DevCa, TlsError> {
        let fix = format!("fix it, or remove {CA_CERT} and {CA_KEY} to create a new CA");
        let key_pem = String::from_utf8(pem::read(key_path)?).map_err(|_| TlsError::DevCa {
            path: key_path.to_path_buf(),
            detail: format!("the key file is not text; {fix}"),
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|err| TlsError::DevCa {
            path: key_path.to_path_buf(),
            detail: format!("cannot parse the key ({err}); {fix}"),
        })?;
        let certs = pem::certificates(&cert_path, &pem::read(&cert_path)?)?;
        let Some(der) = certs.first() else {
            return Err(TlsError::NoCertificate { path: cert_path });
        };
        let bad = |detail: String| TlsError::DevCa {
            path: cert_path.clone(),
            detail,
        };
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|err| bad(format!("cannot parse the certificate ({err}); {fix}")))?;
        if !x509.is_ca() {
            return Err(bad(format!("it is not a CA certificate; {fix}")));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(format!("{CA_KEY} is not the key of {CA_CERT}; {fix}")));
        }
        let not_after = x509.validity().not_after;
        if not_after.timestamp() < OffsetDateTime::now_utc().unix_timestamp() {
            return Err(bad(format!(
                "it expired on {not_after}; remove {CA_CERT} and {CA_KEY} to create a new CA \
                 (clients must then trust the new {CA_CERT})"
            )));
        }
        let issuer = Issuer::from_ca_cert_der(der, key)
            .map_err(|err| bad(format!("cannot sign with it ({err}); {fix}")))?;
        Ok(DevCa { cert_path, issuer })
    }

    fn create(cert_path: PathBuf, key_path: &Path) -> Result<DevCa, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gantry");
        dn.push(DnType::CommonName, CA_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(BACKDATE_DAYS);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key).map_err(generate_error)?;
        // The key first: a certificate without its key would block reuse.
        write_file(key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
        Ok(DevCa {
            cert_path,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues an end-entity certificate with a new key into
    /// `dir/cert_name` and `dir/key_name`.
    fn issue(
        &self,
        dir: &Path,
        cert_name: &str,
        key_name: &str,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(BACKDATE_DAYS);
        params.not_after = now + Duration::days(LEAF_DAYS);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error)?;
        let files = CertFiles::new(dir.join(cert_name), dir.join(key_name));
        // The key first, so that a reader that sees the new certificate
        // finds its key (a watcher may still see the pair half-replaced,
        // and retries).
        write_file(&files.key, &key.serialize_pem(), true)?;
        write_file(&files.cert, &cert.pem(), false)?;
        Ok(files)
    }
}

/// Replaces `path` atomically (a temporary file beside it, renamed over
/// it); `private` files get mode 0600 on Unix.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(write_error(err)),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    let result = result.and_then(|()| std::fs::rename(&tmp, path));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(server_san("127.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(server_san("::1"), Ok(SanType::IpAddress(_))));
        assert!(
            matches!(server_san("LocalHost"), Ok(SanType::DnsName(n)) if n.as_str() == "localhost")
        );
        assert!(matches!(
            server_san("*.example.test"),
            Ok(SanType::DnsName(_))
        ));
        let err = server_san("not a name").unwrap_err();
        assert!(err.to_string().contains("\"not a name\""), "{err}");
        assert!(server_sans(&[]).is_err());
    }

    #[test]
    fn percent_encodes_uri_paths() {
        assert_eq!(percent_encode("alice"), "alice");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
