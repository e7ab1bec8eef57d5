//! A TLS-terminating TCP proxy on loopback, for tests of clients that reach a server over
//! HTTPS with a private CA: it serves a certificate for `127.0.0.1` issued by a fresh CA and
//! forwards the plain bytes to an upstream address (the test S3 server).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use kubesim::pki::Pki;

/// A running proxy; dropping it stops accepting.
pub struct TlsProxy {
    /// The port on 127.0.0.1 that speaks TLS.
    pub port: u16,
    /// PEM of the CA that issued the proxy's certificate (what a client must trust).
    pub ca_pem: String,
    task: JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    /// Starts a proxy to `upstream` on the current tokio runtime.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TlsProxy> {
        let pki = Pki::generate()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = Arc::new(acceptor);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        Ok(TlsProxy {
            port,
            ca_pem: pki.ca_pem.clone(),
            task,
        })
    }
}
