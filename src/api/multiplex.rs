//! A gateway thread's connections to the models' Unix sockets: one per model, carrying every
//! request the thread's clients make of that model at once, in the tagged frames of
//! [`crate::model_wire`].
//!
//! A call appends its frame to the connection's outgoing buffer and waits for its answer; the
//! connection's writer task sends whatever gathered in one write, and its reader task hands
//! each answer to the call its tag names. Both tasks run on the gateway thread that owns the
//! multiplexer, so each hand-off is a wake-up on the same thread, not a system call, and the
//! requests that arrive together cost the model one read and one write between them.

use super::proxy::CONNECT_TIMEOUT;
use crate::model_wire::{self, FrameReader, InferAnswer, Next, PREFACE, WireError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};

/// Largest answer a model sends over its socket (its answers are small JSON documents).
const ANSWER_LIMIT: usize = 64 << 20;

/// Why a call got no answer.
#[derive(Debug)]
pub enum CallError {
    /// The request never reached the model: safe to send another way.
    Unsent,
    /// The connection ended after the request went out (the model may have acted on it).
    Closed,
    /// The model's answers could not be read.
    Malformed(String),
}

/// One gateway thread's connections, by model port; cheap to clone.
#[derive(Clone, Default)]
pub struct Multiplexer(Arc<Mutex<Vec<ToModel>>>);

/// A model's port and the thread's connection to its socket.
type ToModel = (u16, Arc<Connection>);

type Waiter = oneshot::Sender<Result<InferAnswer, CallError>>;

struct Connection {
    state: Mutex<State>,
    wake_writer: Notify,
}

struct State {
    /// Frames not yet taken by the writer, and their tags.
    outgoing: Vec<u8>,
    unsent: Vec<u32>,
    /// Calls waiting for their answers, by tag.
    waiting: HashMap<u32, Waiter>,
    next_tag: u32,
    /// The connection failed: it takes no more calls, and the next call opens another.
    broken: bool,
}

impl Multiplexer {
    /// Sends one request to the model listening on `socket` (the model on `port`) and waits
    /// for its answer.
    pub async fn call(
        &self,
        port: u16,
        socket: &Path,
        body: &[u8],
        request_id: &[u8],
    ) -> Result<InferAnswer, CallError> {
        let connection = self.connection(port, socket).await?;
        let (waiter, answer) = oneshot::channel();
        let tag = connection.queue(body, request_id, waiter)?;
        connection.wake_writer.notify_one();
        // Given up (timed out, or the client left): its answer, if it comes, has nobody to go to.
        let mut forget = Forget {
            connection: &connection,
            tag,
            armed: true,
        };
        let answered = answer.await.unwrap_or(Err(CallError::Closed));
        // Whoever answered (the reader, or a failing connection) already took the waiter.
        forget.armed = false;
        answered
    }

    /// The thread's open connection to the model on `port`, else a new one.
    async fn connection(&self, port: u16, socket: &Path) -> Result<Arc<Connection>, CallError> {
        if let Some(open) = self.open(port) {
            return Ok(open);
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(socket = %socket.display(), error = %e, "model socket refused");
                return Err(CallError::Unsent);
            }
            Err(_) => {
                tracing::debug!(socket = %socket.display(), "model socket timed out");
                return Err(CallError::Unsent);
            }
        };
        let Ok(mut connections) = self.0.lock() else {
            return Err(CallError::Unsent);
        };
        // Another call on this thread connected meanwhile: share its connection.
        if let Some((_, open)) = connections.iter().find(|(p, c)| *p == port && c.is_open()) {
            return Ok(open.clone());
        }
        let connection = Arc::new(Connection::new());
        connections.retain(|(p, _)| *p != port);
        connections.push((port, connection.clone()));
        drop(connections);
        let (read, write) = stream.into_split();
        tokio::spawn(read_answers(connection.clone(), read));
        tokio::spawn(write_requests(connection.clone(), write));
        Ok(connection)
    }

    fn open(&self, port: u16) -> Option<Arc<Connection>> {
        let connections = self.0.lock().ok()?;
        let (_, connection) = connections.iter().find(|(p, _)| *p == port)?;
        connection.is_open().then(|| connection.clone())
    }
}

/// Takes a call's waiter back when the call ends without its answer.
struct Forget<'a> {
    connection: &'a Connection,
    tag: u32,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(mut state) = self.connection.state.lock() {
            state.waiting.remove(&self.tag);
        }
    }
}

impl Connection {
    fn new() -> Connection {
        Connection {
            state: Mutex::new(State {
                outgoing: PREFACE.to_vec(),
                unsent: Vec::new(),
                waiting: HashMap::new(),
                next_tag: 0,
                broken: false,
            }),
            wake_writer: Notify::new(),
        }
    }

    fn is_open(&self) -> bool {
        self.state.lock().is_ok_and(|s| !s.broken)
    }

    /// Appends a request's frame for the writer; its tag.
    fn queue(&self, body: &[u8], request_id: &[u8], waiter: Waiter) -> Result<u32, CallError> {
        let mut state = self.state.lock().map_err(|_| CallError::Unsent)?;
        if state.broken {
            return Err(CallError::Unsent);
        }
        let tag = state.next_tag;
        state.next_tag = tag.wrapping_add(1);
        model_wire::encode_request(tag, request_id, body, &mut state.outgoing);
        state.unsent.push(tag);
        state.waiting.insert(tag, waiter);
        Ok(tag)
    }

