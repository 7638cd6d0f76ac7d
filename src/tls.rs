//! Installs ring as rustls's process-wide crypto provider (reqwest is built without one so
//! the slower-to-build aws-lc is never compiled).

/// Idempotent; call before building any reqwest client.
pub fn install_crypto_provider() {
    // Err means another provider was installed first, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
