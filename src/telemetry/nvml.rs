//! GPU sampling through NVML, off the async runtime: a hung driver costs a round, never the agent.
//!
//! Each GPU is read on the blocking pool with a timeout and an in-flight flag (a stuck device is
//! skipped until its call returns). Init has its own, longer timeout (loading the library and
//! attaching to the driver is much slower than one read). A failed init is retried with backoff
//! up to `init_retry`; a driver that goes away or is reloaded under us (calls answering
//! Uninitialized / DriverNotLoaded / LibRmVersionMismatch) drops the handle and re-initialises
//! the same way. XID events are read on a dedicated thread from an NVML event set.

use super::TelemetryEvent;
use super::catalog::Dim;
use super::store::MetricStore;
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, mpsc};

/// How long one wait for XID events blocks. A driver answers an event at once, whatever
/// this is; it only bounds how soon the thread sees that its handle was dropped, so a second
/// keeps it to one wake-up a second (it was four).
const XID_WAIT_MS: u32 = 1000;

/// Clock-limiting reasons that mean "slowed down" (power cap, thermal, hardware), not idle.
const THROTTLE_MASK: u64 = 0x4 | 0x8 | 0x20 | 0x40 | 0x80;

/// GPU memory per process id, summed over GPUs; the model sampler attributes it by pid.
#[derive(Debug, Clone, Default)]
pub struct ProcessMemory(Arc<RwLock<HashMap<u32, u64>>>);

impl ProcessMemory {
    pub fn get(&self, pid: u32) -> Option<u64> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }

    fn replace(&self, map: HashMap<u32, u64>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = map;
    }
}

/// How the NVML sampler finds and treats the library.
#[derive(Debug, Clone)]
pub struct NvmlSamplerConfig {
    /// `gpu.nvml_library`.
    pub library: PathBuf,
    /// `gpu.call_timeout`: one device's reads must finish within this.
    pub call_timeout: Duration,
    /// `gpu.init_timeout`: loading the library and attaching to the driver (seconds on a busy
    /// host) must finish within this.
    pub init_timeout: Duration,
    /// Longest delay between init attempts while NVML is unavailable (a minute in production);
    /// attempts back off from [`INIT_BACKOFF_BASE`] up to it.
    pub init_retry: Duration,
}

/// `gpu.init_timeout` default.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// First delay before re-initialising; doubles per failure up to `init_retry`.
pub const INIT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The delay before init attempt `failures + 1`.
pub fn init_backoff(failures: u32, max: Duration) -> Duration {
    INIT_BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(max)
}

/// Errors that mean the handle itself is dead (driver unloaded, reloaded to another version,
/// library gone): not one GPU's fault, so the whole handle is dropped and NVML re-initialised.
fn driver_gone(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::Uninitialized
            | NvmlError::DriverNotLoaded
            | NvmlError::LibRmVersionMismatch
            | NvmlError::LibloadingError(_)
            | NvmlError::FailedToLoadSymbol(_)
    )
}

