//! Object buckets: the target of upload routes (`to = "bucket:NAME"`).
//!
//! Each bucket is served on its own loopback listener, so an upload route
//! keeps every gateway policy. A `PUT`/`POST` streams the body into the
//! [`ObjectStore`] (files in `DATA_DIR/objects/BUCKET/`, or the cluster's
//! PostgreSQL), refusing it with 413 past `max_size`, keeps its content
//! type, makes it durable and visible at once, and publishes an
//! `object.created` CloudEvent to the bucket's `topic` before answering 201.
//! Subscriptions on that topic trigger functions as for any event. A `GET`
//! reads an object back; the platform API serves
//! `GET /v1/objects/{bucket}/{key}` as well.
//!
//! The object key is the request path (what is left after the route's
//! `strip_prefix`); a `POST` to `/` gets a generated key.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gantry_manifest::{Bucket, Service};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use gantry_events::{CloudEvent, EventBus};

mod store;

pub use store::{ObjectError, ObjectStore};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// What is kept beside each object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub content_type: String,
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
}

/// Every bucket, with its listener.
#[derive(Clone)]
pub struct Buckets {
    inner: Arc<Inner>,
}

struct Inner {
    objects: ObjectStore,
    bus: EventBus,
    listeners: Mutex<HashMap<String, Listener>>,
}

/// A bucket's listener address, its settings (changed in place by a reload)
/// and what stops it.
type Listener = (SocketAddr, Arc<Mutex<Bucket>>, CancellationToken);

/// Buckets prepared for a manifest but not yet served ([`Buckets::stage`]).
#[derive(Default)]
pub struct StagedBuckets {
    listeners: HashMap<String, Listener>,
    /// Running buckets and their settings to be.
    settings: Vec<(Arc<Mutex<Bucket>>, Bucket)>,
    /// Listeners started for new buckets.
    fresh: Vec<CancellationToken>,
}

impl std::fmt::Debug for StagedBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBuckets")
            .field("buckets", &self.listeners.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl StagedBuckets {
    /// The service each staged bucket is to the gateway.
    pub fn services(&self) -> BTreeMap<String, Service> {
        services_of(&self.listeners)
    }
}

fn services_of(listeners: &HashMap<String, Listener>) -> BTreeMap<String, Service> {
    listeners
        .iter()
        .map(|(name, (addr, _, _))| {
            let mut service = Service::external(vec![format!("http://{addr}")]);
            service.max_concurrent = 1_000_000;
            (format!("bucket:{name}"), service)
        })
        .collect()
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets").finish_non_exhaustive()
    }
}

