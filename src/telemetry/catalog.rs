//! The metric catalogue: every metric warden emits, with unit, kind, dimensions and meaning.
//!
//! One table in code, so CloudWatch, Prometheus, dashboards and alarms cannot drift apart.

/// A dimension of a metric; CloudWatch name and Prometheus label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Host,
    Gpu,
    Model,
    /// XID error code (only on `GPUXidErrors`).
    Code,
    /// Where a dropped record was headed (only on `RecordsDropped`).
    Sink,
    /// Why it was dropped (only on `RecordsDropped`).
    Reason,
    /// A service level objective's name (only on the SLO metrics).
    Slo,
    /// A burn-rate window: `5m`, `30m`, `1h`, `6h`, `3d` (only on `SLOBurnRate`).
    Window,
}

impl Dim {
    /// The CloudWatch dimension name.
    pub fn cloudwatch(self) -> &'static str {
        match self {
            Dim::Host => "Host",
            Dim::Gpu => "GPU",
            Dim::Model => "Model",
            Dim::Code => "Code",
            Dim::Sink => "Sink",
            Dim::Reason => "Reason",
            Dim::Slo => "SLO",
            Dim::Window => "Window",
        }
    }

    /// The Prometheus label name.
    pub fn label(self) -> &'static str {
        match self {
            Dim::Host => "host",
            Dim::Gpu => "gpu",
            Dim::Model => "model",
            Dim::Code => "code",
            Dim::Sink => "sink",
            Dim::Reason => "reason",
            Dim::Slo => "slo",
            Dim::Window => "window",
        }
    }
}

/// How values combine over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A level; shipped to CloudWatch as a StatisticSet per flush.
    Gauge,
    /// A monotonic count; CloudWatch gets the increase per flush, Prometheus the total.
    Counter,
    /// A distribution; CloudWatch gets Values/Counts so percentiles work.
    Histogram,
}

/// A CloudWatch standard unit (Prometheus takes it from the metric name suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Bytes,
    Count,
    Milliseconds,
    BytesPerSecond,
    /// Celsius, watts, MHz: CloudWatch has no unit for them.
    None,
}

impl Unit {
    pub fn cloudwatch(self) -> &'static str {
        match self {
            Unit::Percent => "Percent",
            Unit::Bytes => "Bytes",
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::BytesPerSecond => "Bytes/Second",
            Unit::None => "None",
        }
    }
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// CloudWatch metric name (DESIGN.md "Telemetry names").
    pub name: &'static str,
    /// Prometheus metric name (counters get `_total` when rendered).
    pub prometheus: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    pub dims: &'static [Dim],
    pub description: &'static str,
}

const HOST: &[Dim] = &[Dim::Host];
const GPU: &[Dim] = &[Dim::Host, Dim::Gpu];
const XID: &[Dim] = &[Dim::Host, Dim::Gpu, Dim::Code];
const MODEL: &[Dim] = &[Dim::Host, Dim::Model];
const DROPS: &[Dim] = &[Dim::Host, Dim::Sink, Dim::Reason];
const SLO: &[Dim] = &[Dim::Host, Dim::Model, Dim::Slo];
const SLO_BURN: &[Dim] = &[Dim::Host, Dim::Model, Dim::Slo, Dim::Window];

macro_rules! def {
    ($name:literal, $prom:literal, $unit:ident, $kind:ident, $dims:ident, $desc:literal) => {
        MetricDef {
            name: $name,
            prometheus: $prom,
            unit: Unit::$unit,
            kind: Kind::$kind,
            dims: $dims,
            description: $desc,
        }
    };
}

