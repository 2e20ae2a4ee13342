//! The HTTP side of the emulator: the routers of the API host and the media host, and the accept
//! loop that serves them.
//!
//! Connections are served by hyper directly (not `axum::serve`) so that the `unreachable` fault
//! can close a kept-alive connection without answering: the service returns an error and hyper
//! drops the connection. The `hang` fault holds requests here too, before any handler sees them.
//! The handlers are in `oauth`, `call_log`, `media`, `files` and `ws`; each RingCentral one passes
//! the gate of `rate` first. Connections are served with upgrades, for the WebSocket of `ws`;
//! `ws`'s ticker runs beside the accept loops.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service as _;

use super::call_log::{
    account_call_log, account_call_log_record, extension_call_log, extension_call_log_record,
};
use super::files::{FILES_PATH, files_get, files_index};
use super::media::{recording_content, recording_meta};
use super::oauth::{revoke, token};
use super::reply::{json_response, not_found};
use super::state::Shared;
use super::ws::{WS_PATH, ticker, ws_upgrade, wstoken};

async fn stats(AxState(st): AxState<Shared>) -> Response {
    json_response(StatusCode::OK, &st.stats())
}

async fn fallback(uri: axum::http::Uri) -> Response {
    not_found("path", uri.path())
}

fn api_router(st: Shared) -> Router {
    Router::new()
        .route("/restapi/oauth/token", post(token))
        .route("/restapi/oauth/revoke", post(revoke))
        .route("/restapi/oauth/wstoken", post(wstoken))
        .route(WS_PATH, get(ws_upgrade))
        .route(
            "/restapi/v1.0/account/{account}/call-log",
            get(account_call_log),
        )
        .route(
            "/restapi/v1.0/account/{account}/call-log/{id}",
            get(account_call_log_record),
        )
        .route(
            "/restapi/v1.0/account/{account}/extension/{ext}/call-log",
            get(extension_call_log),
        )
        .route(
            "/restapi/v1.0/account/{account}/extension/{ext}/call-log/{id}",
            get(extension_call_log_record),
        )
        .route(
            "/restapi/v1.0/account/{account}/recording/{id}",
            get(recording_meta),
        )
        .route("/__emulator/stats", get(stats))
        .fallback(fallback)
        .with_state(st)
}

fn media_router(st: Shared) -> Router {
    Router::new()
        .route(
            "/restapi/v1.0/account/{account}/recording/{id}/content",
            get(recording_content),
        )
        .route(FILES_PATH, get(files_index))
        // Some directory clients ask for the index without its trailing slash.
        .route(FILES_PATH.trim_end_matches('/'), get(files_index))
        .route("/__emulator/files/{name}", get(files_get))
        .fallback(fallback)
        .with_state(st)
}

/// The service's error for the `unreachable` fault: hyper closes the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("emulated unreachable host")]
struct Unreachable;

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    st: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if st.unreachable() {
                    st.fault_injected();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (router, st) = (router.clone(), st.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut router = router.clone();
                    let st = st.clone();
                    async move {
                        if st.unreachable() {
                            st.fault_injected();
                            return Err(Unreachable);
                        }
                        if st.hanging() {
                            st.fault_injected();
                            while st.hanging() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        let resp: Result<Response, Infallible> = router.call(req.map(Body::new)).await;
                        Ok(resp.unwrap_or_else(|e| match e {}))
                    }
                });
                conns.spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "connection ended");
                    }
                });
            }
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves both hosts until `shutdown` completes.
pub(super) async fn serve(
    st: Shared,
    api: TcpListener,
    media: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let a = tokio::spawn(accept_loop(
        api,
        api_router(st.clone()),
        st.clone(),
        rx.clone(),
    ));
    let m = tokio::spawn(accept_loop(
        media,
        media_router(st.clone()),
        st.clone(),
        rx.clone(),
    ));
    let t = tokio::spawn(ticker(st.clone(), rx));
    shutdown.await;
    let _ = tx.send(true);
    let _ = a.await;
    let _ = m.await;
    let _ = t.await;
    Ok(())
}
