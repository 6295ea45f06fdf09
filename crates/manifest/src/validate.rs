//! Checks that need the whole manifest: routes against services, and routes
//! that an earlier route hides.

use crate::auth::AuthMode;
use crate::decode::suggest;
use crate::diagnostics::{Diagnostics, ErrorCode};
use crate::events::Endpoint;
use crate::model::{Manifest, Route};
use crate::policy::Fallback;
use crate::workflows::Action;

pub(crate) fn cross_check(manifest: &Manifest, source: &str, out: &mut Diagnostics) {
    let names: Vec<&str> = manifest.services.keys().map(String::as_str).collect();
    for route in &manifest.routes {
        for (to, _) in route.to.backends() {
            if manifest.services.contains_key(to) {
                continue;
            }
            if let Some(function) = crate::functions::function_of(to) {
                check_function_name(
                    manifest,
                    function,
                    route.spans.to.clone(),
                    &format!("route `{}`", route.path),
                    source,
                    out,
                );
                continue;
            }
            if let Some(bucket) = crate::functions::bucket_of(to) {
                if !manifest.buckets.contains_key(bucket) {
                    let buckets: Vec<&str> = manifest.buckets.keys().map(String::as_str).collect();
                    out.push_at(
                        source,
                        ErrorCode::BadValue,
                        route.spans.to.clone(),
                        format!(
                            "route `{}` uploads into bucket `{bucket}`, which is not declared",
                            route.path
                        ),
                        Some(match suggest(bucket, &buckets) {
                            Some(close) => format!("did you mean `{close}`?"),
                            None => format!("declare it with a `[buckets.{bucket}]` section"),
                        }),
                    );
                }
                continue;
            }
            let hint = match suggest(to, &names) {
                Some(close) => format!("did you mean `{close}`?"),
                None if names.is_empty() => "declare it under [services]".to_string(),
                None => format!("declared services: {}", names.join(", ")),
            };
            out.push_at(
                source,
                ErrorCode::UnknownService,
                route.spans.to.clone(),
                format!(
                    "route `{}` sends traffic to `{to}`, which is not a declared service",
                    route.path
                ),
                Some(hint),
            );
        }
    }
    for route in &manifest.routes {
        if let Some(Fallback::Service { to }) = &route.fallback {
            if !manifest.services.contains_key(to) {
                out.push_at(
                    source,
                    ErrorCode::UnknownService,
                    route.spans.fallback.clone(),
                    format!(
                        "the fallback of route `{}` is `{to}`, which is not a declared service",
                        route.path
                    ),
                    Some(match suggest(to, &names) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!("declared services: {}", names.join(", ")),
                    }),
                );
            }
        }
    }
    for route in &manifest.routes {
        if let Some(shadow) = &route.shadow {
            if !manifest.services.contains_key(&shadow.to) {
                out.push_at(
                    source,
                    ErrorCode::UnknownService,
                    route.spans.shadow.clone(),
                    format!(
                        "route `{}` mirrors to `{}`, which is not a declared service",
                        route.path, shadow.to
                    ),
                    suggest(&shadow.to, &names).map(|close| format!("did you mean `{close}`?")),
                );
            }
        }
    }
    if manifest.jwt.is_none() {
        for route in manifest.routes.iter().filter(|r| r.auth == AuthMode::Jwt) {
            out.push_at(
                source,
                ErrorCode::MissingKey,
                route.spans.auth.clone(),
                format!(
                    "route `{}` needs JWTs but the manifest has no [jwt] section",
                    route.path
                ),
                Some("add a [jwt] section with `[[jwt.keys]]` or a `jwks_url`".into()),
            );
        }
    }
    let verifies_clients = manifest
        .platform
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    if !verifies_clients {
        for route in manifest.routes.iter().filter(|r| r.auth == AuthMode::Mtls) {
            out.push_at(
                source,
                ErrorCode::MissingKey,
                route.spans.auth.clone(),
                format!(
                    "route `{}` needs client certificates but `[platform.tls]` has no `client_ca`",
                    route.path
                ),
                Some("add `client_ca = \"clients-ca.pem\"` (the CA that issues client certificates) to `[platform.tls]`".into()),
            );
        }
    }
    check_subscriptions(manifest, &names, source, out);
    check_functions(manifest, &names, source, out);
    check_slos(manifest, source, out);
    check_workflows(manifest, &names, source, out);
    for (later_index, later) in manifest.routes.iter().enumerate() {
        let hidden_by = manifest.routes[..later_index]
            .iter()
            .enumerate()
            .find(|(_, earlier)| takes_all_traffic_of(earlier, later));
        if let Some((earlier_index, earlier)) = hidden_by {
            out.push_at(
                source,
                ErrorCode::UnreachableRoute,
                later.spans.path.clone().or(later.spans.table.clone()),
                format!(
                    "route #{} (`{}`) can never match: route #{} (`{}`) comes first and matches every request it would",
                    later_index + 1,
                    later.path,
                    earlier_index + 1,
                    earlier.path
                ),
                Some("routes are tried in file order: move the more specific route above the broader one, or remove it".into()),
            );
        }
    }
}

