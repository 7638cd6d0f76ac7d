//! The fake NVML library read through nvml-wrapper: values, a live state change, and each fault.

use crate::support::nvml::{FakeGpu, FakeNvml, FakeState};
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::error::NvmlError;
use std::time::{Duration, Instant};

fn two_gpus() -> FakeState {
    FakeState::with_gpus(vec![
        FakeGpu {
            util: 40,
            mem_util: 20,
            mem_used: 4 << 30,
            temp: 61,
            power_mw: 123_000,
            sm_clock: 1_200,
            fan: 45,
            ecc_corrected: 3,
            pcie_tx_kbs: 1000,
            pcie_rx_kbs: 2000,
            throttle: 4,
            ..FakeGpu::default()
        },
        FakeGpu {
            util: 90,
            mem_util: 70,
            mem_total: 24 << 30,
            mem_used: 20 << 30,
            temp: 78,
            power_mw: 250_500,
            ..FakeGpu::default()
        },
    ])
}

fn open(fake: &FakeNvml) -> Nvml {
    Nvml::builder()
        .lib_path(fake.lib_path().as_os_str())
        .init()
        .expect("fake NVML initialises")
}

#[test]
fn two_gpus_read_through_nvml_wrapper_and_see_a_state_change() {
    let fake = FakeNvml::new(&two_gpus());
    let nvml = open(&fake);
    assert_eq!(nvml.device_count().unwrap(), 2);

    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert_eq!(d0.name().unwrap(), "Fake GPU 0");
    assert_eq!(d1.uuid().unwrap(), "GPU-fake-0001");
    let u0 = d0.utilization_rates().unwrap();
    assert_eq!((u0.gpu, u0.memory), (40, 20));
    let u1 = d1.utilization_rates().unwrap();
    assert_eq!((u1.gpu, u1.memory), (90, 70));
    let m0 = d0.memory_info().unwrap();
    assert_eq!((m0.total, m0.used, m0.free), (16 << 30, 4 << 30, 12 << 30));
    let m1 = d1.memory_info().unwrap();
    assert_eq!((m1.total, m1.used), (24 << 30, 20 << 30));
    assert_eq!(d0.temperature(TemperatureSensor::Gpu).unwrap(), 61);
    assert_eq!(d1.temperature(TemperatureSensor::Gpu).unwrap(), 78);
    assert_eq!(d0.power_usage().unwrap(), 123_000);
    assert_eq!(d1.power_usage().unwrap(), 250_500);
    assert_eq!(d0.enforced_power_limit().unwrap(), 300_000);
    assert_eq!(d0.clock_info(Clock::SM).unwrap(), 1_200);
    assert_eq!(d0.fan_speed(0).unwrap(), 45);
    assert_eq!(
        d0.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
            .unwrap(),
        3
    );
    assert_eq!(d0.pcie_throughput(PcieUtilCounter::Send).unwrap(), 1000);
    assert_eq!(d0.pcie_throughput(PcieUtilCounter::Receive).unwrap(), 2000);
    assert_eq!(d0.current_throttle_reasons().unwrap().bits(), 4);

    let mut changed = two_gpus();
    changed.gpus[1].util = 5;
    changed.gpus[1].temp = 42;
    fake.set(&changed);
    assert_eq!(d1.utilization_rates().unwrap().gpu, 5);
    assert_eq!(d1.temperature(TemperatureSensor::Gpu).unwrap(), 42);
    assert_eq!(
        d0.utilization_rates().unwrap().gpu,
        40,
        "the other GPU is unchanged"
    );
}

#[test]
fn failed_init_reports_driver_not_loaded() {
    let fake = FakeNvml::new(&FakeState {
        init_error: Some(9),
        ..two_gpus()
    });
    let Err(err) = Nvml::builder().lib_path(fake.lib_path().as_os_str()).init() else {
        panic!("init must fail");
    };
    assert!(matches!(err, NvmlError::DriverNotLoaded), "{err:?}");
    // Recovery: the driver comes back and a new init succeeds.
    fake.set(&two_gpus());
    assert_eq!(open(&fake).device_count().unwrap(), 2);
}

#[test]
fn lost_gpu_fails_while_the_other_keeps_answering() {
    let mut state = two_gpus();
    state.gpus[0].lost = true;
    let fake = FakeNvml::new(&state);
    let nvml = open(&fake);
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert!(matches!(d0.utilization_rates(), Err(NvmlError::GpuLost)));
    assert!(matches!(d0.memory_info(), Err(NvmlError::GpuLost)));
    assert_eq!(d1.utilization_rates().unwrap().gpu, 90);
}

