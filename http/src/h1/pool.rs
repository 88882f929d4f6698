//! The fast path's idle upstream connections: a list per upstream under one short lock, taken most recent first
//! (the warmest connection), at most `max_idle` kept per upstream, none kept longer than `idle_timeout`. The
//! upstreams are found by comparing their names in a short list (a queue-proxy has one, an activator a few pods
//! per service): hashing an `Authority` byte by byte cost more than the rest of the pool. An idle
//! connection is not polled by any task; one that the upstream closed (or that says anything while idle) shows
//! as readable in the runtime's readiness and is dropped instead of reused, without a system call. A request
//! that could not be sent again if the connection turned out closed (it has a body, or is not idempotent) asks
//! the kernel instead: the runtime learns of an upstream's close only when it next polls for events, and a
//! request written in that window is lost.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use ebb_process::sync::Locked;
use http::uri::Authority;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{Cause, ProxyError};

/// Idle upstream connections.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<(Authority, VecDeque<Idle>)>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    reaper: std::sync::OnceLock<()>,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
}

impl Idle {
    /// Whether the upstream closed it or sent something while it was idle (either way it cannot carry a
    /// request). Readiness is the runtime's, so this costs no system call.
    fn is_dead(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.stream.poll_read_ready(&mut cx).is_ready()
    }

    /// [`Self::is_dead`] as the kernel knows it now (one system call): the upstream's close may have arrived
    /// after the runtime last looked.
    fn is_dead_now(&self) -> bool {
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        !matches!(recv(self.stream.as_raw_fd(), &mut byte, flags), Err(Errno::EAGAIN))
    }
}

/// An upstream connection for one exchange.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Whether it carried an exchange before (a reused connection may have been closed by the upstream just
    /// now; a fresh one was not).
    pub reused: bool,
}

impl Pool {
    /// An empty pool.
    pub fn new(max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            connect_timeout,
            reaper: std::sync::OnceLock::new(),
        })
    }

    /// An idle connection to `upstream`, or a new one (`now`: a recent time; `checked`: the request cannot be
    /// repeated on a new connection, so an idle one is checked with the kernel first).
    pub async fn get(
        self: &Arc<Self>,
        upstream: &Authority,
        now: Instant,
        checked: bool,
    ) -> Result<Upstream, ProxyError> {
        if let Some(stream) = self.take(upstream, now, checked) {
            return Ok(Upstream { stream, reused: true });
        }
        self.connect(upstream).await.map(|stream| Upstream { stream, reused: false })
    }

    fn take(&self, upstream: &Authority, now: Instant, checked: bool) -> Option<TcpStream> {
        let conn = {
            let mut idle = self.idle.locked();
            let list = find(&mut idle, upstream)?;
            loop {
                let conn = list.pop_back()?;
                if now.saturating_duration_since(conn.since) < self.idle_timeout && !conn.is_dead() {
                    break conn;
                }
            }
        };
        // Outside the lock; a closed one is dropped and the request goes on a new connection.
        (!checked || !conn.is_dead_now()).then_some(conn.stream)
    }

    /// A new connection (`TCP_NODELAY`), within the connect timeout.
    pub async fn connect(&self, upstream: &Authority) -> Result<TcpStream, ProxyError> {
        let port = upstream.port_u16().unwrap_or(80);
        let connecting = TcpStream::connect((upstream.host(), port));
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ProxyError::UpstreamRefused);
            }
            Ok(Err(err)) => return Err(ProxyError::UpstreamConnect(Cause::new(err))),
            Err(_) => return Err(ProxyError::UpstreamConnect(Cause::message("tcp connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Keeps `stream`, which has just finished an exchange cleanly (`now`), for the next one to `upstream`.
    pub fn put(self: &Arc<Self>, upstream: &Authority, stream: TcpStream, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.locked();
        let index = match idle.iter().position(|(name, _)| name.as_str() == upstream.as_str()) {
            Some(index) => index,
            None => {
                idle.push((upstream.clone(), VecDeque::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[index].1;
        // The oldest go first: past their time, dead, or beyond the limit.
        while list
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= self.idle_timeout || c.is_dead())
        {
            list.pop_front();
        }
        if list.len() >= self.max_idle {
            list.pop_front();
        }
        list.push_back(Idle { stream, since: now });
        drop(idle);
        self.reaper.get_or_init(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(reap(Arc::downgrade(self)));
            }
        });
    }

    /// Idle connections kept, over all upstreams.
    pub fn idle(&self) -> usize {
        self.idle.locked().iter().map(|(_, list)| list.len()).sum()
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.locked();
        for (_, list) in idle.iter_mut() {
            list.retain(|c| now.saturating_duration_since(c.since) < self.idle_timeout && !c.is_dead());
        }
        idle.retain(|(_, list)| !list.is_empty());
    }
}

fn find<'a>(
    idle: &'a mut [(Authority, VecDeque<Idle>)],
    upstream: &Authority,
) -> Option<&'a mut VecDeque<Idle>> {
    idle.iter_mut().find(|(name, _)| name.as_str() == upstream.as_str()).map(|(_, list)| list)
}

/// Closes idle connections that expired or that their upstream closed, while the pool lives, so that a proxy
/// that went quiet holds no half-closed sockets for long.
async fn reap(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reuses_live_connections_and_drops_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(2, Duration::from_secs(60), Duration::from_secs(1));
        let first = pool.get(&upstream, Instant::now(), false).await.unwrap();
        assert!(!first.reused);
        let (server_side, _) = listener.accept().await.unwrap();
        pool.put(&upstream, first.stream, Instant::now());
        assert_eq!(pool.idle(), 1);
        let again = pool.get(&upstream, Instant::now(), false).await.unwrap();
        assert!(again.reused);
        pool.put(&upstream, again.stream, Instant::now());

        // The upstream closes it: once the runtime has seen that, it is not handed out again.
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fresh = pool.get(&upstream, Instant::now(), false).await.unwrap();
        assert!(!fresh.reused, "a closed idle connection was reused");

        // At most `max_idle` are kept.
        let extra = pool.get(&upstream, Instant::now(), false).await.unwrap();
        let third = pool.get(&upstream, Instant::now(), false).await.unwrap();
        for conn in [fresh, extra, third] {
            pool.put(&upstream, conn.stream, Instant::now());
        }
        assert_eq!(pool.idle(), 2);
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_repeated_asks_the_kernel() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(2, Duration::from_secs(60), Duration::from_secs(1));
        let first = pool.get(&upstream, Instant::now(), false).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        pool.put(&upstream, first.stream, Instant::now());

        // The upstream closes it and the runtime has not polled for events since (a blocking sleep, no await):
        // its readiness still says idle, the kernel knows better.
        drop(server_side);
        std::thread::sleep(Duration::from_millis(20));
        let checked = pool.get(&upstream, Instant::now(), true).await.unwrap();
        assert!(!checked.reused, "a closed idle connection was handed to a request that cannot be repeated");
    }

    #[tokio::test]
    async fn a_refused_connection_is_upstream_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let pool = Pool::new(2, Duration::from_secs(60), Duration::from_secs(1));
        assert_eq!(
            pool.get(&upstream, Instant::now(), false).await.unwrap_err(),
            ProxyError::UpstreamRefused
        );
    }
}
