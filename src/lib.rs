//! warden: the operations agent for GPU inference hosts.
//!
//! Data flows one way: `telemetry` (samplers) → `telemetry::store` → `sinks` and `alerts`
//! → `api` and `console`; `supervisor` and `serving` sit beside the pipeline.

pub mod config;
pub mod serving;
pub mod tls;
