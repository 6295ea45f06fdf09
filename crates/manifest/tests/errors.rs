//! One test per class of manifest mistake: each checks the code, the message,
//! the hint and the exact line:col a user would be sent to.

use std::path::Path;

use gantry_manifest::{parse, Diagnostics, ErrorCode};

fn errors(source: &str) -> Diagnostics {
    parse(source, Path::new("gantry.toml"), Path::new("/srv/app"))
        .expect_err("the manifest should be rejected")
}

/// Renders and asserts that `needle` appears, so failures show the whole report.
fn assert_reports(diags: &Diagnostics, needle: &str) {
    let text = diags.to_string();
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

const SERVICES: &str = r#"
[services.orders]
urls = ["http://127.0.0.1:9000"]
"#;

#[test]
fn syntax_errors_point_at_the_broken_line() {
    let d = errors("[platform]\nname = \"demo\nlisten = 1\n");
    assert_eq!(d.iter().next().unwrap().code, ErrorCode::Syntax);
    assert_reports(&d, "gantry.toml:2:");
    assert_reports(&d, "error[M001]: invalid TOML");
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let d = errors("[services.orders]\ncommand = [\"./orders\"]\ninstnces = 2\n");
    let first = d.iter().next().unwrap();
    assert_eq!(first.code, ErrorCode::UnknownKey);
    assert_eq!((first.line, first.column), (Some(3), Some(1)));
    assert_reports(
        &d,
        "gantry.toml:3:1: error[M002]: unknown key `instnces` in [services.orders]",
    );
    assert_reports(&d, "hint: did you mean `instances`?");
}

#[test]
fn unknown_keys_without_a_close_match_list_the_known_ones() {
    let d = errors("[platform]\nzzzzzz = 1\n");
    assert_reports(&d, "known keys here: name, listen, admin");
}

#[test]
fn wrong_types_name_what_was_expected() {
    let d = errors("[services.orders]\ncommand = [\"./orders\"]\ninstances = \"2\"\n");
    assert_reports(&d, "gantry.toml:3:13: error[M003]: `instances` in [services.orders] must be an integer, found string");
    assert_reports(&d, "write the number without quotes");
}

#[test]
fn bad_durations_point_at_the_value() {
    let d = errors(&format!(
        "{SERVICES}\n[[routes]]\npath = \"/*\"\nto = \"orders\"\ntimeout = \"5 parsecs\"\n"
    ));
    let first = d.iter().next().unwrap();
    assert_eq!(first.code, ErrorCode::BadDuration);
    assert_eq!((first.line, first.column), (Some(8), Some(11)));
    assert_reports(&d, "`5 parsecs` is not a duration");
    assert_reports(&d, "e.g. `250ms`, `5s`");
}

#[test]
fn missing_keys_point_at_the_section() {
    let d = errors(&format!("{SERVICES}\n[[routes]]\npath = \"/*\"\n"));
    assert_reports(
        &d,
        "gantry.toml:5:1: error[M004]: [[routes]] #1 is missing `to`",
    );
    let d = errors("[services.orders]\nowner = \"team-a\"\n");
    assert_reports(
        &d,
        "gantry.toml:1:1: error[M004]: [services.orders] needs `command` or `urls`",
    );
}

#[test]
fn bad_values_say_how_to_write_them() {
    let d = errors("[platform]\nlisten = \"localhost\"\n");
    assert_reports(
        &d,
        "gantry.toml:2:10: error[M006]: `localhost` is not an address to listen on",
    );
    let d = errors(&format!(
        "{SERVICES}\n[[routes]]\npath = \"/*\"\nmethods = [\"GTE\"]\nto = \"orders\"\n"
    ));
    assert_reports(
        &d,
        "gantry.toml:7:12: error[M006]: unknown HTTP method `GTE`",
    );
    assert_reports(&d, "did you mean `GET`?");
    let d = errors("[services.orders]\nurls = [\"ftp://x\"]\n");
    assert_reports(
        &d,
        "gantry.toml:2:9: error[M006]: `ftp://x` in [services.orders] is not an http:// or https:// URL",
    );
}

#[test]
fn conflicting_keys_are_refused() {
    let d = errors("[services.orders]\nurls = [\"http://127.0.0.1:1\"]\ncommand = [\"./o\"]\n");
    assert_reports(
        &d,
        "gantry.toml:3:1: error[M007]: [services.orders] has both `urls` and `command`",
    );
}

#[test]
fn malformed_paths_are_refused() {
    let d = errors(&format!(
        "{SERVICES}\n[[routes]]\npath = \"/a/*/b\"\nto = \"orders\"\n"
    ));
    assert_reports(
        &d,
        "gantry.toml:6:8: error[M008]: `*` in `/a/*/b` may only be the last segment",
    );
}

#[test]
fn routes_to_undeclared_services_suggest_a_declared_one() {
    let d = errors(&format!(
        "{SERVICES}\n[[routes]]\npath = \"/*\"\nto = \"order\"\n"
    ));
    assert_reports(&d, "gantry.toml:7:6: error[M009]: route `/*` sends traffic to `order`, which is not a declared service");
    assert_reports(&d, "did you mean `orders`?");
}

#[test]
fn routes_hidden_by_an_earlier_route_are_refused() {
    let d = errors(&format!(
        "{SERVICES}\n[[routes]]\npath = \"/api/*\"\nto = \"orders\"\n\n[[routes]]\npath = \"/api/orders/{{id}}\"\nmethods = [\"GET\"]\nto = \"orders\"\n"
    ));
    assert_reports(&d, "gantry.toml:10:8: error[M010]: route #2 (`/api/orders/{id}`) can never match: route #1 (`/api/*`)");
    // Narrower earlier routes do not hide broader later ones.
    let ok = format!(
        "{SERVICES}\n[[routes]]\npath = \"/api/*\"\nmethods = [\"GET\"]\nto = \"orders\"\n\n[[routes]]\npath = \"/api/*\"\nto = \"orders\"\n"
    );
    parse(&ok, Path::new("gantry.toml"), Path::new("/srv"))
        .expect("a narrower route first is fine");
}

#[test]
fn every_mistake_is_reported_at_once() {
    let d = errors(
        "[platform]\nlisen = \"127.0.0.1:1\"\n\n[services.orders]\ncommand = [\"./o\"]\ninstnces = 2\nhealth_interval = \"soon\"\n\n[[routes]]\npath = \"/*\"\nto = \"nope\"\n",
    );
    let codes: Vec<_> = d.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::UnknownKey,
            ErrorCode::UnknownKey,
            ErrorCode::BadDuration,
            ErrorCode::UnknownService
        ]
    );
    assert_reports(&d, "4 errors in gantry.toml");
}

