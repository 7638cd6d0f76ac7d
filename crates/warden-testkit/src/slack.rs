//! A local stand-in for a Slack incoming webhook: records every POST body and answers with
//! a status the test chooses (e.g. 500 for an outage, then 200).

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Shared {
    posts: Arc<Mutex<Vec<(Instant, String)>>>,
    attempts: Arc<Mutex<u64>>,
    status: Arc<Mutex<u16>>,
}

pub struct SlackReceiver {
    pub port: u16,
    shared: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlackReceiver {
    /// Starts on a free port; panics with the reason (tests).
    pub fn start() -> SlackReceiver {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<SlackReceiver, super::HarnessError> {
        let shared = Shared {
            status: Arc::new(Mutex::new(200)),
            ..Default::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(super::io("binding the Slack receiver"))?;
        listener
            .set_nonblocking(true)
            .map_err(super::io("binding the Slack receiver"))?;
        let port = listener
            .local_addr()
            .map_err(super::io("binding the Slack receiver"))?
            .port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = Router::new()
                    .route("/{*path}", post(record))
                    .with_state(app_state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Ok(SlackReceiver {
            port,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/services/T000/B000/XXXX", self.port)
    }

    /// Bodies of the POSTs answered with 2xx, in arrival order.
    pub fn posts(&self) -> Vec<String> {
        self.shared
            .posts
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Accepted POSTs with their arrival instants.
    pub fn timed_posts(&self) -> Vec<(Instant, String)> {
        self.shared.posts.lock().expect("lock").clone()
    }

    /// Every POST, including those answered with an error status.
    pub fn attempts(&self) -> u64 {
        *self.shared.attempts.lock().expect("lock")
    }

    /// The status the receiver answers with from now on.
    pub fn set_status(&self, status: u16) {
        *self.shared.status.lock().expect("lock") = status;
    }

    pub fn wait_for_posts(&self, n: usize, timeout: Duration) -> Vec<String> {
        super::net::wait_until(timeout, || {
            let posts = self.posts();
            (posts.len() >= n).then_some(posts)
        })
        .unwrap_or_else(|| self.posts())
    }
}

async fn record(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    *shared.attempts.lock().expect("lock") += 1;
    let status = *shared.status.lock().expect("lock");
    if (200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body).into_owned();
        shared
            .posts
            .lock()
            .expect("lock")
            .push((Instant::now(), text));
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Drop for SlackReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
