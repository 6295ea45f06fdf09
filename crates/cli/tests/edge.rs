//! The edge as an attacker meets it, through the real binary: no spelling of
//! a path gets around a route's auth, forwarding headers are only believed
//! from trusted proxies, failing credentials are throttled, revoked keys stop
//! working.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::upstream::{raw_request, Lenient};
use support::{client, Gantry};

const SECRET_KEY: &str = "edge-test-secret";

fn token() -> String {
    support::hs256_token(SECRET_KEY, "ops")
}

fn protected_manifest(upstream: SocketAddr, platform_extra: &str) -> String {
    let jwt = support::jwt_section(SECRET_KEY);
    format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
watch = false
{platform_extra}

{jwt}
[services.app]
urls = ["http://{upstream}"]

[[routes]]
path = "/admin/*"
to = "app"
auth = "jwt"
forward_claims = {{ sub = "x-user-id" }}

[[routes]]
path = "/*"
to = "app"
"#
    )
}

#[tokio::test]
async fn no_spelling_of_a_path_reaches_a_protected_route_without_a_token() {
    let upstream = Lenient::start().await;
    let gantry = Gantry::start(&protected_manifest(upstream.addr, "")).await;
    let port = gantry.gateway;

    // The upstream does serve the secret, to a request with a token: what
    // follows fails if a bypass gets through.
    let bearer = format!("Bearer {}", token());
    let (status, body) = raw_request(port, "/admin/secret", &[("Authorization", &bearer)]).await;
    assert_eq!((status, body.as_str()), (200, "SECRET"));
    // Spelled otherwise, with a token, it is served too, and the upstream
    // receives the normalised path that was matched.
    let (status, body) = raw_request(
        port,
        "/x/../%61dmin//./secret",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "SECRET"));
    assert_eq!(
        upstream.seen.lock().unwrap().last().unwrap(),
        "/admin/secret"
    );
    let (status, _) = raw_request(port, "/admin/secret", &[]).await;
    assert_eq!(status, 401);

    let attacks = [
        "/x/../admin/secret",
        "//admin/secret",
        "/%61dmin/secret",
        "/%61%64%6d%69%6e/secret",
        "/./admin/secret",
        "/admin/./secret",
        "///admin//secret",
        "/x/%2e%2e/admin/secret",
        "/x/%2E%2E/admin/secret",
        "/x/.%2e/admin/secret",
        "/x/y/../../admin/secret",
        "/admin%2fsecret",
        "/admin%2Fsecret",
        "/x/..%2fadmin/secret",
        "/x/..%2Fadmin%2Fsecret",
        "/admin%5csecret",
        "/x/..%5cadmin/secret",
        "/x/..\\admin/secret",
        "/%2e%2e/admin/secret",
        "/../admin/secret",
        "/x/../admin/secret?q=1",
    ];
    // Fewer than the failed-authentication limit of 20 per client are 401s.
    for target in attacks {
        let (status, body) = raw_request(port, target, &[]).await;
        assert_ne!(
            body, "SECRET",
            "{target} reached the protected path ({status})"
        );
        assert!(
            matches!(status, 400 | 401 | 404 | 200),
            "{target}: unexpected {status} {body}"
        );
        if status == 200 {
            // Served by the open route: the upstream must not have resolved it to /admin.
            let echoed: Value = serde_json::from_str(&body).unwrap();
            assert!(
                !echoed["resolved"].as_str().unwrap().starts_with("/admin/"),
                "{target}: {echoed}"
            );
        }
    }
    // The refusals are problems that say why.
    let (status, body) = raw_request(port, "/../admin/secret", &[]).await;
    assert_eq!(status, 400);
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:gantry:problem:bad-path");
    assert!(
        problem["detail"].as_str().unwrap().contains("above"),
        "{problem}"
    );
    let (status, body) = raw_request(port, "/admin%2Fsecret", &[]).await;
    assert_eq!(status, 400);
    assert!(body.contains("escaped_slashes"), "{body}");
}