#[test]
fn relative_paths_resolve_against_the_manifest_directory() {
    let m = parse(
        "[platform]\ndata_dir = \"state\"\n[services.a]\ncommand = [\"bin/a\", \"--x\"]\n[services.b]\ncommand = [\"python3\", \"b.py\"]\n",
        Path::new("gantry.toml"),
        Path::new("/srv/app"),
    )
    .unwrap();
    assert_eq!(m.platform.data_dir, Path::new("/srv/app/state"));
    assert_eq!(m.services["a"].command, vec!["/srv/app/bin/a", "--x"]);
    // A bare program name is looked up on PATH; its files resolve via the working directory.
    assert_eq!(m.services["b"].command[0], "python3");
    assert_eq!(
        m.services["b"].workdir.as_deref(),
        Some(Path::new("/srv/app"))
    );
}

#[test]
fn the_repository_manifest_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gantry.toml");
    let m = gantry_manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.platform.name, "demo");
    assert_eq!(m.routes.len(), 2);
}

#[test]
fn the_schema_describes_every_key_the_decoder_accepts() {
    let schema = gantry_manifest::json_schema();
    let text = schema.to_string();
    for key in [
        "instances",
        "strip_prefix",
        "health_interval",
        "drain_timeout",
        "rewrite",
    ] {
        assert!(text.contains(&format!("\"{key}\"")), "schema lacks {key}");
    }
    assert_eq!(schema["title"], "gantry.toml");
}

