//! Runs the real `gantry` binary on a manifest in a temporary directory.

#![allow(dead_code)]

pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

/// The directory cargo put this build's binaries in (`target/debug` for tests).
pub fn bin_dir() -> PathBuf {
    Path::new(GANTRY).parent().unwrap().to_path_buf()
}

/// Builds the shop example's services once per test process, with the same
/// profile as the tests, and returns where they are.
pub fn shop_binaries() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "shop-catalog",
                "-p",
                "shop-monolith",
                "-p",
                "shop-orders",
                "-p",
                "shop-notifications",
                "-p",
                "shop-checkout",
                "-p",
                "shop-functions",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo to build the shop example");
        assert!(status.success(), "building the shop example failed");
    });
    bin_dir()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `gantry up`, stopped (SIGTERM) when dropped.
pub struct Gantry {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub gateway: u16,
    pub admin: u16,
    /// The platform API's port.
    pub api: u16,
}

impl Gantry {
    /// Writes `manifest` (where `{GATEWAY}`, `{ADMIN}`, `{API}` and `{BIN}` are
    /// replaced by free ports and the binaries' directory) to `gantry.toml` in
    /// a new directory and starts Gantry on it from another working directory.
    /// A manifest without `api` gets one on a free port, so tests never share
    /// the default.
    pub async fn start(manifest: &str) -> Gantry {
        Gantry::start_with(manifest, |_| {}).await
    }

    /// Like [`Gantry::start`], letting `prepare` put files in the manifest's
    /// directory first.
    pub async fn start_with(manifest: &str, prepare: impl FnOnce(&Path)) -> Gantry {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let mut gantry = Gantry {
            dir,
            child: None,
            gateway: 0,
            admin: 0,
            api: 0,
        };
        // A port free a moment ago can be taken by another test in between:
        // then Gantry says so and exits, and it starts again on other ports.
        for _ in 0..3 {
            (gantry.gateway, gantry.admin, gantry.api) = (free_port(), free_port(), free_port());
            let text = fill(
                manifest,
                gantry.gateway,
                gantry.admin,
                gantry.api,
                &shop_binaries(),
            );
            std::fs::write(gantry.manifest_path(), text).unwrap();
            let log = std::fs::File::create(gantry.dir.path().join("gantry.log")).unwrap();
            gantry.spawn(log);
            match gantry.try_wait_ready().await {
                Ok(()) => return gantry,
                Err(log) if log.contains("cannot listen for") => continue,
                Err(log) => panic!("gantry exited:\n{log}"),
            }
        }
        panic!(
            "gantry found its ports taken three times:\n{}",
            gantry.log()
        );
    }

    /// Starts Gantry again on the same directory and ports (after a crash, say).
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("gantry.log"))
            .unwrap();
        self.spawn(log);
        self.wait_ready().await;
    }

    /// Runs `gantry up` on the manifest, from another working directory,
    /// its log going to `log`.
    fn spawn(&mut self, log: std::fs::File) {
        let child = Command::new(GANTRY)
            .args(["up", "-f"])
            .arg(self.manifest_path())
            .current_dir("/")
            .env("GANTRY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gantry");
        self.child = Some(child);
    }

    /// `kill -9`: no chance to clean up or flush anything.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.api, path)
    }

    async fn wait_ready(&mut self) {
        if let Err(log) = self.try_wait_ready().await {
            panic!("gantry exited:\n{log}");
        }
    }

    /// Waits until Gantry is ready; `Err` with its log if it exited.
    async fn try_wait_ready(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("gantry.log");
        wait_ready(self.child.as_mut().unwrap(), self.admin, &log).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.gateway, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    /// The admin listener's `/metrics`, as text.
    #[allow(dead_code)]
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("gantry.toml")
    }

    /// Replaces the manifest the way an editor that writes a temp file and
    /// renames it over the original does.
    pub fn rewrite_manifest(&self, manifest: &str) {
        let text = fill(manifest, self.gateway, self.admin, self.api, &bin_dir());
        let tmp = self.dir.path().join(".gantry.toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.manifest_path()).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gantry.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to Gantry.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gantry did not stop within 30s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running {
            let _ = self.stop();
        }
    }
}

fn fill(manifest: &str, gateway: u16, admin: u16, api: u16, bin: &Path) -> String {
    let mut text = manifest.to_string();
    if !text.contains("\napi = ") {
        text = text.replacen(
            "admin = \"127.0.0.1:{ADMIN}\"",
            "admin = \"127.0.0.1:{ADMIN}\"\napi = \"127.0.0.1:{API}\"",
            1,
        );
    }
    text.replace("{GATEWAY}", &gateway.to_string())
        .replace("{ADMIN}", &admin.to_string())
        .replace("{API}", &api.to_string())
        .replace("{BIN}", &bin.display().to_string())
}

/// Waits until the Gantry `child` answers 200 on its admin `/readyz`;
/// `Err` with its log (the file `log`) if it exited. Panics after 60 s.
pub async fn wait_ready(child: &mut Child, admin: u16, log: &Path) -> Result<(), String> {
    let client = client();
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("(exit {status})\n{}", read_log()));
        }
        if let Ok(response) = client.get(&url).send().await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        assert!(
            Instant::now() < deadline,
            "gantry did not become ready:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pooled HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Polls `check` until it holds, or panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `gantry ARGS -f MANIFEST` against a running Gantry: (success, stdout, stderr).
pub fn gantry_cli(gantry: &Gantry, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(GANTRY)
        .args(args)
        .arg("-f")
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `Stripe-Signature` header for `body` signed at unix time `t` with `secret`.
pub fn stripe_signature(secret: &[u8], t: u64, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An HS256 token for `sub` that expires in 2096, signed with `secret`.
#[allow(dead_code)] // not every test binary signs tokens
pub fn hs256_token(secret: &str, sub: &str) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A manifest's `[jwt]` section trusting HS256 tokens signed with `secret`.
#[allow(dead_code)]
pub fn jwt_section(secret: &str) -> String {
    format!("[jwt]\n[[jwt.keys]]\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\n")
}
