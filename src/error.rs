//! Errors on the request path and the answers the proxy makes for them:
//! an HTML page for browser navigations, JSON otherwise, never empty.

use std::fmt::{self, Write as _};

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::control_plane::LookupError;
use crate::http::escape::push_html;
use crate::http::host::Port;

/// Seconds a client should wait when the control plane is down.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a preview URL")]
    NoRoute,
    #[error("sandbox not found")]
    SandboxNotFound,
    #[error("authentication required")]
    Unauthorized(Denied),
    #[error("path not allowed")]
    BadPath,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the client's request body stalled")]
    RequestBodyTimeout,
    #[error("the client's request body is malformed")]
    BadRequestBody,
    #[error("too many connections to this sandbox")]
    TooManyConnections,
    #[error("no upstream connection became free in time")]
    UpstreamBusy,
    #[error("control plane unavailable: {0}")]
    ControlPlaneUnavailable(String),
    #[error("control plane answer unusable: {0}")]
    ControlPlaneInvalid(String),
    #[error("nothing listening on port {0}")]
    PortNotListening(Port),
    #[error("runner unreachable: {0}")]
    RunnerUnreachable(String),
    #[error("upstream timed out on port {0}")]
    UpstreamTimeout(Port),
    #[error("upstream failed on port {port}: {detail}")]
    UpstreamFailed { port: Port, detail: String },
    #[error("sandbox is starting")]
    /// Starting (the state the API reports, or "starting" after a start).
    SandboxStarting(String),
    #[error("sandbox is stopping")]
    SandboxStopping,
    #[error("sandbox is {0}")]
    SandboxNotRunning(String),
    /// Stopped, and this client (a link-preview bot) does not start it.
    #[error("sandbox is {0}; bots do not start it")]
    SandboxAsleep(String),
    /// `/callback` or `/login` without a login this browser started.
    #[error("bad login: {0}")]
    BadLogin(&'static str),
    /// The provider answered the login with an error.
    #[error("login failed: {0}")]
    LoginFailed(String),
    /// Signed in, but not allowed to open the sandbox.
    #[error("{account} may not open this sandbox")]
    Forbidden { account: String, switch_url: String },
}