#[tokio::test]
async fn escaped_slashes_can_be_decoded_and_normalisation_turned_off() {
    let upstream = Lenient::start().await;
    let gantry = Gantry::start(&protected_manifest(
        upstream.addr,
        "escaped_slashes = \"decode\"",
    ))
    .await;
    let (status, _) = raw_request(gantry.gateway, "/x/..%2Fadmin%2Fsecret", &[]).await;
    assert_eq!(status, 401, "decoded, it is the protected path");
    let (status, body) = raw_request(gantry.gateway, "/files/a%2Fb", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.seen.lock().unwrap().last().unwrap(),
        "/files/a/b",
        "{body}"
    );
    drop(gantry);

    // Off, paths go through untouched (the old behaviour, for upstreams that
    // need exact bytes); the manifest reference warns about what it allows.
    let upstream = Lenient::start().await;
    let gantry = Gantry::start(&protected_manifest(upstream.addr, "normalize_path = false")).await;
    let (status, _) = raw_request(gantry.gateway, "/files/./a", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.seen.lock().unwrap().last().unwrap(), "/files/./a");
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let upstream = Lenient::start().await;
    let spoofed = [
        // A claim header another route forwards: no client may set it.
        ("X-User-Id", "admin"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "admin.internal"),
        ("Forwarded", "for=6.6.6.6;proto=https;host=admin.internal"),
    ];
    let headers_seen = |body: &str| -> Value {
        let echoed: Value = serde_json::from_str(body).unwrap();
        echoed["headers"].clone()
    };

    let gantry = Gantry::start(&protected_manifest(upstream.addr, "")).await;
    let (status, body) = raw_request(gantry.gateway, "/whoami", &spoofed).await;
    assert_eq!(status, 200);
    let seen = headers_seen(&body);
    assert!(seen.get("x-user-id").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["x-forwarded-host"],
        format!("127.0.0.1:{}", gantry.gateway)
    );
    assert_eq!(
        seen["forwarded"],
        format!(
            "for=127.0.0.1;proto=http;host=\"127.0.0.1:{}\"",
            gantry.gateway
        )
    );
    drop(gantry);

    let gantry = Gantry::start(&protected_manifest(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1\"]",
    ))
    .await;
    let (status, body) = raw_request(gantry.gateway, "/whoami", &spoofed).await;
    assert_eq!(status, 200);
    let seen = headers_seen(&body);
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "admin.internal");
    assert_eq!(
        seen["forwarded"],
        format!(
            "for=6.6.6.6;proto=https;host=admin.internal, for=127.0.0.1;proto=http;host=\"127.0.0.1:{}\"",
            gantry.gateway
        )
    );
}

#[tokio::test]
async fn failing_api_keys_are_throttled_and_a_revoked_key_stops_within_a_second() {
    let upstream = Lenient::start().await;
    let manifest = format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
watch = false

[services.app]
urls = ["http://{}"]

[[routes]]
path = "/api/*"
to = "app"
auth = "api_key"

[[routes]]
path = "/*"
to = "app"
"#,
        upstream.addr
    );
    let gantry = Gantry::start(&manifest).await;
    let c = client();

    // A key works, then stops working within a second of its revocation.
    let created: Value = c
        .post(gantry.admin_url("/v1/keys"))
        .json(&json!({ "consumer": "shop" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("gk_{id}_")), "{key}");
    assert_eq!(
        key.len(),
        3 + 16 + 1 + 64,
        "a 64-bit id and a 256-bit secret in hex"
    );
    let listed: Value = c
        .get(gantry.admin_url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["keys"][0]["rotate"], false);
    let call = |key: String| {
        let c = c.clone();
        let url = gantry.url("/api/orders");
        async move {
            c.get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call(key.clone()).await, 200);
    assert_eq!(call(key.clone()).await, 200, "served from the cache");
    let revoked = c
        .delete(gantry.admin_url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let revoked_at = Instant::now();
    loop {
        let status = call(key.clone()).await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "a revoked key still answered {status} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Brute force from one address, 50 guesses at once: each takes a token
    // before its key is looked up, so no more than the limit are checked,
    // however many run concurrently; the rest get 429 before any lookup.
    let guesses: Vec<_> = (0..50)
        .map(|n| tokio::spawn(call(format!("gk_guess_{n:064}"))))
        .collect();
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap());
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(unauthorized <= 20, "{statuses:?}");
    assert_eq!(unauthorized + throttled, 50, "{statuses:?}");
    assert!(throttled >= 29, "{statuses:?}");
    let response = c
        .get(gantry.url("/api/orders"))
        .header("x-api-key", "gk_one_more")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("failed authentications"),
        "{problem}"
    );
    // Open routes are not affected.
    assert_eq!(
        c.get(gantry.url("/public")).send().await.unwrap().status(),
        200
    );
}
