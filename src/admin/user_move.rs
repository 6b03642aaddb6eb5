//! `/user/move`: moving a user to another node (`relay user move`), on the admin listener.
//!
//! | method, path | answer |
//! |---|---|
//! | POST `/user/move?user=NAME&to=NODE` | starts the move: JSON progress (503 with the reason when it cannot start) |
//! | GET `/user/move?user=NAME` | the move's progress (JSON; 404 when none ran since the start) |
//!
//! The server implements [`MoveControl`] (`server::user_move`); names are checked there.

use std::sync::Arc;

use super::{AdminRequest, AdminResponse, Handler};
use crate::mailbox::directory::valid_name;

/// What the route calls.
pub trait MoveControl: Send + Sync {
    fn start(&self, user: &str, to: &str) -> Result<serde_json::Value, String>;
    fn progress(&self, user: &str) -> Option<serde_json::Value>;
}

fn json(value: &serde_json::Value) -> AdminResponse {
    match serde_json::to_vec(value) {
        Ok(body) => AdminResponse::json(200, body),
        Err(error) => AdminResponse::text(500, format!("cannot encode: {error}\n")),
    }
}

fn handle(control: &dyn MoveControl, request: &AdminRequest) -> AdminResponse {
    if request.path != "/user/move" {
        return AdminResponse::not_found();
    }
    let Some(user) = request
        .param("user")
        .map(str::to_ascii_lowercase)
        .filter(|u| valid_name(u))
    else {
        return AdminResponse::text(400, "user=NAME (a mailbox name) is needed\n");
    };
    match request.method.as_str() {
        "POST" => {
            let Some(to) = request
                .param("to")
                .filter(|t| crate::config::cluster::valid_node_name(t))
            else {
                return AdminResponse::text(400, "to=NODE (a node name) is needed\n");
            };
            match control.start(&user, to) {
                Ok(v) => json(&v),
                Err(e) => AdminResponse::text(503, format!("{e}\n")),
            }
        }
        "GET" => match control.progress(&user) {
            Some(v) => json(&v),
            None => AdminResponse::text(404, "no move of this user since the relay started\n"),
        },
        _ => AdminResponse::method_not_allowed(),
    }
}

/// The `/user/move` route for [`super::Admin::start`].
pub fn move_routes(control: Arc<dyn MoveControl>) -> Vec<(&'static str, Handler)> {
    vec![(
        "/user/move",
        Arc::new(move |request: &AdminRequest| handle(control.as_ref(), request)),
    )]
}