impl From<LookupError> for ProxyError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::NotFound => ProxyError::SandboxNotFound,
            LookupError::Unavailable(why) => ProxyError::ControlPlaneUnavailable(why),
            LookupError::Invalid(why) => ProxyError::ControlPlaneInvalid(why),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute | ProxyError::SandboxNotFound => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::BadPath | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ControlPlaneUnavailable(_)
            | ProxyError::SandboxStarting(_)
            | ProxyError::SandboxStopping
            | ProxyError::SandboxAsleep(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::SandboxNotRunning(_) => StatusCode::CONFLICT,
            ProxyError::ControlPlaneInvalid(_)
            | ProxyError::PortNotListening(_)
            | ProxyError::RunnerUnreachable(_)
            | ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadLogin(_) => StatusCode::BAD_REQUEST,
            ProxyError::LoginFailed(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NOT_FOUND",
            ProxyError::SandboxNotFound => "SANDBOX_NOT_FOUND",
            ProxyError::Unauthorized(_) => "UNAUTHORIZED",
            ProxyError::BadPath => "BAD_PATH",
            ProxyError::BadRequest(_) => "BAD_REQUEST",
            ProxyError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ProxyError::RequestBodyTimeout => "REQUEST_BODY_TIMEOUT",
            ProxyError::BadRequestBody => "BAD_REQUEST_BODY",
            ProxyError::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ProxyError::UpstreamBusy => "UPSTREAM_BUSY",
            ProxyError::ControlPlaneUnavailable(_) => "CONTROL_PLANE_UNAVAILABLE",
            ProxyError::ControlPlaneInvalid(_) => "CONTROL_PLANE_ERROR",
            ProxyError::PortNotListening(_) => "PORT_NOT_LISTENING",
            ProxyError::RunnerUnreachable(_) => "RUNNER_UNREACHABLE",
            ProxyError::UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            ProxyError::UpstreamFailed { .. } => "UPSTREAM_ERROR",
            ProxyError::SandboxStarting(_) => "SANDBOX_STARTING",
            ProxyError::SandboxAsleep(_) => "SANDBOX_STOPPED",
            ProxyError::SandboxStopping => "SANDBOX_STOPPING",
            ProxyError::SandboxNotRunning(_) => "SANDBOX_NOT_RUNNING",
            ProxyError::BadLogin(_) => "BAD_LOGIN",
            ProxyError::LoginFailed(_) => "LOGIN_FAILED",
            ProxyError::Forbidden { .. } => "FORBIDDEN",
        }
    }

    /// Short title for the HTML page.
    fn title(&self) -> String {
        match self {
            ProxyError::NoRoute => "No preview at this address".into(),
            ProxyError::SandboxNotFound => "Sandbox not found".into(),
            ProxyError::Unauthorized(_) => "This preview needs credentials".into(),
            ProxyError::BadPath => "Path not allowed".into(),
            ProxyError::BadRequest(_) => "Bad request".into(),
            ProxyError::MethodNotAllowed => "Method not allowed".into(),
            ProxyError::RequestBodyTimeout => "Request body timed out".into(),
            ProxyError::BadRequestBody => "Malformed request body".into(),
            ProxyError::TooManyConnections => "Too many connections to this sandbox".into(),
            ProxyError::UpstreamBusy => "The sandbox's host is busy".into(),
            ProxyError::ControlPlaneUnavailable(_) => "Preview service temporarily unavailable".into(),
            ProxyError::ControlPlaneInvalid(_) => "Preview service error".into(),
            ProxyError::PortNotListening(port) => format!("Nothing is listening on port {port}"),
            ProxyError::RunnerUnreachable(_) => "Sandbox host unreachable".into(),
            ProxyError::UpstreamTimeout(port) => {
                format!("The app on port {port} did not answer in time")
            }
            ProxyError::UpstreamFailed { port, .. } => format!("The app on port {port} failed"),
            ProxyError::SandboxStarting(_) => "The sandbox is starting".into(),
            ProxyError::SandboxAsleep(_) => "The sandbox is stopped".into(),
            ProxyError::SandboxStopping => "The sandbox is stopping".into(),
            ProxyError::SandboxNotRunning(_) => "The sandbox is not running".into(),
            ProxyError::BadLogin(_) => "This sign-in cannot be completed".into(),
            ProxyError::LoginFailed(_) => "Sign-in failed".into(),
            ProxyError::Forbidden { .. } => "You may not open this preview".into(),
        }
    }

    /// What a person should know and do. Never holds secrets or internal
    /// details (those are logged once instead).
    pub fn message(&self) -> String {
        match self {
            ProxyError::NoRoute => "There is no preview at this address. Preview URLs look like <port>-<sandboxId>.<domain>.".into(),
            ProxyError::SandboxNotFound => "The sandbox in this URL does not exist or has no running host. Check the URL; the sandbox may have been deleted or archived.".into(),
            ProxyError::Unauthorized(denied) => denied.message(),
            ProxyError::BadRequest(why) => format!("The proxy cannot forward this request: {why}. Send it again as a well-formed request."),
            ProxyError::RequestBodyTimeout => "The upload stopped: no request body bytes arrived in time. Check the connection and send the request again.".into(),
            ProxyError::TooManyConnections => "This sandbox already has as many open requests and WebSockets as the proxy allows. Close some (other tabs, streams) or retry after the Retry-After delay.".into(),
            ProxyError::UpstreamBusy => "Every connection to the machine hosting this sandbox is in use and none became free in time. Retry after the Retry-After delay.".into(),
            ProxyError::BadRequestBody => "The request body is malformed (for example a bad chunk size). Send it again as a well-formed request.".into(),
            ProxyError::MethodNotAllowed => "CONNECT is not supported: preview URLs serve HTTP and WebSocket only.".into(),
            ProxyError::BadPath => "The request path must start with '/' and must not contain '.' or '..' segments (also percent-encoded or with backslashes). Request the resolved path instead.".into(),
            ProxyError::ControlPlaneUnavailable(_) => "The service that knows where sandboxes run is not answering. Try again in a few seconds.".into(),
            ProxyError::ControlPlaneInvalid(_) => "The service that knows where sandboxes run gave an answer the proxy cannot use. Try again; if it persists, contact the operator.".into(),
            ProxyError::PortNotListening(port) => format!("The sandbox is reachable but no app is listening on port {port}. Start your app on port {port}, listening on 0.0.0.0, then reload."),
            ProxyError::RunnerUnreachable(_) => "The machine hosting this sandbox cannot be reached right now. Try again shortly.".into(),
            ProxyError::UpstreamTimeout(port) => format!("The app on port {port} accepted the request but did not answer in time."),
            ProxyError::UpstreamFailed { port, .. } => format!("The app on port {port} closed the connection without a complete answer. Check the app's logs."),
            ProxyError::SandboxStarting(state) => format!("The sandbox was asleep and is coming up now (state: {state}). This page reloads by itself every few seconds and shows the app as soon as it answers; other clients are held until then, or retry after the Retry-After delay. If your app does not start with the sandbox, start it again."),
            ProxyError::SandboxAsleep(state) => format!("The sandbox is {state}. Link previews and crawlers do not start sandboxes: open the link in a browser, or with curl or an SDK, to start it."),
            ProxyError::SandboxStopping => "The sandbox is stopping. The next request after it has stopped starts it again; this page reloads by itself.".into(),
            ProxyError::SandboxNotRunning(state) => format!("The sandbox is in state '{state}' and cannot be started from a preview link. Check it in the dashboard or with the SDK."),
            ProxyError::BadLogin(why) => format!("{why}. Open the preview link again to sign in anew."),
            ProxyError::LoginFailed(why) => format!("The identity provider said: {why}. Open the preview link again to retry."),
            ProxyError::Forbidden { account, .. } => format!("You are signed in as {account}, and that account may not open this sandbox. Ask its owner for access, or sign in with another account."),
        }
    }
}

