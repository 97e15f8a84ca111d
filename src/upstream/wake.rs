//! Waking stopped sandboxes (SPEC 5). A runner says a sandbox is not
//! running with an `X-Daytona-Sandbox-State` header, or with its "no IP
//! address found. Is the Sandbox started?" (400) and "sandbox container not
//! found" (404) errors. Then the API's state for the sandbox decides: a
//! stopped or archived sandbox is started (once, however many requests ask);
//! a sandbox on its way up or down is waited for; one that cannot come back
//! gets 409. The pipeline holds clients other than browsers while it comes
//! up ([`hold`]); link-preview bots and crawlers never start a sandbox.

use std::time::Duration;

use http::header::USER_AGENT;
use http::{HeaderMap, StatusCode};

use crate::control_plane::ControlPlane;
use crate::error::ProxyError;
use crate::http::X_DAYTONA_SANDBOX_STATE;

/// User-Agent tokens (lower case) of link-preview bots and crawlers: pasting
/// a preview link into a chat or a PR must not wake a sandbox.
pub const BOTS: [&str; 22] = [
    "slackbot",
    "slack-imgproxy",
    "twitterbot",
    "facebookexternalhit",
    "facebookcatalog",
    "discordbot",
    "linkedinbot",
    "whatsapp",
    "telegrambot",
    "googlebot",
    "google-inspectiontool",
    "bingbot",
    "applebot",
    "duckduckbot",
    "yandexbot",
    "baiduspider",
    "skypeuripreview",
    "microsoftpreview",
    "redditbot",
    "embedly",
    "pinterestbot",
    "mattermost-bot",
];

/// How often a held request looks at the sandbox's state (the state is
/// cached for two seconds, so held requests share one API call).
const POLL: Duration = Duration::from_millis(500);

/// Whether the request comes from a link-preview bot or a crawler.
pub fn is_bot(headers: &HeaderMap) -> bool {
    let Some(ua) = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()) else { return false };
    let ua = ua.to_ascii_lowercase();
    BOTS.iter().any(|bot| ua.contains(bot))
}

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

/// Whether a request may start a stopped sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Yes,
    /// `X-Daytona-Skip-Last-Activity-Update`: it must not keep it awake.
    SkipsActivity,
    /// A link-preview bot or crawler.
    NotABot,
}

fn is_coming_up(state: &str) -> bool {
    matches!(
        state,
        "starting" | "restoring" | "creating" | "pulling_snapshot" | "pending_build" | "building_snapshot" | "resizing"
    )
}

/// Asks the API what state the sandbox is in and acts on it. `Ok` when
/// the sandbox is running after all (or its state is unknown): the runner's
/// answer then goes to the client.
pub async fn check(control_plane: &ControlPlane, sandbox_id: &str, may_start: Start) -> Result<(), ProxyError> {
    match verdict(control_plane, sandbox_id, may_start).await {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Waits, up to `limit`, for a sandbox that is coming up to be started,
/// polling its (cached) state. `Ok` once it is started; the error to answer
/// with when it does not come up in time or cannot.
pub async fn hold(control_plane: &ControlPlane, sandbox_id: &str, limit: Duration) -> Result<(), ProxyError> {
    let ControlPlane::Api(api) = control_plane else { return Ok(()) };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let state = api.state(sandbox_id).await?;
        match &*state {
            "started" => return Ok(()),
            s if is_coming_up(s) || s == "stopped" || s == "archived" => {
                if tokio::time::Instant::now() + POLL > deadline {
                    return Err(ProxyError::SandboxStarting(s.to_string()));
                }
                tokio::time::sleep(POLL).await;
            }
            "stopping" | "archiving" => return Err(ProxyError::SandboxStopping),
            other => return Err(ProxyError::SandboxNotRunning(other.to_string())),
        }
    }
}

async fn verdict(control_plane: &ControlPlane, sandbox_id: &str, may_start: Start) -> Option<ProxyError> {
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
        "stopped" | "archived" if may_start == Start::Yes => match api.start(sandbox_id).await {
            Ok(()) => Some(ProxyError::SandboxStarting("starting".into())),
            Err(e) => {
                tracing::warn!(error = %e, "starting a stopped sandbox failed");
                Some(ProxyError::from(e))
            }
        },
        "stopped" | "archived" if may_start == Start::NotABot => Some(ProxyError::SandboxAsleep(state.to_string())),
        "stopped" | "archived" => Some(ProxyError::SandboxNotRunning(state.to_string())),
        s if is_coming_up(s) => Some(ProxyError::SandboxStarting(s.to_string())),
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
    fn bots_are_told_apart_from_people_and_programs() {
        let ua = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(USER_AGENT, HeaderValue::from_str(v).unwrap());
            h
        };
        for bot in [
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "Twitterbot/1.0",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "WhatsApp/2.23.20.0",
            "TelegramBot (like TwitterBot)",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1 Safari/605.1.15 (Applebot/0.1)",
        ] {
            assert!(is_bot(&ua(bot)), "{bot}");
        }
        for person in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
            "curl/8.5.0",
            "python-requests/2.31",
            "daytona-sdk/0.1",
        ] {
            assert!(!is_bot(&ua(person)), "{person}");
        }
        assert!(!is_bot(&HeaderMap::new()));
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
