//! What triggers a reload besides the admin API: the manifest file changing
//! on disk, and `SIGHUP`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// Editors save in several steps (truncate, write, rename); changes closer
/// together than this are applied once.
const SETTLE: Duration = Duration::from_millis(150);

/// What asked for a reload; logged with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    FileChange,
    Hangup,
    AdminApi,
    /// A new configuration version stored in the cluster's database.
    Cluster,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Hangup => "SIGHUP",
            Trigger::AdminApi => "admin API",
            Trigger::Cluster => "cluster configuration",
        }
    }
}

pub(crate) struct Triggers {
    files: Option<mpsc::UnboundedReceiver<()>>,
    /// Kept alive for as long as the file should be watched.
    _watcher: Option<notify::RecommendedWatcher>,
    hangup: Option<Signal>,
    /// When a file event arrived that has not been reported yet.
    pending_since: Option<tokio::time::Instant>,
}

impl Triggers {
    pub(crate) fn new(manifest: &Path, watch_file: bool) -> Triggers {
        let (files, watcher) = if watch_file {
            match watch(manifest) {
                Ok((rx, watcher)) => (Some(rx), Some(watcher)),
                Err(error) => {
                    tracing::warn!(target: "gantry::reload", %error, "cannot watch the manifest; reload with SIGHUP or POST /v1/reload");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|error| tracing::warn!(target: "gantry::reload", %error, "cannot listen for SIGHUP"))
            .ok();
        Triggers {
            files,
            _watcher: watcher,
            hangup,
            pending_since: None,
        }
    }

    /// Waits for the next trigger and names it. Safe to cancel: a file event
    /// already received is kept until it is reported.
    pub(crate) async fn next(&mut self) -> Option<Trigger> {
        loop {
            if let Some(since) = self.pending_since {
                tokio::time::sleep_until(since + SETTLE).await;
                if let Some(rx) = &mut self.files {
                    while rx.try_recv().is_ok() {}
                }
                self.pending_since = None;
                return Some(Trigger::FileChange);
            }
            let file_changed = async {
                match &mut self.files {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let hangup = async {
                match &mut self.hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = file_changed => self.pending_since = Some(tokio::time::Instant::now()),
                Some(()) = hangup => return Some(Trigger::Hangup),
            }
        }
    }
}

/// Watches the manifest's directory (not the file: a save by rename replaces
/// the file) and reports events that touch the manifest.
fn watch(
    manifest: &Path,
) -> notify::Result<(mpsc::UnboundedReceiver<()>, notify::RecommendedWatcher)> {
    let manifest: PathBuf =
        std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let dir = manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = manifest.file_name().map(|n| n.to_owned());
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok((rx, watcher))
}
