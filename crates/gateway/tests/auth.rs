//! JWT authentication at the gateway, including the classic attacks.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{client, Behaviour, TestGateway, Upstream};

const SECRET: &str = "dev-secret-for-tests-only";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn good_claims() -> Value {
    json!({ "sub": "user-7", "aud": "shop", "iss": "https://auth.test", "exp": now() + 300, "scope": "orders:read orders:write" })
}

/// A route needing `orders:write`, with the subject forwarded; keys: an HS256
/// key `dev` and, when given, an RS256 key `rsa` from a PEM file.
fn manifest(upstream: &Upstream, rsa_pem: Option<&std::path::Path>) -> String {
    let rsa = rsa_pem
        .map(|p| {
            format!(
                "\n[[jwt.keys]]\nkid = \"rsa\"\nalgorithm = \"RS256\"\npem_file = \"{}\"\n",
                p.display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[jwt]
issuer = "https://auth.test"
audience = "shop"
leeway = "5s"

[[jwt.keys]]
kid = "dev"
algorithm = "HS256"
secret = "{SECRET}"
{rsa}
[services.orders]
urls = ["{}"]

[[routes]]
name = "orders"
path = "/api/orders"
to = "orders"
auth = "jwt"
scopes = ["orders:write"]
forward_claims = {{ sub = "x-user-id" }}
"#,
        upstream.url()
    )
}

async fn problem(response: reqwest::Response, status: u16) -> (String, Value) {
    assert_eq!(response.status(), status);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (challenge, response.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_token_passes_and_its_subject_is_forwarded() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, None)).await;
    let token = hs256(good_claims(), Some("dev"));
    let response = client()
        .post(gw.url("/api/orders"))
        .bearer_auth(&token)
        .header("x-user-id", "admin") // a forged copy
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["headers"]["x-user-id"], "user-7");
}

