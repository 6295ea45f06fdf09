//! The CLI's client for the admin API of a running Gantry.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where the admin API is: `--admin`, or the `admin` address of the manifest.
pub fn admin_address(admin: Option<SocketAddr>, manifest: &Path) -> Result<SocketAddr, String> {
    if let Some(admin) = admin {
        return Ok(admin);
    }
    gantry_manifest::load(manifest)
        .map(|m| m.platform.admin)
        .map_err(|e| {
            format!("{e}\n(pass --admin ADDRESS to reach a running Gantry without its manifest)")
        })
}

/// Sends one JSON request and returns the status and body text.
pub fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<(u16, String), String> {
    call_with(admin, method, path, "application/json", body)
}

/// Sends one request with the given content type.
pub fn call_with(
    admin: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{admin}{path}"))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| {
            format!("cannot reach Gantry at {admin}: {e} (is `gantry up` running?)")
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
}

/// GETs `path` and hands each chunk of the body to `sink` as it arrives,
/// until the body ends or `sink` returns false.
pub fn stream(
    admin: SocketAddr,
    path: &str,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::get(format!("http://{admin}{path}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| {
            format!("cannot reach Gantry at {admin}: {e} (is `gantry up` running?)")
        })?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(value["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(data) = frame.data_ref() {
                if !sink(data) {
                    break;
                }
            }
        }
        Ok(())
    })
}
