//! The fake NVML library: builds `fake_nvml.c` into a `libnvidia-ml.so.1` (cached under target/
//! by source hash) and gives each test its own copy with its own state file.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = include_str!("fake_nvml.c");

/// Name of the state file the library reads from its own directory.
pub const STATE_FILE: &str = "fake_nvml.state";

/// Compiles the library once per source version and returns the cached path.
pub fn build_library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(compile).clone()
}

fn compile() -> PathBuf {
    let mut h = DefaultHasher::new();
    SOURCE.hash(&mut h);
    let dir = super::repo_root()
        .join("target")
        .join("fake-nvml")
        .join(format!("{:016x}", h.finish()));
    let lib = dir.join("libnvidia-ml.so.1");
    if lib.exists() {
        return lib;
    }
    std::fs::create_dir_all(&dir).expect("create fake NVML cache dir");
    let src = super::repo_root().join("tests/support/fake_nvml.c");
    // Build under a unique name and rename, so parallel test binaries never see half a file.
    let tmp = dir.join(format!("build-{}.so", std::process::id()));
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-lpthread")
        .status()
        .expect("run gcc to build the fake NVML library");
    assert!(status.success(), "gcc failed building {}", src.display());
    std::fs::rename(&tmp, &lib).expect("install fake NVML library");
    lib
}

/// One fake GPU's values and faults; `Default` is a healthy, idle 16 GiB card.
#[derive(Debug, Clone)]
pub struct FakeGpu {
    pub util: u32,
    pub mem_util: u32,
    pub mem_total: u64,
    pub mem_used: u64,
    pub temp: u32,
    pub power_mw: u32,
    pub power_limit_mw: u32,
    pub sm_clock: u32,
    pub fan: u32,
    pub ecc_corrected: u64,
    pub ecc_uncorrected: u64,
    pub pcie_tx_kbs: u32,
    pub pcie_rx_kbs: u32,
    pub throttle: u64,
    /// (pid, bytes) compute processes.
    pub procs: Vec<(u32, u64)>,
    /// XID codes, each delivered once through the event set.
    pub xids: Vec<u64>,
    pub lost: bool,
    pub slow_ms: u32,
    /// Fields answering NOT_SUPPORTED: util, memory, temp, power, power_limit, sm_clock, fan,
    /// ecc, pcie, throttle, procs, events.
    pub unsupported: Vec<&'static str>,
}

impl Default for FakeGpu {
    fn default() -> Self {
        Self {
            util: 0,
            mem_util: 0,
            mem_total: 16 << 30,
            mem_used: 0,
            temp: 35,
            power_mw: 50_000,
            power_limit_mw: 300_000,
            sm_clock: 1_410,
            fan: 30,
            ecc_corrected: 0,
            ecc_uncorrected: 0,
            pcie_tx_kbs: 0,
            pcie_rx_kbs: 0,
            throttle: 0,
            procs: Vec::new(),
            xids: Vec::new(),
            lost: false,
            slow_ms: 0,
            unsupported: Vec::new(),
        }
    }
}

/// The whole fake machine as written to the state file.
#[derive(Debug, Clone, Default)]
pub struct FakeState {
    /// nvmlInit_v2 fails with this NVML return code (9 = driver not loaded).
    pub init_error: Option<u32>,
    pub slow_ms: u32,
    /// nvmlInit_v2 alone sleeps this long (a slow driver attach).
    pub init_slow_ms: u32,
    /// Every call on a live handle fails with this code (the driver went away; init fails too).
    pub driver_error: Option<u32>,
    /// The loaded driver's "version": bumping it is a driver reload, and handles from the
    /// earlier init then fail with LIB_RM_VERSION_MISMATCH until re-initialised.
    pub driver_generation: u64,
    pub gpus: Vec<FakeGpu>,
}

impl FakeState {
    pub fn with_gpus(gpus: Vec<FakeGpu>) -> Self {
        Self {
            gpus,
            ..Self::default()
        }
    }

    /// The `key=value` text the C library parses.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(code) = self.init_error {
            let _ = writeln!(s, "init_error={code}");
        }
        let _ = writeln!(s, "count={}", self.gpus.len());
        let _ = writeln!(s, "slow_ms={}", self.slow_ms);
        let _ = writeln!(s, "init_slow_ms={}", self.init_slow_ms);
        if let Some(code) = self.driver_error {
            let _ = writeln!(s, "driver_error={code}");
        }
        let _ = writeln!(s, "driver_generation={}", self.driver_generation);
        for (i, g) in self.gpus.iter().enumerate() {
            let procs: Vec<String> = g.procs.iter().map(|(p, b)| format!("{p}:{b}")).collect();
            let xids: Vec<String> = g.xids.iter().map(|x| x.to_string()).collect();
            let fields = [
                ("util", g.util.to_string()),
                ("mem_util", g.mem_util.to_string()),
                ("mem_total", g.mem_total.to_string()),
                ("mem_used", g.mem_used.to_string()),
                ("temp", g.temp.to_string()),
                ("power_mw", g.power_mw.to_string()),
                ("power_limit_mw", g.power_limit_mw.to_string()),
                ("sm_clock", g.sm_clock.to_string()),
                ("fan", g.fan.to_string()),
                ("ecc_corrected", g.ecc_corrected.to_string()),
                ("ecc_uncorrected", g.ecc_uncorrected.to_string()),
                ("pcie_tx_kbs", g.pcie_tx_kbs.to_string()),
                ("pcie_rx_kbs", g.pcie_rx_kbs.to_string()),
                ("throttle", g.throttle.to_string()),
                ("procs", procs.join(",")),
                ("xid", xids.join(",")),
                ("lost", u8::from(g.lost).to_string()),
                ("slow_ms", g.slow_ms.to_string()),
                ("unsupported", g.unsupported.join(",")),
            ];
            for (k, v) in fields {
                let _ = writeln!(s, "gpu{i}.{k}={v}");
            }
        }
        s
    }
}

/// A private copy of the fake library plus its state file, removed on drop.
pub struct FakeNvml {
    dir: tempfile::TempDir,
    lib: PathBuf,
}

impl FakeNvml {
    /// A fresh library copy (its own XID bookkeeping) starting in `state`.
    pub fn new(state: &FakeState) -> Self {
        let built = build_library();
        let dir = tempfile::tempdir().expect("temp dir for fake NVML");
        let lib = dir.path().join("libnvidia-ml.so.1");
        // A copy, not a link: the dynamic loader dedups by inode, and each test needs its own.
        std::fs::copy(&built, &lib).expect("copy fake NVML library");
        let fake = Self { dir, lib };
        fake.set(state);
        fake
    }

    /// Path to pass to `Nvml::builder().lib_path(..)` or `gpu.nvml_library`.
    pub fn lib_path(&self) -> &Path {
        &self.lib
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join(STATE_FILE)
    }

    /// Replaces the state atomically (temp file + rename): the library never reads half a file.
    pub fn set(&self, state: &FakeState) {
        let tmp = self.dir.path().join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, state.render()).expect("write fake NVML state");
        std::fs::rename(&tmp, self.state_path()).expect("install fake NVML state");
    }
}
