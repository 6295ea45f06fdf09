//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Why TLS material could not be loaded, generated or used.
///
/// Every message names the file involved (when there is one) and says what
/// to do about it, so it can be shown to an operator as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}; check that the file exists and that the gantry process may read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// A file is not valid PEM.
    #[error("{} is not valid PEM ({detail}); the file must hold PEM blocks such as `-----BEGIN CERTIFICATE-----` ... `-----END CERTIFICATE-----`", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// A certificate file holds no certificate.
    #[error("{} holds no certificate; it must hold the PEM certificate chain (`-----BEGIN CERTIFICATE-----`), the server's own certificate first", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A certificate in a file cannot be parsed or used.
    #[error("{}: certificate #{index} is invalid ({detail}); replace it with a valid X.509 certificate", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, starting at 1.
        index: usize,
        /// What is wrong with it.
        detail: String,
    },

    /// A key file holds no private key.
    #[error("{} holds no private key; it must hold one PEM private key (`BEGIN PRIVATE KEY`, `BEGIN EC PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// A key file holds an encrypted private key.
    #[error("{} holds an encrypted private key, which gantry cannot use; decrypt it (for example `openssl pkey -in {} -out key.pem`) and make the result readable only by gantry", path.display(), path.display())]
    EncryptedPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// A key file holds more than one private key.
    #[error("{} holds {count} private keys; it must hold exactly one, the key of the certificate", path.display())]
    MultiplePrivateKeys {
        /// The file.
        path: PathBuf,
        /// How many keys it holds.
        count: usize,
    },

    /// A private key cannot be used for signing.
    #[error("{}: unsupported private key ({detail}); use an ECDSA P-256/P-384, Ed25519 or RSA (2048 bits or more) key", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What the crypto provider said.
        detail: String,
    },

    /// A private key does not belong to its certificate.
    #[error("the private key in {} does not match the certificate in {}; both files must come from the same issuance (replace them together)", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// No certificate was configured at all.
    #[error("no TLS certificate configured; give at least one certificate file and its key file")]
    NoCertificates,

    /// A CA bundle cannot be used.
    #[error("{} cannot be used as a CA bundle: {detail}", path.display())]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// The operating system's trusted root certificates could not be loaded.
    #[error("no trusted root certificates could be loaded from the system ({detail}); install the system CA bundle (e.g. the `ca-certificates` package), point SSL_CERT_FILE at a PEM bundle, or set `ca =` to a PEM bundle")]
    NoSystemRoots {
        /// What went wrong.
        detail: String,
    },

    /// A file or directory could not be written.
    #[error("cannot write {}: {source}; check that the directory exists and that the gantry process may write to it", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// A name given for a development certificate is not a DNS name or IP address.
    #[error("invalid certificate name {name:?} ({detail}); use DNS names such as `localhost` or `api.example.test`, or IP addresses such as `127.0.0.1`")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The existing development CA cannot be used.
    #[error("the development CA in {} cannot be used: {detail}", path.display())]
    DevCa {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },

    /// Generating a key or certificate failed.
    #[error("cannot generate a development certificate: {detail}")]
    Generate {
        /// What went wrong.
        detail: String,
    },

    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {detail}")]
    Config {
        /// What rustls said.
        detail: String,
    },
}