/// The JSON error body, fields in Daytona's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorJson<'a> {
    status_code: u16,
    message: &'a str,
    code: &'static str,
    /// Quoted by a person who reports the problem; found in the access log.
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
}

/// The methods of SPEC 2, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Bearer,
    PreviewTokenHeader,
    QueryKey,
    Cookie,
    SignedUrl,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Bearer => "Authorization: Bearer <API key>",
            AuthMethod::PreviewTokenHeader => "X-Daytona-Preview-Token header",
            AuthMethod::QueryKey => "DAYTONA_SANDBOX_AUTH_KEY query parameter",
            AuthMethod::Cookie => "auth cookie",
            AuthMethod::SignedUrl => "signed preview URL",
        })
    }
}

/// How one method fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    NotSent,
    Rejected,
}

/// Why a request was refused: each method and its outcome, no secrets.
#[derive(Debug, Clone, Default)]
pub struct Denied(pub Vec<(AuthMethod, Outcome)>);

impl Denied {
    pub fn message(&self) -> String {
        let mut m = String::from("This preview is private or does not exist. Tried: ");
        for (i, (method, outcome)) in self.0.iter().enumerate() {
            let outcome = match outcome {
                Outcome::NotSent => "not sent",
                Outcome::Rejected => "rejected",
            };
            let _ = write!(m, "{}{method} ({outcome})", if i == 0 { "" } else { ", " });
        }
        m.push_str(". Send 'Authorization: Bearer <API key>', the header 'X-Daytona-Preview-Token: <token>' or the query parameter DAYTONA_SANDBOX_AUTH_KEY=<token>, or open a valid signed preview URL.");
        m
    }
}

/// Error page template, split once at start-up around the insertion point.
pub struct ErrorPages {
    head: &'static str,
    tail: &'static str,
}

const TEMPLATE: &str = include_str!("error_page.html");

impl ErrorPages {
    pub fn new() -> ErrorPages {
        let (head, tail) = TEMPLATE.split_once("{{content}}").unwrap_or((TEMPLATE, ""));
        ErrorPages { head, tail }
    }

