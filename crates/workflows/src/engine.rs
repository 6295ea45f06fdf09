//! Running one workflow: steps in order, each attempt journaled before and
//! after it runs; on a failure, the completed steps' compensations in
//! reverse order; a compensation that keeps failing parks the run as
//! `needs_attention`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use gantry_events::{CloudEvent, PublishError};
use gantry_problem::Explain;
use gantry_services::outbound::{Call, CallError};
use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::definition::{render, render_string, ActionDef, Context, Definition, StepDef};
use crate::store::{now_ms, JournalError, Run, State, StepRecord};
use crate::Inner;

/// Why an attempt did not succeed.
enum Failure {
    /// Worth another attempt (a 5xx, a timeout, a refused connection).
    Retryable(String),
    /// Not worth retrying (a declined payment, a broken template).
    Fatal(String),
}

/// The header that makes a step's call safe to repeat.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Why a run could not be driven on. Gantry's own trouble in every case;
/// the driver tries again a moment later.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriveError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("no workflow run `{0}` in the journal")]
    NoRun(String),
    #[error("definition {workflow} v{version} is missing from the journal")]
    NoDefinition { workflow: String, version: u32 },
}

/// A run this node created a moment ago, handed to its driver so that the
/// driver need not read back what was just written.
#[derive(Debug)]
pub(crate) struct Fresh {
    pub(crate) run: Run,
    /// Step 0's first attempt was journaled with the run.
    pub(crate) first_started: bool,
}

/// The driver's copy of a run's step records: read from the journal when
/// the driver starts, then kept in step with the driver's own writes (while
/// it drives a run, no one else writes its steps; in cluster mode the lease
/// sees to that). So a step needs no read of the journal.
struct Steps(Vec<StepRecord>);

impl Steps {
    fn get(&self, idx: usize, phase: &str) -> Option<&StepRecord> {
        self.0.iter().find(|r| r.idx == idx && r.phase == phase)
    }

    fn is(&self, idx: usize, phase: &str, status: &str) -> bool {
        self.get(idx, phase).is_some_and(|r| r.status == status)
    }

    fn entry(&mut self, idx: usize, phase: &str, name: &str) -> &mut StepRecord {
        let at = match self.0.iter().position(|r| r.idx == idx && r.phase == phase) {
            Some(at) => at,
            None => {
                self.0.push(StepRecord {
                    idx,
                    phase: phase.to_string(),
                    name: name.to_string(),
                    status: "running".into(),
                    attempts: 0,
                    output: None,
                    error: None,
                    started_ms: None,
                    finished_ms: None,
                    not_before_ms: 0,
                });
                self.0.len() - 1
            }
        };
        &mut self.0[at]
    }

    /// As [`crate::Store::attempt_started`] writes it.
    fn started(&mut self, idx: usize, phase: &str, name: &str, attempts: u32, not_before: i64) {
        let record = self.entry(idx, phase, name);
        record.status = "running".into();
        record.attempts = attempts;
        record.started_ms.get_or_insert_with(now_ms);
        record.not_before_ms = not_before;
        record.finished_ms = None;
    }

    /// As [`crate::Store::attempt_failed`] writes it.
    fn retrying(&mut self, idx: usize, phase: &str, error: &str, not_before: i64) {
        if let Some(record) = self.0.iter_mut().find(|r| r.idx == idx && r.phase == phase) {
            record.status = "retrying".into();
            record.error = Some(error.to_string());
            record.not_before_ms = not_before;
        }
    }

    /// As [`crate::Store::finish`] and [`crate::Store::complete_step`] write it.
    fn finished(&mut self, idx: usize, phase: &str, outcome: &Result<Value, String>) {
        if let Some(record) = self.0.iter_mut().find(|r| r.idx == idx && r.phase == phase) {
            match outcome {
                Ok(output) => {
                    record.status = "done".into();
                    record.output = Some(output.clone());
                }
                Err(error) => {
                    record.status = "failed".into();
                    record.error = Some(error.clone());
                }
            }
            record.finished_ms = Some(now_ms());
        }
    }

