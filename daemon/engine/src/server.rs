//! Listeners and the HTTP server.
//!
//! HTTP is served by hyper 1 through axum 0.8, the workspace's HTTP stack:
//! axum gives typed routing and extractors on top of hyper, and hyper's
//! connection-upgrade support is what `docker attach` needs. The server
//! accepts on several listeners at once (unix sockets, TCP, systemd-passed
//! sockets); TLS wraps a TCP listener's connections before HTTP sees them,
//! so with client verification a peer without a good certificate is refused
//! in the handshake, before any request is read.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may keep running after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A problem setting up a listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A `-H` value that cannot be understood.
    #[error("invalid host address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    /// The socket cannot be created or bound.
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: io::Error },
    /// The TLS material cannot be loaded.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Where to listen, parsed from a `-H` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:///path.sock`.
    Unix(PathBuf),
    /// `tcp://host:port` (also `host:port` and `:port`).
    Tcp(String),
    /// `fd://` (every socket systemd passed) or `fd://N` (that descriptor).
    Fd(Option<i32>),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::Fd(None) => f.write_str("fd://"),
            Self::Fd(Some(n)) => write!(f, "fd://{n}"),
        }
    }
}

/// Parses a `-H` value as dockerd does: `unix:///path`, `tcp://host:port`,
/// `tcp://` (port 2375, or 2376 with TLS), `host:port`, `:port`, `fd://`.
pub fn parse_host(address: &str, tls: bool) -> Result<ListenAddr, ServerError> {
    let bad = |reason: &str| ServerError::BadAddress { address: address.to_string(), reason: reason.to_string() };
    let default_port = if tls { 2376 } else { 2375 };
    let text = address.trim();
    if let Some(path) = text.strip_prefix("unix://") {
        if path.is_empty() {
            return Ok(ListenAddr::Unix(PathBuf::from(crate::config::DEFAULT_HOST.trim_start_matches("unix://"))));
        }
        if !path.starts_with('/') {
            return Err(bad("the socket path must be absolute"));
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = text.strip_prefix("fd://") {
        if rest.is_empty() {
            return Ok(ListenAddr::Fd(None));
        }
        let n: i32 = rest.parse().map_err(|_| bad("expected fd:// or fd://<number>"))?;
        if n < 3 {
            return Err(bad("descriptors below 3 are not sockets passed by systemd"));
        }
        return Ok(ListenAddr::Fd(Some(n)));
    }
    let hostport = match text.strip_prefix("tcp://") {
        Some(rest) => rest,
        None if text.contains("://") => return Err(bad("unsupported scheme (use unix://, tcp:// or fd://)")),
        None => text,
    };
    let hostport = hostport.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(bad("a TCP address has no path"));
    }
    let (host, port) = if hostport.is_empty() {
        ("", None)
    } else if let Some(rest) = hostport.strip_prefix('[') {
        // [v6]:port
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("junk after ']'")),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad("IPv6 addresses need brackets: tcp://[::1]:2375")),
            None => (hostport, None),
        }
    };
    let port: u16 = match port {
        None | Some("") => default_port,
        Some(p) => p.parse().map_err(|_| bad("the port must be a number from 0 to 65535"))?,
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let formatted = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Ok(ListenAddr::Tcp(formatted))
}

/// A bound listener.
pub enum Listener {
    Unix { listener: UnixListener, path: Option<PathBuf> },
    Tcp { listener: TcpListener, tls: Option<TlsAcceptor> },
}

impl Listener {
    /// What to print in logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Unix { listener, path } => match path {
                Some(p) => format!("unix://{}", p.display()),
                None => listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!("unix://{}", p.display())))
                    .unwrap_or_else(|| "unix socket (systemd)".to_string()),
            },
            Self::Tcp { listener, tls } => {
                let scheme = if tls.is_some() { "tcp+tls" } else { "tcp" };
                match listener.local_addr() {
                    Ok(a) => format!("{scheme}://{a}"),
                    Err(_) => format!("{scheme}://?"),
                }
            }
        }
    }

    /// The local TCP address, for TCP listeners.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp { listener, .. } => listener.local_addr().ok(),
            Self::Unix { .. } => None,
        }
    }
}

/// Creates a unix socket listener at `path`, replacing a stale socket file,
/// with mode 0660.
pub fn bind_unix(path: &Path) -> Result<Listener, ServerError> {
    let address = format!("unix://{}", path.display());
    let err = |source: io::Error| ServerError::Bind { address: address.clone(), source };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(Listener::Unix { listener, path: Some(path.to_path_buf()) })
}

