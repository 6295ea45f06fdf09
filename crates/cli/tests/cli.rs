//! The command line a user types: `validate`, `schema`, `--help`, and `up`
//! refusing a broken manifest.

mod support;

use std::process::Command;

use support::GANTRY;

fn gantry(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(GANTRY)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

const BROKEN: &str = r#"[platform]
name = "demo"

[services.orders]
command = ["./orders"]
instnces = 2

[[routes]]
path = "/api/*"
to = "order"
timeout = "fast"
"#;

#[test]
fn validate_reports_every_mistake_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gantry.toml"), BROKEN).unwrap();
    let out = gantry(&["validate"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .contains("gantry.toml:6:1: error[M002]: unknown key `instnces` in [services.orders]"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `instances`?"), "{stderr}");
    assert!(stderr.contains("gantry.toml:10:6: error[M009]"), "{stderr}");
    assert!(
        stderr.contains("gantry.toml:11:11: error[M005]"),
        "{stderr}"
    );
    assert!(stderr.contains("3 errors in gantry.toml"), "{stderr}");
}

#[test]
fn validate_accepts_the_repository_and_example_manifests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (file, summary) in [
        ("gantry.toml", "2 services, 2 routes"),
        (
            "examples/shop/gantry.toml",
            "7 services, 8 routes, 5 topics, 4 subscriptions, 1 workflows, 4 functions, 1 schedules",
        ),
    ] {
        let out = gantry(&["validate", "-f", file], &root);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("is valid: {summary}")), "{stdout}");
    }
}

#[test]
fn validate_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = gantry(&["validate", "-f", "nope.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot read manifest nope.toml"),
        "{stderr}"
    );
}

#[test]
fn up_refuses_a_broken_manifest_with_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gantry.toml"), BROKEN).unwrap();
    let out = gantry(&["up"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("3 errors in gantry.toml"), "{stderr}");
}

#[test]
fn schema_prints_a_json_schema_of_the_manifest() {
    let out = gantry(&["schema"], std::path::Path::new("/"));
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "gantry.toml");
    assert!(schema["properties"]["services"].is_object());
    assert!(schema["properties"]["routes"].is_object());
}

#[test]
fn help_describes_every_command() {
    let out = gantry(&["--help"], std::path::Path::new("/"));
    let text = String::from_utf8(out.stdout).unwrap();
    for command in ["up", "validate", "schema"] {
        assert!(text.contains(command), "{text}");
        let sub = gantry(&[command, "--help"], std::path::Path::new("/"));
        assert!(sub.status.success());
    }
}

#[test]
fn certs_dev_makes_a_ca_and_a_certificate_and_says_how_to_use_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = gantry(
        &["certs", "dev", "--out", "certs", "--name", "shop.test"],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("created a development CA"), "{stderr}");
    // The snippet names absolute paths, which work from any manifest.
    let cert = dir.path().canonicalize().unwrap().join("certs/cert.pem");
    assert!(stdout.contains("[platform.tls]"), "{stdout}");
    assert!(
        stdout.contains(&format!("cert = \"{}\"", cert.display())),
        "{stdout}"
    );
    assert!(stdout.contains("--cacert"), "{stdout}");
    for key in ["certs/key.pem", "certs/ca-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let sans = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sans.stdout).contains("DNS:shop.test"));
    // A second run reuses the CA.
    let again = gantry(&["certs", "dev", "--out", "certs"], dir.path());
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("reused"));
}
