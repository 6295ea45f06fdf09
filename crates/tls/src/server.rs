//! Server-side TLS: certificates chosen by SNI, optional client
//! certificates, and reloading while serving.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{pem, TlsError, LOG_TARGET};

/// A certificate chain and its private key, as two PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The PEM certificate chain: the server's (or client's) own certificate
    /// first, then any intermediates.
    pub cert: PathBuf,
    /// The PEM private key of the first certificate: PKCS#8
    /// (`BEGIN PRIVATE KEY`), SEC1 (`BEGIN EC PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`), unencrypted.
    pub key: PathBuf,
}

impl CertFiles {
    /// A certificate file and its key file.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        CertFiles {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// What [`ServerTls::load`] reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerOptions {
    /// The server certificates. A handshake gets the first one whose DNS
    /// names match the client's SNI name (exact names before wildcards);
    /// without SNI, or when no certificate matches, it gets the first one.
    pub certs: Vec<CertFiles>,
    /// A PEM bundle of CA certificates. When set, clients may present a
    /// certificate; one that does not chain to this bundle fails the
    /// handshake, and a client presenting none is still accepted (routes
    /// decide whether one is required, see [`crate::client_identity`]).
    pub client_ca: Option<PathBuf>,
}

impl ServerOptions {
    /// Every file these options name, certificates and keys in order, then
    /// the client CA.
    fn paths(&self) -> Vec<&Path> {
        let mut paths = Vec::with_capacity(self.certs.len() * 2 + 1);
        for files in &self.certs {
            paths.push(files.cert.as_path());
            paths.push(files.key.as_path());
        }
        if let Some(ca) = &self.client_ca {
            paths.push(ca.as_path());
        }
        paths
    }
}

/// Server-side TLS: a rustls [`ServerConfig`] whose certificates and client
/// CA can be reloaded while it serves.
///
/// The configuration offers TLS 1.3 and 1.2 only, ALPN `h2` and `http/1.1`,
/// and uses the `ring` crypto provider.
///
/// Cloning is cheap and clones share state: a reload through one clone is
/// seen by all.
///
/// # Which configuration a connection gets
///
/// [`ServerTls::accept`] (and an acceptor from [`ServerTls::acceptor`])
/// handshakes with the configuration current at that moment. A reload
/// installs a new configuration (with a new client CA, if that changed, and
/// an empty session cache, so that no session authenticated with a replaced
/// certificate is resumed). Certificates are looked up per handshake, so an
/// acceptor kept from before a reload still presents the new certificates
/// in full handshakes, but it keeps the old client CA and session cache:
/// call `accept` (or `acceptor`) per connection. Connections already
/// established are not affected by a reload.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    options: ServerOptions,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    config: ArcSwap<ServerConfig>,
    /// What is being served; held while reloading, so reloads never
    /// interleave.
    applied: Mutex<Applied>,
}

/// The files behind what is being served.
struct Applied {
    /// SHA-256 of each file's contents, in [`ServerOptions::paths`] order.
    digests: Vec<[u8; 32]>,
    /// Metadata of each file, taken before it was read.
    stamps: Vec<Option<FileStamp>>,
}

/// What the watcher compares to notice that a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The metadata of `path` (following symlinks, so that a Kubernetes
    /// secret volume swapping its `..data` link counts as a change), or
    /// `None` if it cannot be read.
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.inner.options.certs)
            .field("client_ca", &self.inner.options.client_ca)
            .field("resolver", &self.inner.resolver)
            .finish_non_exhaustive()
    }
}

/// The contents of every file of a [`ServerOptions`], read once.
struct Material {
    files: Vec<Vec<u8>>,
}

impl Material {
    fn read(options: &ServerOptions) -> Result<Material, TlsError> {
        let files = options
            .paths()
            .into_iter()
            .map(pem::read)
            .collect::<Result<_, _>>()?;
        Ok(Material { files })
    }

    fn digests(&self) -> Vec<[u8; 32]> {
        self.files
            .iter()
            .map(|bytes| Sha256::digest(bytes).into())
            .collect()
    }

    /// The certificate and key file contents of pair `i`.
    fn pair(&self, i: usize) -> (&[u8], &[u8]) {
        let cert = self.files.get(2 * i).map_or(&[][..], Vec::as_slice);
        let key = self.files.get(2 * i + 1).map_or(&[][..], Vec::as_slice);
        (cert, key)
    }