#[tokio::test]
async fn missing_malformed_expired_and_misaddressed_tokens_get_401() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, None)).await;
    let c = client();

    let (challenge, body) = problem(c.post(gw.url("/api/orders")).send().await.unwrap(), 401).await;
    assert_eq!(challenge, "Bearer realm=\"gantry\"");
    assert_eq!(body["type"], "urn:gantry:problem:unauthenticated");

    for (token, reason) in [
        ("not.a.jwt".to_string(), "well-formed"),
        (
            hs256(
                json!({ "sub": "u", "aud": "shop", "iss": "https://auth.test", "exp": now() - 60 }),
                Some("dev"),
            ),
            "expired",
        ),
        (
            hs256(
                json!({ "sub": "u", "aud": "other", "iss": "https://auth.test", "exp": now() + 60 }),
                Some("dev"),
            ),
            "audience",
        ),
        (
            hs256(
                json!({ "sub": "u", "aud": "shop", "iss": "https://evil.test", "exp": now() + 60 }),
                Some("dev"),
            ),
            "issuer",
        ),
        (
            hs256(
                json!({ "sub": "u", "aud": "shop", "iss": "https://auth.test" }),
                Some("dev"),
            ),
            "exp",
        ),
        (hs256(good_claims(), Some("nobody")), "not known"),
    ] {
        let response = c
            .post(gw.url("/api/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (challenge, body) = problem(response, 401).await;
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{reason}: {detail}");
        assert!(
            !body.to_string().contains(&token),
            "the token is never echoed"
        );
    }
    let (_, body) = problem(
        c.post(gw.url("/api/orders"))
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let dir = tempfile_dir();
    let (private, public) = rsa_keys(&dir);
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, Some(&public))).await;
    let c = client();

    // `alg: none`, unsigned.
    let b64 = |v: &Value| base64url(v.to_string().as_bytes());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "dev"})),
        b64(&good_claims())
    );
    let (_, body) = problem(
        c.post(gw.url("/api/orders"))
            .bearer_auth(&none)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(body["type"], "urn:gantry:problem:unauthenticated");

    // HS256 signed with the RSA *public* key as the secret, naming the RSA key.
    let pem = std::fs::read(&public).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let confused = encode(&header, &good_claims(), &EncodingKey::from_secret(&pem)).unwrap();
    let (_, body) = problem(
        c.post(gw.url("/api/orders"))
            .bearer_auth(&confused)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("algorithm"),
        "{body}"
    );

    // The real RS256 token passes.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".into());
    let signed = encode(
        &header,
        &good_claims(),
        &EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        c.post(gw.url("/api/orders"))
            .bearer_auth(&signed)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_token_without_the_scope_gets_403() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, None)).await;
    let token = hs256(
        json!({ "sub": "u", "aud": "shop", "iss": "https://auth.test", "exp": now() + 60, "scope": "orders:read" }),
        Some("dev"),
    );
    let (challenge, body) = problem(
        client()
            .post(gw.url("/api/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(
        challenge,
        "Bearer realm=\"gantry\", error=\"insufficient_scope\", scope=\"orders:write\""
    );
    assert_eq!(body["type"], "urn:gantry:problem:forbidden");
}

#[tokio::test]
async fn jwks_keys_are_found_by_kid_and_refreshed_on_rotation() {
    let jwks = Arc::new(Mutex::new(jwk_set(&["k1"])));
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = serve_jwks(jwks.clone(), fetches.clone()).await;
    let upstream = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[jwt]\njwks_url = \"{url}\"\n\n[services.orders]\nurls = [\"{}\"]\n\n[[routes]]\npath = \"/*\"\nto = \"orders\"\nauth = \"jwt\"\n",
        upstream.url()
    );
    let gw = TestGateway::start(&manifest).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "loaded at start");
    let c = client();
    let claims = json!({ "sub": "u", "exp": now() + 60 });
    let token = |kid: &str| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(JWKS_SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        c.get(gw.url("/"))
            .bearer_auth(token("k1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The issuer rotates in k2: an unknown kid refetches the JWKS once.
    *jwks.lock().unwrap() = jwk_set(&["k1", "k2"]);
    assert_eq!(
        c.get(gw.url("/"))
            .bearer_auth(token("k2"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // A flood of unknown kids does not hammer the JWKS endpoint.
    for kid in ["x1", "x2", "x3"] {
        assert_eq!(
            c.get(gw.url("/"))
                .bearer_auth(token(kid))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

const JWKS_SECRET: &str = "jwks-secret-0123456789-abcdef";

fn jwk_set(kids: &[&str]) -> String {
    let k = base64url(JWKS_SECRET.as_bytes());
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| json!({ "kty": "oct", "kid": kid, "alg": "HS256", "k": k }))
        .collect();
    json!({ "keys": keys }).to_string()
}

async fn serve_jwks(body: Arc<Mutex<String>>, fetches: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (body, fetches) = (body.clone(), fetches.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let text = body.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gantry-jwt-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An RSA key pair made with the openssl command line.
fn rsa_keys(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-quiet",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A correctly signed HS256 token whose header carries extra fields.
fn hs256_with_header(extra: Value) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut header = json!({ "alg": "HS256", "kid": "dev" });
    header
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(good_claims().to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test]
async fn a_token_with_critical_extensions_is_refused() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, None)).await;
    let c = client();
    // The same signature scheme without `crit` passes: the check below is about `crit`.
    let plain = hs256_with_header(json!({}));
    let response = c
        .post(gw.url("/api/orders"))
        .bearer_auth(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for crit in [json!(["exp-binding"]), json!([]), json!("b64")] {
        let token = hs256_with_header(json!({ "crit": crit, "exp-binding": true, "b64": false }));
        let response = c
            .post(gw.url("/api/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (challenge, body) = problem(response, 401).await;
        assert!(challenge.contains("invalid_token"), "{challenge}");
        assert!(body["detail"].as_str().unwrap().contains("crit"), "{body}");
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_key_set_with_typ_accepts_only_that_typ() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let text =
        manifest(&upstream, None).replace("leeway = \"5s\"", "leeway = \"5s\"\ntyp = \"at+jwt\"");
    let gw = TestGateway::start(&text).await;
    let c = client();
    for (typ, status) in [
        (json!({ "typ": "at+jwt" }), 200),
        (json!({ "typ": "application/AT+JWT" }), 200),
        (json!({ "typ": "JWT" }), 401),
        (json!({}), 401),
    ] {
        let token = hs256_with_header(typ.clone());
        let response = c
            .post(gw.url("/api/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{typ}");
    }
}
