//! Bakes an rpath to libtorch's lib dir into every binary and test, so nothing needs
//! LD_LIBRARY_PATH at run time (cargo's `[env]` does not reach test processes).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