    /// Ends the connection: calls whose frames never left are told so (they may go another
    /// way), the others get `error`.
    fn fail(&self, error: impl Fn() -> CallError) {
        let (waiting, unsent) = match self.state.lock() {
            Ok(mut state) => {
                state.broken = true;
                state.outgoing.clear();
                (
                    std::mem::take(&mut state.waiting),
                    std::mem::take(&mut state.unsent),
                )
            }
            Err(_) => return,
        };
        for (tag, waiter) in waiting {
            let outcome = if unsent.contains(&tag) {
                CallError::Unsent
            } else {
                error()
            };
            let _ = waiter.send(Err(outcome));
        }
        // Lets the writer see the end and drop its half.
        self.wake_writer.notify_one();
    }
}

/// Sends what the calls queued, everything gathered since the last write in one.
async fn write_requests(connection: Arc<Connection>, mut write: OwnedWriteHalf) {
    let mut sending = Vec::new();
    loop {
        connection.wake_writer.notified().await;
        match connection.state.lock() {
            Ok(mut state) if !state.broken => {
                std::mem::swap(&mut sending, &mut state.outgoing);
                // Sent from here on, as far as the calls can know.
                state.unsent.clear();
            }
            _ => return,
        }
        if sending.is_empty() {
            continue;
        }
        if let Err(e) = write.write_all(&sending).await {
            tracing::debug!(error = %e, "writing to a model socket failed");
            // How much went out is unknown: these calls count as sent, later ones as unsent.
            connection.fail(|| CallError::Closed);
            return;
        }
        sending.clear();
    }
}

/// Hands each answer to its call; fails the connection's calls when it ends.
async fn read_answers(connection: Arc<Connection>, mut read: OwnedReadHalf) {
    let mut reader = FrameReader::default();
    let failure = loop {
        let answer = match reader.next(&mut read, ANSWER_LIMIT).await {
            Ok(Next::Frame(frame)) => model_wire::decode_answer(frame),
            Ok(Next::TooLarge { len, .. }) => break Some(format!("an answer of {len} bytes")),
            Ok(Next::Closed) => break None,
            Err(e @ WireError::Malformed(_)) => break Some(e.to_string()),
            // Reset or cut short: the model went away (it was stopped or restarted).
            Err(e) => {
                tracing::debug!(error = %e, "model connection ended");
                break None;
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => break Some(e.to_string()),
        };
        let waiter = match connection.state.lock() {
            Ok(mut state) => state.waiting.remove(&answer.tag),
            Err(_) => break None,
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(answer));
        }
    };
    match failure {
        Some(e) => {
            tracing::warn!(error = %e, "model connection failed");
            connection.fail(|| CallError::Malformed(e.clone()));
        }
        None => connection.fail(|| CallError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_wire::{decode_request, encode_answer};
    use tokio::net::UnixListener;

    /// A model that answers each request with its own body, the answers of each read in
    /// reverse order (so answers come back out of order).
    async fn echo_model(listener: UnixListener) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; PREFACE.len()];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut preface)
            .await
            .unwrap();
        assert_eq!(&preface, PREFACE);
        let mut reader = FrameReader::default();
        loop {
            let mut requests = Vec::new();
            loop {
                match reader.next(&mut stream, 1 << 20).await.unwrap() {
                    Next::Frame(f) => requests.push(decode_request(f).unwrap()),
                    _ => return,
                }
                if reader.buffered().is_empty() {
                    break;
                }
            }
            let mut out = Vec::new();
            for r in requests.iter().rev() {
                encode_answer(r.tag, 200, None, &r.body, &mut out);
            }
            stream.write_all(&out).await.unwrap();
        }
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_connection_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("model.sock");
        let model = tokio::spawn(echo_model(UnixListener::bind(&socket).unwrap()));
        let multiplexer = Multiplexer::default();
        let calls = (0..50).map(|i| {
            let (multiplexer, socket) = (multiplexer.clone(), socket.clone());
            async move {
                let body = format!("{{\"call\":{i}}}");
                let answer = multiplexer
                    .call(9, &socket, body.as_bytes(), b"id")
                    .await
                    .unwrap();
                assert_eq!(answer.body, body.as_bytes(), "call {i}");
            }
        });
        futures_util::future::join_all(calls).await;
        assert_eq!(multiplexer.0.lock().unwrap().len(), 1, "one connection");
        drop(multiplexer);
        model.abort();
    }

    #[tokio::test]
    async fn calls_fail_when_the_model_goes_away_and_the_next_call_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("model.sock");
        let multiplexer = Multiplexer::default();
        // Nobody listening: the call never left, so it may go another way.
        assert!(matches!(
            multiplexer.call(9, &socket, b"{}", b"").await,
            Err(CallError::Unsent)
        ));
        let listener = UnixListener::bind(&socket).unwrap();
        let silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // Read the request, then close without answering.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(stream);
            listener
        });
        let closed = multiplexer.call(9, &socket, b"{}", b"").await;
        assert!(matches!(closed, Err(CallError::Closed)), "{closed:?}");
        let listener = silent.await.unwrap();
        let model = tokio::spawn(echo_model(listener));
        let answer = multiplexer.call(9, &socket, b"{}", b"").await.unwrap();
        assert_eq!(answer.status, 200);
        model.abort();
    }
}
