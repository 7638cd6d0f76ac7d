//! moto in server mode, from the project's venv (`scripts/setup.sh`), on a free 127.0.0.1 port.
//! Stopped by pid when dropped; `stop`/`start` let fault tests take AWS away and bring it back.

use super::net::{free_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Moto {
        let mut moto = Moto {
            port: free_port(),
            child: None,
        };
        moto.restart();
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port; state is empty after a restart, as after an outage.
    pub fn restart(&mut self) {
        self.stop();
        let bin = super::repo_root().join(".deps/venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} missing: run scripts/setup.sh",
            bin.display()
        );
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        self.child = Some(child);
        let url = format!("{}/moto-api/data.json", self.endpoint());
        let up = wait_until(Duration::from_secs(30), || {
            plain_http::get_ok(&url).then_some(())
        });
        assert!(
            up.is_some(),
            "moto did not answer on port {} within 30 s",
            self.port
        );
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