#[test]
fn subscriptions_name_declared_topics_and_services() {
    let d = errors(&format!(
        "{SERVICES}\n[topics.\"order.placed\"]\n\n[[subscriptions]]\ntopic = \"order.place\"\nto = \"order:/events\"\n"
    ));
    assert_reports(
        &d,
        "gantry.toml:8:9: error[M011]: subscription `order.order.place` reads topic `order.place`, which is not declared",
    );
    assert_reports(&d, "hint: did you mean `order.placed`?");
    assert_reports(
        &d,
        "gantry.toml:9:6: error[M009]: subscription `order.order.place` delivers to `order`, which is not a declared service",
    );
    assert_reports(&d, "hint: did you mean `orders`?");
}

#[test]
fn subscription_values_are_checked_where_they_are_written() {
    let d = errors(&format!(
        "{SERVICES}\n[topics.orders]\ncompatibility = \"sideways\"\n\n[[subscriptions]]\ntopic = \"orders\"\nto = \"orders/events\"\nordering_key = \"data.id\"\nstart_at = \"yesterday\"\nfilter = {{ Type = \"x\" }}\nretry = {{ max_attempts = 0, initial = \"5s\", max = \"1s\" }}\n"
    ));
    assert_reports(
        &d,
        "gantry.toml:6:17: error[M006]: unknown compatibility `sideways`",
    );
    assert_reports(&d, "error[M006]: `orders/events` is not a service endpoint");
    assert_reports(
        &d,
        "hint: write `SERVICE:/path`, e.g. `notifications:/events`",
    );
    assert_reports(&d, "error[M006]: `data.id` is not a JSON pointer");
    assert_reports(
        &d,
        "error[M006]: `yesterday` is not `latest`, `earliest` or a time",
    );
    assert_reports(
        &d,
        "error[M006]: `Type` is not a CloudEvents attribute name",
    );
    assert_reports(
        &d,
        "`max_attempts = 0` in `retry` in [[subscriptions]] #1 is out of range",
    );
    assert_reports(&d, "`initial` is longer than `max`");
}

#[test]
fn two_subscriptions_with_one_name_conflict() {
    let d = errors(&format!(
        "{SERVICES}\n[topics.orders]\n\n[[subscriptions]]\ntopic = \"orders\"\nto = \"orders:/a\"\n\n[[subscriptions]]\ntopic = \"orders\"\nto = \"orders:/b\"\n"
    ));
    assert_reports(
        &d,
        "error[M007]: two subscriptions are named `orders.orders`",
    );
    assert_reports(&d, "give each subscription its own `name`");
}

#[test]
fn a_missing_schema_file_and_a_bad_outbox_table_are_reported() {
    let d = errors(
        "[services.orders]\nurls = [\"http://127.0.0.1:9000\"]\noutbox = { database = \"orders.db\", table = \"out box\" }\n\n[topics.orders]\nschema = \"schemas/nope.json\"\n",
    );
    assert_reports(&d, "error[M006]: `out box` is not a plain table name");
    assert_reports(
        &d,
        "gantry.toml:6:10: error[M006]: cannot read schema file /srv/app/schemas/nope.json",
    );
    assert_reports(&d, "the path is relative to the manifest's directory");
}

const WORKFLOW_BASE: &str = r#"
[services.payments]
urls = ["http://127.0.0.1:9000"]

[topics.shipped]
"#;

#[test]
fn workflow_templates_may_only_read_steps_that_have_run() {
    let d = errors(&format!(
        "{WORKFLOW_BASE}\n[workflows.checkout]\n[[workflows.checkout.steps]]\nname = \"charge\"\ncall = \"payments:POST /charges\"\nbody = {{ reservation = \"{{{{ steps.reserve.output.id }}}}\" }}\n\n[[workflows.checkout.steps]]\nname = \"reserve\"\ncall = \"payment:POST /r\"\ncompensate = {{ call = \"payments:DELETE /r/{{{{ steps.reserv.output.id }}}}\" }}\n"
    ));
    assert_reports(
        &d,
        "gantry.toml:10:8: error[M006]: step `charge` of workflow `checkout` reads `reserve`, which has not run by then",
    );
    assert_reports(&d, "only `input` and `workflow.id` are known at this point");
    assert_reports(
        &d,
        "gantry.toml:15:8: error[M006]: step `reserve` of workflow `checkout` calls `payment`, which is not a declared service",
    );
    assert_reports(&d, "did you mean `payments`?");
    assert_reports(
        &d,
        "error[M006]: the compensation of step `reserve` of workflow `checkout` reads step `reserv`, which does not exist",
    );
}