/// Binds a TCP listener.
pub async fn bind_tcp(addr: &str, tls: Option<TlsAcceptor>) -> Result<Listener, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { address: format!("tcp://{addr}"), source })?;
    Ok(Listener::Tcp { listener, tls })
}

/// Takes the sockets systemd passed (`LISTEN_FDS`). Call once, early.
pub struct SystemdSockets {
    fds: listenfd::ListenFd,
}

impl SystemdSockets {
    /// Reads and clears `LISTEN_FDS`/`LISTEN_PID`.
    pub fn from_env() -> Self {
        Self { fds: listenfd::ListenFd::from_env() }
    }

    /// Turns the passed sockets into listeners: every one for `fd://`, or
    /// only descriptor `n` for `fd://n`.
    pub fn take(&mut self, which: Option<i32>, tls: Option<&TlsAcceptor>) -> Result<Vec<Listener>, ServerError> {
        let address = match which {
            Some(n) => format!("fd://{n}"),
            None => "fd://".to_string(),
        };
        let err = |reason: String| ServerError::Bind {
            address: address.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, reason),
        };
        let count = self.fds.len();
        if count == 0 {
            return Err(err("no sockets were passed by systemd (LISTEN_FDS is not set)".to_string()));
        }
        let indexes: Vec<usize> = match which {
            None => (0..count).collect(),
            Some(n) => {
                let idx = usize::try_from(n - 3).map_err(|_| err("descriptor below 3".to_string()))?;
                if idx >= count {
                    return Err(err(format!("systemd passed only {count} socket(s)")));
                }
                vec![idx]
            }
        };
        let mut listeners = Vec::new();
        for idx in indexes {
            if let Ok(Some(l)) = self.fds.take_unix_listener(idx) {
                l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
                let listener = UnixListener::from_std(l).map_err(|e| err(e.to_string()))?;
                listeners.push(Listener::Unix { listener, path: None });
                continue;
            }
            match self.fds.take_tcp_listener(idx) {
                Ok(Some(l)) => {
                    l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
                    let listener = TcpListener::from_std(l).map_err(|e| err(e.to_string()))?;
                    listeners.push(Listener::Tcp { listener, tls: tls.cloned() });
                }
                Ok(None) => return Err(err(format!("socket {} was already taken", idx + 3))),
                Err(e) => return Err(err(format!("descriptor {}: {e}", idx + 3))),
            }
        }
        Ok(listeners)
    }
}

