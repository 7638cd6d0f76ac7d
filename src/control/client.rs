//! A control-socket client: one request at a time, with events buffered in between.

use super::{ControlError, PROTOCOL_VERSION};
use crate::supervisor::{LogLine, ModelStatus, SupervisorEvent};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Something the agent streamed after `subscribe`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Event(SupervisorEvent),
    /// The connection fell this many events behind; re-read `status` to resync.
    Lagged(u64),
}

pub struct ControlClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    stream: VecDeque<StreamItem>,
}

impl ControlClient {
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Socket {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(ControlClient {
            reader: BufReader::new(read),
            writer,
            next_id: 1,
            stream: VecDeque::new(),
        })
    }

    /// Calls `method` with `params` (a JSON object or null) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = match params {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            _ => return Err(ControlError::Protocol("params must be an object".into())),
        };
        request.insert("v".into(), json!(PROTOCOL_VERSION));
        request.insert("id".into(), json!(id));
        request.insert("method".into(), json!(method));
        let mut line = Value::Object(request).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        loop {
            let msg = self.read_message().await?;
            if let Some(item) = stream_item(&msg)? {
                self.stream.push_back(item);
                continue;
            }
            let answered = msg.get("id");
            if answered != Some(&json!(id)) && answered != Some(&Value::Null) {
                continue;
            }
            return if msg.get("ok") == Some(&Value::Bool(true)) {
                Ok(msg.get("result").cloned().unwrap_or(Value::Null))
            } else {
                let err = msg.get("error");
                let field = |k: &str| {
                    err.and_then(|e| e.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                Err(ControlError::Remote {
                    code: field("code"),
                    message: field("message"),
                })
            };
        }
    }

    pub async fn status(&mut self) -> Result<Vec<ModelStatus>, ControlError> {
        let result = self.call("status", Value::Null).await?;
        serde_json::from_value(result.get("models").cloned().unwrap_or(Value::Null))
            .map_err(|e| ControlError::Protocol(format!("status: {e}")))
    }

    pub async fn restart(&mut self, model: &str) -> Result<(), ControlError> {
        self.call("restart", json!({ "model": model }))
            .await
            .map(drop)
    }

    pub async fn stop(&mut self, model: &str) -> Result<(), ControlError> {
        self.call("stop", json!({ "model": model })).await.map(drop)
    }

    pub async fn start(&mut self, model: &str) -> Result<(), ControlError> {
        self.call("start", json!({ "model": model }))
            .await
            .map(drop)
    }

    pub async fn logs(&mut self, model: &str, lines: usize) -> Result<Vec<LogLine>, ControlError> {
        let result = self
            .call("logs", json!({ "model": model, "lines": lines }))
            .await?;
        serde_json::from_value(result.get("lines").cloned().unwrap_or(Value::Null))
            .map_err(|e| ControlError::Protocol(format!("logs: {e}")))
    }

    /// Starts the event stream on this connection; read it with [`Self::next_event`].
    pub async fn subscribe(&mut self) -> Result<(), ControlError> {
        self.call("subscribe", Value::Null).await.map(drop)
    }

    /// The next streamed item (events arriving during calls are kept, in order).
    pub async fn next_item(&mut self) -> Result<StreamItem, ControlError> {
        if let Some(item) = self.stream.pop_front() {
            return Ok(item);
        }
        loop {
            let msg = self.read_message().await?;
            if let Some(item) = stream_item(&msg)? {
                return Ok(item);
            }
        }
    }

    /// The next supervisor event, skipping lag notices.
    pub async fn next_event(&mut self) -> Result<SupervisorEvent, ControlError> {
        loop {
            if let StreamItem::Event(e) = self.next_item().await? {
                return Ok(e);
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value, ControlError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(ControlError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(format!("{e}: {line}")))
    }
}

fn stream_item(msg: &Value) -> Result<Option<StreamItem>, ControlError> {
    if let Some(event) = msg.get("event") {
        let event = serde_json::from_value(event.clone())
            .map_err(|e| ControlError::Protocol(format!("event: {e}")))?;
        return Ok(Some(StreamItem::Event(event)));
    }
    Ok(msg
        .get("lagged")
        .and_then(Value::as_u64)
        .map(StreamItem::Lagged))
}