    /// Renders the answer for `err`: a page when `html` (see [`wants_html`]),
    /// JSON otherwise.
    /// `request_id` is shown so a person can quote it (empty: none).
    pub fn render(&self, err: &ProxyError, html: bool, request_id: &str) -> Response<Full<Bytes>> {
        let status = err.status();
        let message = err.message();
        let (content_type, body) = if html {
            let title = format!("{} · {}", status.as_u16(), err.title());
            let mut page = String::with_capacity(self.head.len() + self.tail.len() + 512);
            page.push_str(self.head);
            page.push_str("<h1>");
            push_html(&mut page, &title);
            page.push_str("</h1>\n<p>");
            push_html(&mut page, &message);
            page.push_str("</p>\n");
            if let ProxyError::Forbidden { switch_url, .. } = err {
                page.push_str("<p><a href=\"");
                push_html(&mut page, switch_url);
                page.push_str("\">Sign in with another account</a></p>\n");
            }
            page.push_str("<p class=\"code\">");
            page.push_str(err.code());
            if !request_id.is_empty() {
                page.push_str(" · request ");
                push_html(&mut page, request_id);
            }
            page.push_str("</p>");
            if matches!(err, ProxyError::SandboxStarting(_) | ProxyError::SandboxStopping) {
                page.push_str("\n<meta http-equiv=\"refresh\" content=\"");
                page.push_str(RETRY_AFTER_SECS);
                page.push_str("\">");
            }
            page.push_str(self.tail);
            ("text/html; charset=utf-8", Bytes::from(page))
        } else {
            let json = ErrorJson { status_code: status.as_u16(), message: &message, code: err.code(), request_id };
            ("application/json", Bytes::from(serde_json::to_vec(&json).unwrap_or_default()))
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        resp
    }
}

impl Default for ErrorPages {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the client accepts HTML (a browser navigation).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")))
}

/// One value of every variant, for tests that must cover them all.
#[cfg(test)]
pub(crate) fn every_error() -> Vec<ProxyError> {
    let port = Port::parse("8080").expect("valid port");
    vec![
        ProxyError::NoRoute,
        ProxyError::SandboxNotFound,
        ProxyError::Unauthorized(Denied::default()),
        ProxyError::BadPath,
        ProxyError::BadRequest("two Host headers"),
        ProxyError::MethodNotAllowed,
        ProxyError::RequestBodyTimeout,
        ProxyError::BadRequestBody,
        ProxyError::TooManyConnections,
        ProxyError::UpstreamBusy,
        ProxyError::ControlPlaneUnavailable(String::new()),
        ProxyError::ControlPlaneInvalid(String::new()),
        ProxyError::PortNotListening(port),
        ProxyError::RunnerUnreachable(String::new()),
        ProxyError::UpstreamTimeout(port),
        ProxyError::UpstreamFailed { port, detail: String::new() },
        ProxyError::SandboxStarting("starting".into()),
        ProxyError::SandboxAsleep("stopped".into()),
        ProxyError::SandboxStopping,
        ProxyError::SandboxNotRunning("error".into()),
        ProxyError::BadLogin("no login in progress"),
        ProxyError::LoginFailed(String::new()),
        ProxyError::Forbidden { account: String::new(), switch_url: String::new() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(resp: Response<Full<Bytes>>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn json_by_default() {
        let pages = ErrorPages::new();
        let resp = pages.render(
            &ProxyError::PortNotListening(Port::parse("3000").unwrap()),
            wants_html(&HeaderMap::new()),
            "",
        );
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["statusCode"], 502);
        assert_eq!(v["code"], "PORT_NOT_LISTENING");
        assert!(v["message"].as_str().unwrap().contains("port 3000"));
    }

    #[tokio::test]
    async fn html_for_browsers_and_retry_after_on_503() {
        let pages = ErrorPages::new();
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
        let resp = pages.render(&ProxyError::ControlPlaneUnavailable("x".into()), wants_html(&headers), "abc123");
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[RETRY_AFTER], "5");
        assert!(resp.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        let text = body_text(resp).await;
        assert!(text.contains("<h1>503 · Preview service temporarily unavailable</h1>"), "{text}");
        assert!(!text.contains("{{content}}"));
        assert!(text.contains("request abc123"), "the request id is shown: {text}");
    }

    #[test]
    fn denial_message_names_methods_without_secrets() {
        let d = Denied(vec![(AuthMethod::Bearer, Outcome::Rejected), (AuthMethod::Cookie, Outcome::NotSent)]);
        let m = d.message();
        assert!(m.contains("Authorization: Bearer <API key> (rejected)"), "{m}");
        assert!(m.contains("auth cookie (not sent)"), "{m}");
    }

    #[test]
    fn every_error_code_is_counted() {
        for e in every_error() {
            assert!(crate::metrics::ERROR_CODES.contains(&e.code()), "{} is not counted", e.code());
        }
    }

    #[test]
    fn every_error_has_a_message_and_status() {
        for e in every_error() {
            assert!(e.status().is_client_error() || e.status().is_server_error());
            assert!(!e.message().is_empty());
        }
    }
}
