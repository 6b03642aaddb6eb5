//! `/queue/...`: the queue control behind `relay queue`, on the admin listener.
//!
//! | method, path | query | answer |
//! |---|---|---|
//! | GET `/queue` | `limit` | JSON list of queued messages ([`ListedMessage`]) |
//! | GET `/queue/show` | `id` | JSON of one message ([`ShownMessage`]), 404 if not in the spool |
//! | POST `/queue/flush` | `id` or `domain`, or neither (all) | `{"flushed": n}` |
//! | POST `/queue/delete` | `id` | `{"removed": n}` (no notice) |
//! | POST `/queue/bounce` | `id` | `{"removed": n}` (failure notice to the sender) |
//!
//! Mutations are POST only, with `Content-Type: application/json` (checked for every route
//! by [`super::access`]); their parameters may come in the query or as a JSON object body.
//! A stray GET (a browser, a crawler on a misrouted proxy) never changes the queue.
//!
//! The listing and `show` come from the spool's in-memory queue view ([`Spool::queued`]),
//! merged with the running cores' snapshot: a request reads no segment (the first builds the
//! view with one pass over the log); `show` reads the one message's frame for its header.

use std::sync::Arc;

use super::{AdminRequest, AdminResponse, Handler};
use crate::delivery::control::{self, ListedMessage, ShownMessage, CONTROL_TIMEOUT};
use crate::delivery::{FlushFilter, Mesh};
use crate::envelope::QueueId;
use crate::spool::{Replay, Spool};

/// The queue as the admin endpoint serves it: the mesh for live commands and the cores'
/// state, the spool's queue view for the durable state.
pub struct QueueService {
    pub mesh: Arc<Mesh>,
    pub spool: Arc<Spool>,
}

impl QueueService {
    pub fn list(&self, limit: usize) -> Result<Vec<ListedMessage>, String> {
        let messages = self.spool.queued(limit).map_err(|e| e.to_string())?;
        let snap = control::snapshot(&self.mesh, CONTROL_TIMEOUT).map_err(|e| e.to_string())?;
        let replay = Replay {
            messages,
            deletions: Vec::new(),
            states: Vec::new(),
        };
        Ok(control::listing(&replay, Some(&snap), limit))
    }

    pub fn show(&self, id: QueueId) -> Result<Option<ShownMessage>, String> {
        let Some(message) = self.spool.queued_message(id).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let snap = control::snapshot(&self.mesh, CONTROL_TIMEOUT).map_err(|e| e.to_string())?;
        let replay = Replay {
            messages: vec![message],
            deletions: Vec::new(),
            states: Vec::new(),
        };
        Ok(control::show(&replay, Some(&snap), id, |id| {
            let location = self.spool.locate(id)?;
            self.spool.read_message(&location).ok().map(|m| m.body)
        }))
    }

    pub fn flush(&self, which: FlushFilter) -> Result<usize, String> {
        control::flush(&self.mesh, which, CONTROL_TIMEOUT).map_err(|e| e.to_string())
    }

    pub fn remove(&self, id: QueueId, bounce: bool) -> Result<usize, String> {
        control::remove(&self.mesh, id, bounce, CONTROL_TIMEOUT).map_err(|e| e.to_string())
    }
}

fn json(value: &impl serde::Serialize) -> AdminResponse {
    match serde_json::to_vec(value) {
        Ok(body) => AdminResponse::json(200, body),
        Err(error) => AdminResponse::text(500, format!("cannot encode: {error}\n")),
    }
}

fn id_param(request: &AdminRequest) -> Result<QueueId, AdminResponse> {
    let Some(text) = request.param("id") else {
        return Err(AdminResponse::text(400, "missing `id`\n"));
    };
    text.parse()
        .map_err(|_| AdminResponse::text(400, format!("`{text}` is not a queue id\n")))
}

fn handle(service: &QueueService, request: &AdminRequest) -> Result<AdminResponse, AdminResponse> {
    let post = request.method == "POST";
    let failed = |error: String| AdminResponse::text(503, format!("{error}\n"));
    match request.path.as_str() {
        "/queue" | "/queue/" | "/queue/list" => {
            if request.method != "GET" {
                return Ok(AdminResponse::method_not_allowed());
            }
            let limit = match request.param("limit") {
                Some(l) => l
                    .parse()
                    .map_err(|_| AdminResponse::text(400, "`limit` is not a number\n"))?,
                None => 1000,
            };
            Ok(json(&service.list(limit).map_err(failed)?))
        }
        "/queue/show" => {
            if request.method != "GET" {
                return Ok(AdminResponse::method_not_allowed());
            }
            let id = id_param(request)?;
            let shown: Option<ShownMessage> = service.show(id).map_err(failed)?;
            match shown {
                Some(shown) => Ok(json(&shown)),
                None => Ok(AdminResponse::text(
                    404,
                    format!("{id}: no such message in the spool\n"),
                )),
            }
        }
        "/queue/flush" if post => {
            let which = match (request.param("id"), request.param("domain")) {
                (Some(_), Some(_)) => {
                    return Err(AdminResponse::text(
                        400,
                        "give `id` or `domain`, not both\n",
                    ))
                }
                (Some(_), None) => FlushFilter::Message(id_param(request)?),
                (None, Some(domain)) => FlushFilter::Destination(domain.to_string()),
                (None, None) => FlushFilter::All,
            };
            let n = service.flush(which).map_err(failed)?;
            Ok(json(&serde_json::json!({ "flushed": n })))
        }
        "/queue/delete" | "/queue/bounce" if post => {
            let id = id_param(request)?;
            let bounce = request.path == "/queue/bounce";
            let n = service.remove(id, bounce).map_err(failed)?;
            Ok(json(&serde_json::json!({ "removed": n })))
        }
        "/queue/flush" | "/queue/delete" | "/queue/bounce" => {
            Ok(AdminResponse::method_not_allowed())
        }
        _ => Ok(AdminResponse::not_found()),
    }
}

/// The `/queue` routes for [`super::Admin::start`].
pub fn queue_routes(service: Arc<QueueService>) -> Vec<(&'static str, Handler)> {
    vec![(
        "/queue",
        Arc::new(
            move |request: &AdminRequest| match handle(&service, request) {
                Ok(response) | Err(response) => response,
            },
        ),
    )]
}
