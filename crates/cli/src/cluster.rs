//! `gantry apply`, `gantry config ...` and `gantry nodes`: the cluster's
//! configuration and members, read and changed in its PostgreSQL directly
//! (through the manifest's `[cluster]`), so they work whichever nodes are up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use gantry_cluster::{Applied, Cluster, NodeInfo, PgOptions};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// The configuration versions applied to the cluster, newest first.
    History {
        /// How many versions to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// The manifest whose [cluster] says where the database is.
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
    },
    /// Apply an earlier version again (stored as a new version).
    Rollback {
        version: i64,
        /// How long to wait for every node to run it.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: PathBuf,
    },
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))
}

/// The manifest, checked, and its cluster connection.
async fn connect(file: &Path) -> Result<(String, Cluster), ExitCode> {
    let manifest = gantry_manifest::load(file).map_err(|error| {
        eprintln!("{error}");
        ExitCode::FAILURE
    })?;
    let Some(config) = manifest.cluster else {
        return Err(fail(format!(
            "{} has no [cluster] section: this command works on a cluster's configuration; \
             a Gantry without [cluster] reloads its manifest when the file changes",
            file.display()
        )));
    };
    let url = config.postgres.resolve().map_err(fail)?;
    let options = PgOptions {
        url,
        schema: config.schema,
        pool_size: 2,
    };
    let cluster = Cluster::connect(&options, "cli")
        .await
        .map_err(|e| fail(format!("cannot reach the cluster's PostgreSQL: {e}")))?;
    let text = std::fs::read_to_string(file).unwrap_or_default();
    Ok((text, cluster))
}

/// Who applied: `user@host`.
fn applied_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// `gantry apply -f FILE`: validate the manifest, store it as the cluster's
/// newest configuration, and wait until every node runs it.
pub(crate) fn apply(file: &Path, wait: Duration) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let (text, cluster) = match connect(file).await {
            Ok(connected) => connected,
            Err(code) => return code,
        };
        match cluster.config().apply(&text, &applied_by(), "").await {
            Ok(Applied::New(version)) => {
                say(&format!("stored as configuration v{version}\n"));
                converge(&cluster, version, wait).await
            }
            Ok(Applied::Unchanged(version)) => {
                say(&format!(
                    "unchanged: the cluster's newest configuration (v{version}) is this manifest\n"
                ));
                converge(&cluster, version, wait).await
            }
            Err(error) => fail(format!("cannot store the configuration: {error}")),
        }
    })
}

pub(crate) fn config(command: ConfigCommand) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match command {
            ConfigCommand::History { limit, file } => {
                let (_, cluster) = match connect(&file).await {
                    Ok(connected) => connected,
                    Err(code) => return code,
                };
                match cluster.config().history(limit.max(1)).await {
                    Ok(versions) if versions.is_empty() => {
                        say("no configuration yet: `gantry up` or `gantry apply` stores the first\n");
                        ExitCode::SUCCESS
                    }
                    Ok(versions) => {
                        let mut out = format!(
                            "{:<8} {:<24} {:<24} {:<14} {}\n",
                            "VERSION", "APPLIED", "BY", "SHA256", "NOTE"
                        );
                        for v in versions {
                            out.push_str(&format!(
                                "{:<8} {:<24} {:<24} {:<14} {}\n",
                                format!("v{}", v.version),
                                when(v.applied_at_ms),
                                v.applied_by,
                                &v.sha256[..12],
                                v.note
                            ));
                        }
                        say(&out);
                        ExitCode::SUCCESS
                    }
                    Err(error) => fail(error),
                }
            }
            ConfigCommand::Rollback {
                version,
                wait,
                file,
            } => {
                let (_, cluster) = match connect(&file).await {
                    Ok(connected) => connected,
                    Err(code) => return code,
                };
                match cluster.config().rollback(version, &applied_by()).await {
                    Ok(Some(applied)) => {
                        say(&format!(
                            "v{version} stored again as configuration v{}\n",
                            applied.version()
                        ));
                        converge(&cluster, applied.version(), wait).await
                    }
                    Ok(None) => fail(format!(
                        "there is no configuration v{version}; `gantry config history` lists them"
                    )),
                    Err(error) => fail(error),
                }
            }
        }
    })
}

/// `gantry nodes`: every node, its state and the configuration it runs.
pub(crate) fn nodes(file: &Path, json: bool) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let (_, cluster) = match connect(file).await {
            Ok(connected) => connected,
            Err(code) => return code,
        };
        match cluster.membership().list().await {
            Ok(nodes) if json => {
                say(&format!(
                    "{:#}\n",
                    serde_json::json!({ "nodes": serde_json::to_value(&nodes).unwrap_or_default() })
                ));
                ExitCode::SUCCESS
            }
            Ok(nodes) => {
                say(&node_table(&nodes));
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        }
    })
}

fn node_table(nodes: &[NodeInfo]) -> String {
    if nodes.is_empty() {
        return "no nodes have joined yet\n".into();
    }
    let mut out = format!(
        "{:<16} {:<8} {:<22} {:<22} {:<8} {:<10} {}\n",
        "NODE", "STATE", "GATEWAY", "ADMIN", "CONFIG", "HEARTBEAT", "CONFIG ERROR"
    );
    for node in nodes {
        out.push_str(&format!(
            "{:<16} {:<8} {:<22} {:<22} {:<8} {:<10} {}\n",
            node.name,
            node.state,
            node.gateway,
            node.admin,
            node.config_version
                .map_or("-".to_string(), |v| format!("v{v}")),
            format!("{:.1}s ago", node.silent_ms as f64 / 1000.0),
            node.config_error
                .as_deref()
                .map(|e| e.lines().next().unwrap_or_default())
                .unwrap_or("")
        ));
    }
    out
}

/// Waits until every node that is up runs `version` or has refused it, then
/// prints the nodes. Fails when a node refused it or did not answer in time.
async fn converge(cluster: &Cluster, version: i64, wait: Duration) -> ExitCode {
    let deadline = Instant::now() + wait;
    loop {
        let nodes = match cluster.membership().list().await {
            Ok(nodes) => nodes,
            Err(error) => return fail(error),
        };
        let up: Vec<&NodeInfo> = nodes.iter().filter(|n| n.state == "up").collect();
        // A refusal of an older version says nothing about this one.
        let refused: Vec<&&NodeInfo> = up
            .iter()
            .filter(|n| n.config_refused >= Some(version) && n.config_version < Some(version))
            .collect();
        let pending = up
            .iter()
            .filter(|n| n.config_version < Some(version) && n.config_refused < Some(version))
            .count();
        if pending == 0 || Instant::now() >= deadline {
            say(&node_table(&nodes));
            if !refused.is_empty() {
                for node in refused {
                    eprintln!(
                        "error: node {} refused v{version} and keeps its previous configuration:\n{}",
                        node.name,
                        node.config_error.as_deref().unwrap_or_default()
                    );
                }
                return ExitCode::FAILURE;
            }
            if pending > 0 {
                return fail(format!(
                    "{pending} node(s) did not report v{version} within {wait:?}; `gantry nodes` shows them"
                ));
            }
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn when(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        print!("{text}");
    }
}