/// Subscriptions name a declared topic and service, and have unique names.
fn check_subscriptions(
    manifest: &Manifest,
    services: &[&str],
    source: &str,
    out: &mut Diagnostics,
) {
    let topics: Vec<&str> = manifest.topics.keys().map(String::as_str).collect();
    let mut seen = std::collections::HashSet::new();
    for subscription in &manifest.subscriptions {
        if !manifest.topics.contains_key(&subscription.topic) {
            let hint = match suggest(&subscription.topic, &topics) {
                Some(close) => format!("did you mean `{close}`?"),
                None if topics.is_empty() => format!(
                    "declare it with a `[topics.\"{}\"]` section",
                    subscription.topic
                ),
                None => format!("declared topics: {}", topics.join(", ")),
            };
            out.push_at(
                source,
                ErrorCode::UnknownTopic,
                subscription.spans.topic.clone(),
                format!(
                    "subscription `{}` reads topic `{}`, which is not declared",
                    subscription.name, subscription.topic
                ),
                Some(hint),
            );
        }
        match &subscription.to {
            Endpoint::Service { service, .. }
                if crate::functions::function_of(service).is_some() =>
            {
                let function = crate::functions::function_of(service).unwrap_or_default();
                check_function_name(
                    manifest,
                    function,
                    subscription.spans.to.clone(),
                    &format!("subscription `{}`", subscription.name),
                    source,
                    out,
                );
            }
            Endpoint::Service { service, .. } if !manifest.services.contains_key(service) => {
                out.push_at(
                    source,
                    ErrorCode::UnknownService,
                    subscription.spans.to.clone(),
                    format!(
                        "subscription `{}` delivers to `{service}`, which is not a declared service",
                        subscription.name
                    ),
                    Some(match suggest(service, services) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!("declared services: {}", services.join(", ")),
                    }),
                );
            }
            Endpoint::Workflow { name } if !manifest.workflows.contains_key(name) => {
                let workflows: Vec<&str> = manifest.workflows.keys().map(String::as_str).collect();
                out.push_at(
                    source,
                    ErrorCode::BadValue,
                    subscription.spans.to.clone(),
                    format!(
                        "subscription `{}` starts workflow `{name}`, which is not declared",
                        subscription.name
                    ),
                    Some(match suggest(name, &workflows) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => "declare it with a `[workflows.NAME]` section".into(),
                    }),
                );
            }
            _ => {}
        }
        if !seen.insert(subscription.name.as_str()) {
            out.push_at(
                source,
                ErrorCode::Conflict,
                subscription.spans.name.clone(),
                format!("two subscriptions are named `{}`", subscription.name),
                Some("give each subscription its own `name`; a subscription's position in its topic is kept under its name".into()),
            );
        }
    }
}

