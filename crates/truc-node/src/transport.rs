//! TLS plumbing between rustls and tonic: a listener that completes TLS 1.3
//! handshakes (with a timeout and a connection cap) before tonic sees a connection,
//! and a connector that dials with this node's client certificate.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, TlsConnector, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, server::Connected};

/// A server-side TLS connection that holds its slot under the connection cap.
pub struct Conn {
    inner: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently and yields the
/// established connections. Each handshake uses the latest configuration `tls`
/// holds (CRLs are reloaded while running). Stops when `shutdown` turns true.
pub fn tls_incoming(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = crate::stopped(&mut shutdown) => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (tcp, peer) = tokio::select! {
                _ = crate::stopped(&mut shutdown) => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let _ = tx
                            .send(Ok(Conn {
                                inner,
                                _permit: permit,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "tls handshake refused"),
                    Err(_) => tracing::warn!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A lazily connecting gRPC channel to `address` over TLS with this node's client
/// certificate. The server certificate must be valid for `server_name` and
/// name node `server_name` (`urn:truc:node:`).
pub fn tls_channel(
    address: &str,
    server_name: &str,
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    keepalive: Duration,
    window: u32,
) -> Result<Channel, String> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let address = address.to_owned();
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("parent address {address:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive * 3)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(window))
        .initial_connection_window_size(Some(window.saturating_mul(2)))
        .tcp_nodelay(true);
    let expected = server_name.to_owned();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        let name = name.clone();
        let address = address.clone();
        let expected = expected.clone();
        async move {
            let addr: SocketAddr = match address.parse() {
                Ok(a) => a,
                Err(_) => tokio::net::lookup_host(&address)
                    .await?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("no address for {address}"))
                    })?,
            };
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls).connect(name.clone(), tcp).await?;
            // The certificate was checked for the DNS name; the node it names
            // must be the one expected too (a DNS name can be on another
            // node's certificate: `localhost` is on every dev certificate).
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| truc_pki::identity::node_id(leaf));
            match presented {
                Some(Ok(node)) if node.as_str() == expected => {}
                Some(Ok(node)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{address} presented the certificate of node {node}, not {expected}"
                        ),
                    ));
                }
                Some(Err(e)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{address} presented no node certificate for {expected}: {e}"),
                    ));
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{address} presented no certificate"),
                    ));
                }
            }
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
