//! The fault suite: real peers (moto behind the fault proxy, a small tmpfs that fills up, the
//! fake NVML, the Slack receiver, signals, wrk) against a real `warden run`. Each scenario is a
//! row of `docs/reliability.md`.

mod alert_truth;
mod aws_faults;
mod disk_full;
mod shutdown;