    /// Every completed forward step's output, by step name.
    fn outputs(&self, definition: &Definition) -> BTreeMap<String, Value> {
        self.0
            .iter()
            .filter(|r| r.phase == "do" && r.status == "done")
            .filter_map(|r| {
                definition
                    .steps
                    .get(r.idx)
                    .map(|s| (s.name.clone(), r.output.clone().unwrap_or(Value::Null)))
            })
            .collect()
    }
}

/// Whether a step starts with a call or a publish (not a timer or a wait),
/// so its first attempt can be journaled with the write before it.
pub(crate) fn starts_at_once(step: &StepDef) -> bool {
    !matches!(
        step.action,
        ActionDef::Wait { .. } | ActionDef::Sleep { .. }
    )
}

/// Drives one run until it ends, parks, or `stop` fires (shutdown or a
/// cancel request; the journal lets a later run pick up where this one was).
///
/// The journal is written as little as it can be while every transition is
/// still durable before the driver moves on: a step's outcome, the run's
/// next state and the next step's first attempt are one write, and on
/// PostgreSQL the write that ends a run also gives its lease up.
pub(crate) async fn drive(
    inner: &Inner,
    id: &str,
    stop: &CancellationToken,
    fresh: Option<Fresh>,
) -> Result<(), DriveError> {
    let (mut instance, first_started) = match fresh {
        Some(fresh) => (fresh.run, fresh.first_started),
        None => match inner.store.get(id).await? {
            Some(instance) => (instance, false),
            None => return Err(DriveError::NoRun(id.to_string())),
        },
    };
    let definition = inner
        .store
        .definition(&instance.workflow, instance.version)
        .await?
        .ok_or_else(|| DriveError::NoDefinition {
            workflow: instance.workflow.clone(),
            version: instance.version,
        })?;
    let mut records = Steps(Vec::new());
    // The forward step whose first attempt this driver journaled, not yet run.
    let mut started = None;
    if first_started {
        if let Some(step) = definition.steps.first() {
            records.started(0, "do", &step.name, 1, 0);
            started = Some(0);
        }
    } else {
        records.0 = inner.store.steps(id).await?;
    }
    // Whether an operator asked to cancel, as the last write found it.
    let mut known_cancel = None;
    loop {
        // An operator may have asked to cancel since the last step.
        instance.cancel_requested = match known_cancel.take() {
            Some(cancel) => cancel,
            None => inner.store.cancel_requested(id).await?,
        };
        if instance.cancel_requested && matches!(instance.state, State::Running | State::Waiting) {
            inner
                .store
                .set_state(
                    id,
                    State::Compensating,
                    Some("cancelled by an operator".into()),
                )
                .await?;
            instance.state = State::Compensating;
        }
        match instance.state {
            State::Running | State::Waiting => {
                let Some(step) = definition.steps.get(instance.position) else {
                    inner.store.set_state(id, State::Completed, None).await?;
                    completed(inner, &instance);
                    return Ok(());
                };
                let idx = instance.position;
                let state = if starts_at_once(step) {
                    State::Running
                } else {
                    State::Waiting
                };
                if state != instance.state {
                    inner.store.set_state(id, state, None).await?;
                    instance.state = state;
                }
                let prestarted = started.take() == Some(idx);
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    outcome = run_step(inner, &instance, &definition, &mut records, idx, "do", &step.action, step, prestarted) => outcome?,
                };
                match outcome {
                    Ok(output) => {
                        // The next step's state, written with this step's
                        // outcome, and its first attempt when it starts at once.
                        let following = definition.steps.get(idx + 1);
                        let next = match following {
                            None => State::Completed,
                            Some(step) if starts_at_once(step) => State::Running,
                            Some(_) => State::Waiting,
                        };
                        let start_next = following
                            .filter(|step| {
                                starts_at_once(step) && records.get(idx + 1, "do").is_none()
                            })
                            .map(|step| step.name.as_str());
                        records.finished(idx, "do", &Ok(output.clone()));
                        let cancel = inner
                            .store
                            .complete_step(id, idx, output, next, start_next)
                            .await?;
                        instance.position += 1;
                        known_cancel = Some(cancel);
                        if !cancel {
                            instance.state = next;
                            if let Some(name) = start_next {
                                records.started(idx + 1, "do", name, 1, 0);
                                started = Some(idx + 1);
                            }
                            if next == State::Completed {
                                completed(inner, &instance);
                                return Ok(());
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(target: "gantry::workflows", workflow = %instance.workflow, id, step = %step.name, %error, "step failed; compensating");
                        records.finished(idx, "do", &Err(error.clone()));
                        let message = format!("step `{}` failed: {error}", step.name);
                        inner
                            .store
                            .fail_step(id, idx, "do", error, State::Compensating, message)
                            .await?;
                        instance.state = State::Compensating;
                    }
                }
            }
            State::Compensating => {
                let mut compensated_any = records
                    .0
                    .iter()
                    .any(|r| r.phase == "undo" && r.status == "done");
                for idx in (0..definition.steps.len()).rev() {
                    let step = &definition.steps[idx];
                    let Some(compensation) = &step.compensate else {
                        continue;
                    };
                    if !records.is(idx, "do", "done") || records.is(idx, "undo", "done") {
                        continue;
                    }
                    let outcome = tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        outcome = run_step(inner, &instance, &definition, &mut records, idx, "undo", compensation, step, false) => outcome?,
                    };
                    records.finished(idx, "undo", &outcome);
                    match outcome {
                        Ok(output) => {
                            inner.store.finish(id, idx, "undo", Ok(output)).await?;
                            compensated_any = true;
                        }
                        Err(error) => {
                            let message = format!(
                                "the compensation of step `{}` keeps failing: {error}",
                                step.name
                            );
                            tracing::error!(target: "gantry::workflows", workflow = %instance.workflow, id, step = %step.name, %error, "compensation failed; the workflow needs attention");
                            inner
                                .store
                                .fail_step(id, idx, "undo", error, State::NeedsAttention, message)
                                .await?;
                            return Ok(());
                        }
                    }
                }
                let end = if instance.cancel_requested {
                    State::Cancelled
                } else if compensated_any {
                    State::Compensated
                } else {
                    State::Failed
                };
                inner.store.set_state(id, end, None).await?;
                inner.metrics.ended(&instance.workflow, end.as_str());
                tracing::info!(target: "gantry::workflows", workflow = %instance.workflow, id, state = end.as_str(), "workflow ended");
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
}

fn completed(inner: &Inner, instance: &Run) {
    inner
        .metrics
        .ended(&instance.workflow, State::Completed.as_str());
    tracing::info!(target: "gantry::workflows", workflow = %instance.workflow, id = %instance.id, "workflow completed");
}

/// Runs one step (or compensation) with its retries. The outer `Err` is the
/// journal failing; the inner one is the step failing for good. With
/// `prestarted`, the first attempt was journaled with the write before.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    inner: &Inner,
    instance: &Run,
    definition: &Definition,
    records: &mut Steps,
    idx: usize,
    phase: &str,
    action: &ActionDef,
    step: &StepDef,
    prestarted: bool,
) -> Result<Result<Value, String>, JournalError> {
    let id = &instance.id;
    let record = records.get(idx, phase);
    // An outcome already journaled is the outcome (a crash came after it).
    if let Some(r) = record {
        match r.status.as_str() {
            "done" => return Ok(Ok(r.output.clone().unwrap_or(Value::Null))),
            "failed" => return Ok(Err(r.error.clone().unwrap_or_default())),
            _ => {}
        }
    }
    let mut attempts = if prestarted {
        0
    } else {
        record.map_or(0, |r| r.attempts)
    };
    let mut not_before = record.map_or(0, |r| r.not_before_ms);
    let outputs = records.outputs(definition);
    let ctx = Context {
        id,
        input: &instance.input,
        outputs: &outputs,
    };

    // Timers and waits keep their deadline across restarts.
    if let ActionDef::Sleep { ms } = action {
        if attempts == 0 {
            not_before = now_ms() + *ms as i64;
            inner
                .store
                .attempt_started(id, idx, phase, &step.name, 1, not_before)
                .await?;
            records.started(idx, phase, &step.name, 1, not_before);
        }
        sleep_until(not_before).await;
        return Ok(Ok(json!({ "slept_ms": ms })));
    }
    if let ActionDef::Wait {
        topic,
        event_type,
        matches,
    } = action
    {
        if attempts == 0 {
            not_before = now_ms() + step.timeout_ms as i64;
            inner
                .store
                .attempt_started(id, idx, phase, &step.name, 1, not_before)
                .await?;
            records.started(idx, phase, &step.name, 1, not_before);
        }
        let from = instance.wait_from.get(topic).copied().unwrap_or(1);
        return Ok(wait_for(
            inner,
            &ctx,
            topic,
            event_type.as_deref(),
            matches,
            from,
            not_before,
        )
        .await);
    }

    loop {
        sleep_until(not_before).await;
        attempts += 1;
        if !(prestarted && attempts == 1) {
            inner
                .store
                .attempt_started(id, idx, phase, &step.name, attempts, 0)
                .await?;
            records.started(idx, phase, &step.name, attempts, 0);
        }
        let outcome = match action {
            ActionDef::Call { .. } => call(inner, instance, &ctx, idx, phase, action, step).await,
            ActionDef::Publish { .. } => publish(inner, instance, &ctx, idx, phase, action).await,
            ActionDef::Wait { .. } | ActionDef::Sleep { .. } => unreachable!("handled above"),
        };
        let counted = match &outcome {
            Ok(_) => "ok",
            Err(Failure::Retryable(_)) if attempts < step.max_attempts => "retry",
            Err(_) => "failed",
        };
        inner
            .metrics
            .attempt(&instance.workflow, &step.name, phase, counted);
        match outcome {
            Ok(output) => return Ok(Ok(output)),
            Err(Failure::Fatal(error)) => return Ok(Err(error)),
            Err(Failure::Retryable(error)) if attempts >= step.max_attempts => {
                return Ok(Err(format!("{error} (after {attempts} attempts)")))
            }
            Err(Failure::Retryable(error)) => {
                let ceiling = step.backoff_ms(attempts);
                let wait = ceiling / 2 + fastrand::u64(0..=ceiling / 2);
                not_before = now_ms() + wait as i64;
                tracing::debug!(target: "gantry::workflows", id, step = %step.name, phase, attempts, %error, retry_in_ms = wait, "attempt failed; retrying");
                inner
                    .store
                    .attempt_failed(id, idx, phase, &error, not_before)
                    .await?;
                records.retrying(idx, phase, &error, not_before);
            }
        }
    }
}

async fn sleep_until(ms: i64) {
    let wait = ms - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// The idempotency key of a step's call: the same for every attempt and
/// every replay of it, new after an operator resumes from the step.
fn idempotency_key(instance: &Run, step: &str, phase: &str) -> String {
    let suffix = if phase == "undo" { "/compensate" } else { "" };
    if instance.generation == 0 {
        format!("{}/{step}{suffix}", instance.id)
    } else {
        format!("{}/{step}{suffix}/{}", instance.id, instance.generation)
    }
}

/// A `traceparent` in the run's trace, with a new span for this hop.
fn traceparent(instance: &Run) -> String {
    format!("00-{}-{:016x}-01", instance.trace, fastrand::u64(1..))
}

/// The span id of a run's start span, the parent of every step's span.
/// Derived from the run (FNV-1a of trace and id) rather than stored, so a
/// run resumed after a restart still finds it.
pub(crate) fn run_span_id(instance: &Run) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance
        .trace
        .bytes()
        .chain([b'/'])
        .chain(instance.id.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:016x}", hash.max(1))
}

async fn call(
    inner: &Inner,
    instance: &Run,
    ctx: &Context<'_>,
    _idx: usize,
    phase: &str,
    action: &ActionDef,
    step: &StepDef,
) -> Result<Value, Failure> {
    let ActionDef::Call {
        service,
        method,
        path,
        body,
        headers,
    } = action
    else {
        unreachable!("a call");
    };
    let path = render_string(path, ctx).map_err(Failure::Fatal)?;
    let body = match body {
        Some(body) => Some(render(body, ctx).map_err(Failure::Fatal)?),
        None => None,
    };
    let started = std::time::SystemTime::now();
    let parent = traceparent(instance);
    let mut out = HeaderMap::new();
    let fixed = [
        (
            IDEMPOTENCY_HEADER,
            idempotency_key(instance, &step.name, phase),
        ),
        ("traceparent", parent.clone()),
        ("gantry-workflow", instance.workflow.clone()),
        ("gantry-workflow-id", instance.id.clone()),
    ];
    for (name, value) in fixed {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| Failure::Fatal(format!("header `{name}` has an invalid value")))?;
        out.insert(name, value);
    }
    if body.is_some() {
        out.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    for (name, value) in headers {
        let value = render_string(value, ctx).map_err(Failure::Fatal)?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| Failure::Fatal(format!("header `{name}` has an invalid value")))?;
        let name = http::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Failure::Fatal(format!("`{name}` is not a header name")))?;
        out.insert(name, value);
    }
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| Failure::Fatal(format!("`{method}` is not an HTTP method")))?;
    // Through the services' outbound client: the service's bulkhead and
    // breaker, shared with the gateway, refuse a step to a failing service
    // before it is sent; it retries after its backoff.
    let call = Call {
        method: method.clone(),
        path: path.clone(),
        headers: out,
        body: body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
        timeout: Duration::from_millis(step.timeout_ms),
    };
    let outcome = match inner.outbound.call(&inner.directory, service, call).await {
        Ok(answer) => {
            let bytes = answer.body;
            let status = answer.status;
            let output = serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| {
                if bytes.is_empty() {
                    Value::Null
                } else {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                }
            });
            if status.is_success() || step.success.contains(&status.as_u16()) {
                Ok(output)
            } else {
                let excerpt = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                let message = format!("{service} answered {status}: {}", excerpt.trim());
                if step.retry_on.contains(&status.as_u16()) {
                    Err(Failure::Retryable(message))
                } else {
                    Err(Failure::Fatal(message))
                }
            }
        }
        Err(CallError::Timeout { .. }) => Err(Failure::Retryable(format!(
            "{service} did not answer within {}ms (the step's `timeout`)",
            step.timeout_ms
        ))),
        Err(error) if error.retryable() => Err(Failure::Retryable(error.to_string())),
        Err(error) => Err(Failure::Fatal(error.to_string())),
    };
    if let Some(store) = &inner.traces {
        let mut attributes = gantry_telemetry::traces::Attributes::new();
        attributes.insert("gantry.workflow", instance.workflow.clone());
        attributes.insert("gantry.workflow.run", instance.id.clone());
        attributes.insert("gantry.workflow.step", step.name.clone());
        attributes.insert("gantry.workflow.phase", phase.to_string());
        attributes.insert("http.request.method", method.to_string());
        attributes.insert("server.address", service.clone());
        attributes.insert("url.path", path.clone());
        if let Err(Failure::Retryable(why) | Failure::Fatal(why)) = &outcome {
            attributes.insert("error.message", why.clone());
        }
        store.record(gantry_telemetry::traces::Span {
            trace_id: instance.trace.clone(),
            span_id: parent.split('-').nth(2).unwrap_or_default().to_string(),
            parent_id: Some(run_span_id(instance)),
            name: format!("{} {}/{phase}", instance.workflow, step.name),
            kind: "client",
            service: "workflows".into(),
            start_ns: gantry_telemetry::traces::unix_nanos(started),
            duration_ns: started.elapsed().unwrap_or_default().as_nanos() as u64,
            error: outcome.is_err(),
            attributes,
            sampled: store.sample_hex(&instance.trace),
        });
    }
    outcome
}

