//! Operations packaging: systemd integration (sd_notify) and CloudWatch dashboards as code.

pub mod dashboards;
pub mod notify;
