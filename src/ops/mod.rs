//! Operations packaging: systemd integration (sd_notify), CloudWatch dashboards, scaling
//! policies and log metric filters as code, and the host's load-balancer readiness.

pub mod dashboards;
pub mod metric_filters;
pub mod notify;
pub mod readiness;
pub mod scaling;