#[test]
fn workflow_steps_are_checked_where_they_are_written() {
    let d = errors(&format!(
        "{WORKFLOW_BASE}\n[workflows.w]\n[[workflows.w.steps]]\nname = \"a\"\ncall = \"payments:FETCH /x\"\n\n[[workflows.w.steps]]\nname = \"a\"\nsleep = \"1s\"\nwait = {{ topic = \"shipped\", match = {{ \"/data/id\" = \"{{{{ input.id }}}}\" }} }}\n\n[[workflows.w.steps]]\nname = \"b\"\nwait = {{ topic = \"shiped\", match = {{ \"data.id\" = \"x\" }} }}\n\n[[workflows.w.steps]]\nname = \"c\"\npublish = {{ topic = \"shipped\", type = \"x\", data = {{ v = \"{{{{ steps.b.id }}}}\" }} }}\n"
    ));
    assert_reports(&d, "error[M006]: `payments:FETCH /x` is not a call");
    assert_reports(&d, "hint: write `SERVICE:METHOD /path`");
    assert_reports(
        &d,
        "error[M007]: [[workflows.w.steps]] #2 has both `wait` and `sleep`",
    );
    assert_reports(&d, "error[M006]: `data.id` is not a JSON pointer");
    assert_reports(&d, "uses topic `shiped`, which is not declared");
    assert_reports(
        &d,
        "a step is read through its output, e.g. `{{ steps.b.output.id }}`",
    );
}

#[test]
fn function_targets_must_name_declared_functions_and_buckets() {
    let d = errors(
        r#"
[functions.thumbnail]
component = "thumb.wasm"

[[routes]]
path = "/thumbs/*"
to = "function:thumbnial"

[[routes]]
path = "/up/*"
to = "bucket:photos"

[topics.uploads]

[[subscriptions]]
topic = "uploads"
to = "function:nope"

[schedules.nightly]
cron = "0 0 2 * * *"
to = "function:report"
"#,
    );
    assert_reports(&d, "gantry.toml:7:6: error[M012]: route `/thumbs/*` invokes function `thumbnial`, which is not declared");
    assert_reports(&d, "hint: did you mean `function:thumbnail`?");
    assert_reports(&d, "gantry.toml:11:6: error[M006]: route `/up/*` uploads into bucket `photos`, which is not declared");
    assert_reports(
        &d,
        "error[M012]: subscription `nope.uploads` invokes function `nope`",
    );
    assert_reports(
        &d,
        "gantry.toml:19:1: error[M012]: schedule `nightly` invokes function `report`",
    );
}

#[test]
fn function_kinds_and_limits_are_checked_where_they_are_written() {
    let d = errors(
        r#"
[functions.a]
component = "a.wasm"
command = ["./a"]

[functions.b]
command = ["./b"]

[functions.c]
component = "c.wasm"
executor = "cgi"
memory = "8GiB"
allowed_outbound_hosts = ["https://api.example.com/v1", "ftp://files"]

[functions.d]
command = ["./d"]
runtime = "lambda"
services = ["billing"]
publish = ["orders"]
"#,
    );
    assert_reports(
        &d,
        "gantry.toml:4:1: error[M007]: [functions.a] has both `component` and `command`",
    );
    assert_reports(
        &d,
        "gantry.toml:7:1: error[M004]: [functions.b] has a `command` but no `runtime`",
    );
    assert_reports(&d, "hint: add `runtime = \"lambda\"`");
    assert_reports(
        &d,
        "gantry.toml:11:12: error[M006]: executor `cgi` is not known",
    );
    assert_reports(
        &d,
        "gantry.toml:10:13: error[M006]: `/srv/app/c.wasm` does not exist",
    );
    assert_reports(&d, "hint: build the function first");
    assert_reports(
        &d,
        "gantry.toml:12:10: error[M006]: `memory` in [functions.c] must be between 64KiB and 4GiB",
    );
    assert_reports(&d, "gantry.toml:13:27: error[M006]: `https://api.example.com/v1` in [functions.c] must be a scheme, host and port, with no path");
    assert_reports(&d, "`ftp://files` in [functions.c] must use http or https");
    assert_reports(
        &d,
        "error[M009]: function `d` is granted service `billing`, which is not declared",
    );
    assert_reports(
        &d,
        "error[M011]: function `d` may publish to `orders`, which is not a declared topic",
    );
}

