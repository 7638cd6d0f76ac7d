//! Ports and bounded waiting.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1 and that no other caller in this process has
/// been given.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Ports below the kernel's ephemeral range (32768+), so an outgoing connection cannot take one
/// between the test choosing it and the server binding it; each is handed out once per process,
/// since tests running in parallel bind theirs only later.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

pub fn try_free_port() -> Result<u16, super::HarnessError> {
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<std::collections::HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(Default::default);
    // Start from a per-process offset so two test binaries run back to back do not walk the
    // same sequence while the previous one's servers are still closing.
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let start = std::process::id() % span;
    for i in 0..span {
        let port = PORT_RANGE.start + ((start + i * 7919) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(super::io("binding an ephemeral port on 127.0.0.1"))
}

/// Polls `probe` until it yields a value or `timeout` passes; never sleeps unbounded.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async flavour of [`wait_until`].
pub async fn wait_until_async<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
