//! End-to-end tests on 127.0.0.1: SNI, ALPN, protocol versions, reloads,
//! client certificates and the file watcher.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_tls::rustls::pki_types::pem::PemObject;
use gantry_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use gantry_tls::rustls::{self, ClientConfig, ProtocolVersion, RootCertStore};
use gantry_tls::tokio_rustls::{client, TlsConnector};
use gantry_tls::{
    client_cert_for_tests, client_config, client_identity, dev_certs, server_cert_for_tests,
    CertFiles, ClientIdentity, ServerOptions, ServerTls, TlsError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A temporary directory with a development CA in `ca/` and server
/// certificates for a.test (the default) in `a/` and b.test in `b/`.
struct Setup {
    dir: tempfile::TempDir,
    a: CertFiles,
    b: CertFiles,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let a = server_cert_for_tests(&dir.path().join("a"), &ca, &names(&["a.test"])).unwrap();
        let b = server_cert_for_tests(&dir.path().join("b"), &ca, &names(&["b.test"])).unwrap();
        Setup { dir, a, b }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_dir(&self) -> PathBuf {
        self.path("ca")
    }

    fn ca_cert(&self) -> PathBuf {
        self.path("ca/ca.pem")
    }

    fn options(&self) -> ServerOptions {
        ServerOptions {
            certs: vec![self.a.clone(), self.b.clone()],
            client_ca: None,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca_cert()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }

    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        client_config(Some(&self.ca_cert()), alpn).unwrap()
    }

    /// A client presenting `identity` (certificate and key files).
    fn client_with_cert(&self, identity: &CertFiles) -> Arc<ClientConfig> {
        let chain = CertificateDer::pem_file_iter(&identity.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&identity.key).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.roots())
                .with_client_auth_cert(chain, key)
                .unwrap();
        Arc::new(config)
    }
}

