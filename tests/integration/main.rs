//! warden's integration tests, one binary: each module is a feature, driven through its real
//! path against real local peers (moto, the fake NVML, the Slack receiver, tmux, nginx, wrk,
//! promtool, schemathesis); `reliability` is the fault suite. `support` holds the harness.

mod support;

mod alerts;
mod api;
mod api_fuzz;
mod config;
mod console;
mod console_tmux;
mod docs;
mod fleet;
mod logs;
mod models;
mod nvml;
mod ops;
mod peers;
mod reliability;
mod serving;
mod slo;
mod supervisor;
mod telemetry;
