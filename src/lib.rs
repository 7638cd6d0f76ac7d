//! warden: the operations agent for GPU inference hosts.
//!
//! Data flows one way: `telemetry` (samplers) → `telemetry::store` → `sinks` and `alerts`
//! → `api` and `console`; `supervisor` and `serving` sit beside the pipeline, and `agent`
//! wires them together for `warden run`.

pub mod agent;
pub mod alerts;
pub mod api;
pub mod config;
pub mod console;
pub mod control;
pub mod local_http;
pub mod model_wire;
pub mod ops;
pub mod sinks;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
