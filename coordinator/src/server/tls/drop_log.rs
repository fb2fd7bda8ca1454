//! Connections dropped before being served, logged without letting a flood flood the log:
//! each at DEBUG, and a count at INFO at most once per interval. [`DropLog`] is the pure
//! part (time is an argument); the caller logs what it returns.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a connection was dropped before tonic saw it.
#[derive(Debug)]
pub(super) enum Dropped {
    /// rustls refused the peer: a bad or missing certificate, another TLS version, or not
    /// TLS at all. Worth an operator's attention when it is one of ours.
    Refused {
        peer: SocketAddr,
        reason: rustls::Error,
    },
    /// Reset or closed during the handshake: port scanners, load-balancer probes.
    Failed { peer: SocketAddr, error: io::Error },
    /// No complete handshake within [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT).
    TimedOut { peer: SocketAddr },
    /// An enrolment connection while `max` were open: closed after its ClientHello.
    EnrolmentFull { peer: SocketAddr, max: usize },
    /// `accept` itself failed (e.g. out of file descriptors).
    Accept(io::Error),
}

impl Dropped {
    /// A handshake that failed with `error`, refused by rustls or not.
    pub(super) fn handshake(peer: SocketAddr, error: io::Error) -> Dropped {
        let refused = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned();
        match refused {
            Some(reason) => Dropped::Refused { peer, reason },
            None => Dropped::Failed { peer, error },
        }
    }

    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Dropped::Refused { peer, .. }
            | Dropped::Failed { peer, .. }
            | Dropped::TimedOut { peer }
            | Dropped::EnrolmentFull { peer, .. } => Some(*peer),
            Dropped::Accept(_) => None,
        }
    }

    /// One line per connection, at DEBUG.
    pub(super) fn log_debug(&self) {
        match self.peer() {
            Some(peer) => tracing::debug!(%peer, reason = %self, "connection dropped"),
            None => tracing::debug!(reason = %self, "connection dropped"),
        }
    }
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::Refused { reason, .. } => write!(f, "tls handshake refused: {reason}"),
            Dropped::Failed { error, .. } => write!(f, "tls handshake failed: {error}"),
            Dropped::TimedOut { .. } => write!(
                f,
                "tls handshake timed out after {} s",
                super::HANDSHAKE_TIMEOUT.as_secs()
            ),
            Dropped::EnrolmentFull { max, .. } => {
                write!(f, "{max} enrolment connections already open")
            }
            Dropped::Accept(error) => write!(f, "accepting a TCP connection failed: {error}"),
        }
    }
}

/// Counts dropped connections and says when to log them: the first drop after a quiet
/// interval at once (a misconfigured agent's refusal shows without delay), then at most one
/// summary per interval.
pub(super) struct DropLog {
    interval: Duration,
    /// When the last summary was returned.
    last_summary: Option<Instant>,
    /// Drops counted since then.
    pending: Counts,
    /// The latest of them: its peer and reason.
    latest: Option<(Option<SocketAddr>, String)>,
}

/// Dropped connections by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub refused: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub enrolment_full: u64,
    pub accept_failed: u64,
}

impl Counts {
    pub(super) fn total(&self) -> u64 {
        self.refused + self.failed + self.timed_out + self.enrolment_full + self.accept_failed
    }
}

/// What to log: how many connections were dropped since the last summary, and the latest.
#[derive(Debug)]
pub(super) struct Summary {
    pub counts: Counts,
    /// Time since the previous summary; `None` for the first.
    pub over: Option<Duration>,
    pub latest_peer: Option<SocketAddr>,
    pub latest_reason: String,
}

impl DropLog {
    pub(super) fn new(interval: Duration) -> DropLog {
        DropLog {
            interval,
            last_summary: None,
            pending: Counts::default(),
            latest: None,
        }
    }

    /// Counts `dropped`; returns the summary to log now, if no summary was returned within
    /// the interval.
    pub(super) fn record(&mut self, now: Instant, dropped: Dropped) -> Option<Summary> {
        let count = match dropped {
            Dropped::Refused { .. } => &mut self.pending.refused,
            Dropped::Failed { .. } => &mut self.pending.failed,
            Dropped::TimedOut { .. } => &mut self.pending.timed_out,
            Dropped::EnrolmentFull { .. } => &mut self.pending.enrolment_full,
            Dropped::Accept(_) => &mut self.pending.accept_failed,
        };
        *count += 1;
        self.latest = Some((dropped.peer(), dropped.to_string()));
        self.summary(now)
    }

