//! HTTP/2 on kvmount's Unix sockets, whatever `:authority` a client sends.
//!
//! hyper's HTTP/2 layer (h2) refuses a request whose `:authority` is not a valid URI authority
//! with RST_STREAM PROTOCOL_ERROR before any service code runs, and real clients of a Unix
//! socket send exactly that: the Secrets Store CSI Driver up to v1.5.x (grpc-go 1.56) sends the
//! socket path, Python grpcio a percent-encoded path, grpc-java the path, kubelet's plugin
//! registration client the path. On a Unix socket the authority names nothing, so
//! [`AnyAuthority`] sits between the socket and tonic and rewrites it: see [`rewrite`] for how
//! and ARCHITECTURE.md for why this and not another server stack.
//!
//! Only the client-to-server direction is touched, header blocks only; DATA and every other
//! frame pass through as they arrive (nothing buffers a stream). The TCP and TLS listeners
//! (webhook, metrics, mock vault) do not use this and keep h2's strict parsing.

pub mod rewrite;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tokio_util::io::poll_read_buf;
use tonic::transport::server::Connected;

pub use rewrite::{RewriteError, Rewriter};

/// How much is read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose header blocks reach the server with a valid `:authority`.
pub struct AnyAuthority<IO> {
    inner: IO,
    rewriter: Rewriter,
    /// Read from the socket, not yet taken by the rewriter (at most one header frame and a
    /// read's worth).
    raw: BytesMut,
    /// Rewritten, not yet handed to the server.
    ready: BytesMut,
    /// Set when the rewriter refused the connection; every later read fails.
    failed: Option<RewriteError>,
}

impl<IO> AnyAuthority<IO> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            failed: None,
        }
    }
}

/// Every connection `listener` accepts, wrapped, for `serve_with_incoming`.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<AnyAuthority<UnixStream>>> {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(AnyAuthority::new))
}

fn refused(err: &RewriteError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err.clone())
}

impl<IO: AsyncRead + Unpin> AsyncRead for AnyAuthority<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(err) = &this.failed {
                return Poll::Ready(Err(refused(err)));
            }
            if !this.raw.is_empty() {
                if let Err(err) = this.rewriter.process(&mut this.raw, &mut this.ready) {
                    tracing::debug!(error = %err, "closing a Unix-socket connection");
                    this.raw.clear();
                    this.failed = Some(err);
                    continue;
                }
                if !this.ready.is_empty() {
                    continue;
                }
            }
            this.raw.reserve(READ_CHUNK);
            let n = ready!(poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw))?;
            if n == 0 {
                // End of stream: whatever incomplete frame is held, the server sees the end.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for AnyAuthority<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
