//! Web mail: read and send mail in a browser, served by the relay itself.
//!
//! The HTTP side (axum on hyper) runs on a small tokio runtime of its own (`serve`), never
//! on a shard; the pages (`http`, `pages`, `render`) reach the mail store only through the
//! [`backend::Backend`] trait, which the server answers from its store thread
//! (`server::web_store`) and the tests from memory. Sessions are server-side
//! (`session`): the cookie is a random id, nothing else.

pub mod backend;
pub mod compose;
pub mod http;
pub mod pages;
pub mod render;
pub mod serve;
pub mod session;
pub mod settings;
pub mod verdict;
pub mod wkd;

pub use backend::{
    Action, Backend, BackendError, Client, FolderPage, FolderSummary, ListedMessage, LoginError,
    Outgoing, StoredMessage,
};
pub use serve::{WebListener, WebServer, WebSettings};