#[test]
fn not_supported_is_per_field() {
    let mut state = two_gpus();
    state.gpus[0].unsupported = vec!["fan", "ecc"];
    let fake = FakeNvml::new(&state);
    let nvml = open(&fake);
    let d0 = nvml.device_by_index(0).unwrap();
    assert!(matches!(d0.fan_speed(0), Err(NvmlError::NotSupported)));
    assert!(matches!(
        d0.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate),
        Err(NvmlError::NotSupported)
    ));
    assert_eq!(d0.temperature(TemperatureSensor::Gpu).unwrap(), 61);
    assert_eq!(nvml.device_by_index(1).unwrap().fan_speed(0).unwrap(), 30);
}

#[test]
fn slow_call_takes_at_least_the_delay() {
    let mut state = two_gpus();
    state.gpus[1].slow_ms = 300;
    let fake = FakeNvml::new(&state);
    let nvml = open(&fake);
    let d1 = nvml.device_by_index(1).unwrap();
    let started = Instant::now();
    assert_eq!(d1.utilization_rates().unwrap().gpu, 90);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn process_list_uses_the_two_call_protocol() {
    let mut state = two_gpus();
    state.gpus[0].procs = vec![(4242, 1 << 30), (4343, 512 << 20)];
    let fake = FakeNvml::new(&state);
    let nvml = open(&fake);
    let procs = nvml
        .device_by_index(0)
        .unwrap()
        .running_compute_processes()
        .unwrap();
    let got: Vec<(u32, String)> = procs
        .iter()
        .map(|p| (p.pid, format!("{:?}", p.used_gpu_memory)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                4242,
                format!(
                    "{:?}",
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(1 << 30)
                )
            ),
            (
                4343,
                format!(
                    "{:?}",
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(512 << 20)
                )
            ),
        ]
    );
    assert!(
        nvml.device_by_index(1)
            .unwrap()
            .running_compute_processes()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn xid_events_are_delivered_once_each() {
    let fake = FakeNvml::new(&two_gpus());
    let nvml = open(&fake);
    let set = nvml.create_event_set().unwrap();
    let set = nvml
        .device_by_index(0)
        .unwrap()
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .unwrap();
    let set = nvml
        .device_by_index(1)
        .unwrap()
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .unwrap();
    assert!(matches!(set.wait(20), Err(NvmlError::Timeout)));

    let mut state = two_gpus();
    state.gpus[1].xids = vec![79, 13];
    fake.set(&state);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = set.wait(2_000).unwrap();
        assert!(ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR));
        seen.push((ev.device.index().unwrap(), format!("{:?}", ev.event_data)));
    }
    assert_eq!(
        seen,
        vec![
            (1, "Some(Value(79))".to_string()),
            (1, "Some(Value(13))".to_string())
        ]
    );
    assert!(
        matches!(set.wait(20), Err(NvmlError::Timeout)),
        "each XID once"
    );
}

// ------------------------------------------------ the sampler: init timeout, driver reload

use std::sync::Arc;
use tokio::sync::broadcast;
use warden::telemetry::nvml::{NvmlSampler, NvmlSamplerConfig};
use warden::telemetry::{Dim, MetricStore, TelemetryEvent};

const LONG: Duration = Duration::from_secs(30);

fn sampler(
    fake: &FakeNvml,
    init_timeout: Duration,
) -> (
    NvmlSampler,
    Arc<MetricStore>,
    broadcast::Receiver<TelemetryEvent>,
) {
    let store = Arc::new(MetricStore::new("h", 60));
    let (tx, rx) = broadcast::channel(64);
    let cfg = NvmlSamplerConfig {
        library: fake.lib_path().to_path_buf(),
        call_timeout: Duration::from_millis(200),
        init_timeout,
        // Re-init backoff is capped at this, so the tests' retries come quickly.
        init_retry: Duration::from_millis(100),
    };
    (NvmlSampler::new(cfg, store.clone(), tx), store, rx)
}