/// Every metric, in display order.
pub const CATALOG: &[MetricDef] = &[
    def!(
        "GPUUtilization",
        "warden_gpu_utilization_percent",
        Percent,
        Gauge,
        GPU,
        "Percent of time a kernel ran on the GPU"
    ),
    def!(
        "GPUMemoryUtilization",
        "warden_gpu_memory_utilization_percent",
        Percent,
        Gauge,
        GPU,
        "Percent of time GPU memory was read or written"
    ),
    def!(
        "GPUMemoryUsed",
        "warden_gpu_memory_used_bytes",
        Bytes,
        Gauge,
        GPU,
        "GPU memory in use"
    ),
    def!(
        "GPUMemoryTotal",
        "warden_gpu_memory_total_bytes",
        Bytes,
        Gauge,
        GPU,
        "GPU memory installed"
    ),
    def!(
        "GPUTemperature",
        "warden_gpu_temperature_celsius",
        None,
        Gauge,
        GPU,
        "GPU core temperature in degrees Celsius"
    ),
    def!(
        "GPUPowerDraw",
        "warden_gpu_power_draw_watts",
        None,
        Gauge,
        GPU,
        "Power drawn by the GPU in watts"
    ),
    def!(
        "GPUPowerLimit",
        "warden_gpu_power_limit_watts",
        None,
        Gauge,
        GPU,
        "Enforced power limit in watts"
    ),
    def!(
        "GPUSMClock",
        "warden_gpu_sm_clock_mhz",
        None,
        Gauge,
        GPU,
        "Streaming multiprocessor clock in MHz"
    ),
    def!(
        "GPUFanSpeed",
        "warden_gpu_fan_speed_percent",
        Percent,
        Gauge,
        GPU,
        "Fan speed as a percent of maximum"
    ),
    def!(
        "GPUEccErrors",
        "warden_gpu_ecc_uncorrected_errors",
        Count,
        Gauge,
        GPU,
        "Uncorrected ECC errors since the driver loaded"
    ),
    def!(
        "GPUEccCorrectedErrors",
        "warden_gpu_ecc_corrected_errors",
        Count,
        Gauge,
        GPU,
        "Corrected ECC errors since the driver loaded"
    ),
    def!(
        "GPUPcieTx",
        "warden_gpu_pcie_tx_bytes_per_second",
        BytesPerSecond,
        Gauge,
        GPU,
        "PCIe transmit throughput"
    ),
    def!(
        "GPUPcieRx",
        "warden_gpu_pcie_rx_bytes_per_second",
        BytesPerSecond,
        Gauge,
        GPU,
        "PCIe receive throughput"
    ),
    def!(
        "GPUThrottled",
        "warden_gpu_throttled",
        Count,
        Gauge,
        GPU,
        "1 when clocks are held down by power, thermal or hardware slowdown"
    ),
    def!(
        "GPUXidErrors",
        "warden_gpu_xid_errors",
        Count,
        Counter,
        XID,
        "XID errors reported by the driver, per code"
    ),
    def!(
        "GPULost",
        "warden_gpu_lost",
        Count,
        Gauge,
        GPU,
        "1 when the GPU has fallen off the bus"
    ),
    def!(
        "GPUAvailable",
        "warden_gpu_available",
        Count,
        Gauge,
        HOST,
        "1 when NVML initialised, 0 when the driver is unavailable"
    ),
    def!(
        "GPUCount",
        // Not `_count`: Prometheus reserves that suffix for histograms and summaries.
        "warden_gpus",
        Count,
        Gauge,
        HOST,
        "GPUs reported by NVML"
    ),
    def!(
        "HostCPUUtilization",
        "warden_host_cpu_utilization_percent",
        Percent,
        Gauge,
        HOST,
        "CPU busy across all cores"
    ),
    def!(
        "HostMemoryUtilization",
        "warden_host_memory_utilization_percent",
        Percent,
        Gauge,
        HOST,
        "Memory in use"
    ),
    def!(
        "HostLoad1",
        "warden_host_load1",
        None,
        Gauge,
        HOST,
        "One-minute load average"
    ),
    def!(
        "HostDiskFree",
        "warden_host_state_dir_free_bytes",
        Bytes,
        Gauge,
        HOST,
        "Free space on the state directory's file system"
    ),
    def!(
        "HostDiskFreePercent",
        "warden_host_state_dir_free_percent",
        Percent,
        Gauge,
        HOST,
        "Free space on the state directory's file system, as a share of its size"
    ),
    def!(
        "ModelLatency",
        // Prometheus wants base units: /metrics renders this histogram in seconds.
        "warden_model_latency_seconds",
        Milliseconds,
        Histogram,
        MODEL,
        "Inference latency seen by the API gateway"
    ),
    def!(
        "ModelRequests",
        "warden_model_requests",
        Count,
        Counter,
        MODEL,
        "Inference requests"
    ),
    def!(
        "ModelErrors",
        "warden_model_errors",
        Count,
        Counter,
        MODEL,
        "Inference requests that failed"
    ),
    def!(
        "ModelClientErrors",
        "warden_model_client_errors",
        Count,
        Counter,
        MODEL,
        "Inference requests refused as the client's mistake (4xx: bad input, auth, rate limit)"
    ),
    def!(
        "ModelUp",
        "warden_model_up",
        Count,
        Gauge,
        MODEL,
        "1 when the model process is up and ready"
    ),
    def!(
        "ModelRestarts",
        "warden_model_restarts",
        Count,
        Counter,
        MODEL,
        "Restarts of the model process"
    ),
    def!(
        "ModelQueueDepth",
        "warden_model_queue_depth",
        Count,
        Gauge,
        MODEL,
        "Requests waiting in the model's batcher"
    ),
    def!(
        "ModelBatchSize",
        "warden_model_batch_size",
        Count,
        Gauge,
        MODEL,
        "Rows per forward pass"
    ),
    def!(
        "ModelGPUMemoryUsed",
        "warden_model_gpu_memory_used_bytes",
        Bytes,
        Gauge,
        MODEL,
        "GPU memory held by the model's process"
    ),
    def!(
        "ModelCPUUtilization",
        "warden_model_cpu_utilization_percent",
        Percent,
        Gauge,
        MODEL,
        "CPU used by the model's process (100 = one core)"
    ),
    def!(
        "ModelRSS",
        "warden_model_rss_bytes",
        Bytes,
        Gauge,
        MODEL,
        "Resident memory of the model's process"
    ),
    def!(
        "LogEventsDropped",
        "warden_log_events_dropped",
        Count,
        Counter,
        HOST,
        "Log events the CloudWatch Logs spool dropped (oldest first) because it was full"
    ),
    def!(
        "RecordsDropped",
        "warden_records_dropped",
        Count,
        Counter,
        DROPS,
        "Records the agent gave up on, by the sink they were headed for and the reason"
    ),
    def!(
        "SLOErrorBudgetRemaining",
        "warden_slo_error_budget_remaining_ratio",
        None,
        Gauge,
        SLO,
        "Error budget left over the SLO's window (1 untouched, 0 spent, below 0 overspent); Model=all is the whole API"
    ),
    def!(
        "SLOBurnRate",
        "warden_slo_burn_rate",
        None,
        Gauge,
        SLO_BURN,
        "Error budget burn rate over the window (1 spends the budget exactly over the SLO's window)"
    ),
];