/// One device's values from one round.
#[derive(Debug, Default)]
struct GpuReading {
    values: Vec<(&'static str, f64)>,
    procs: Vec<(u32, u64)>,
    lost: bool,
    /// The driver is gone (see [`driver_gone`]): the reading is empty.
    gone: Option<String>,
}

/// Reads one device; NOT_SUPPORTED fields are skipped, GPU_IS_LOST ends the read.
fn read_gpu(nvml: &Nvml, index: u32) -> GpuReading {
    let mut r = GpuReading::default();
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            r.lost = matches!(e, NvmlError::GpuLost);
            if driver_gone(&e) {
                r.gone = Some(e.to_string());
            }
            return r;
        }
    };
    macro_rules! field {
        ($call:expr, |$v:ident| $body:expr) => {
            match $call {
                Ok($v) => $body,
                Err(NvmlError::GpuLost) => {
                    r.lost = true;
                    return r;
                }
                Err(NvmlError::NotSupported) => {}
                Err(e) if driver_gone(&e) => {
                    r.gone = Some(e.to_string());
                    return r;
                }
                Err(e) => tracing::debug!(gpu = index, error = %e, "NVML field unavailable"),
            }
        };
    }
    field!(device.utilization_rates(), |u| {
        r.values.push(("GPUUtilization", u.gpu as f64));
        r.values.push(("GPUMemoryUtilization", u.memory as f64));
    });
    field!(device.memory_info(), |m| {
        r.values.push(("GPUMemoryUsed", m.used as f64));
        r.values.push(("GPUMemoryTotal", m.total as f64));
    });
    field!(device.temperature(TemperatureSensor::Gpu), |t| r
        .values
        .push(("GPUTemperature", t as f64)));
    field!(device.power_usage(), |mw| r
        .values
        .push(("GPUPowerDraw", mw as f64 / 1000.0)));
    field!(device.enforced_power_limit(), |mw| r
        .values
        .push(("GPUPowerLimit", mw as f64 / 1000.0)));
    field!(device.clock_info(Clock::SM), |c| r
        .values
        .push(("GPUSMClock", c as f64)));
    field!(device.fan_speed(0), |f| r
        .values
        .push(("GPUFanSpeed", f as f64)));
    field!(
        device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate),
        |n| { r.values.push(("GPUEccErrors", n as f64)) }
    );
    field!(
        device.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate),
        |n| { r.values.push(("GPUEccCorrectedErrors", n as f64)) }
    );
    // NVML reports PCIe throughput in KB/s.
    field!(device.pcie_throughput(PcieUtilCounter::Send), |kb| r
        .values
        .push(("GPUPcieTx", kb as f64 * 1024.0)));
    field!(device.pcie_throughput(PcieUtilCounter::Receive), |kb| r
        .values
        .push(("GPUPcieRx", kb as f64 * 1024.0)));
    field!(device.current_throttle_reasons(), |t| {
        r.values.push((
            "GPUThrottled",
            f64::from(u8::from(t.bits() & THROTTLE_MASK != 0)),
        ))
    });
    field!(device.running_compute_processes(), |procs| {
        r.procs = procs
            .into_iter()
            .filter_map(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some((p.pid, b)),
                UsedGpuMemory::Unavailable => None,
            })
            .collect()
    });
    r
}

struct Gpu {
    index: u32,
    in_flight: Arc<AtomicBool>,
    lost: bool,
}

struct Up {
    nvml: Arc<Nvml>,
    gpus: Vec<Gpu>,
    xids: mpsc::UnboundedReceiver<(u32, u64)>,
    stop_xids: Arc<AtomicBool>,
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop_xids.store(true, Ordering::Relaxed);
    }
}

enum State {
    /// No handle; the next init at `retry_at`, after `failures` failed ones.
    Down {
        retry_at: Instant,
        reported: bool,
        failures: u32,
    },
    Up(Up),
}

/// Samples every GPU into the store; call [`NvmlSampler::sample`] once per round.
pub struct NvmlSampler {
    cfg: NvmlSamplerConfig,
    store: Arc<MetricStore>,
    events: broadcast::Sender<TelemetryEvent>,
    processes: ProcessMemory,
    state: State,
    init_in_flight: Arc<AtomicBool>,
}

