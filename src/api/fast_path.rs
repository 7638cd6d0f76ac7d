//! The inference route (`POST /api/v1/{model}`) served without the router: the same checks as
//! the router's layers (audit admission, load shedding, auth and rate limit, body limit), called
//! in line, in the layers' order.
//!
//! The router clones its layered service and boxes a future per layer for every request, and
//! the inference route is nearly all of a gateway's traffic. Everything else goes through the
//! router, and so does any request carrying `Origin` (a browser's, which needs CORS).

use super::AppState;
use super::auth::{Principal, Role};
use super::error::ApiError;
use super::middleware;
use super::multiplex::Multiplexer;
use super::proxy::Lane;
use super::routes;
use super::verified::LastToken;
use axum::body::Bytes;
use axum::http::{Method, Request, header};
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The route template, as the router would label it.
const ROUTE: &str = "/api/v1/{model}";

/// What one client connection keeps for its requests: its address (formatted once, for the
/// audit records), its lane to the models, and its last verified token.
pub(super) struct ClientConnection {
    pub remote: SocketAddr,
    client: Box<str>,
    pub lane: Lane,
    token: LastToken,
}

impl ClientConnection {
    /// A connection served on a gateway thread, reaching models through the thread's
    /// `multiplexer` (without one, over HTTP).
    pub fn new(remote: SocketAddr, multiplexer: Option<Multiplexer>) -> ClientConnection {
        ClientConnection {
            remote,
            client: remote.to_string().into(),
            lane: multiplexer.map(Lane::on).unwrap_or_default(),
            token: LastToken::default(),
        }
    }
}

/// The model named by a request the fast path serves, or `None` for the router's requests.
pub(super) fn model_of<B>(request: &Request<B>) -> Option<&str> {
    if request.method() != Method::POST || request.headers().contains_key(header::ORIGIN) {
        return None;
    }
    let name = request.uri().path().strip_prefix("/api/v1/")?;
    // Other routes under /api/v1, and names the router would decode or reject, stay there.
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (plain && name != "batch-analysis" && name != "models").then_some(name)
}

/// Answers one inference request (see the module doc for what it checks).
pub(super) async fn infer(
    state: Arc<AppState>,
    connection: &ClientConnection,
    mut request: Request<Incoming>,
    model: String,
) -> Response {
    let request_id = middleware::ensure_request_id(request.headers_mut());
    let mut response = admitted(&state, connection, request, model).await;
    response
        .headers_mut()
        .entry(middleware::X_REQUEST_ID)
        .or_insert(request_id);
    response
}

async fn admitted(
    state: &Arc<AppState>,
    connection: &ClientConnection,
    request: Request<Incoming>,
    model: String,
) -> Response {
    let observation = match middleware::begin(
        state,
        ROUTE.to_string(),
        Method::POST.as_str(),
        request.headers(),
        Some(&connection.client),
    ) {
        Ok(o) => o,
        Err(refused) => return *refused,
    };
    let answered = match middleware::reserve_capacity(state) {
        Ok(permit) => {
            let answered = authorized(state, connection, request, model).await;
            drop(permit);
            answered
        }
        Err(refused) => Answered::refused(*refused),
    };
    // Handed over directly: the router's path leaves these in the answer's extensions.
    observation.finish_as(
        &answered.response,
        answered.model,
        answered.principal.as_ref(),
    );
    answered.response
}

/// An answer, with what its audit record and metrics need to know about it.
struct Answered {
    response: Response,
    /// The model, when it is one the gateway knows.
    model: Option<String>,
    principal: Option<Principal>,
}

impl Answered {
    fn refused(refused: Response) -> Answered {
        let mut response = refused;
        let principal = response.extensions_mut().remove::<Principal>();
        Answered {
            response,
            model: None,
            principal,
        }
    }
}

async fn authorized(
    state: &AppState,
    connection: &ClientConnection,
    request: Request<Incoming>,
    model: String,
) -> Answered {
    let headers = request.headers();
    let access = match middleware::check_access(state, headers, Role::User, Some(&connection.token))
    {
        Ok(access) => access,
        Err(refused) => return Answered::refused(*refused),
    };
    let (parts, body) = request.into_parts();
    let body = read_body(body, state.body_limit).await;
    let (mut response, model) =
        routes::answer_inference(state, model, Some(&connection.lane), &parts.headers, body).await;
    let principal = access.stamp_allowance(&mut response);
    Answered {
        response,
        model,
        principal,
    }
}

/// The whole body, refused past `limit` bytes.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "failed to read the request body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, origin: bool) -> Request<()> {
        let mut r = Request::builder().method(method).uri(path);
        if origin {
            r = r.header(header::ORIGIN, "https://console.example");
        }
        r.body(()).unwrap()
    }

    #[test]
    fn only_plain_model_posts_without_origin_take_the_fast_path() {
        let fast = |m: Method, p: &str, o: bool| model_of(&request(m, p, o)).map(str::to_owned);
        assert_eq!(
            fast(Method::POST, "/api/v1/risk-analyzer", false).as_deref(),
            Some("risk-analyzer")
        );
        assert_eq!(
            fast(Method::POST, "/api/v1/risk-analyzer?x=1", false).as_deref(),
            Some("risk-analyzer")
        );
        for (method, path, origin) in [
            (Method::POST, "/api/v1/risk-analyzer", true),
            (Method::GET, "/api/v1/risk-analyzer", false),
            (Method::POST, "/api/v1/batch-analysis", false),
            (Method::POST, "/api/v1/models", false),
            (Method::POST, "/api/v1/", false),
            (Method::POST, "/api/v1/a/b", false),
            (Method::POST, "/api/v1/risk%2Danalyzer", false),
            (Method::POST, "/health", false),
        ] {
            assert_eq!(fast(method.clone(), path, origin), None, "{method} {path}");
        }
    }
}
