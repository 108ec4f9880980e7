//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), encoded by the
//! official `prometheus-client` crate and served by axum; shared by the dispatcher and the agent
//! (`--metrics-listen ADDR`, stdout line `metrics on ADDR`).
//!
//! A role hands [`serve`] an [`Exposition`]: something that refreshes its scrape-time values
//! (gauges computed from live state) and encodes its registry.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a `/metrics` endpoint exposes.
pub trait Exposition: Send + Sync + 'static {
    /// Brings scrape-time values up to date (called before every encoding).
    fn refresh(&self) {}
    fn registry(&self) -> &Registry;

    /// The whole exposition, as a scrape sees it.
    fn render(&self) -> String {
        self.refresh();
        let mut text = String::new();
        prometheus_text::encode(&mut text, self.registry())
            .expect("invariant: encoding into a String cannot fail");
        text
    }
}

/// Binds `addr` for `/metrics` (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))
}

/// Serves `GET /metrics` on `listener` until `cancel`; other paths answer 404.
pub async fn serve(
    listener: TcpListener,
    exposition: Arc<dyn Exposition>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let exposition = exposition.clone();
            async move {
                match tokio::task::spawn_blocking(move || exposition.render()).await {
                    Ok(text) => (
                        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
                        text,
                    )
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    struct One(Registry);
    impl Exposition for One {
        fn registry(&self) -> &Registry {
            &self.0
        }
    }

    #[tokio::test]
    async fn serves_the_registry_on_metrics_only() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("things", "Things seen", c.clone());
        c.inc_by(3);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(One(registry)), cancel.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("things_total 3\n"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