impl NvmlSampler {
    pub fn new(
        cfg: NvmlSamplerConfig,
        store: Arc<MetricStore>,
        events: broadcast::Sender<TelemetryEvent>,
    ) -> Self {
        NvmlSampler {
            cfg,
            store,
            events,
            processes: ProcessMemory::default(),
            state: State::Down {
                retry_at: Instant::now(),
                reported: false,
                failures: 0,
            },
            init_in_flight: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Per-process GPU memory from the latest round (shared, updated in place).
    pub fn process_memory(&self) -> ProcessMemory {
        self.processes.clone()
    }

    /// True once NVML has initialised.
    pub fn available(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    fn emit(&self, e: TelemetryEvent) {
        // No subscriber is fine: events also land in the store as metrics.
        let _ = self.events.send(e);
    }

    /// One sampling round: (re)initialise if due, read every GPU, fold in XID events.
    pub async fn sample(&mut self, now: Instant) {
        let at = SystemTime::now();
        if let State::Down {
            retry_at,
            reported,
            failures,
        } = self.state
        {
            if now < retry_at {
                self.store.set_gauge("GPUAvailable", &[], 0.0, at);
                return;
            }
            match self.init().await {
                Ok(up) => {
                    let gpus = up.gpus.len() as u32;
                    tracing::info!(gpus, library = %self.cfg.library.display(), "NVML initialised");
                    self.state = State::Up(up);
                    self.emit(TelemetryEvent::NvmlAvailable { gpus });
                }
                Err(reason) => {
                    let retry_in = init_backoff(failures, self.cfg.init_retry);
                    if !reported {
                        tracing::warn!(%reason, ?retry_in, "GPU unavailable: NVML init failed");
                        self.emit(TelemetryEvent::NvmlUnavailable { reason });
                    } else {
                        tracing::debug!(%reason, ?retry_in, "NVML init failed again");
                    }
                    self.state = State::Down {
                        retry_at: now + retry_in,
                        reported: true,
                        failures: failures.saturating_add(1),
                    };
                    self.store.set_gauge("GPUAvailable", &[], 0.0, at);
                    return;
                }
            }
        }
        let State::Up(up) = &mut self.state else {
            return;
        };
        self.store.set_gauge("GPUAvailable", &[], 1.0, at);
        self.store
            .set_gauge("GPUCount", &[], up.gpus.len() as f64, at);

        // Every read starts now, so one deadline for the round is each read's own timeout.
        let deadline = tokio::time::Instant::now() + self.cfg.call_timeout;
        let mut pending = Vec::new();
        for gpu in &up.gpus {
            // A device whose previous read never returned is skipped, not queued behind.
            if gpu.in_flight.swap(true, Ordering::AcqRel) {
                tracing::debug!(
                    gpu = gpu.index,
                    "NVML call still in flight; skipping this round"
                );
                continue;
            }
            let nvml = up.nvml.clone();
            let flag = gpu.in_flight.clone();
            let index = gpu.index;
            let task = tokio::task::spawn_blocking(move || {
                let r = read_gpu(&nvml, index);
                flag.store(false, Ordering::Release);
                r
            });
            // All devices run concurrently: the round costs at most one timeout.
            pending.push((index, task));
        }
        let timeout = self.cfg.call_timeout;
        let mut results = Vec::with_capacity(pending.len());
        // Awaited here, not through a spawned task per device (that only added wake-ups). A
        // read still running at the deadline is left to finish on its thread; its in-flight
        // flag keeps the device out of later rounds until then.
        for (index, task) in pending {
            results.push((index, tokio::time::timeout_at(deadline, task).await));
        }

        // The driver went away or was reloaded: this handle is dead. Drop it (stops the XID
        // thread) and re-initialise with backoff from the next round.
        let gone = results.iter().find_map(|(_, r)| match r {
            Ok(Ok(reading)) => reading.gone.clone(),
            _ => None,
        });
        if let Some(error) = gone {
            let reason = format!("NVML handle lost ({error}); re-initialising");
            tracing::error!(%reason, "GPU unavailable: driver gone or reloaded");
            self.state = State::Down {
                retry_at: now + init_backoff(0, self.cfg.init_retry),
                reported: true,
                failures: 1,
            };
            self.processes.replace(HashMap::new());
            self.store.set_gauge("GPUAvailable", &[], 0.0, at);
            self.emit(TelemetryEvent::NvmlUnavailable { reason });
            return;
        }
        let State::Up(up) = &mut self.state else {
            return;
        };

        let mut procs: HashMap<u32, u64> = HashMap::new();
        let mut events = Vec::new();
        for (index, result) in results {
            let Some(gpu) = up.gpus.iter_mut().find(|g| g.index == index) else {
                continue;
            };
            let label = index.to_string();
            let dims = [(Dim::Gpu, label.as_str())];
            let reading = match result {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(gpu = index, error = %e, "NVML read task failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(
                        gpu = index,
                        ?timeout,
                        "NVML call timed out; GPU skipped this round"
                    );
                    continue;
                }
            };
            if reading.lost {
                if !gpu.lost {
                    tracing::error!(gpu = index, "GPU lost (fell off the bus)");
                    events.push(TelemetryEvent::GpuLost { gpu: index });
                }
                gpu.lost = true;
                self.store.set_gauge("GPULost", &dims, 1.0, at);
                continue;
            }
            if gpu.lost {
                tracing::info!(gpu = index, "GPU answers again");
                events.push(TelemetryEvent::GpuRecovered { gpu: index });
                gpu.lost = false;
            }
            self.store.set_gauge("GPULost", &dims, 0.0, at);
            for (metric, v) in reading.values {
                self.store.set_gauge(metric, &dims, v, at);
            }
            for (pid, bytes) in reading.procs {
                *procs.entry(pid).or_default() += bytes;
            }
        }
        while let Ok((gpu, code)) = up.xids.try_recv() {
            let (g, c) = (gpu.to_string(), code.to_string());
            self.store
                .add_counter("GPUXidErrors", &[(Dim::Gpu, &g), (Dim::Code, &c)], 1.0, at);
            tracing::error!(gpu, code, "XID error");
            events.push(TelemetryEvent::Xid { gpu, code });
        }
        self.processes.replace(procs);
        for e in events {
            self.emit(e);
        }
    }

    /// Loads the library and lists the devices, bounded by `init_timeout`.
    async fn init(&self) -> Result<Up, String> {
        if self.init_in_flight.swap(true, Ordering::AcqRel) {
            return Err("previous NVML init still hung".to_string());
        }
        let library = self.cfg.library.clone();
        let flag = self.init_in_flight.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = Nvml::builder()
                .lib_path(library.as_os_str())
                .init()
                .and_then(|nvml| nvml.device_count().map(|n| (nvml, n)));
            flag.store(false, Ordering::Release);
            r
        });
        let (nvml, count) = match tokio::time::timeout(self.cfg.init_timeout, task).await {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e))) => return Err(e.to_string()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "NVML init took longer than {:?}",
                    self.cfg.init_timeout
                ));
            }
        };
        let nvml = Arc::new(nvml);
        let (tx, xids) = mpsc::unbounded_channel();
        let stop_xids = Arc::new(AtomicBool::new(false));
        let (n2, stop) = (nvml.clone(), stop_xids.clone());
        let spawned = std::thread::Builder::new()
            .name("nvml-xid".to_string())
            .spawn(move || xid_loop(&n2, count, &tx, &stop));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the XID event thread; XIDs not collected");
        }
        Ok(Up {
            nvml,
            gpus: (0..count)
                .map(|index| Gpu {
                    index,
                    in_flight: Arc::new(AtomicBool::new(false)),
                    lost: false,
                })
                .collect(),
            xids,
            stop_xids,
        })
    }
}

