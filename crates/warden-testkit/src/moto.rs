//! moto in server mode, from the project's venv (`scripts/setup.sh`), on a free 127.0.0.1 port.
//! Stopped by pid when dropped; `stop`/`start` let fault tests take AWS away and bring it back.

use super::HarnessError;
use super::net::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

/// The project's moto (`scripts/setup.sh` installs it in `.deps/venv`).
pub fn default_server() -> PathBuf {
    super::repo_root().join(".deps/venv/bin/moto_server")
}

impl Moto {
    /// Starts the project's moto; panics with the reason (tests).
    pub fn start() -> Moto {
        Self::try_start(&default_server()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `bin` (a `moto_server`) on a free port and waits until it answers.
    pub fn try_start(bin: &Path) -> Result<Moto, HarnessError> {
        let mut moto = Moto {
            port: super::net::try_free_port()?,
            bin: bin.to_path_buf(),
            child: None,
        };
        moto.try_restart()?;
        Ok(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port; state is empty after a restart, as after an outage.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        if !self.bin.exists() {
            return Err(HarnessError::Peer(format!(
                "{} missing: run scripts/setup.sh",
                self.bin.display()
            )));
        }
        let child = Command::new(&self.bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(super::io(format!("spawning {}", self.bin.display())))?;
        self.child = Some(child);
        let url = format!("{}/moto-api/data.json", self.endpoint());
        let up = wait_until(Duration::from_secs(30), || {
            plain_http::get_ok(&url).then_some(())
        });
        up.ok_or_else(|| {
            HarnessError::Peer(format!(
                "moto did not answer on port {} within 30 s",
                self.port
            ))
        })
    }

    /// Kills the emulator (the outage in fault tests).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// moto's introspection document (SNS messages sent, etc.).
    pub fn data(&self) -> serde_json::Value {
        let url = format!("{}/moto-api/data.json", self.endpoint());
        let body = plain_http::get(&url).expect("moto data.json");
        serde_json::from_str(&body).expect("moto data.json is JSON")
    }

    /// An SDK config pointed at the emulator with static test credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_credential_types::Credentials::for_tests())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Minimal blocking HTTP GET over std, so the harness needs no async runtime.
pub mod plain_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// The status and body of a GET, any status.
    pub fn fetch(url: &str) -> Option<(u16, String)> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
        let mut s = TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// The body of a GET answered 200.
    pub fn get(url: &str) -> Option<String> {
        fetch(url).and_then(|(status, body)| (status == 200).then_some(body))
    }

    pub fn status(url: &str) -> Option<u16> {
        fetch(url).map(|(status, _)| status)
    }

    pub fn get_ok(url: &str) -> bool {
        get(url).is_some()
    }
}
