//! Plain-HTTP GETs to the agent's own children on 127.0.0.1 (health probes, `/metrics` scrapes),
//! over hyper's connection API driven in the caller's task.
//!
//! reqwest, used before, costs far more than these requests need: a TLS-capable client (and a
//! parse of the system's root certificates) per client, a pool, tower layers, and a separate task
//! per connection that every request hands off to and back from. These are a few requests a
//! second to loopback ports: a [`KeptConnection`] per child and purpose, one request at a time,
//! read here. A connection the child closed meanwhile is noticed before reuse and replaced;
//! dropping a request midway (a timeout) drops its connection with it.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::http::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum LocalHttpError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("connection closed before the request was sent")]
    Unsent,
}

/// A child's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why an exchange on a [`Driven`] connection failed.
#[derive(Debug)]
pub enum ExchangeError<E> {
    /// The request never left (the peer had closed the connection): safe to send again.
    Unsent,
    /// The connection failed before the answer's head arrived.
    Failed(hyper::Error),
    /// Reading the answer failed.
    Read(E),
}

/// An HTTP/1.1 client connection with no task of its own: each exchange drives it in the
/// caller's task, so a request costs no hand-off to another task and back. One request at a
/// time (HTTP/1.1); shared by the health probes, the `/metrics` scrapes and the gateway's
/// connections to its models.
pub struct Driven<IO, B>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
{
    sender: http1::SendRequest<B>,
    connection: Pin<Box<http1::Connection<IO, B>>>,
    /// The connection's future completed (it must not be polled again).
    ended: bool,
}

impl<IO, B> Driven<IO, B>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub async fn handshake(io: IO) -> Result<Self, hyper::Error> {
        let (sender, connection) = http1::handshake(io).await?;
        Ok(Driven {
            sender,
            connection: Box::pin(connection),
            ended: false,
        })
    }

    /// Whether an idle connection is still usable: one poll lets it see that the peer closed it.
    pub async fn still_open(&mut self) -> bool {
        if !self.usable() {
            return false;
        }
        let connection = &mut self.connection;
        std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx).is_pending())).await
    }

    /// Whether the connection can take another request (it did not end or close).
    pub fn usable(&self) -> bool {
        !self.ended && !self.sender.is_closed()
    }

    /// Sends `request` and hands its answer to `read`, driving the connection in this task
    /// until `read` is done.
    pub async fn exchange<T, E, F>(
        &mut self,
        request: Request<B>,
        read: impl FnOnce(Response<Incoming>) -> F,
    ) -> Result<T, ExchangeError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let Driven {
            sender,
            connection,
            ended,
        } = self;
        let work =
            async {
                sender.ready().await.map_err(|_| ExchangeError::Unsent)?;
                let response = sender.try_send_request(request).await.map_err(|mut e| {
                    match e.take_message() {
                        Some(_) => ExchangeError::Unsent,
                        None => ExchangeError::Failed(e.into_error()),
                    }
                })?;
                read(response).await.map_err(ExchangeError::Read)
            };
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = work.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !*ended && connection.as_mut().poll(cx).is_ready() {
                // The connection finished and failed what it held: `work` sees that now.
                *ended = true;
                return work.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
    }
}

type Open = Driven<TokioIo<TcpStream>, Empty<Bytes>>;

async fn connect(port: u16) -> Result<Open, LocalHttpError> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(LocalHttpError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(Driven::handshake(TokioIo::new(stream)).await?)
}

/// One GET on `open`, its body read up to `limit` bytes.
async fn get(
    open: &mut Open,
    port: u16,
    path: &str,
    limit: usize,
) -> Result<Reply, LocalHttpError> {
    let request = Request::get(path)
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::new())?;
    let read = |response: Response<Incoming>| async move {
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Reply {
            status: parts.status,
            body: body.to_bytes(),
        })
    };
    open.exchange(request, read).await.map_err(|e| match e {
        ExchangeError::Unsent => LocalHttpError::Unsent,
        ExchangeError::Failed(e) => LocalHttpError::Http(e),
        ExchangeError::Read(e) => LocalHttpError::Body(e),
    })
}

/// One keep-alive connection to `127.0.0.1:{port}`, opened on first use and replaced when the
/// child closed it (a restart, an idle timeout).
pub struct KeptConnection {
    port: u16,
    open: Option<Open>,
}

impl KeptConnection {
    pub fn new(port: u16) -> Self {
        KeptConnection { port, open: None }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET http://127.0.0.1:{port}{path}`, its body read up to `limit` bytes (more is an
    /// error); bound it with a timeout. A GET that failed on a reused connection (the child
    /// closed it just then) is sent once more on a fresh one: GETs are idempotent.
    pub async fn get(&mut self, path: &str, limit: usize) -> Result<Reply, LocalHttpError> {
        let mut kept = self.open.take();
        loop {
            let reused = match kept.take() {
                Some(mut open) => open.still_open().await.then_some(open),
                None => None,
            };
            let was_reused = reused.is_some();
            let mut open = match reused {
                Some(open) => open,
                None => connect(self.port).await?,
            };
            match get(&mut open, self.port, path, limit).await {
                Ok(reply) => {
                    if open.usable() {
                        self.open = Some(open);
                    }
                    return Ok(reply);
                }
                Err(_) if was_reused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 server: answers `status` with the request path as body, on kept-alive
    /// connections; closes each connection after `per_connection` answers. Counts connections.
    async fn server(status: u16, per_connection: usize) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                            let reply = format!(
                                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{path}",
                                path.len()
                            );
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                            answered += 1;
                            if answered == per_connection {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn reads_status_and_body() {
        let (port, _) = server(200, usize::MAX).await;
        let reply = KeptConnection::new(port)
            .get("/health", 1024)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"/health");
        let (port, _) = server(503, usize::MAX).await;
        let reply = KeptConnection::new(port).get("/ready", 1024).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_refused_connection_and_an_oversized_body_are_errors() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        assert!(matches!(
            KeptConnection::new(port).get("/health", 1024).await,
            Err(LocalHttpError::Connect(_))
        ));
        let (port, _) = server(200, usize::MAX).await;
        assert!(matches!(
            KeptConnection::new(port).get("/a-long-path", 4).await,
            Err(LocalHttpError::Body(_))
        ));
    }

    #[tokio::test]
    async fn a_kept_connection_is_reused_and_replaced_when_the_child_closes_it() {
        let (port, connections) = server(200, usize::MAX).await;
        let mut kept = KeptConnection::new(port);
        for _ in 0..10 {
            assert_eq!(
                &kept.get("/metrics", 1024).await.unwrap().body[..],
                b"/metrics"
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);

        // A child that closes after every third answer: every call still answers.
        let (port, connections) = server(200, 3).await;
        let mut kept = KeptConnection::new(port);
        for _ in 0..9 {
            assert_eq!(
                kept.get("/metrics", 1024).await.unwrap().status,
                StatusCode::OK
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }
}