    /// The client CA file contents, if configured.
    fn client_ca(&self, options: &ServerOptions) -> Option<&[u8]> {
        options
            .client_ca
            .as_ref()
            .and_then(|_| self.files.last())
            .map(Vec::as_slice)
    }
}

impl ServerTls {
    /// Reads and checks every file of `options`: each certificate file must
    /// hold a chain, each key file exactly one key matching its
    /// certificate, and the client CA (if any) usable trust anchors.
    pub fn load(options: &ServerOptions) -> Result<ServerTls, TlsError> {
        if options.certs.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let provider = crate::provider();
        let stamps = options.paths().into_iter().map(FileStamp::of).collect();
        let material = Material::read(options)?;
        let entries = build_entries(options, &material, &provider)?;
        let verifier = build_verifier(options, &material, &provider)?;
        let summary = summarize(&entries);
        let resolver = Arc::new(SniResolver {
            entries: ArcSwap::from_pointee(entries),
        });
        let config = build_config(&provider, resolver.clone(), verifier)?;
        tracing::info!(
            target: LOG_TARGET,
            certificates = %summary,
            client_ca = ?options.client_ca,
            "loaded TLS certificates"
        );
        Ok(ServerTls {
            inner: Arc::new(Inner {
                options: options.clone(),
                provider,
                resolver,
                config: ArcSwap::from_pointee(config),
                applied: Mutex::new(Applied {
                    digests: material.digests(),
                    stamps,
                }),
            }),
        })
    }

    /// The options this was loaded from.
    pub fn options(&self) -> &ServerOptions {
        &self.inner.options
    }

    /// Whether clients are asked for a certificate (a client CA is set).
    pub fn requests_client_certs(&self) -> bool {
        self.inner.options.client_ca.is_some()
    }