#[test]
fn schedules_and_webhooks_are_checked() {
    let d = errors(
        r#"
[functions.report]
component = "report.wasm"

[schedules.nightly]
cron = "0 0 25 * * *"
timezone = "Europe/Pariss"
to = "function:report"
missed = "later"

[schedules.other]
cron = "*/5 * * * *"
to = "report"

[[routes]]
path = "/hooks"
to = "function:report"
webhook = { style = "gitlab", secret_env = "X" }

[[routes]]
path = "/hooks2"
to = "function:report"
webhook = { style = "github" }
"#,
    );
    assert_reports(
        &d,
        "gantry.toml:6:8: error[M006]: `0 0 25 * * *` is not a cron expression",
    );
    assert_reports(
        &d,
        "gantry.toml:7:12: error[M006]: `Europe/Pariss` is not a known time zone",
    );
    assert_reports(
        &d,
        "gantry.toml:9:10: error[M006]: `missed = \"later\"` is not a policy",
    );
    assert_reports(
        &d,
        "gantry.toml:13:6: error[M006]: `report` is not a function",
    );
    assert_reports(&d, "error[M006]: webhook style `gitlab` is not known");
    assert_reports(
        &d,
        "gantry.toml:23:11: error[M004]: `webhook` in [[routes]] #2 is missing `secret_env`",
    );
}

#[test]
fn telemetry_mistakes_name_the_key_and_the_fix() {
    let d = errors(&format!(
        "{SERVICES}\n[telemetry]\nsample_ratio = 10\notlp_protocol = \"thrift\"\nslow = \"soon\"\n"
    ));
    assert_reports(&d, "gantry.toml:6:16: error[M");
    assert_reports(&d, "`sample_ratio` must be a number from 0 to 1");
    assert_reports(&d, "`sample_ratio = 0.1` keeps one trace in ten");
    assert_reports(&d, "gantry.toml:7:17: error[M");
    assert_reports(&d, "`thrift` is not an OTLP protocol Gantry speaks");
    assert_reports(&d, "use `http/protobuf` or `grpc`");
    assert_reports(&d, "`soon` is not a duration");
}

#[test]
fn an_unknown_events_sync_mode_is_explained() {
    let d = errors("[platform]\nevents_sync = \"never\"\n");
    assert_reports(
        &d,
        "gantry.toml:2:15: error[M006]: `never` is not an `events_sync` mode",
    );
    assert_reports(&d, "use `always` (the default");
}

#[test]
fn edge_and_tls_mistakes_are_explained() {
    let d = errors(
        "[platform]\nescaped_slashes = \"drop\"\nredirect_http = \"127.0.0.1:80\"\nauth_failure_limit = { requests = 5, per = \"1m\", key = \"header:x\" }\n",
    );
    assert_reports(
        &d,
        "gantry.toml:2:19: error[M006]: `drop` is not an `escaped_slashes` action",
    );
    assert_reports(&d, "use `reject` (the default), `keep` or `decode`");
    assert_reports(
        &d,
        "`redirect_http` redirects to https, but the gateway has no `[platform.tls]`",
    );
    assert_reports(&d, "`auth_failure_limit` always counts by client address");

    let d = errors("[platform.tls]\ncert = \"missing.pem\"\n");
    assert_reports(&d, "[platform.tls] needs `key`");
    assert_reports(&d, "missing.pem` does not exist");

    let d = errors("[platform.tls]\n");
    assert_reports(&d, "[platform.tls] has no certificate");
    assert_reports(&d, "gantry certs dev");

    let d = errors(
        "[services.app]\nurls = [\"http://127.0.0.1:1\"]\nca = \"ca.pem\"\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\nauth = \"mtls\"\n",
    );
    assert_reports(
        &d,
        "route `/*` needs client certificates but `[platform.tls]` has no `client_ca`",
    );
    assert_reports(&d, "`ca` in [services.app] applies to `https://` urls");
}

