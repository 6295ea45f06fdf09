//! Client-side TLS: Gantry calling upstreams, JWKS endpoints, webhooks and
//! OTLP collectors over https.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{pem, TlsError, LOG_TARGET};

/// A rustls client configuration (TLS 1.3 and 1.2, `ring`) trusting either
/// the system's root certificates (`ca` is `None`) or only the CA
/// certificates in the PEM bundle `ca`, offering the ALPN protocols `alpn`
/// (e.g. `&[b"h2", b"http/1.1"]`; empty for none).
///
/// The system roots are loaded once per process and reused. Blocks on file
/// I/O.
pub fn client_config(ca: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => Arc::new(pem::root_store(path, &pem::read(path)?)?),
        None => system_roots()?,
    };
    let mut config = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A connector for `hyper_util`'s legacy client that speaks http and
/// https, trusting the system's root certificates, over HTTP/1.1 (no ALPN
/// is offered, so upgrades such as WebSocket keep working).
///
/// The TLS configuration is built once per process and shared by every
/// connector. If the system roots cannot be loaded this still returns a
/// connector: its https requests fail with an error saying so (its plain
/// http requests work), and the problem is logged once.
pub fn https_connector() -> HttpsConnector<HttpConnector> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| match client_config(None, &[]) {
        Ok(config) => config,
        Err(err) => {
            tracing::warn!(
                target: LOG_TARGET,
                error = %err,
                "https requests will fail until gantry restarts with trusted root certificates"
            );
            Arc::new(refusing_config(err.to_string()))
        }
    });
    https_connector_with(config.clone())
}

/// Like [`https_connector`], with a configuration of your own, e.g. from
/// [`client_config`] with a private CA. Its `alpn_protocols` are offered
/// as they are: include `h2` only if the client using the connector speaks
/// HTTP/2.
pub fn https_connector_with(config: Arc<ClientConfig>) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    HttpsConnector::from((http, config))
}

fn builder() -> Result<ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::PROTOCOL_VERSIONS)
        .map_err(|err| TlsError::Config {
            detail: err.to_string(),
        })
}

/// The operating system's trusted roots, loaded once.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(load_system_roots)
        .clone()
        .map_err(|detail| TlsError::NoSystemRoots { detail })
}

fn load_system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    if added == 0 {
        return Err(if errors.is_empty() {
            "the system trust store holds no usable certificate".to_string()
        } else {
            errors.join("; ")
        });
    }
    if ignored > 0 || !errors.is_empty() {
        tracing::debug!(
            target: LOG_TARGET,
            loaded = added,
            ignored,
            errors = %errors.join("; "),
            "some system root certificates could not be loaded"
        );
    }
    Ok(Arc::new(roots))
}

/// A configuration whose every handshake fails with `reason`.
fn refusing_config(reason: String) -> ClientConfig {
    let verifier = Arc::new(Refuse {
        reason,
        provider: crate::provider(),
    });
    let builder: ConfigBuilder<ClientConfig, WantsClientCert> = match builder() {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier),
        // Unreachable: the ring provider supports TLS 1.3 and 1.2. Fall
        // back to rustls's defaults (also ring: aws-lc-rs is not built).
        Err(_) => ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier),
    };
    builder.with_no_client_auth()
}

/// Refuses every server certificate, saying why.
#[derive(Debug)]
struct Refuse {
    reason: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Refuse {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(self.reason.clone()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_is_consistent() {
        assert!(builder().is_ok());
    }

    #[tokio::test]
    async fn refusing_config_fails_handshakes_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::dev_certs(dir.path(), &["localhost".to_string()]).unwrap();
        let server = crate::ServerTls::load(&crate::ServerOptions {
            certs: vec![certs.cert_files()],
            client_ca: None,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = server.accept(tcp).await;
        });

        let config = Arc::new(refusing_config("no roots here; set `ca =`".into()));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let err = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no roots here; set `ca =`"),
            "{err}"
        );
    }

    #[test]
    fn missing_ca_file_is_named() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem")), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