async fn publish(
    inner: &Inner,
    instance: &Run,
    ctx: &Context<'_>,
    idx: usize,
    phase: &str,
    action: &ActionDef,
) -> Result<Value, Failure> {
    let ActionDef::Publish {
        topic,
        event_type,
        subject,
        data,
    } = action
    else {
        unreachable!("a publish");
    };
    let mut event = json!({
        "specversion": "1.0",
        // Stable across retries and replays: the bus stores it once.
        "id": format!("{}/{idx}/{phase}/{}", instance.id, instance.generation),
        "source": format!("/gantry/workflows/{}", instance.workflow),
        "type": event_type,
        "workflowid": instance.id,
    });
    if let Some(subject) = subject {
        event["subject"] = json!(render_string(subject, ctx).map_err(Failure::Fatal)?);
    }
    if let Some(data) = data {
        event["data"] = render(data, ctx).map_err(Failure::Fatal)?;
    }
    let event = CloudEvent::from_json(event).map_err(|e| Failure::Fatal(e.to_string()))?;
    // The publish span the bus records sits under the run's start span.
    let parent = format!("00-{}-{}-01", instance.trace, run_span_id(instance));
    match inner.bus.publish(topic, vec![event], Some(&parent)).await {
        Ok(published) => Ok(json!({ "seq": published[0].seq })),
        Err(PublishError::Storage(e)) => Err(Failure::Retryable(e.to_string())),
        Err(other) => Err(Failure::Fatal(other.to_string())),
    }
}