#[test]
fn upstream_protocols_and_grpc_retries_are_checked() {
    // HTTP/2 over TLS needs https urls; h2c needs plain ones.
    let d = errors("[services.api]\nurls = [\"http://127.0.0.1:9000\"]\nprotocol = \"h2\"\n");
    assert_reports(
        &d,
        "gantry.toml:3:12: error[M006]: `protocol = \"h2\"` in [services.api] is HTTP/2 over TLS",
    );
    assert_reports(&d, "use `protocol = \"h2c\"`");
    let d = errors("[services.api]\nurls = [\"https://api.test\"]\nprotocol = \"h2c\"\n");
    assert_reports(&d, "use `protocol = \"h2\"` for `https://` instances");
    let d = errors("[services.api]\nurls = [\"http://127.0.0.1:9000\"]\nprotocol = \"http2\"\n");
    assert_reports(&d, "unknown protocol `http2` in [services.api]");
    // The gRPC health check only exists over HTTP/2.
    let d = errors("[services.api]\nurls = [\"http://127.0.0.1:9000\"]\nhealth = \"grpc\"\n");
    assert_reports(
        &d,
        "`health = \"grpc\"` in [services.api] needs an HTTP/2 service",
    );
    // gRPC status names in `retry.on`, with a suggestion for a misspelling.
    let d = errors(&format!(
        "{SERVICES}\n[[routes]]\npath = \"/*\"\nto = \"orders\"\nretry = {{ on = [503, \"unavailble\"] }}\n"
    ));
    assert_reports(&d, "gantry.toml:8:22: error[M006]: `unavailble` in `on`");
    assert_reports(&d, "did you mean `unavailable`?");
    let ok = parse(
        &format!(
            "{SERVICES}protocol = \"h2c\"\nhealth = \"grpc\"\n[[routes]]\npath = \"/*\"\nto = \"orders\"\nretry = {{ on = [\"UNAVAILABLE\", 502] }}\n"
        ),
        Path::new("gantry.toml"),
        Path::new("/srv/app"),
    )
    .expect("a gRPC service with retries on UNAVAILABLE is valid");
    let retry = &ok.routes[0].retry.on;
    assert_eq!(retry.len(), 2);
}

#[test]
fn cluster_mistakes_point_at_the_key() {
    let d = errors("[cluster]\nschema = \"gantry\"\n");
    assert_reports(&d, "gantry.toml:1:1:");
    assert_reports(&d, "[cluster] does not say where the database is");
    assert_reports(&d, "postgres_env = \"VAR\"");

    let d = errors("[cluster]\npostgres = \"mysql://db/x\"\n");
    assert_reports(&d, "gantry.toml:2:");
    assert_reports(&d, "is not a postgres:// URL");

    let d = errors("[cluster]\npostgres = \"postgres://db/x\"\npostgres_env = \"PG\"\n");
    assert_reports(&d, "has both `postgres` and `postgres_env`");

    let d = errors("[cluster]\npostgres_env = \"PG URL\"\n");
    assert_reports(&d, "is not an environment variable name");

    let d = errors("[cluster]\npostgres = \"postgres://db/x\"\nschema = \"Prod; DROP TABLE x\"\n");
    assert_reports(&d, "gantry.toml:3:");
    assert_reports(&d, "is not a schema name Gantry accepts");

    let d = errors("[cluster]\npostgres = \"postgres://db/x\"\nlease = \"100ms\"\n");
    assert_reports(&d, "use a lease from 1s to 10m");

    let d = errors("[cluster]\npostgres = \"postgres://db/x\"\npool_size = 0\n");
    assert_reports(&d, "pool_size");

    let d = errors("[cluster]\npostgres = \"postgres://db/x\"\nleese = \"5s\"\n");
    assert_reports(&d, "did you mean `lease`?");
}

#[test]
fn a_cluster_url_is_never_printed() {
    let manifest = parse(
        "[cluster]\npostgres = \"postgres://gantry:s3cret@db/x\"\n",
        Path::new("gantry.toml"),
        Path::new("/srv/app"),
    )
    .unwrap();
    let cluster = manifest.cluster.unwrap();
    assert!(!format!("{cluster:?}").contains("s3cret"));
    assert_eq!(cluster.schema, "public");
    assert_eq!(cluster.lease, std::time::Duration::from_secs(8));
}
