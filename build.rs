//! Link flags for the `warden` binary.
//!
//! Packed relative relocations (DT_RELR, glibc ≥ 2.36): the position-independent binary has
//! ~52,000 RELATIVE relocations, 1.2 MiB of `.rela.dyn` that the loader reads at every start
//! and that then stays in the agent's resident set; packed, they take a few KiB. The binary
//! stays position-independent (ASLR unchanged).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bin=warden=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