    /// The current rustls configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.inner.config.load_full()
    }

    /// An acceptor for the current configuration. Cheap: take one per
    /// connection (see the type's docs for what a kept one misses).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// Performs the server side of a TLS handshake on `stream` with the
    /// current configuration.
    ///
    /// There is no timeout here: wrap the call in `tokio::time::timeout` so
    /// that a client which never finishes its handshake cannot hold the
    /// connection open.
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor().accept(stream).await
    }

    /// Reads every file again and, if any content changed, swaps in the
    /// new certificates (and client CA). Returns `Ok(true)` if something
    /// was swapped in, `Ok(false)` if the files hold what is already
    /// served.
    ///
    /// Everything is checked before anything is swapped: on error the old
    /// certificates keep being served. Blocks on file I/O; from async code
    /// run it in `tokio::task::spawn_blocking`.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let inner = &self.inner;
        let options = &inner.options;
        let mut applied = lock(&inner.applied);
        let stamps: Vec<_> = options.paths().into_iter().map(FileStamp::of).collect();
        let material = Material::read(options)?;
        let digests = material.digests();
        if digests == applied.digests {
            applied.stamps = stamps;
            return Ok(false);
        }
        let pair_count = 2 * options.certs.len();
        let certs_changed = digests.get(..pair_count) != applied.digests.get(..pair_count);
        let ca_changed = digests.get(pair_count..) != applied.digests.get(pair_count..);

        let entries = if certs_changed {
            Some(build_entries(options, &material, &inner.provider)?)
        } else {
            None
        };
        // A new configuration even if only certificates changed: its
        // session cache is empty, so no client resumes a session that was
        // authenticated with a replaced certificate.
        let verifier = build_verifier(options, &material, &inner.provider)?;
        let config = build_config(&inner.provider, inner.resolver.clone(), verifier)?;

        let summary = entries.as_deref().map(summarize);
        if let Some(entries) = entries {
            inner.resolver.entries.store(Arc::new(entries));
        }
        inner.config.store(Arc::new(config));
        *applied = Applied { digests, stamps };
        drop(applied);
        tracing::info!(
            target: LOG_TARGET,
            certificates = summary.as_deref().unwrap_or("unchanged"),
            client_ca = if ca_changed { "reloaded" } else { "unchanged" },
            "reloaded TLS certificates"
        );
        Ok(true)
    }

    /// Whether any file's metadata differs from when what is served was
    /// read.
    fn files_changed(&self) -> bool {
        let applied = lock(&self.inner.applied);
        let paths = self.inner.options.paths();
        paths.len() != applied.stamps.len()
            || paths
                .into_iter()
                .zip(&applied.stamps)
                .any(|(path, stamp)| FileStamp::of(path) != *stamp)
    }

    /// Polls the metadata (length, modification time, inode) of every
    /// certificate, key and CA file every `every` (at least 10 ms) and calls
    /// [`ServerTls::reload`] when one changed, until `shutdown` is
    /// cancelled.
    ///
    /// Logs under the `gantry::tls` target what was reloaded, or why not.
    /// When the new files cannot be used (a key that does not match its
    /// certificate because only one of them was replaced yet, a half-written
    /// file) the old certificates keep being served and the reload is tried
    /// again at every tick until it succeeds; the same error is logged as a
    /// warning once, then at debug level.
    ///
    /// Must be called within a Tokio runtime.
    pub fn spawn_watcher(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        let every = every.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_failure: Option<String> = None;
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let polling = tls.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    if polling.files_changed() {
                        Some(polling.reload())
                    } else {
                        None
                    }
                })
                .await;
                match outcome {
                    Ok(None) => {}
                    Ok(Some(Ok(swapped))) => {
                        if !swapped {
                            tracing::debug!(
                                target: LOG_TARGET,
                                "TLS files were touched but their contents are unchanged"
                            );
                        }
                        last_failure = None;
                    }
                    Ok(Some(Err(err))) => {
                        let message = err.to_string();
                        if last_failure.as_deref() == Some(message.as_str()) {
                            tracing::debug!(
                                target: LOG_TARGET,
                                error = %message,
                                "TLS files still cannot be loaded; serving the previous certificates"
                            );
                        } else {
                            tracing::warn!(
                                target: LOG_TARGET,
                                error = %message,
                                retry_every = ?every,
                                "TLS files changed but cannot be loaded; serving the previous certificates and retrying"
                            );
                            last_failure = Some(message);
                        }
                    }
                    Err(join) => {
                        tracing::warn!(
                            target: LOG_TARGET,
                            error = %join,
                            "checking TLS files failed; retrying at the next tick"
                        );
                    }
                }
            }
            tracing::debug!(target: LOG_TARGET, "TLS file watcher stopped");
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state is only replaced whole, so a panic elsewhere cannot
    // leave it half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn build_config(
    provider: &Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(crate::PROTOCOL_VERSIONS)
        .map_err(|err| TlsError::Config {
            detail: err.to_string(),
        })?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn build_verifier(
    options: &ServerOptions,
    material: &Material,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    let (Some(path), Some(bytes)) = (&options.client_ca, material.client_ca(options)) else {
        return Ok(None);
    };
    let roots = pem::root_store(path, bytes)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|err| TlsError::CaBundle {
            path: path.clone(),
            detail: err.to_string(),
        })?;
    Ok(Some(verifier))
}

fn build_entries(
    options: &ServerOptions,
    material: &Material,
    provider: &CryptoProvider,
) -> Result<Vec<SniEntry>, TlsError> {
    options
        .certs
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let (cert, key) = material.pair(i);
            load_pair(files, cert, key, provider)
        })
        .collect()
}

/// Parses and checks one certificate chain and its key.
fn load_pair(
    files: &CertFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<SniEntry, TlsError> {
    let chain = pem::certificates(&files.cert, cert_pem)?;
    let key_der = pem::private_key(&files.key, key_pem)?;
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|err| TlsError::UnsupportedKey {
            path: files.key.clone(),
            detail: err.to_string(),
        })?;
    let leaf = LeafInfo::parse(&files.cert, chain.first().map(AsRef::as_ref).unwrap_or(&[]))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        // The key cannot tell its public half; nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
    }
    let now = SystemTime::now();
    if now > leaf.not_after {
        tracing::warn!(
            target: LOG_TARGET,
            cert = %files.cert.display(),
            not_after = %leaf.not_after_text,
            "TLS certificate has expired; clients will refuse it until it is renewed"
        );
    } else if now < leaf.not_before {
        tracing::warn!(
            target: LOG_TARGET,
            cert = %files.cert.display(),
            not_before = %leaf.not_before_text,
            "TLS certificate is not valid yet; check the system clock"
        );
    }
    Ok(SniEntry {
        key: Arc::new(certified),
        file: files.cert.clone(),
        names: leaf.dns_names,
        not_after: leaf.not_after_text,
    })
}