fn drain(rx: &mut broadcast::Receiver<TelemetryEvent>) -> Vec<TelemetryEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Samples every 50 ms until `want` holds on the events seen so far (bounded).
async fn sample_until(
    s: &mut NvmlSampler,
    rx: &mut broadcast::Receiver<TelemetryEvent>,
    seen: &mut Vec<TelemetryEvent>,
    want: impl Fn(&[TelemetryEvent]) -> bool,
) -> bool {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        s.sample(Instant::now()).await;
        seen.extend(drain(rx));
        if want(seen) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn available(e: &[TelemetryEvent]) -> usize {
    e.iter()
        .filter(|e| matches!(e, TelemetryEvent::NvmlAvailable { gpus: 2 }))
        .count()
}

fn unavailable(e: &[TelemetryEvent]) -> Vec<String> {
    e.iter()
        .filter_map(|e| match e {
            TelemetryEvent::NvmlUnavailable { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_init_has_its_own_timeout_longer_than_a_call() {
    // Init takes 4x the per-call timeout: within init_timeout it succeeds at the first try.
    let fake = FakeNvml::new(&FakeState {
        init_slow_ms: 800,
        ..two_gpus()
    });
    let (mut s, store, mut rx) = sampler(&fake, Duration::from_secs(10));
    s.sample(Instant::now()).await;
    assert_eq!(
        drain(&mut rx),
        vec![TelemetryEvent::NvmlAvailable { gpus: 2 }]
    );
    assert_eq!(store.latest("GPUAvailable", &[]), Some(1.0));
    assert_eq!(
        store.latest("GPUUtilization", &[(Dim::Gpu, "1")]),
        Some(90.0)
    );

    // Past init_timeout it is reported unavailable, and retried until the driver answers.
    let fake = FakeNvml::new(&FakeState {
        init_slow_ms: 1500,
        ..two_gpus()
    });
    let (mut s, store, mut rx) = sampler(&fake, Duration::from_millis(400));
    s.sample(Instant::now()).await;
    let first = drain(&mut rx);
    assert_eq!(unavailable(&first).len(), 1, "{first:?}");
    assert!(unavailable(&first)[0].contains("longer than"), "{first:?}");
    assert_eq!(store.latest("GPUAvailable", &[]), Some(0.0));
    fake.set(&two_gpus());
    let mut seen = first;
    assert!(
        sample_until(&mut s, &mut rx, &mut seen, |e| available(e) == 1).await,
        "never re-initialised: {seen:?}"
    );
    assert_eq!(unavailable(&seen).len(), 1, "reported once: {seen:?}");
    assert_eq!(store.latest("GPUAvailable", &[]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_reload_drops_the_handle_and_reinitialises() {
    let fake = FakeNvml::new(&two_gpus());
    let (mut s, store, mut rx) = sampler(&fake, Duration::from_secs(10));
    s.sample(Instant::now()).await;
    assert_eq!(
        drain(&mut rx),
        vec![TelemetryEvent::NvmlAvailable { gpus: 2 }]
    );

    // The driver is reloaded (another version): the old handle answers LIB_RM_VERSION_MISMATCH.
    let mut reloaded = two_gpus();
    reloaded.driver_generation = 1;
    reloaded.gpus[0].util = 77;
    fake.set(&reloaded);
    let mut seen = Vec::new();
    assert!(
        sample_until(&mut s, &mut rx, &mut seen, |e| available(e) == 1).await,
        "never came back after the reload: {seen:?}"
    );
    let down = unavailable(&seen);
    assert_eq!(down.len(), 1, "{seen:?}");
    assert!(down[0].to_lowercase().contains("version"), "{down:?}");
    // Unavailable, then available, in that order.
    assert!(
        matches!(seen[0], TelemetryEvent::NvmlUnavailable { .. }),
        "{seen:?}"
    );
    s.sample(Instant::now()).await;
    assert_eq!(
        store.latest("GPUUtilization", &[(Dim::Gpu, "0")]),
        Some(77.0),
        "values from the new handle"
    );
    assert_eq!(store.latest("GPUAvailable", &[]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_going_away_is_retried_until_it_is_back() {
    let fake = FakeNvml::new(&two_gpus());
    let (mut s, store, mut rx) = sampler(&fake, Duration::from_secs(10));
    s.sample(Instant::now()).await;
    assert_eq!(available(&drain(&mut rx)), 1);

    // Unloaded under a live handle: every call says DRIVER_NOT_LOADED, and so does init.
    fake.set(&FakeState {
        driver_error: Some(9),
        ..two_gpus()
    });
    let mut seen = Vec::new();
    assert!(
        sample_until(&mut s, &mut rx, &mut seen, |e| !unavailable(e).is_empty()).await,
        "{seen:?}"
    );
    assert_eq!(store.latest("GPUAvailable", &[]), Some(0.0));
    // Several re-init attempts fail while it is away; one event, no flapping.
    for _ in 0..6 {
        s.sample(Instant::now()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.extend(drain(&mut rx));
    assert_eq!(unavailable(&seen).len(), 1, "{seen:?}");
    assert_eq!(available(&seen), 0, "{seen:?}");
    assert!(!s.available());

    fake.set(&two_gpus());
    assert!(
        sample_until(&mut s, &mut rx, &mut seen, |e| available(e) == 1).await,
        "{seen:?}"
    );
    assert!(s.available());
    assert_eq!(store.latest("GPUAvailable", &[]), Some(1.0));
}

#[test]
fn init_backoff_doubles_up_to_init_retry() {
    use warden::telemetry::nvml::init_backoff;
    let max = Duration::from_secs(60);
    let delays: Vec<u64> = (0..8).map(|f| init_backoff(f, max).as_secs()).collect();
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(init_backoff(u32::MAX, max), max);
}