impl Buckets {
    /// Buckets keeping their objects in `objects`.
    pub fn new(objects: ObjectStore, bus: EventBus) -> Buckets {
        Buckets {
            inner: Arc::new(Inner {
                objects,
                bus,
                listeners: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Serves exactly the buckets of `buckets` ([`Buckets::stage`] then
    /// [`Buckets::commit`]).
    pub async fn apply(&self, buckets: &BTreeMap<String, Bucket>) -> Result<(), String> {
        let staged = self.stage(buckets).await?;
        self.commit(staged);
        Ok(())
    }

    /// Prepares `buckets` without changing what is served: a new bucket gets
    /// its directory and a listener (known to nobody yet); settings of the
    /// others wait for [`Buckets::commit`]. A failure undoes the stage.
    pub async fn stage(&self, buckets: &BTreeMap<String, Bucket>) -> Result<StagedBuckets, String> {
        let running = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut staged = StagedBuckets::default();
        for (name, config) in buckets {
            if let Some((addr, current, stop)) = running.get(name) {
                staged
                    .listeners
                    .insert(name.clone(), (*addr, current.clone(), stop.clone()));
                staged.settings.push((current.clone(), config.clone()));
                continue;
            }
            match self.listen(name, config).await {
                Ok(listener) => {
                    staged.fresh.push(listener.2.clone());
                    staged.listeners.insert(name.clone(), listener);
                }
                Err(error) => {
                    self.discard(staged);
                    return Err(error);
                }
            }
        }
        Ok(staged)
    }

    /// Makes a staged set the one served: new settings in place, removed
    /// buckets stopped.
    pub fn commit(&self, staged: StagedBuckets) {
        for (current, config) in staged.settings {
            *current.lock().unwrap_or_else(|e| e.into_inner()) = config;
        }
        let mut listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, (_, _, stop)) in listeners.iter() {
            if !staged.listeners.contains_key(name) {
                stop.cancel();
            }
        }
        *listeners = staged.listeners;
    }

    /// Undoes a stage: new listeners stop.
    pub fn discard(&self, staged: StagedBuckets) {
        for stop in staged.fresh {
            stop.cancel();
        }
    }

    /// A new bucket's directory and listener.
    async fn listen(&self, name: &str, config: &Bucket) -> Result<Listener, String> {
        self.inner
            .objects
            .prepare(name)
            .map_err(|e| format!("bucket `{name}`: cannot create its directory: {e}"))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("bucket `{name}`: cannot listen on loopback: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let config = Arc::new(Mutex::new(config.clone()));
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            self.clone(),
            name.to_string(),
            config.clone(),
            stop.clone(),
        ));
        Ok((addr, config, stop))
    }

    /// The service each bucket is to the gateway: `bucket:NAME`.
    pub fn services(&self) -> BTreeMap<String, Service> {
        services_of(
            &self
                .inner
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    pub fn stop(&self) {
        let mut listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, (_, _, stop)) in listeners.drain() {
            stop.cancel();
        }
    }

    /// An object's metadata and bytes; `None` for a key that is not valid
    /// or not there.
    pub async fn read(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(ObjectInfo, Bytes)>, ObjectError> {
        if !valid_key(key) {
            return Ok(None);
        }
        self.inner.objects.read(bucket, key).await
    }
}

/// Keys are non-empty, at most 512 bytes, printable, without `..` segments.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key.chars().all(|c| !c.is_control())
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

async fn serve(
    listener: tokio::net::TcpListener,
    buckets: Buckets,
    name: String,
    config: Arc<Mutex<Bucket>>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let (buckets, name, config) = (buckets.clone(), name.clone(), config.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (buckets, name, config) = (buckets.clone(), name.clone(), config.clone());
                async move {
                    let config = config.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    Ok::<_, std::convert::Infallible>(
                        handle(&buckets, &name, &config, request).await,
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| {
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
        })
}

fn problem(status: StatusCode, kind: &str, title: &'static str, detail: String) -> Response<Body> {
    gantry_problem::Problem::new(status, kind, title)
        .detail(detail)
        .respond_with(|json| {
            Full::new(json)
                .map_err(|never| match never {})
                .boxed_unsync()
        })
}

async fn handle(
    buckets: &Buckets,
    name: &str,
    config: &Bucket,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().trim_start_matches('/').to_string();
    let key = percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .into_owned();
    match *request.method() {
        Method::GET | Method::HEAD => match buckets.read(name, &key).await {
            Ok(Some((info, bytes))) => answer(StatusCode::OK, &info.content_type, bytes),
            Ok(None) => problem(
                StatusCode::NOT_FOUND,
                "object-not-found",
                "No such object",
                format!("bucket `{name}` has no object `{key}`"),
            ),
            Err(error) => unavailable(name, &key, &error),
        },
        Method::PUT | Method::POST => {
            let key = if key.is_empty() && request.method() == Method::POST {
                uuid::Uuid::new_v4().to_string()
            } else {
                key
            };
            match store(buckets, name, config, &key, request).await {
                Ok(info) => answer(
                    StatusCode::CREATED,
                    "application/json",
                    serde_json::to_vec(&info).unwrap_or_default(),
                ),
                Err(response) => response,
            }
        }
        _ => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "a bucket takes PUT or POST (upload) and GET (read)".into(),
        ),
    }
}

/// Streams the body into the store, then publishes `object.created`.
async fn store(
    buckets: &Buckets,
    name: &str,
    config: &Bucket,
    key: &str,
    request: Request<Incoming>,
) -> Result<ObjectInfo, Response<Body>> {
    if !valid_key(key) {
        return Err(problem(StatusCode::BAD_REQUEST, "bad-object-key", "Bad object key", format!("`{key}` is not a valid object key: use printable characters and `/`-separated segments without `.` or `..`")));
    }
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    if let Some(length) = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > config.max_size {
            return Err(too_large(name, config.max_size));
        }
    }
    let failed = |error: ObjectError| {
        tracing::error!(target: "gantry::objects", bucket = name, key, %error, "cannot store an object");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "object-store-failed",
            "Could not store the object",
            format!("{error}; upload it again"),
        )
    };
    let mut upload = buckets
        .inner
        .objects
        .begin(name, key)
        .await
        .map_err(failed)?;
    let mut body = request.into_body();
    let mut size = 0u64;
    let mut hash = Sha256::new();
    let written: Result<(), Response<Body>> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request-body",
                    "The upload could not be read",
                    e.to_string(),
                )
            })?;
            if let Ok(chunk) = frame.into_data() {
                size += chunk.len() as u64;
                if size > config.max_size {
                    return Err(too_large(name, config.max_size));
                }
                hash.update(&chunk);
                upload.write(&chunk).await.map_err(failed)?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(response) = written {
        upload.abort().await;
        return Err(response);
    }
    let info = ObjectInfo {
        bucket: name.to_string(),
        key: key.to_string(),
        size,
        content_type,
        sha256: hex_string(&hash.finalize()),
        created: chrono_now(),
    };
    upload.commit(&info).await.map_err(failed)?;
    if let Some(topic) = &config.topic {
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": format!("{name}/{key}/{}", info.sha256),
            "source": format!("/gantry/buckets/{name}"),
            "type": "object.created",
            "subject": key,
            "datacontenttype": "application/json",
            "data": {
                "bucket": name,
                "key": key,
                "size": info.size,
                "content_type": info.content_type,
                "sha256": info.sha256,
                "url": format!("/v1/objects/{name}/{}", percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)),
            },
        });
        let published = match CloudEvent::from_json(event) {
            Ok(event) => buckets
                .inner
                .bus
                .publish(topic, vec![event], None)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = published {
            tracing::error!(target: "gantry::objects", bucket = name, key, %error, "stored the object but could not announce it");
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "object-event-failed",
                "The object was stored but not announced",
                format!("publishing object.created to `{topic}` failed: {error}; upload it again"),
            ));
        }
    }
    tracing::info!(target: "gantry::objects", bucket = name, key, size = info.size, "object stored");
    Ok(info)
}