/// What the server needs to know about its own certificate.
struct LeafInfo {
    dns_names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    not_before_text: String,
    not_after_text: String,
}

impl LeafInfo {
    fn parse(path: &Path, der: &[u8]) -> Result<LeafInfo, TlsError> {
        let bad = |detail: String| TlsError::BadCertificate {
            path: path.to_path_buf(),
            index: 1,
            detail,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("subject alternative names: {e}")))?;
        let dns_names = san
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => {
                            Some(normalize_dns(dns))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let validity = cert.validity();
        Ok(LeafInfo {
            dns_names,
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            not_before_text: validity.not_before.to_string(),
            not_after_text: validity.not_after.to_string(),
        })
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    let offset = Duration::from_secs(unix.unsigned_abs());
    let time = if unix >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    };
    time.unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Lowercase, without a trailing dot.
fn normalize_dns(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn summarize(entries: &[SniEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{} [{}] (expires {})",
                e.file.display(),
                e.names.join(", "),
                e.not_after
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One server certificate and the DNS names it is valid for.
struct SniEntry {
    key: Arc<CertifiedKey>,
    file: PathBuf,
    /// Lowercase DNS names from the subject alternative names; wildcards
    /// kept as `*.example.com`.
    names: Vec<String>,
    not_after: String,
}

impl SniEntry {
    fn matches_exactly(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// `*.example.com` matches `a.example.com`, but neither `example.com`
    /// nor `a.b.example.com`.
    fn matches_wildcard(&self, name: &str) -> bool {
        let Some((label, parent)) = name.split_once('.') else {
            return false;
        };
        !label.is_empty()
            && self
                .names
                .iter()
                .any(|n| n.strip_prefix("*.") == Some(parent))
    }
}

/// Picks the certificate for a handshake by SNI name.
struct SniResolver {
    entries: ArcSwap<Vec<SniEntry>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries.load();
        f.debug_list()
            .entries(entries.iter().map(|e| (&e.file, &e.names)))
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let entries = self.entries.load();
        if let Some(sni) = client_hello.server_name() {
            let name = normalize_dns(sni);
            let schemes = client_hello.signature_schemes();
            let exact = entries.iter().filter(|e| e.matches_exactly(&name));
            let wildcard = entries.iter().filter(|e| e.matches_wildcard(&name));
            let mut first_match = None;
            // Among matching certificates, prefer one whose key the client
            // can verify (an ECDSA and an RSA certificate for one name).
            for entry in exact.chain(wildcard) {
                if entry.key.key.choose_scheme(schemes).is_some() {
                    return Some(entry.key.clone());
                }
                first_match.get_or_insert(entry);
            }
            if let Some(entry) = first_match {
                return Some(entry.key.clone());
            }
            tracing::debug!(
                target: LOG_TARGET,
                sni = %name,
                "no certificate matches the requested name; using the default certificate"
            );
        }
        entries.first().map(|e| e.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str]) -> SniEntry {
        SniEntry {
            key: Arc::new(CertifiedKey::new(vec![], Arc::new(NoKey))),
            file: PathBuf::from("x.pem"),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: String::new(),
        }
    }

    #[derive(Debug)]
    struct NoKey;
    impl rustls::sign::SigningKey for NoKey {
        fn choose_scheme(
            &self,
            _: &[rustls::SignatureScheme],
        ) -> Option<Box<dyn rustls::sign::Signer>> {
            None
        }
        fn algorithm(&self) -> rustls::SignatureAlgorithm {
            rustls::SignatureAlgorithm::ECDSA
        }
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        let e = entry(&["*.example.com", "example.org"]);
        assert!(e.matches_wildcard("a.example.com"));
        assert!(!e.matches_wildcard("example.com"));
        assert!(!e.matches_wildcard("a.b.example.com"));
        assert!(!e.matches_wildcard(".example.com"));
        assert!(!e.matches_exactly("a.example.com"));
        assert!(e.matches_exactly("example.org"));
        assert!(!e.matches_wildcard("a.example.org"));
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_dns("API.Example.COM."), "api.example.com");
    }

    #[test]
    fn timestamps_before_the_epoch_do_not_panic() {
        assert!(to_system_time(-10) < SystemTime::UNIX_EPOCH);
        assert_eq!(to_system_time(0), SystemTime::UNIX_EPOCH);
        let _ = to_system_time(i64::MIN);
        let _ = to_system_time(i64::MAX);
    }
}
