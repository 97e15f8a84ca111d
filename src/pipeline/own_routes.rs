//! The proxy's own routes on hosts that are not preview hosts: `/health`,
//! the path-based toolbox route, and the registry's last-activity view.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{Dest, Filtered, Proxy, RequestCtx};
use crate::control_plane::ControlPlane;
use crate::error::ProxyError;
use crate::http::host::Port;
use crate::upstream::Body;

impl Proxy {
    /// Routes on hosts that are not preview hosts.
    pub(super) fn own_route(&self, req: &Request<Incoming>, ctx: &mut RequestCtx) -> Result<Filtered, ProxyError> {
        let path = req.uri().path();
        if path == "/health" && matches!(*req.method(), Method::GET | Method::HEAD) {
            if self.shared.draining.load(Ordering::Relaxed) {
                let body = Bytes::from_static(br#"{"status":"draining"}"#);
                return Ok(Filtered::Answer(json_response(StatusCode::SERVICE_UNAVAILABLE, body)));
            }
            return Ok(Filtered::Answer(json_response(StatusCode::OK, self.shared.health.clone())));
        }
        if let Some(rest) = path.strip_prefix("/toolbox/") {
            let (id, _) = rest.split_once('/').unwrap_or((rest, ""));
            let id = id.to_ascii_lowercase();
            let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if valid && ctx.host.is_some() {
                let full = req.uri().path_and_query().map_or(path, |pq| pq.as_str());
                let rest = &full["/toolbox/".len() + id.len()..];
                let rest = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
                ctx.port = Some(Port::TOOLBOX);
                return Ok(Filtered::Forward(Dest::Toolbox { sandbox_id: id, path_and_query: rest }));
            }
        }
        if let Some(id) = path.strip_prefix("/sandboxes/").and_then(|p| p.strip_suffix("/last-activity")) {
            if let ControlPlane::Registry(registry) = &*self.shared.control_plane {
                if req.method() == Method::GET && self.is_operator(req) {
                    let body = serde_json::json!({ "sandboxId": id, "lastActivityAt": registry.last_activity(id) });
                    return Ok(Filtered::Answer(json_response(StatusCode::OK, Bytes::from(body.to_string()))));
                }
            }
        }
        Err(ProxyError::NoRoute)
    }

    /// Operator routes need `Authorization: Bearer <PROXY_API_KEY>` when a
    /// key is configured.
    fn is_operator(&self, req: &Request<Incoming>) -> bool {
        let key = &self.shared.config.api_key;
        if key.is_empty() {
            return true;
        }
        let sent = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let want = format!("Bearer {key}");
        subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), want.as_bytes()).into()
    }
}

pub(super) fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
