//! TLS for Gantry: server certificates with SNI and hot reload, client
//! certificates, client configs for upstreams, and development
//! certificates.
//!
//! Everything uses rustls with the `ring` crypto provider, TLS 1.3 and 1.2.
//! [`rustls`] and [`tokio_rustls`] are re-exported, so users need no direct
//! dependency on them.
//!
//! # Serving
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use gantry_tls::{CertFiles, ServerOptions, ServerTls};
//!
//! let tls = ServerTls::load(&ServerOptions {
//!     certs: vec![
//!         CertFiles::new("certs/api.pem", "certs/api-key.pem"), // the default
//!         CertFiles::new("certs/admin.pem", "certs/admin-key.pem"),
//!     ],
//!     client_ca: Some("certs/clients-ca.pem".into()), // optional client certificates
//! })?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tls.spawn_watcher(Duration::from_secs(5), shutdown.clone());
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let tls = tls.clone();
//!     tokio::spawn(async move {
//!         let handshake = tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp));
//!         let Ok(Ok(stream)) = handshake.await else { return };
//!         let identity = gantry_tls::client_identity(stream.get_ref().1);
//!         let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
//!         // ... serve HTTP on `stream`
//!         # let _ = (identity, h2);
//!     });
//! }
//! # }
//! ```
//!
//! - [`ServerTls::load`] reads [`ServerOptions`]: certificate chains with
//!   their keys ([`CertFiles`]) and an optional client CA bundle. Each
//!   handshake gets the first certificate valid for the SNI name (exact
//!   names before `*.` wildcards), or else the first certificate. ALPN
//!   offers `h2` and `http/1.1`.
//! - [`ServerTls::accept`] (or [`ServerTls::acceptor`] per connection)
//!   handshakes with the configuration current at that moment.
//! - [`ServerTls::reload`] re-reads the files and swaps in what changed;
//!   [`ServerTls::spawn_watcher`] does so whenever their metadata change.
//!   Files that cannot be used are reported and the old certificates kept.
//! - With a client CA, clients *may* present a certificate; one that does
//!   not chain to the CA fails the handshake. [`client_identity`] tells
//!   what a verified one says ([`ClientIdentity`]); routes decide whether
//!   one is required.
//!
//! # Calling out
//!
//! - [`client_config`]: a rustls `ClientConfig` trusting the system roots
//!   or a given CA bundle, with the ALPN protocols you choose.
//! - [`https_connector`]: a hyper-util connector for http and https with
//!   the system roots, built once per process; [`https_connector_with`]
//!   takes a configuration of your own.
//!
//! # Development certificates
//!
//! [`dev_certs`] creates a local CA (reused on later calls) and a server
//! certificate for the names you give, for `gantry certs dev`.
//!
//! All errors are [`TlsError`]s, whose messages name the file involved and
//! say what to do. Logs go to the tracing target `gantry::tls`.

pub use rustls;
pub use tokio_rustls;

mod client;
mod dev;
mod error;
mod identity;
mod pem;
mod server;

pub use client::{client_config, https_connector, https_connector_with};
#[doc(hidden)]
pub use dev::{client_cert_for_tests, server_cert_for_tests};
pub use dev::{dev_certs, DevCerts};
pub use error::TlsError;
pub use identity::{client_identity, ClientIdentity};
pub use server::{CertFiles, ServerOptions, ServerTls};

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::SupportedProtocolVersion;

/// The tracing target of this crate's logs.
const LOG_TARGET: &str = "gantry::tls";

/// The protocol versions offered, client and server side.
const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The `ring` crypto provider, shared by every configuration.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