fn leaf(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// What the server saw of one connection.
type Accepted = Result<Option<ClientIdentity>, String>;

/// Serves `tls` on 127.0.0.1: each connection is handshaken, reported on
/// the channel, then answered `pong\n` to every `ping\n`.
async fn serve(tls: ServerTls) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tls.accept(tcp).await {
                    Ok(mut stream) => {
                        let _ = tx.send(Ok(client_identity(stream.get_ref().1)));
                        let mut buf = [0u8; 5];
                        while stream.read_exact(&mut buf).await.is_ok() {
                            if stream.write_all(b"pong\n").await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

async fn ping(stream: &mut client::TlsStream<TcpStream>) -> io::Result<()> {
    stream.write_all(b"ping\n").await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong\n");
    Ok(())
}

fn server_cert(stream: &client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the server reports every connection")
        .expect("the server is running")
}

#[test]
fn good_pair_loads() {
    let setup = Setup::new();
    let tls = ServerTls::load(&setup.options()).unwrap();
    assert!(!tls.requests_client_certs());
    assert_eq!(
        tls.config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    // Nothing changed on disk.
    assert!(!tls.reload().unwrap());
}

#[test]
fn a_key_not_matching_its_certificate_is_refused() {
    let setup = Setup::new();
    let options = ServerOptions {
        certs: vec![CertFiles::new(&setup.a.cert, &setup.b.key)],
        client_ca: None,
    };
    let err = ServerTls::load(&options).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&setup.a.cert.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&setup.b.key.display().to_string()),
        "{message}"
    );
}

#[test]
fn missing_files_are_named() {
    let setup = Setup::new();
    let missing = setup.path("nope/cert.pem");
    let err = ServerTls::load(&ServerOptions {
        certs: vec![CertFiles::new(&missing, &setup.a.key)],
        client_ca: None,
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let missing_ca = setup.path("nope/ca.pem");
    let err = ServerTls::load(&ServerOptions {
        certs: vec![setup.a.clone()],
        client_ca: Some(missing_ca.clone()),
    })
    .unwrap_err();
    assert!(
        err.to_string().contains(&missing_ca.display().to_string()),
        "{err}"
    );
}

#[test]
fn bad_files_are_explained() {
    let setup = Setup::new();
    let empty = setup.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let two_keys = setup.path("two-keys.pem");
    let key = std::fs::read_to_string(&setup.a.key).unwrap();
    std::fs::write(&two_keys, format!("{key}{key}")).unwrap();
    let encrypted = setup.path("encrypted.pem");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();

    let load = |cert: &Path, key: &Path| {
        ServerTls::load(&ServerOptions {
            certs: vec![CertFiles::new(cert, key)],
            client_ca: None,
        })
        .unwrap_err()
    };
    let err = load(&empty, &setup.a.key);
    assert!(
        matches!(err, TlsError::NoCertificate { ref path } if *path == empty),
        "{err:?}"
    );
    let err = load(&setup.a.cert, &empty);
    assert!(
        matches!(err, TlsError::NoPrivateKey { ref path } if *path == empty),
        "{err:?}"
    );
    let err = load(&setup.a.cert, &two_keys);
    assert!(
        matches!(err, TlsError::MultiplePrivateKeys { count: 2, .. }),
        "{err:?}"
    );
    let err = load(&setup.a.cert, &encrypted);
    assert!(
        matches!(err, TlsError::EncryptedPrivateKey { .. }),
        "{err:?}"
    );
    // Certificate and key swapped.
    let err = load(&setup.a.key, &setup.a.cert);
    assert!(err.to_string().contains("holds no certificate"), "{err}");

    let err = ServerTls::load(&ServerOptions::default()).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificates), "{err:?}");

    let err = ServerTls::load(&ServerOptions {
        certs: vec![setup.a.clone()],
        client_ca: Some(empty.clone()),
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::CaBundle { .. }), "{err:?}");
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let setup = Setup::new();
    let tls = ServerTls::load(&setup.options()).unwrap();
    let (addr, _rx) = serve(tls).await;
    let client = setup.client(&[]);

    let mut a = connect(addr, client.clone(), "a.test").await.unwrap();
    assert_eq!(server_cert(&a), leaf(&setup.a.cert));
    ping(&mut a).await.unwrap();
    let mut b = connect(addr, client.clone(), "b.test").await.unwrap();
    assert_eq!(server_cert(&b), leaf(&setup.b.cert));
    ping(&mut b).await.unwrap();

    // Without SNI the first certificate is served: valid for a.test, not
    // for b.test.
    let mut no_sni = (*client).clone();
    no_sni.enable_sni = false;
    let no_sni = Arc::new(no_sni);
    let a = connect(addr, no_sni.clone(), "a.test").await.unwrap();
    assert_eq!(server_cert(&a), leaf(&setup.a.cert));
    let err = connect(addr, no_sni, "b.test").await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn wildcard_certificates_match_one_label() {
    let setup = Setup::new();
    let wild = server_cert_for_tests(
        &setup.path("wild"),
        &setup.ca_dir(),
        &names(&["*.wild.test"]),
    )
    .unwrap();
    let tls = ServerTls::load(&ServerOptions {
        certs: vec![setup.a.clone(), wild.clone()],
        client_ca: None,
    })
    .unwrap();
    let (addr, _rx) = serve(tls).await;
    let stream = connect(addr, setup.client(&[]), "x.wild.test")
        .await
        .unwrap();
    assert_eq!(server_cert(&stream), leaf(&wild.cert));
}

#[tokio::test]
async fn alpn_and_protocol_versions() {
    let setup = Setup::new();
    let tls = ServerTls::load(&setup.options()).unwrap();
    let (addr, _rx) = serve(tls).await;

    let h2 = connect(addr, setup.client(&[b"h2", b"http/1.1"]), "a.test")
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        h2.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    let h1 = connect(addr, setup.client(&[b"http/1.1"]), "a.test")
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let none = connect(addr, setup.client(&[]), "a.test").await.unwrap();
    assert_eq!(none.get_ref().1.alpn_protocol(), None);

    let tls12 =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(setup.roots())
            .with_no_client_auth();
    let mut stream = connect(addr, Arc::new(tls12), "b.test").await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(server_cert(&stream), leaf(&setup.b.cert));
    ping(&mut stream).await.unwrap();
}

#[tokio::test]
async fn reload_swaps_certificates_and_keeps_open_connections() {
    let setup = Setup::new();
    let tls = ServerTls::load(&setup.options()).unwrap();
    let (addr, _rx) = serve(tls.clone()).await;
    let client = setup.client(&[]);
    // An acceptor kept from before the reload still presents new
    // certificates (in full handshakes).
    let kept = tls.acceptor();

    let mut before = connect(addr, client.clone(), "a.test").await.unwrap();
    let old = leaf(&setup.a.cert);
    assert_eq!(server_cert(&before), old);
    // Reading collects the session tickets the client could resume with.
    ping(&mut before).await.unwrap();

    let renewed =
        server_cert_for_tests(&setup.path("a"), &setup.ca_dir(), &names(&["a.test"])).unwrap();
    assert_eq!(renewed, setup.a);
    let new = leaf(&setup.a.cert);
    assert_ne!(new, old);
    assert!(tls.reload().unwrap());
    assert!(!tls.reload().unwrap(), "a second reload finds nothing new");

    // The same client: its old session is not resumed.
    let mut after = connect(addr, client.clone(), "a.test").await.unwrap();
    assert_eq!(server_cert(&after), new);
    ping(&mut after).await.unwrap();
    ping(&mut before).await.unwrap();

    // b.test is untouched.
    let b = connect(addr, client.clone(), "b.test").await.unwrap();
    assert_eq!(server_cert(&b), leaf(&setup.b.cert));

    // The kept acceptor, on a connection of its own.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kept_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _stream = kept.accept(tcp).await;
    });
    let stream = connect(kept_addr, setup.client(&[]), "a.test")
        .await
        .unwrap();
    assert_eq!(server_cert(&stream), new);
}

#[tokio::test]
async fn failed_reload_keeps_serving_the_old_certificates() {
    let setup = Setup::new();
    let tls = ServerTls::load(&setup.options()).unwrap();
    let (addr, _rx) = serve(tls.clone()).await;
    let old = leaf(&setup.a.cert);

    // Only the key replaced so far.
    std::fs::copy(&setup.b.key, &setup.a.key).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let stream = connect(addr, setup.client(&[]), "a.test").await.unwrap();
    assert_eq!(server_cert(&stream), old);

    // A half-written certificate.
    std::fs::copy(&setup.b.cert, &setup.a.cert).unwrap();
    let truncated = std::fs::read_to_string(&setup.a.cert).unwrap();
    std::fs::write(&setup.a.cert, &truncated[..truncated.len() / 2]).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(
        err.to_string()
            .contains(&setup.a.cert.display().to_string()),
        "{err}"
    );
    let stream = connect(addr, setup.client(&[]), "a.test").await.unwrap();
    assert_eq!(server_cert(&stream), old);
}

#[tokio::test]
async fn client_certificates() {
    let setup = Setup::new();
    let alice = client_cert_for_tests(&setup.path("clients"), &setup.ca_dir(), "alice").unwrap();
    let mallory =
        client_cert_for_tests(&setup.path("evil"), &setup.path("evil-ca"), "mallory").unwrap();
    let tls = ServerTls::load(&ServerOptions {
        client_ca: Some(setup.ca_cert()),
        ..setup.options()
    })
    .unwrap();
    assert!(tls.requests_client_certs());
    let (addr, mut rx) = serve(tls).await;

    // A certificate from the CA.
    let mut stream = connect(addr, setup.client_with_cert(&alice), "a.test")
        .await
        .unwrap();
    ping(&mut stream).await.unwrap();
    let identity = next(&mut rx)
        .await
        .unwrap()
        .expect("alice presented a certificate");
    assert_eq!(identity.subject, "CN=alice");
    assert_eq!(identity.common_name.as_deref(), Some("alice"));
    assert_eq!(identity.sans, ["spiffe://gantry.test/alice"]);
    assert_eq!(identity.fingerprint_sha256.len(), 64);
    assert!(identity
        .fingerprint_sha256
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_ne!(
        identity.fingerprint_sha256,
        ClientIdentity::from_certificate(&leaf(&mallory.cert))
            .unwrap()
            .fingerprint_sha256
    );

    // No certificate: the handshake completes, anonymously.
    let mut stream = connect(addr, setup.client(&[]), "a.test").await.unwrap();
    ping(&mut stream).await.unwrap();
    assert_eq!(next(&mut rx).await, Ok(None));

    // A certificate from another CA is refused at the handshake. With TLS
    // 1.3 the client may finish first and learn of it on its first read.
    let refused = async {
        let mut stream = connect(addr, setup.client_with_cert(&mallory), "a.test").await?;
        ping(&mut stream).await
    };
    assert!(refused.await.is_err());
    let err = next(&mut rx).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

/// Captures what the tracing subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn watcher_picks_up_replaced_files() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test's runtime is single-threaded: the watcher task logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let setup = Setup::new();
    let tls = ServerTls::load(&setup.options()).unwrap();
    let (addr, _rx) = serve(tls.clone()).await;
    let shutdown = CancellationToken::new();
    let watcher = tls.spawn_watcher(Duration::from_millis(20), shutdown.clone());
    let client = setup.client(&[]);
    let old = leaf(&setup.a.cert);

    // A new pair, issued elsewhere, copied in one file at a time.
    let staged =
        server_cert_for_tests(&setup.path("staged"), &setup.ca_dir(), &names(&["a.test"])).unwrap();
    std::fs::copy(&staged.key, &setup.a.key).unwrap();
    eventually("the watcher to report the mismatched pair", || {
        logs.text().contains("cannot be loaded")
    })
    .await;
    assert!(logs.text().contains(&setup.a.key.display().to_string()));
    let stream = connect(addr, client.clone(), "a.test").await.unwrap();
    assert_eq!(server_cert(&stream), old, "the old pair is still served");

    std::fs::copy(&staged.cert, &setup.a.cert).unwrap();
    let new = leaf(&staged.cert);
    for attempt in 0.. {
        let stream = connect(addr, client.clone(), "a.test").await.unwrap();
        if server_cert(&stream) == new {
            break;
        }
        assert!(attempt < 250, "the watcher did not pick up the new pair");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn watcher_reloads_the_client_ca() {
    let setup = Setup::new();
    let ca_bundle = setup.path("clients-ca.pem");
    std::fs::copy(setup.ca_cert(), &ca_bundle).unwrap();
    let tls = ServerTls::load(&ServerOptions {
        client_ca: Some(ca_bundle.clone()),
        ..setup.options()
    })
    .unwrap();
    let (addr, mut rx) = serve(tls.clone()).await;
    let shutdown = CancellationToken::new();
    let _watcher = tls.spawn_watcher(Duration::from_millis(20), shutdown.clone());

    let carol =
        client_cert_for_tests(&setup.path("other"), &setup.path("other-ca"), "carol").unwrap();
    let attempt = || async {
        let mut stream = connect(addr, setup.client_with_cert(&carol), "a.test").await?;
        ping(&mut stream).await
    };
    assert!(attempt().await.is_err());
    assert!(next(&mut rx).await.is_err());

    // Trust the other CA too.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(setup.ca_cert()).unwrap(),
        std::fs::read_to_string(setup.path("other-ca/ca.pem")).unwrap()
    );
    std::fs::write(&ca_bundle, both).unwrap();
    for tries in 0.. {
        if attempt().await.is_ok() {
            let identity = next(&mut rx).await.unwrap().unwrap();
            assert_eq!(identity.common_name.as_deref(), Some("carol"));
            break;
        }
        let _ = next(&mut rx).await;
        assert!(tries < 250, "the watcher did not pick up the new CA bundle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

#[tokio::test]
async fn dev_certs_create_and_reuse_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let first = dev_certs(&certs_dir, &names(&["localhost", "127.0.0.1", "::1"])).unwrap();
    assert!(first.created_ca);
    assert_eq!(first.ca_cert, certs_dir.join("ca.pem"));
    assert_eq!(first.cert, certs_dir.join("cert.pem"));
    assert_eq!(first.key, certs_dir.join("key.pem"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [certs_dir.join("ca-key.pem"), first.key.clone()] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }
    let ca = std::fs::read(&first.ca_cert).unwrap();
    let cert = std::fs::read(&first.cert).unwrap();

    let second = dev_certs(&certs_dir, &names(&["localhost"])).unwrap();
    assert!(!second.created_ca);
    assert_eq!(
        std::fs::read(&second.ca_cert).unwrap(),
        ca,
        "the CA is reused"
    );
    assert_ne!(std::fs::read(&second.cert).unwrap(), cert, "a new leaf");

    // The leaf is served and verifies against the CA, by name and by IP.
    let tls = ServerTls::load(&ServerOptions {
        certs: vec![second.cert_files()],
        client_ca: None,
    })
    .unwrap();
    let (addr, _rx) = serve(tls).await;
    let client = client_config(Some(&second.ca_cert), &[]).unwrap();
    let mut stream = connect(addr, client.clone(), "localhost").await.unwrap();
    ping(&mut stream).await.unwrap();
    assert!(
        connect(addr, client.clone(), "127.0.0.1").await.is_err(),
        "the second leaf is for localhost only"
    );

    let tls = ServerTls::load(&ServerOptions {
        certs: vec![
            dev_certs(&certs_dir, &names(&["localhost", "127.0.0.1", "::1"]))
                .unwrap()
                .cert_files(),
        ],
        client_ca: None,
    })
    .unwrap();
    let (addr, _rx) = serve(tls).await;
    let mut stream = connect(addr, client.clone(), "127.0.0.1").await.unwrap();
    ping(&mut stream).await.unwrap();

    let err = dev_certs(&certs_dir, &names(&["bad name"])).unwrap_err();
    assert!(matches!(err, TlsError::InvalidName { .. }), "{err:?}");
}

#[test]
fn a_dev_ca_missing_its_key_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), &names(&["localhost"])).unwrap();
    std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
    let err = dev_certs(dir.path(), &names(&["localhost"])).unwrap_err();
    assert!(matches!(err, TlsError::DevCa { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
    assert!(dir.path().join("ca.pem").exists());
}

#[tokio::test]
async fn https_connector_with_a_private_ca() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let setup = Setup::new();
    let ip =
        server_cert_for_tests(&setup.path("ip"), &setup.ca_dir(), &names(&["127.0.0.1"])).unwrap();
    let tls = ServerTls::load(&ServerOptions {
        certs: vec![ip],
        client_ca: None,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = tls.accept(tcp).await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
    });

    let config = client_config(Some(&setup.ca_cert()), &[]).unwrap();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(gantry_tls::https_connector_with(config));
    let uri: hyper::Uri = format!("https://127.0.0.1:{port}/").parse().unwrap();
    let response = client.get(uri).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
}

#[test]
fn the_system_connector_builds_without_panicking() {
    // Whether or not this machine has root certificates.
    let _ = gantry_tls::https_connector();
    let _ = gantry_tls::https_connector();
}
