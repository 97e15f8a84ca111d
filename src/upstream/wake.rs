//! Waking stopped sandboxes (SPEC 5). A runner says a sandbox is not
//! running with an `X-Daytona-Sandbox-State` header, or with its "no IP
//! address found. Is the Sandbox started?" (400) and "sandbox container not
//! found" (404) errors. Then the API's state for the sandbox decides: a
//! stopped or archived sandbox is started (once, however many requests ask)
//! and the client is told to retry; a sandbox on its way up or down gets the
//! same; a sandbox that cannot come back gets 409.

use http::{HeaderMap, StatusCode};

use crate::control_plane::ControlPlane;
use crate::error::ProxyError;
use crate::http::X_DAYTONA_SANDBOX_STATE;

/// Largest runner error body read to look for its "not running" messages.
pub const MAX_ERROR_BODY: u64 = 4096;

/// What a runner's answer head says, before its body is read.
pub enum Verdict {
    /// An ordinary answer: pass it on.
    Pass,
    /// The runner says so in its state header.
    NotRunning,
    /// A small runner error whose body must be read to tell.
    ReadBody,
}

/// Looks at a runner's answer head.
pub fn inspect(status: StatusCode, headers: &HeaderMap) -> Verdict {
    if !(status.is_client_error() || status.is_server_error()) {
        return Verdict::Pass;
    }
    if let Some(state) = headers.get(&X_DAYTONA_SANDBOX_STATE) {
        return match state.as_bytes().eq_ignore_ascii_case(b"started") {
            true => Verdict::Pass,
            false => Verdict::NotRunning,
        };
    }
    let small = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= MAX_ERROR_BODY);
    let json = headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    match (status, small && json) {
        (StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND, true) => Verdict::ReadBody,
        _ => Verdict::Pass,
    }
}

/// Whether a runner error body is one of its "sandbox not running" errors.
pub fn says_not_running(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("is the sandbox started") || text.contains("sandbox container not found")
}

/// Asks the API what state the sandbox is in and acts on it. `Ok` when
/// the sandbox is running after all (or its state is unknown): the runner's
/// answer then goes to the client. `may_start` is false for requests that
/// must not keep a sandbox awake (`X-Daytona-Skip-Last-Activity-Update`).
pub async fn check(control_plane: &ControlPlane, sandbox_id: &str, may_start: bool) -> Result<(), ProxyError> {
    match verdict(control_plane, sandbox_id, may_start).await {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

async fn verdict(control_plane: &ControlPlane, sandbox_id: &str, may_start: bool) -> Option<ProxyError> {
    let ControlPlane::Api(api) = control_plane else {
        return None;
    };
    let state = match api.state(sandbox_id).await {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(error = %e, "a runner says the sandbox is not running; its state is unknown");
            return None;
        }
    };
    match &*state {
        "started" => None,
        "stopped" | "archived" if may_start => match api.start(sandbox_id).await {
            Ok(()) => Some(ProxyError::SandboxStarting),
            Err(e) => {
                tracing::warn!(error = %e, "starting a stopped sandbox failed");
                Some(ProxyError::from(e))
            }
        },
        "stopped" | "archived" => Some(ProxyError::SandboxNotRunning(state.to_string())),
        "starting" | "restoring" | "creating" | "pulling_snapshot" | "pending_build" | "building_snapshot"
        | "resizing" => Some(ProxyError::SandboxStarting),
        "stopping" | "archiving" => Some(ProxyError::SandboxStopping),
        other => Some(ProxyError::SandboxNotRunning(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn runner_answers_table() {
        let json = [("content-type", "application/json"), ("content-length", "120")];
        type Case<'a> = (u16, Vec<(&'a str, &'a str)>, &'a str);
        let cases: [Case; 8] = [
            (200, vec![("x-daytona-sandbox-state", "stopped")], "pass"),
            (503, vec![("x-daytona-sandbox-state", "stopped")], "not running"),
            (503, vec![("x-daytona-sandbox-state", "Started")], "pass"),
            (400, json.to_vec(), "read"),
            (404, json.to_vec(), "read"),
            (404, vec![("content-type", "text/html"), ("content-length", "120")], "pass"),
            (404, vec![("content-type", "application/json"), ("content-length", "100000")], "pass"),
            (500, json.to_vec(), "pass"),
        ];
        for (status, headers, want) in cases {
            let got = match inspect(StatusCode::from_u16(status).unwrap(), &head(&headers)) {
                Verdict::Pass => "pass",
                Verdict::NotRunning => "not running",
                Verdict::ReadBody => "read",
            };
            assert_eq!(got, want, "{status} {headers:?}");
        }
    }

    #[test]
    fn runner_messages() {
        assert!(says_not_running(
            br#"{"statusCode":400,"message":"bad request: no IP address found. Is the Sandbox started?"}"#
        ));
        assert!(says_not_running(br#"{"message":"not found: sandbox container not found: abc"}"#));
        assert!(!says_not_running(br#"{"error":"user not found"}"#));
    }
}