/// Waits for an event on `topic` matching the templates, looking from
/// `from` (noted when the run started, so an early event is not missed)
/// until `deadline_ms`.
async fn wait_for(
    inner: &Inner,
    ctx: &Context<'_>,
    topic: &str,
    event_type: Option<&str>,
    matches: &BTreeMap<String, String>,
    from: u64,
    deadline_ms: i64,
) -> Result<Value, String> {
    let mut wanted = Vec::new();
    for (pointer, template) in matches {
        wanted.push((pointer.as_str(), render_text_value(template, ctx)?));
    }
    let broker = inner.bus.broker().clone();
    let mut watch = broker.watch(topic);
    let mut next = from;
    loop {
        let batch = match broker.read(topic, next, 512).await {
            Ok(batch) => batch,
            Err(error) => {
                // The store is briefly unavailable: keep waiting.
                tracing::warn!(target: "gantry::workflows", topic, %error, "cannot read the topic; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for stored in &batch {
            next = stored.seq + 1;
            let Ok(event) = serde_json::from_slice::<Value>(&stored.json) else {
                continue;
            };
            let type_ok = event_type.is_none_or(|t| event["type"] == t);
            let all = wanted
                .iter()
                .all(|(pointer, value)| event.pointer(pointer).is_some_and(|v| same(v, value)));
            if type_ok && all {
                return Ok(event);
            }
        }
        if !batch.is_empty() {
            continue;
        }
        let left = deadline_ms - now_ms();
        if left <= 0 {
            let wanted: Vec<String> = wanted.iter().map(|(p, v)| format!("{p} = {v}")).collect();
            return Err(format!(
                "no `{topic}` event with {} arrived in time (the step's `timeout`)",
                wanted.join(", ")
            ));
        }
        let _ = tokio::time::timeout(
            Duration::from_millis(left.min(1000) as u64),
            watch.changed(),
        )
        .await;
    }
}

fn render_text_value(template: &str, ctx: &Context<'_>) -> Result<Value, String> {
    crate::definition::render_text(template, ctx)
}

/// Loose equality for correlation: `42` matches `"42"`.
fn same(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text(a) == text(b)
}

/// A step's attempts as shown to operators.
pub(crate) fn describe(steps: &[StepRecord]) -> Value {
    json!(steps)
}