/// Builds the TLS acceptor: the server certificate chain and key, and with
/// `verify_ca` a verifier that requires a client certificate signed by it.
pub fn tls_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&settings.cert)?;
    let key = read_key(&settings.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match &settings.verify_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| ServerError::Tls(format!("{}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServerError::Tls(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", settings.cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ServerError> {
    let data = fs::read(path).map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!("{}: no PEM certificate found", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ServerError> {
    let data = fs::read(path).map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| ServerError::Tls(format!("{}: no PEM private key found", path.display())))
}

/// A shutdown signal shared by the server and long-running handlers
/// (event streams end when it fires). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    sender: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (sender, _) = watch::channel(false);
        Self { sender: Arc::new(sender) }
    }

    /// Starts the shutdown; every waiter wakes up.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// Completes once [`Shutdown::trigger`] has been called.
    pub async fn wait(&self) {
        let mut rx = self.sender.subscribe();
        // An error means the sender is gone, which cannot happen while self lives.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Serves `app` on every listener until `shutdown` fires, then stops
/// accepting, lets open requests finish (up to a drain timeout) and removes
/// the unix socket files it created.
pub async fn serve(listeners: Vec<Listener>, app: Router, shutdown: Shutdown) {
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tracing::info!(address = %listener.describe(), "API listen");
        tasks.spawn(accept_loop(listener, app.clone(), shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(listener: Listener, app: Router, shutdown: Shutdown) {
    let mut connections = JoinSet::new();
    let description = listener.describe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Accepted::Unix(stream)) => {
                connections.spawn(serve_connection(stream, app.clone(), shutdown.clone()));
            }
            Ok(Accepted::Tcp(stream, peer, tls)) => {
                let app = app.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match tls {
                        None => serve_connection(stream, app, shutdown).await,
                        Some(acceptor) => {
                            if !starts_with_tls(&stream).await {
                                refuse_plain_http(stream, peer).await;
                                return;
                            }
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => serve_connection(tls_stream, app, shutdown).await,
                                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(address = %description, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    if let Listener::Unix { path: Some(path), .. } = &listener {
        let _ = fs::remove_file(path);
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!(address = %description, "connections still open after the drain timeout; closing them");
        connections.abort_all();
    }
}

/// Whether the client's first byte opens a TLS handshake record (0x16).
/// Waits at most the handshake timeout; a silent or closed peer counts as
/// TLS so the handshake reports it.
async fn starts_with_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => true,
    }
}

/// Answers plain HTTP sent to a TLS listener the way Go's server does, then
/// closes the connection. Nothing of the request is served.
async fn refuse_plain_http(mut stream: tokio::net::TcpStream, peer: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tracing::warn!(%peer, "plain HTTP request on a TLS listener refused");
    // Read the request head first: closing with unread input makes the
    // kernel reset the connection, and the client would lose the reply.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let body = "Client sent an HTTP request to an HTTPS server.\n";
    let reply = format!(
        "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
    // Let the client read the reply and close its side.
    let drain = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream, SocketAddr, Option<TlsAcceptor>),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Unix { listener, .. } => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
        Listener::Tcp { listener, tls } => {
            listener.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer, tls.clone()))
        }
    }
}

async fn serve_connection<S>(stream: S, app: Router, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.wait() => {
            connection.as_mut().graceful_shutdown();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }
}

/// Logs the loud warning dockerd prints for TCP without client verification.
pub fn warn_insecure_tcp(address: &str, tls: bool) {
    let what = if tls { "without --tlsverify" } else { "without TLS" };
    tracing::warn!(
        "binding to {address} {what} is insecure: anyone who can reach this address gets root on this host. \
         Use --tlsverify with --tlscacert, --tlscert and --tlskey, or listen on a unix socket only"
    );
    eprintln!(
        "WARNING: API is accessible on {address} {what}. Access to the remote API is equivalent to root access on the host."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(parse_host("unix:///run/x.sock", false).unwrap(), ListenAddr::Unix("/run/x.sock".into()));
        assert_eq!(parse_host("tcp://127.0.0.1:2375", false).unwrap(), ListenAddr::Tcp("127.0.0.1:2375".into()));
        assert_eq!(parse_host("tcp://", false).unwrap(), ListenAddr::Tcp("127.0.0.1:2375".into()));
        assert_eq!(parse_host("tcp://0.0.0.0", true).unwrap(), ListenAddr::Tcp("0.0.0.0:2376".into()));
        assert_eq!(parse_host(":4243", false).unwrap(), ListenAddr::Tcp("127.0.0.1:4243".into()));
        assert_eq!(parse_host("localhost:80", false).unwrap(), ListenAddr::Tcp("localhost:80".into()));
        assert_eq!(parse_host("tcp://[::1]:2375", false).unwrap(), ListenAddr::Tcp("[::1]:2375".into()));
        assert_eq!(parse_host("fd://", false).unwrap(), ListenAddr::Fd(None));
        assert_eq!(parse_host("fd://3", false).unwrap(), ListenAddr::Fd(Some(3)));
        for bad in ["unix://relative.sock", "ssh://host", "tcp://1.2.3.4:99999", "tcp://::1:80", "fd://x", "fd://1", "tcp://h:1/path"] {
            assert!(parse_host(bad, false).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn unix_socket_mode_and_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let first = bind_unix(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(first);
        // The stale socket file is replaced.
        let _second = bind_unix(&path).unwrap();
        // A regular file is never removed.
        let file = dir.path().join("plain");
        fs::write(&file, b"keep").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(fs::read(&file).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn shutdown_wakes_waiters() {
        let s = Shutdown::new();
        let w = s.clone();
        let waiter = tokio::spawn(async move { w.wait().await });
        s.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(s.is_triggered());
        // Waiting after the fact returns at once.
        tokio::time::timeout(Duration::from_secs(5), s.wait()).await.unwrap();
    }

    #[test]
    fn tls_material_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, b"").unwrap();
        let settings = TlsSettings { cert: empty.clone(), key: empty.clone(), verify_ca: None };
        let err = tls_acceptor(&settings).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let settings = TlsSettings { cert: dir.path().join("missing.pem"), key: empty, verify_ca: None };
        assert!(tls_acceptor(&settings).is_err());
    }
}
