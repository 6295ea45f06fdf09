//! The `gantry` command line: argument parsing and output only. The work is
//! done by `gantry-app` (running a system) and `gantry-manifest` (checking one).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod admin_client;
mod cluster;
mod events;
mod functions;
mod slo;
mod traces;
mod workflows;
use gantry_telemetry::LogFormat;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// mimalloc: the gateway allocates small, short-lived buffers and header values
/// on every request; measured against glibc malloc in `bench/RESULTS.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gantry: an API gateway, service runner and platform for microservices in one binary.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the system a manifest describes: start its services, serve the
    /// gateway and the admin API, and apply manifest changes live.
    Up {
        /// The manifest to run.
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
        /// How to write logs (also `GANTRY_LOG_FORMAT`). Filter with `GANTRY_LOG`, e.g. `GANTRY_LOG=debug`.
        #[arg(long, value_enum, env = "GANTRY_LOG_FORMAT", default_value = "pretty")]
        log_format: Format,
        /// Threads that serve requests (also `GANTRY_WORKERS`); defaults to one
        /// per CPU core. With 1, Gantry runs on a single-threaded scheduler, like
        /// one nginx worker.
        #[arg(long, env = "GANTRY_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        /// This node's name in a cluster (also `GANTRY_NODE`; default: the host name).
        #[arg(long, env = "GANTRY_NODE")]
        node: Option<String>,
        /// The gateway's address, over `listen` in [platform].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The admin API's address, over `admin` in [platform].
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The platform API's address, over `api` in [platform].
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// The data directory, over `data_dir` in [platform].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Store a manifest as the cluster's configuration (validated first);
    /// every node takes it within a second. Needs [cluster] in the manifest.
    Apply {
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
        /// How long to wait for every node to run it.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// The cluster's configuration versions: history and rollback.
    Config {
        #[command(subcommand)]
        command: cluster::ConfigCommand,
    },
    /// The cluster's nodes: state, addresses, configuration version, heartbeat.
    Nodes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
    },
    /// Check a manifest and report every mistake with file:line:col. Exits 0
    /// when it is valid, 1 otherwise.
    Validate {
        /// The manifest to check.
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
    },
    /// Print the JSON Schema of the manifest (for editors and CI checks).
    Schema,
    /// Show or change a route's traffic split on a running Gantry, e.g.
    /// `gantry traffic catalog --set catalog=25`. The change holds until
    /// `--reset` or a reload that changes the route's `to`.
    Traffic {
        /// The route's name (its `name`, or its path when it has none).
        route: String,
        /// `SERVICE=WEIGHT`; repeat for several services. Services not named keep their weight.
        #[arg(long = "set", value_name = "SERVICE=WEIGHT")]
        set: Vec<String>,
        /// Go back to the weights in the manifest.
        #[arg(long, conflicts_with = "set")]
        reset: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Mint a test JWT signed with an HS key of the manifest's [jwt] section
    /// (for development and the examples; real tokens come from your identity provider).
    Token {
        /// The `sub` claim.
        #[arg(long, default_value = "dev-user")]
        sub: String,
        /// Scopes, space-separated in the `scope` claim; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// How long the token is valid, e.g. `1h`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The key to sign with (its `kid`); defaults to the first HS key.
        #[arg(long)]
        kid: Option<String>,
        /// The manifest with the [jwt] section.
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
    },
    /// API keys for routes with `auth = "api_key"` (on a running Gantry).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Certificates: `gantry certs dev` makes a local CA and a certificate
    /// for localhost, to serve https in development.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Shadow traffic: compare a route's service with the one it mirrors to.
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// The event bus: topics, subscriptions, tail, replay and dead letters.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Sagas: start, list, show, retry, resume and cancel workflow runs.
    Workflows {
        #[command(subcommand)]
        command: workflows::WorkflowsCommand,
    },
    /// Serverless functions: list, invoke, logs.
    Functions {
        #[command(subcommand)]
        command: functions::FunctionsCommand,
    },
    /// Service-level objectives: status, and Prometheus rules.
    Slo {
        #[command(subcommand)]
        command: slo::SloCommand,
    },
    /// Traces kept by Gantry: list them, show one as a waterfall.
    Traces {
        #[command(subcommand)]
        command: traces::TracesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for a consumer; the key is printed once and never stored.
    Create {
        #[arg(long)]
        consumer: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List keys (ids, consumers, revoked or not), never their secrets.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Revoke a key by id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create (or reuse) a local development CA in DIR and issue a server
    /// certificate for the given names, then print how to use and trust it.
    Dev {
        /// Where the files go: ca.pem, ca-key.pem, cert.pem, key.pem.
        #[arg(long, default_value = ".gantry/certs")]
        out: PathBuf,
        /// DNS names and IP addresses the certificate is for; repeat for several.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ShadowCommand {
    /// How the route's mirrored responses compared: match rate and the latest
    /// differing pairs.
    Report {
        /// The route's name.
        route: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// How the CLI finds a running Gantry's admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminTarget {
    /// The admin API address; defaults to `admin` in the manifest.
    #[arg(long, env = "GANTRY_ADMIN")]
    pub admin: Option<std::net::SocketAddr>,
    /// The manifest to read the admin address from.
    #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Schema => {
            let schema = gantry_manifest::json_schema();
            let text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
            #[allow(clippy::print_stdout)]
            {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Command::Traffic {
            route,
            set,
            reset,
            target,
        } => traffic(&route, &set, reset, &target),
        Command::Shadow {
            command:
                ShadowCommand::Report {
                    route,
                    json,
                    target,
                },
        } => shadow_report(&route, json, &target),
        Command::Keys { command } => keys(command),
        Command::Certs {
            command: CertsCommand::Dev { out, names },
        } => dev_certs(&out, &names),
        Command::Events { command } => events::run(command),
        Command::Workflows { command } => workflows::run(command),
        Command::Functions { command } => functions::run(command),
        Command::Slo { command } => slo::run(command),
        Command::Traces { command } => traces::run(command),
        Command::Token {
            sub,
            scopes,
            ttl,
            kid,
            file,
        } => token(&sub, &scopes, &ttl, kid.as_deref(), &file),
        Command::Up {
            file,
            log_format,
            workers,
            node,
            listen,
            admin,
            api,
            data_dir,
        } => up(
            &file,
            log_format,
            workers,
            gantry_app::NodeOptions {
                node,
                listen,
                admin,
                api,
                data_dir,
            },
        ),
        Command::Apply { file, wait } => cluster::apply(&file, wait),
        Command::Config { command } => cluster::config(command),
        Command::Nodes { json, file } => cluster::nodes(&file, json),
    }
}

/// Calls the admin API of the Gantry `target` points at and returns the JSON
/// answer; on any failure prints why and gives the exit code.
/// A JSON value as a table cell: strings bare, null as `-`.
pub(crate) fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints a successful answer through `render`, or passes on the exit code.
pub(crate) fn print_answer(
    answer: Result<serde_json::Value, ExitCode>,
    render: impl FnOnce(&serde_json::Value) -> String,
) -> ExitCode {
    match answer {
        Ok(value) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", render(&value));
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub(crate) fn call_admin(
    target: &AdminTarget,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<serde_json::Value, ExitCode> {
    let admin = admin_client::admin_address(target.admin, &target.file).map_err(|error| {
        eprintln!("{error}");
        ExitCode::FAILURE
    })?;
    let (status, text) = admin_client::call(admin, method, path, body).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if status >= 300 {
        eprintln!("error: {}", value["detail"].as_str().unwrap_or(&text));
        return Err(ExitCode::FAILURE);
    }
    Ok(value)
}

fn traffic(route: &str, set: &[String], reset: bool, target: &AdminTarget) -> ExitCode {
    let mut weights = serde_json::Map::new();
    for pair in set {
        let parsed = pair.split_once('=').and_then(|(service, weight)| {
            Some((service.trim(), weight.trim().parse::<u32>().ok()?))
        });
        match parsed {
            Some((service, weight)) => {
                weights.insert(service.to_string(), weight.into());
            }
            None => {
                eprintln!(
                    "error: `--set {pair}` must look like SERVICE=WEIGHT, e.g. --set catalog=25"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let path = format!("/v1/routes/{}/weights", percent_encode_segment(route));
    let answer = if reset {
        call_admin(target, "DELETE", &path, None)
    } else if weights.is_empty() {
        call_admin(target, "GET", "/v1/routes", None)
    } else {
        call_admin(
            target,
            "PUT",
            &path,
            Some(serde_json::Value::Object(weights).to_string()),
        )
    };
    let value = match answer {
        Ok(value) => value,
        Err(code) => return code,
    };
    let weights = if value.get("routes").is_some() {
        value["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == route || r["path"] == route)
            .map(|r| r["weights"].clone())
    } else {
        Some(value["weights"].clone())
    };
    let Some(weights) = weights else {
        eprintln!("error: no route is named `{route}`");
        return ExitCode::FAILURE;
    };
    let total: u64 = weights
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["weight"].as_u64())
        .sum();
    #[allow(clippy::print_stdout)]
    for w in weights.as_array().into_iter().flatten() {
        let weight = w["weight"].as_u64().unwrap_or(0);
        let share = if total == 0 {
            0.0
        } else {
            weight as f64 * 100.0 / total as f64
        };
        println!(
            "{:<20} weight {:>5}  ({share:.1}%)",
            w["service"].as_str().unwrap_or("?"),
            weight
        );
    }
    ExitCode::SUCCESS
}

/// Route names may be paths (`/api/*`): escape what a URL path segment cannot hold.
pub(crate) fn percent_encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn keys(command: KeysCommand) -> ExitCode {
    let (target, method, path, body) = match &command {
        KeysCommand::Create { consumer, target } => (
            target,
            "POST",
            "/v1/keys".to_string(),
            Some(serde_json::json!({ "consumer": consumer }).to_string()),
        ),
        KeysCommand::List { target } => (target, "GET", "/v1/keys".to_string(), None),
        KeysCommand::Revoke { id, target } => (
            target,
            "DELETE",
            format!("/v1/keys/{}", percent_encode_segment(id)),
            None,
        ),
    };
    let value = match call_admin(target, method, &path, body) {
        Ok(value) => value,
        Err(code) => return code,
    };
    #[allow(clippy::print_stdout)]
    match command {
        KeysCommand::Create { .. } => {
            println!("{}", value["key"].as_str().unwrap_or_default());
            eprintln!(
                "key {} for {}: store it now, it is not shown again",
                value["id"].as_str().unwrap_or_default(),
                value["consumer"].as_str().unwrap_or_default()
            );
        }
        KeysCommand::List { .. } => {
            for key in value["keys"].as_array().into_iter().flatten() {
                let state = if key["revoked"] == true {
                    "revoked"
                } else if key["rotate"] == true {
                    "active, rotate: made by an older Gantry with a weak generator; create a new key and revoke this one"
                } else {
                    "active"
                };
                println!(
                    "{}  {:<24} {state}",
                    key["id"].as_str().unwrap_or(""),
                    key["consumer"].as_str().unwrap_or("")
                );
            }
        }
        KeysCommand::Revoke { id, .. } => println!("revoked {id}"),
    }
    ExitCode::SUCCESS
}

fn dev_certs(out: &Path, names: &[String]) -> ExitCode {
    match gantry_tls::dev_certs(out, names) {
        Ok(made) => {
            // Absolute in the snippet: a manifest resolves relative paths
            // against its own directory, not the one this ran in.
            let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let (cert, key) = (absolute(&made.cert), absolute(&made.key));
            let ca = made.ca_cert.display();
            if made.created_ca {
                eprintln!("created a development CA: {ca} (its key beside it; keep it private)");
            } else {
                eprintln!("reused the development CA: {ca}");
            }
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "certificate for {}: {}\nprivate key: {}\n\nServe https with, in gantry.toml:\n\n  [platform.tls]\n  cert = \"{}\"\n  key = \"{}\"\n\nTrust the CA:\n  curl --cacert {ca} https://localhost:8080/\n  Debian/Ubuntu: sudo cp {ca} /usr/local/share/ca-certificates/gantry-dev.crt && sudo update-ca-certificates\n  macOS: sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}",
                    names.join(", "),
                    made.cert.display(),
                    made.key.display(),
                    cert.display(),
                    key.display(),
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn token(sub: &str, scopes: &[String], ttl: &str, kid: Option<&str>, file: &Path) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let manifest = match gantry_manifest::load(file) {
        Ok(manifest) => manifest,
        Err(error) => return fail(error.to_string()),
    };
    let Some(jwt) = manifest.jwt else {
        return fail(format!("{} has no [jwt] section", file.display()));
    };
    let key = jwt
        .keys
        .iter()
        .filter(|k| k.algorithm.starts_with("HS"))
        .find(|k| kid.is_none() || k.kid.as_deref() == kid);
    let Some(key) = key else {
        return fail("no HS key to sign with in [jwt] (RS/ES/EdDSA keys are public keys: mint those tokens with the private key)".into());
    };
    let secret = match (&key.secret_env, &key.secret) {
        (Some(var), _) => match std::env::var(var) {
            Ok(secret) => secret,
            Err(_) => return fail(format!("the environment variable {var} is not set")),
        },
        (None, Some(secret)) => secret.clone(),
        (None, None) => return fail("the key has no secret".into()),
    };
    let ttl = match humantime::parse_duration(ttl) {
        Ok(ttl) => ttl,
        Err(_) => return fail(format!("`{ttl}` is not a duration (e.g. 1h, 30m)")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl.as_secs() });
    if !scopes.is_empty() {
        claims["scope"] = scopes.join(" ").into();
    }
    if let Some(issuer) = &jwt.issuer {
        claims["iss"] = issuer.clone().into();
    }
    if let Some(audience) = &jwt.audience {
        claims["aud"] = audience.clone().into();
    }
    let Ok(algorithm) = key.algorithm.parse::<jsonwebtoken::Algorithm>() else {
        return fail(format!("unknown algorithm {}", key.algorithm));
    };
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = key.kid.clone();
    match jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    ) {
        Ok(token) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => fail(error.to_string()),
    }
}

fn shadow_report(route: &str, json: bool, target: &AdminTarget) -> ExitCode {
    let path = format!("/v1/routes/{}/shadow", percent_encode_segment(route));
    let report = match call_admin(target, "GET", &path, None) {
        Ok(report) => report,
        Err(code) => return code,
    };
    #[allow(clippy::print_stdout)]
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let rate = report["match_rate"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
        println!(
            "route {route}: mirrored to {} ({}% of requests)",
            report["to"].as_str().unwrap_or("?"),
            report["percent"]
        );
        println!(
            "compared {}  matched {}  differed {}  shadow errors {}  skipped {}  match rate {rate}",
            report["compared"],
            report["matched"],
            report["mismatched"],
            report["errors"],
            report["skipped"]
        );
        for difference in report["recent_differences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "\n{} {}: {}\n  primary {}: {}\n  shadow  {}: {}",
                difference["method"].as_str().unwrap_or(""),
                difference["path"].as_str().unwrap_or(""),
                difference["reason"].as_str().unwrap_or(""),
                difference["primary"]["status"],
                difference["primary"]["body"].as_str().unwrap_or(""),
                difference["shadow"]["status"],
                difference["shadow"]["body"].as_str().unwrap_or(""),
            );
        }
    }
    ExitCode::SUCCESS
}

fn validate(file: &Path) -> ExitCode {
    match gantry_manifest::load(file) {
        Ok(manifest) => {
            #[allow(clippy::print_stdout)]
            {
                let mut summary = format!(
                    "{} services, {} routes",
                    manifest.services.len(),
                    manifest.routes.len()
                );
                if !manifest.topics.is_empty() {
                    summary += &format!(
                        ", {} topics, {} subscriptions",
                        manifest.topics.len(),
                        manifest.subscriptions.len()
                    );
                }
                if !manifest.workflows.is_empty() {
                    summary += &format!(", {} workflows", manifest.workflows.len());
                }
                if !manifest.functions.is_empty() {
                    summary += &format!(
                        ", {} functions, {} schedules",
                        manifest.functions.len(),
                        manifest.schedules.len()
                    );
                }
                println!("{} is valid: {summary}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn up(
    file: &Path,
    format: Format,
    workers: Option<u16>,
    node: gantry_app::NodeOptions,
) -> ExitCode {
    let _logs = gantry_telemetry::init_logging(match format {
        Format::Pretty => LogFormat::Pretty,
        Format::Json => LogFormat::Json,
    });
    let runtime = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signals(shutdown.clone()));
        match gantry_app::run_node(file, node, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The first SIGINT or SIGTERM starts a graceful shutdown; a second SIGINT
/// (an impatient Ctrl-C) exits at once.
async fn stop_on_signals(shutdown: CancellationToken) {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("warning: cannot listen for SIGINT/SIGTERM; stop Gantry with SIGKILL");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    shutdown.cancel();
    interrupt.recv().await;
    eprintln!("second interrupt: exiting without draining");
    std::process::exit(130);
}