/// The entry for a CloudWatch metric name.
pub fn lookup(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|d| d.name == name)
}

/// The entry for a name known at compile time to be in the catalogue.
pub(crate) fn def(name: &'static str) -> &'static MetricDef {
    match lookup(name) {
        Some(d) => d,
        // The samplers only use literal names from CATALOG; the unit test pins that.
        None => unreachable!("metric {name} missing from the catalogue"),
    }
}

/// Series count a host will emit (for the start-up cost estimate): XID codes are excluded
/// because they only appear when errors happen.
pub fn expected_series(gpus: usize, models: usize) -> usize {
    CATALOG
        .iter()
        .map(|d| match d.dims {
            x if x == HOST => 1,
            x if x == GPU => gpus,
            x if x == MODEL => models,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prometheus_safe() {
        let mut seen = std::collections::HashSet::new();
        for d in CATALOG {
            assert!(seen.insert(d.name), "duplicate {}", d.name);
            assert!(d.prometheus.starts_with("warden_"), "{}", d.prometheus);
            assert!(
                d.prometheus
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                d.prometheus
            );
            assert_eq!(d.dims[0], Dim::Host, "every metric carries Host");
        }
    }

    #[test]
    fn design_names_are_all_present() {
        for name in [
            "GPUUtilization",
            "GPUMemoryUsed",
            "GPUMemoryUtilization",
            "GPUTemperature",
            "GPUPowerDraw",
            "GPUSMClock",
            "GPUEccErrors",
            "GPUXidErrors",
            "GPUThrottled",
            "HostCPUUtilization",
            "HostMemoryUtilization",
            "ModelLatency",
            "ModelRequests",
            "ModelErrors",
            "ModelUp",
            "ModelRestarts",
            "ModelQueueDepth",
            "ModelBatchSize",
            "ModelGPUMemoryUsed",
            "ModelCPUUtilization",
            "ModelRSS",
        ] {
            assert!(lookup(name).is_some(), "{name} missing");
        }
        assert_eq!(
            lookup("ModelLatency").map(|d| d.kind),
            Some(Kind::Histogram)
        );
        assert_eq!(lookup("GPUXidErrors").map(|d| d.kind), Some(Kind::Counter));
    }

    #[test]
    fn expected_series_counts_per_dimension() {
        let host = CATALOG.iter().filter(|d| d.dims == HOST).count();
        let gpu = CATALOG.iter().filter(|d| d.dims == GPU).count();
        let model = CATALOG.iter().filter(|d| d.dims == MODEL).count();
        assert_eq!(expected_series(2, 5), host + 2 * gpu + 5 * model);
    }
}
