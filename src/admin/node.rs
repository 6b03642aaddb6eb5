//! `/node/...`: the node's own state behind `relay node drain|resume`, on the admin listener.
//!
//! | method, path | answer |
//! |---|---|
//! | POST `/node/drain` | starts a drain (or reports the one running): JSON progress |
//! | GET `/node/drain` | the drain's progress (JSON) |
//! | POST `/node/resume` | ends the drain state: client connections are taken again |
//!
//! The server implements [`NodeControl`] (`server::drain`); this module only routes, so the
//! admin layer needs nothing of the server's.

use std::sync::Arc;

use super::{AdminRequest, AdminResponse, Handler};

/// What the node routes call; answers are JSON values or an error text (503).
pub trait NodeControl: Send + Sync {
    fn drain(&self) -> Result<serde_json::Value, String>;
    fn drain_progress(&self) -> serde_json::Value;
    fn resume(&self) -> Result<serde_json::Value, String>;
}

fn json(value: &serde_json::Value) -> AdminResponse {
    match serde_json::to_vec(value) {
        Ok(body) => AdminResponse::json(200, body),
        Err(error) => AdminResponse::text(500, format!("cannot encode: {error}\n")),
    }
}

fn handle(control: &dyn NodeControl, request: &AdminRequest) -> AdminResponse {
    let post = request.method == "POST";
    let answer = |r: Result<serde_json::Value, String>| match r {
        Ok(v) => json(&v),
        Err(e) => AdminResponse::text(503, format!("{e}\n")),
    };
    match (request.path.as_str(), post) {
        ("/node/drain", true) => answer(control.drain()),
        ("/node/drain", false) if request.method == "GET" => json(&control.drain_progress()),
        ("/node/resume", true) => answer(control.resume()),
        ("/node/drain" | "/node/resume", _) => AdminResponse::method_not_allowed(),
        _ => AdminResponse::not_found(),
    }
}

/// The `/node` routes for [`super::Admin::start`].
pub fn node_routes(control: Arc<dyn NodeControl>) -> Vec<(&'static str, Handler)> {
    vec![(
        "/node",
        Arc::new(move |request: &AdminRequest| handle(control.as_ref(), request)),
    )]
}