/// A read the store failed: 503, to be tried again.
fn unavailable(bucket: &str, key: &str, error: &ObjectError) -> Response<Body> {
    tracing::error!(target: "gantry::objects", bucket, key, %error, "cannot read an object");
    gantry_cluster::postgres::store_unavailable(error).respond_with(|json| {
        Full::new(json)
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

fn too_large(bucket: &str, max: u64) -> Response<Body> {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "object-too-large",
        "Object too large",
        format!("bucket `{bucket}` takes objects of at most {max} bytes (its `max_size`)"),
    )
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `GET /v1/objects/{bucket}/{*key}` on the platform API: an object's bytes,
/// with its content type and `ETag` (its SHA-256).
pub fn platform_router(buckets: Buckets) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/objects/{bucket}/{*key}",
            axum::routing::get(read_object),
        )
        .with_state(buckets)
}

async fn read_object(
    axum::extract::State(buckets): axum::extract::State<Buckets>,
    axum::extract::Path((bucket, key)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match buckets.read(&bucket, &key).await {
        Ok(Some((info, bytes))) => (
            [
                (http::header::CONTENT_TYPE, info.content_type),
                (http::header::ETAG, format!("\"{}\"", info.sha256)),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => {
            let (parts, body) = problem(
                StatusCode::NOT_FOUND,
                "object-not-found",
                "No such object",
                format!("bucket `{bucket}` has no object `{key}`"),
            )
            .into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(error) => {
            let (parts, body) = unavailable(&bucket, &key, &error).into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys_cannot_escape_the_bucket() {
        assert!(valid_key("cat.jpg"));
        assert!(valid_key("2026/11/cat.jpg"));
        for bad in ["", "/abs", "a/../b", "..", "a//b", "./x", "a\nb"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