/// Workflow steps name declared services and topics, and their templates
/// read only the input and steps that have run by then.
fn check_workflows(manifest: &Manifest, services: &[&str], source: &str, out: &mut Diagnostics) {
    let topics: Vec<&str> = manifest.topics.keys().map(String::as_str).collect();
    for (name, workflow) in &manifest.workflows {
        for (index, step) in workflow.steps.iter().enumerate() {
            let actions = [
                (Some(&step.action), &step.spans.action, false),
                (step.compensate.as_ref(), &step.spans.compensate, true),
            ];
            for (action, span, compensation) in actions {
                let Some(action) = action else { continue };
                let mut problem = |message: String, hint: String| {
                    out.push_at(
                        source,
                        ErrorCode::BadValue,
                        span.clone(),
                        message,
                        Some(hint),
                    );
                };
                match action {
                    Action::Call { service, .. } if !manifest.services.contains_key(service) => problem(
                        format!("step `{}` of workflow `{name}` calls `{service}`, which is not a declared service", step.name),
                        match suggest(service, services) {
                            Some(close) => format!("did you mean `{close}`?"),
                            None => format!("declared services: {}", services.join(", ")),
                        },
                    ),
                    Action::Publish { topic, .. } | Action::Wait { topic, .. }
                        if !manifest.topics.contains_key(topic) =>
                    {
                        problem(
                            format!("step `{}` of workflow `{name}` uses topic `{topic}`, which is not declared", step.name),
                            match suggest(topic, &topics) {
                                Some(close) => format!("did you mean `{close}`?"),
                                None => format!("declare it with a `[topics.\"{topic}\"]` section"),
                            },
                        )
                    }
                    _ => {}
                }
                // A step reads steps before it; its compensation may also read its own output.
                let visible = if compensation { index + 1 } else { index };
                let known: Vec<&str> = workflow.steps[..visible]
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                for text in action.texts() {
                    let pieces = match crate::template::parse(text) {
                        Ok(pieces) => pieces,
                        Err(why) => {
                            problem(
                                format!("step `{}` of workflow `{name}`: {why}", step.name),
                                "templates are `{{ input.FIELD }}`, `{{ steps.STEP.output.FIELD }}` or `{{ workflow.id }}`".into(),
                            );
                            continue;
                        }
                    };
                    for piece in pieces {
                        let crate::template::Piece::Ref(reference) = piece else {
                            continue;
                        };
                        let crate::template::Root::Step(read) = &reference.root else {
                            continue;
                        };
                        if known.contains(&read.as_str()) {
                            continue;
                        }
                        let later = workflow.steps.iter().any(|s| &s.name == read);
                        let what = if compensation {
                            "the compensation of step"
                        } else {
                            "step"
                        };
                        problem(
                            if later {
                                format!("{what} `{}` of workflow `{name}` reads `{read}`, which has not run by then", step.name)
                            } else {
                                format!("{what} `{}` of workflow `{name}` reads step `{read}`, which does not exist", step.name)
                            },
                            match suggest(read, &known) {
                                Some(close) if !later => format!("did you mean `{close}`?"),
                                _ if known.is_empty() => {
                                    "only `input` and `workflow.id` are known at this point".into()
                                }
                                _ => format!("steps it can read: {}", known.join(", ")),
                            },
                        );
                    }
                }
            }
        }
    }
}

/// Whether every request `later` could match is already matched by `earlier`.
fn takes_all_traffic_of(earlier: &Route, later: &Route) -> bool {
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    let host = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(a), Some(b)) => {
            a == b
                || a.strip_prefix('*')
                    .is_some_and(|suffix| b.ends_with(suffix))
        }
        (Some(_), None) => false,
    };
    let headers = earlier.headers.iter().all(|(name, value)| {
        later
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
    });
    let cookies = earlier
        .cookies
        .iter()
        .all(|(name, value)| later.cookies.get(name) == Some(value));
    methods && host && headers && cookies && earlier.pattern.covers(&later.pattern)
}

