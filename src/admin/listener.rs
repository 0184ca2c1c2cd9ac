//! Where admin connections come from, and who each one is: `admin.listen` speaks plain HTTP
//! and TLS on one port (a TLS client's first byte is a handshake record, 0x16, which no HTTP
//! request starts with); TLS requires a client certificate that chains to our roots. The Unix
//! socket `admin.socket` takes connections from the service's own user and root only.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::access::Caller;
use crate::ca::Settings;
use crate::files::SOCKET_PATH_MAX;

/// A connection that has not shown its first byte or finished its handshake by then is dropped.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections being sorted out (first byte, handshake) at once; past that, new ones
/// wait in the backlog.
const MAX_PENDING: usize = 64;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The admin API's connections, each with its [`Caller`].
pub struct AdminListener {
    tcp: TcpListener,
    socket: Option<LocalSocket>,
    tls: watch::Receiver<Arc<ServerConfig>>,
    settings: Arc<Settings>,
    pending: JoinSet<Option<(AdminIo, Caller)>>,
}

impl AdminListener {
    /// Connections on `tcp` (TLS made with the configuration current when each arrives) and
    /// on `socket`.
    pub fn new(
        tcp: TcpListener,
        socket: Option<LocalSocket>,
        tls: watch::Receiver<Arc<ServerConfig>>,
        settings: Settings,
    ) -> AdminListener {
        AdminListener {
            tcp,
            socket,
            tls,
            settings: Arc::new(settings),
            pending: JoinSet::new(),
        }
    }

    fn greet_tcp(&mut self, tcp: TcpStream) {
        let acceptor = TlsAcceptor::from(self.tls.borrow().clone());
        let settings = self.settings.clone();
        self.pending.spawn(async move {
            let greeting = async {
                let mut first = [0u8; 1];
                let n = tcp.peek(&mut first).await.ok()?;
                if n == 0 || first[0] != TLS_HANDSHAKE {
                    return Some((AdminIo::Plain(tcp), Caller::Anonymous));
                }
                let tls = acceptor.accept(tcp).await.ok()?;
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let caller = match leaf.map(|der| crate::server::api_tls::client_of(der, &settings))
                {
                    Some(Ok(client)) => Caller::Principal(client.principal, client.serial_hex),
                    Some(Err(why)) => Caller::Unrecognised(why),
                    None => Caller::Anonymous,
                };
                Some((AdminIo::Tls(Box::new(tls)), caller))
            };
            tokio::time::timeout(GREETING_TIMEOUT, greeting)
                .await
                .ok()
                .flatten()
        });
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminIo;
    type Addr = Caller;

    async fn accept(&mut self) -> (AdminIo, Caller) {
        loop {
            let room = self.pending.len() < MAX_PENDING;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((tcp, _)) => {
                        let _ = tcp.set_nodelay(true);
                        self.greet_tcp(tcp);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept an admin connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                accepted = accept_local(&self.socket) => match accepted {
                    Ok(Some(conn)) => return conn,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept an admin socket connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.pending.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Caller> {
        Ok(Caller::Anonymous)
    }
}

impl Connected<IncomingStream<'_, AdminListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Caller {
        stream.remote_addr().clone()
    }
}

/// The next socket connection, `None` for one from another user (dropped); never, without a
/// socket.
async fn accept_local(socket: &Option<LocalSocket>) -> io::Result<Option<(AdminIo, Caller)>> {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    let (stream, _) = socket.listener.accept().await?;
    let uid = stream.peer_cred()?.uid();
    if uid != socket.owner && uid != 0 {
        tracing::warn!(uid, "refused an admin socket connection from another user");
        return Ok(None);
    }
    Ok(Some((AdminIo::Local(stream), Caller::Socket { uid })))
}

/// The admin API's Unix socket, 0600 and owned by the service's user.
pub struct LocalSocket {
    listener: UnixListener,
    owner: u32,
    path: PathBuf,
}

/// Why the admin socket cannot be offered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// Another user could replace the socket, so the CLI could not trust what it talks to.
    #[error("admin.socket: {} is writable by other users (mode {mode:o}); put the socket in a directory only the service's user can write", dir.display())]
    SharedDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Something other than a socket is in its place.
    #[error("admin.socket: {} exists and is not a socket; move it or choose another path", .0.display())]
    NotASocket(PathBuf),
    /// Another process answers on it.
    #[error("admin.socket: another process serves {}; give each idmint its own", .0.display())]
    InUse(PathBuf),
    /// Creating it failed.
    #[error("admin.socket: cannot create {}: {io}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        io: io::Error,
    },
}

impl LocalSocket {
    /// Creates the socket at `path`, replacing a stale one, readable and writable by this
    /// process's user alone.
    pub fn bind(path: &Path) -> Result<LocalSocket, SocketError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |io| SocketError::Io { path, io }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mode = std::fs::metadata(dir).map_err(io_at(dir))?.mode();
        if mode & 0o022 != 0 {
            return Err(SocketError::SharedDirectory {
                dir: dir.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_at(path))?;
        }
        let listener = UnixListener::bind(path).map_err(io_at(path))?;
        // Until this takes, a connection from another user is still refused by its uid.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_at(path))?;
        let owner = std::fs::metadata(path).map_err(io_at(path))?.uid();
        Ok(LocalSocket {
            listener,
            owner,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// Whether a Unix socket can be bound at `path`; if not, why.
pub fn check_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        return Err(format!(
            "{} has {len} bytes; a Unix socket path has at most {SOCKET_PATH_MAX}",
            path.display()
        ));
    }
    Ok(())
}

/// An admin connection of any kind.
pub enum AdminIo {
    /// Plain HTTP on `admin.listen`.
    Plain(TcpStream),
    /// Mutual TLS on `admin.listen`.
    Tls(Box<TlsStream<TcpStream>>),
    /// The Unix socket.
    Local(UnixStream),
}

impl AsyncRead for AdminIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            AdminIo::Local(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            AdminIo::Local(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_flush(cx),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            AdminIo::Local(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            AdminIo::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
