//! The agent's control API: versioned JSON lines on a unix socket (mode 0600), a dispatcher
//! other modules extend with their own methods, and the client the console and tests use.
//!
//! Wire format, one JSON object per line:
//! - request `{"v":1,"id":7,"method":"restart","model":"clash-detector"}` (params sit beside
//!   `method`);
//! - response `{"v":1,"id":7,"ok":true,"result":...}` or
//!   `{"v":1,"id":7,"ok":false,"error":{"code":"unknown_model","message":"..."}}`;
//! - after a successful `subscribe`, events `{"v":1,"event":{"at_ms":..,"model":..,"kind":..}}`
//!   and, if the connection fell behind, `{"v":1,"lagged":N}`.
//!
//! Built-in methods: `status`, `restart`, `stop`, `start` (`model`), `logs` (`model`,
//! `lines` = 100), `subscribe`; the agent adds `snapshot` (`history` = 120, see [`snapshot`]).

pub mod client;
pub mod server;
pub mod snapshot;

pub use client::ControlClient;
pub use server::{ControlServer, Dispatcher, Method, MethodError, Params};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Socket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another agent is already listening on {0}")]
    InUse(std::path::PathBuf),
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("control protocol: {0}")]
    Protocol(String),
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
    #[error("the agent closed the control connection")]
    Closed,
}
