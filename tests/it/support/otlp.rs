//! A real OTLP receiver in the test process: the collector's gRPC trace service (tonic) and its
//! HTTP/protobuf endpoint (axum), both storing every span they are sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The request header a test collector records, as a collector's authentication would read it.
pub const TOKEN_HEADER: &str = "x-collector-token";

/// Spans received so far, the token header of each request, and each request's compression.
#[derive(Clone, Default)]
pub struct Received(
    Arc<Mutex<Vec<Span>>>,
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<String>>>,
);

impl Received {
    fn token(&self, value: Option<&str>) {
        if let Some(value) = value {
            self.1.lock().unwrap().push(value.to_owned());
        }
    }

    /// The token header of every request that carried one.
    pub fn tokens(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
    }

    fn encoding(&self, value: Option<&str>) {
        self.2
            .lock()
            .unwrap()
            .push(value.unwrap_or("identity").to_owned());
    }

    /// How each request's body was compressed (`identity` when it was not).
    pub fn encodings(&self) -> Vec<String> {
        self.2.lock().unwrap().clone()
    }

    fn store(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received, or panics after ten seconds.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        for _ in 0..200 {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver never saw {what}; it has {:#?}", self.spans());
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let header = |name| request.metadata().get(name).and_then(|v| v.to_str().ok());
        self.token(header(TOKEN_HEADER));
        self.encoding(header("grpc-encoding"));
        self.store(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; stops when dropped.
pub struct Collector {
    /// The URL to configure as the OTLP endpoint.
    pub endpoint: String,
    /// What it received.
    pub received: Received,
    _stop: watch::Sender<bool>,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.changed().await;
}

impl Collector {
    /// An OTLP/gRPC receiver on a free local port.
    pub async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Received::default();
        let (stop, stop_rx) = watch::channel(false);
        let service = TraceServiceServer::new(received.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stopped(stop_rx),
                ),
        );
        Self {
            endpoint,
            received,
            _stop: stop,
        }
    }

    /// An OTLP/HTTP protobuf receiver (`POST /v1/traces`) on a free local port.
    pub async fn http() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Received::default();
        let (stop, stop_rx) = watch::channel(false);
        let store = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
                    store.token(header(TOKEN_HEADER));
                    let encoding = header("content-encoding");
                    store.encoding(encoding);
                    let body = match encoding {
                        Some("gzip") => {
                            let mut plain = Vec::new();
                            let mut gunzip = flate2::read::GzDecoder::new(&body[..]);
                            if std::io::Read::read_to_end(&mut gunzip, &mut plain).is_err() {
                                return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                            }
                            axum::body::Bytes::from(plain)
                        }
                        _ => body,
                    };
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            store.store(request);
                            (axum::http::StatusCode::OK, Vec::new())
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                },
            ),
        );
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop_rx))
                .await
        });
        Self {
            endpoint,
            received,
            _stop: stop,
        }
    }
}

impl Collector {
    /// `plain` behind a TLS front (the test PKI's `localhost` certificate, ALPN `h2` and
    /// `http/1.1`) that forwards the decrypted bytes to it: the endpoint becomes
    /// `https://localhost:PORT`.
    pub async fn behind_tls(plain: Self) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = &super::cluster().pki().localhost;
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = plain.endpoint.trim_start_matches("http://").to_owned();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let (Ok(mut tls), Ok(mut up)) = (
                        acceptor.accept(tcp).await,
                        tokio::net::TcpStream::connect(&backend).await,
                    ) {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        Self {
            endpoint: format!("https://localhost:{port}"),
            ..plain
        }
    }
}

/// A span attribute's value as text (strings as they are, numbers formatted).
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}