/// A `function:NAME` target names a declared function.
fn check_function_name(
    manifest: &Manifest,
    function: &str,
    span: Option<std::ops::Range<usize>>,
    who: &str,
    source: &str,
    out: &mut Diagnostics,
) {
    if manifest.functions.contains_key(function) {
        return;
    }
    let functions: Vec<&str> = manifest.functions.keys().map(String::as_str).collect();
    out.push_at(
        source,
        ErrorCode::UnknownFunction,
        span,
        format!("{who} invokes function `{function}`, which is not declared"),
        Some(match suggest(function, &functions) {
            Some(close) => format!("did you mean `function:{close}`?"),
            None if functions.is_empty() => {
                format!("declare it with a `[functions.{function}]` section")
            }
            None => format!("declared functions: {}", functions.join(", ")),
        }),
    );
}

/// Schedules invoke declared functions; grants name declared services and
/// topics; buckets announce to declared topics.
fn check_functions(manifest: &Manifest, services: &[&str], source: &str, out: &mut Diagnostics) {
    let topics: Vec<&str> = manifest.topics.keys().map(String::as_str).collect();
    for (name, schedule) in &manifest.schedules {
        if let Some(function) = crate::functions::function_of(&schedule.to) {
            check_function_name(
                manifest,
                function,
                find_key(source, "schedules", name),
                &format!("schedule `{name}`"),
                source,
                out,
            );
        }
    }
    for (name, function) in &manifest.functions {
        for service in &function.services {
            if !manifest.services.contains_key(service) {
                out.push_at(
                    source,
                    ErrorCode::UnknownService,
                    find_key(source, "functions", name),
                    format!(
                        "function `{name}` is granted service `{service}`, which is not declared"
                    ),
                    Some(match suggest(service, services) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!("declared services: {}", services.join(", ")),
                    }),
                );
            }
        }
        for topic in &function.publish {
            if !manifest.topics.contains_key(topic) {
                out.push_at(
                    source,
                    ErrorCode::UnknownTopic,
                    find_key(source, "functions", name),
                    format!(
                        "function `{name}` may publish to `{topic}`, which is not a declared topic"
                    ),
                    Some(match suggest(topic, &topics) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!("declare it with a `[topics.\"{topic}\"]` section"),
                    }),
                );
            }
        }
    }
    for (name, bucket) in &manifest.buckets {
        if let Some(topic) = &bucket.topic {
            if !manifest.topics.contains_key(topic) {
                out.push_at(
                    source,
                    ErrorCode::UnknownTopic,
                    find_key(source, "buckets", name),
                    format!("bucket `{name}` announces objects on `{topic}`, which is not a declared topic"),
                    Some(format!("declare it with a `[topics.\"{topic}\"]` section")),
                );
            }
        }
    }
}

/// Where the `[FAMILY.NAME]` header is in the file, for sections whose
/// decoded form keeps no span.
fn find_key(source: &str, family: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let header = format!("[{family}.{name}]");
    source
        .find(&header)
        .map(|start| start..start + header.len())
}

/// An SLO names a declared route, service or function.
fn check_slos(manifest: &Manifest, source: &str, out: &mut Diagnostics) {
    use crate::slo::SloTarget;
    for (name, slo) in &manifest.slos {
        let span = manifest.slo_spans.get(name).cloned().flatten();
        let (known, kind, target): (Vec<&str>, &str, &str) = match &slo.target {
            SloTarget::Route(route) => (
                manifest.routes.iter().map(|r| r.label()).collect(),
                "route",
                route,
            ),
            SloTarget::Service(service) => (
                manifest.services.keys().map(String::as_str).collect(),
                "service",
                service,
            ),
            SloTarget::Function(function) => (
                manifest.functions.keys().map(String::as_str).collect(),
                "function",
                function,
            ),
        };
        if !known.contains(&target) {
            out.push_at(
                source,
                ErrorCode::BadValue,
                span,
                format!("SLO `{name}` is about {kind} `{target}`, which is not declared"),
                Some(match suggest(target, &known) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("declared: {}", known.join(", ")),
                }),
            );
        }
    }
}