/// Blocks on the NVML event set, forwarding (gpu, code) for every XID until `stop`.
fn xid_loop(nvml: &Nvml, count: u32, tx: &mpsc::UnboundedSender<(u32, u64)>, stop: &AtomicBool) {
    let mut set = match nvml.create_event_set() {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "NVML events unavailable; XIDs not collected");
            return;
        }
    };
    let mut registered: Vec<u32> = Vec::new();
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                registered.push(index);
            }
            Err(e) => {
                // A failed registration frees the set: rebuild it with the GPUs that worked.
                tracing::info!(gpu = index, error = %e.error, "XID events not supported on this GPU");
                set = match rebuild_event_set(nvml, &registered) {
                    Some(s) => s,
                    None => return,
                };
            }
        }
    }
    if registered.is_empty() {
        return;
    }
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        match set.wait(XID_WAIT_MS) {
            Ok(ev) => {
                let Some(code) = ev.event_data.map(|x| match x {
                    nvml_wrapper::enums::event::XidError::Value(v) => v,
                    nvml_wrapper::enums::event::XidError::Unknown => 999,
                }) else {
                    continue;
                };
                if let Ok(gpu) = ev.device.index() {
                    let _ = tx.send((gpu, code));
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                tracing::debug!(error = %e, "NVML event wait failed");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

fn rebuild_event_set<'n>(nvml: &'n Nvml, gpus: &[u32]) -> Option<nvml_wrapper::EventSet<'n>> {
    let mut set = nvml.create_event_set().ok()?;
    for &index in gpus {
        set = nvml
            .device_by_index(index)
            .ok()?
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .ok()?;
    }
    Some(set)
}
