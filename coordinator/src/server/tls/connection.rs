//! An established connection as tonic serves it: the TLS stream, and for an enrolment
//! connection its deadlines and its slot under the cap.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::ConnectionLimits;
use crate::metrics::Traffic;

/// A connection yielded by [`tls_incoming`](super::tls_incoming).
///
/// Reads and writes go to the TLS stream. On an enrolment connection, once it has moved no
/// bytes for [`ConnectionLimits::enrolment_idle`] or has lived for
/// [`ConnectionLimits::enrolment_lifetime`], they fail with [`io::ErrorKind::TimedOut`]: tonic
/// then drops the connection, which closes the socket and frees its enrolment slot.
pub struct Connection {
    tls: TlsStream<TcpStream>,
    /// `None` for a connection with a client certificate.
    deadlines: Option<Deadlines>,
    /// Where the bytes it moves are counted ([`Connection::counting`]).
    traffic: Option<Traffic>,
}

struct Deadlines {
    idle: Duration,
    /// When bytes last moved, either way.
    last_active: Instant,
    /// Fires at or before `last_active + idle`; re-armed lazily when it fires early.
    idle_timer: Pin<Box<Sleep>>,
    end_of_life: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    pub(super) fn authenticated(tls: TlsStream<TcpStream>) -> Connection {
        Connection {
            tls,
            deadlines: None,
            traffic: None,
        }
    }

    pub(super) fn enrolment(
        tls: TlsStream<TcpStream>,
        limits: &ConnectionLimits,
        slot: OwnedSemaphorePermit,
    ) -> Connection {
        let now = Instant::now();
        Connection {
            tls,
            deadlines: Some(Deadlines {
                idle: limits.enrolment_idle,
                last_active: now,
                idle_timer: Box::pin(tokio::time::sleep_until(now + limits.enrolment_idle)),
                end_of_life: Box::pin(tokio::time::sleep_until(now + limits.enrolment_lifetime)),
                _slot: slot,
            }),
            traffic: None,
        }
    }

    /// Counts the bytes this connection reads and writes (after TLS) into `traffic`.
    pub fn counting(mut self, traffic: Traffic) -> Connection {
        self.traffic = Some(traffic);
        self
    }

    /// The TCP stream and the TLS session (protocol version, ALPN, peer certificates).
    pub fn get_ref(&self) -> (&TcpStream, &rustls::ServerConnection) {
        self.tls.get_ref()
    }

    /// Whether this connection came in through the enrolment ALPN protocol, without a
    /// client certificate.
    pub fn is_enrolment(&self) -> bool {
        self.deadlines.is_some()
    }

    /// `Err` once a deadline has passed; otherwise registers `cx` to be woken when one may.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match &mut self.deadlines {
            None => Ok(()),
            Some(deadlines) => deadlines.check(cx),
        }
    }

    fn moved(&mut self, n_bytes: usize) {
        if n_bytes == 0 {
            return;
        }
        if let Some(deadlines) = &mut self.deadlines {
            deadlines.last_active = Instant::now();
        }
    }
}

impl Deadlines {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.end_of_life.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "enrolment connection reached its maximum lifetime",
            ));
        }
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let due = self.last_active + self.idle;
            if due <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "enrolment connection idle",
                ));
            }
            self.idle_timer.as_mut().reset(due);
        }
        Ok(())
    }
}

impl Connected for Connection {
    /// That of the TLS stream: tonic finds the peer certificates and address there.
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_deadlines(cx)?;
        let before = buf.filled().len();
        let result = Pin::new(&mut self.tls).poll_read(cx, buf);
        let n_read = buf.filled().len() - before;
        self.moved(n_read);
        if let Some(traffic) = &self.traffic
            && n_read > 0
        {
            traffic.received(n_read);
        }
        result
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_deadlines(cx)?;
        let result = Pin::new(&mut self.tls).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.moved(n);
            if let Some(traffic) = &self.traffic {
                traffic.sent(n);
            }
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_deadlines(cx)?;
        let result = Pin::new(&mut self.tls).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.moved(n);
            if let Some(traffic) = &self.traffic {
                traffic.sent(n);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_deadlines(cx)?;
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
