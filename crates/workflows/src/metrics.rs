//! The saga engine's Prometheus metrics.

use gantry_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    workflow: String,
    /// completed, compensated, failed, needs_attention or cancelled.
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    workflow: String,
    step: String,
    /// `do` or `compensate`.
    phase: &'static str,
    /// ok, retry or failed.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    workflow: String,
    /// running, waiting, compensating or needs_attention.
    state: String,
}

/// Cheap to clone; counting works whether or not they were registered.
#[derive(Debug, Clone, Default)]
pub struct WorkflowMetrics {
    started: Family<WorkflowLabels, Counter>,
    ended: Family<EndLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    /// Read from the journal at scrape time.
    open: Family<OpenLabels, Gauge>,
}

impl WorkflowMetrics {
    /// Adds the families to the process registry (`/metrics`).
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(|registry| {
            registry.register(
                "workflow_runs_started",
                "Workflow runs started",
                self.started.clone(),
            );
            registry.register(
                "workflow_runs_ended",
                "Workflow runs that stopped, by state (needs_attention: parked for an operator)",
                self.ended.clone(),
            );
            registry.register(
                "workflow_step_attempts",
                "Step and compensation attempts by outcome: ok, retry, failed",
                self.attempts.clone(),
            );
            registry.register(
                "workflow_runs_open",
                "Runs not finished, by state: running, waiting (for an event or a timer), compensating, needs_attention (parked for an operator)",
                self.open.clone(),
            );
        });
    }

    pub(crate) fn set_open(&self, counts: &[(String, String, u64)]) {
        self.open.clear();
        for (workflow, state, count) in counts {
            self.open
                .get_or_create(&OpenLabels {
                    workflow: workflow.clone(),
                    state: state.clone(),
                })
                .set(*count as i64);
        }
    }

    pub(crate) fn started(&self, workflow: &str) {
        self.started
            .get_or_create(&WorkflowLabels {
                workflow: workflow.to_string(),
            })
            .inc();
    }

    pub(crate) fn ended(&self, workflow: &str, state: &'static str) {
        self.ended
            .get_or_create(&EndLabels {
                workflow: workflow.to_string(),
                state,
            })
            .inc();
    }

    pub(crate) fn attempt(&self, workflow: &str, step: &str, phase: &str, outcome: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                workflow: workflow.to_string(),
                step: step.to_string(),
                phase: if phase == "undo" { "compensate" } else { "do" },
                outcome,
            })
            .inc();
    }
}