    /// When the drops counted but not yet summed up may be; `None` if there are none.
    pub(super) fn due(&self) -> Option<Instant> {
        if self.pending.total() == 0 {
            return None;
        }
        self.last_summary.map(|at| at + self.interval)
    }

    /// The summary of the drops counted since the last one, if there are any and the
    /// interval has passed since the last one.
    pub(super) fn summary(&mut self, now: Instant) -> Option<Summary> {
        if self.pending.total() == 0 {
            return None;
        }
        let over = self
            .last_summary
            .map(|at| now.saturating_duration_since(at));
        if over.is_some_and(|over| over < self.interval) {
            return None;
        }
        let (latest_peer, latest_reason) = self.latest.take().unwrap_or_default();
        self.last_summary = Some(now);
        Some(Summary {
            counts: std::mem::take(&mut self.pending),
            over,
            latest_peer,
            latest_reason,
        })
    }
}

impl Summary {
    /// One INFO line.
    pub(super) fn log(&self) {
        let c = &self.counts;
        tracing::info!(
            n_dropped = c.total(),
            refused = c.refused,
            failed = c.failed,
            timed_out = c.timed_out,
            enrolment_full = c.enrolment_full,
            accept_failed = c.accept_failed,
            "{self}"
        );
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.counts.total();
        let plural = if n == 1 { "" } else { "s" };
        write!(f, "dropped {n} connection{plural} before serving")?;
        if let Some(over) = self.over {
            write!(f, " in the last {} s", over.as_secs())?;
        }
        match self.latest_peer {
            Some(peer) => write!(f, "; latest from {peer}: {}", self.latest_reason),
            None => write!(f, "; latest: {}", self.latest_reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn garbage(n: u8) -> Dropped {
        Dropped::Refused {
            peer: SocketAddr::from(([192, 0, 2, n], 40000)),
            reason: rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        }
    }

    #[test]
    fn a_lone_refusal_is_logged_at_once_with_its_peer_and_reason() {
        let mut log = DropLog::new(INTERVAL);
        let summary = log.record(Instant::now(), garbage(7)).unwrap();
        assert_eq!(summary.counts.total(), 1);
        assert_eq!(
            summary.to_string(),
            "dropped 1 connection before serving; latest from 192.0.2.7:40000: \
             tls handshake refused: received corrupt message of type InvalidContentType"
        );
        assert_eq!(log.due(), None);
    }

    #[test]
    fn a_flood_gives_one_line_per_interval_and_loses_no_count() {
        let mut log = DropLog::new(INTERVAL);
        let start = Instant::now();
        let mut lines = Vec::new();
        // 100 drops a second for 60 s, the caller also polling whenever a summary is due.
        for ms in (0..60_000).step_by(10) {
            let now = start + Duration::from_millis(ms);
            if log.due().is_some_and(|due| due <= now) {
                lines.extend(log.summary(now));
            }
            lines.extend(log.record(now, garbage((ms % 256) as u8)));
        }
        let end = start + Duration::from_secs(60);
        lines.extend(log.summary(end));
        assert_eq!(log.due(), None);

        assert!(lines.len() <= 60 / 10 + 1, "{} lines", lines.len());
        let total: u64 = lines.iter().map(|s| s.counts.total()).sum();
        assert_eq!(total, 6_000);
        assert_eq!(lines[0].counts.total(), 1);
        assert!(
            lines[2].to_string().starts_with(
                "dropped 1000 connections before serving in the last 10 s; latest from 192.0.2."
            ),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn nothing_is_due_until_the_interval_has_passed() {
        let mut log = DropLog::new(INTERVAL);
        let start = Instant::now();
        assert!(log.record(start, garbage(1)).is_some());
        assert!(
            log.record(start + Duration::from_secs(1), garbage(2))
                .is_none()
        );
        assert_eq!(log.due(), Some(start + INTERVAL));
        assert!(log.summary(start + Duration::from_secs(9)).is_none());
        let summary = log.summary(start + INTERVAL).unwrap();
        assert_eq!(summary.counts.refused, 1);
        assert_eq!(
            summary.latest_peer,
            Some(SocketAddr::from(([192, 0, 2, 2], 40000)))
        );
    }
}
