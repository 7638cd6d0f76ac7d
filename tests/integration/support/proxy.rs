//! Forwarding for the test proxies that sit in front of moto (fault injection, recording).

/// Sends a request received by a test proxy on to `upstream` unchanged (method, path, headers,
/// body) and returns moto's answer.
pub async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    parts: &axum::http::request::Parts,
    body: Vec<u8>,
) -> reqwest::Response {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut request = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (name, value) in parts.headers.iter() {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    request
        .body(body)
        .send()
        .await
        .expect("moto answers the proxied request")
}
