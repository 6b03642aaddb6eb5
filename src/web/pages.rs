//! The pages, compiled into the binary (askama templates under `src/web/templates`; every
//! value escaped unless a field is sanitised HTML).

use askama::Template;

use super::render::MessageView;

#[derive(Debug, Clone)]
pub struct FolderLink {
    pub name: String,
    pub href: String,
    pub unseen: u32,
    pub current: bool,
}

/// The header and folder list around every page of a logged-in user.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub user: String,
    pub csrf: String,
    pub folders: Vec<FolderLink>,
}

#[derive(Template)]
#[template(path = "login.html", config = "src/web/askama.toml")]
pub struct LoginPage {
    pub csrf: String,
    pub user: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub href: String,
    pub from: String,
    pub subject: String,
    pub date: String,
    pub seen: bool,
    pub flagged: bool,
}

#[derive(Template)]
#[template(path = "list.html", config = "src/web/askama.toml")]
pub struct ListPage {
    pub chrome: Chrome,
    pub folder: String,
    pub total: usize,
    pub rows: Vec<Row>,
    pub page: usize,
    pub pages: usize,
    pub newer: Option<String>,
    pub older: Option<String>,
    /// The search shown (empty: the whole folder).
    pub search: String,
    /// The whole folder, first page (to leave a search).
    pub all: String,
    /// The folder is the Trash: offer to empty it.
    pub is_trash: bool,
}

#[derive(Template)]
#[template(path = "read.html", config = "src/web/askama.toml")]
pub struct ReadPage {
    pub chrome: Chrome,
    pub folder: String,
    pub back: String,
    /// `/compose?reply=…` (and reply-all, forward): the compose page quotes and threads.
    pub reply: String,
    pub reply_all: String,
    pub forward: String,
    /// In the Drafts folder: `/compose?draft=UID`.
    pub edit_draft: Option<String>,
    pub uid: u32,
    pub flagged: bool,
    pub view: MessageView,
    /// The signature verdict shown next to the sender.
    pub signature: Option<super::verdict::Signature>,
    /// The message frame's URL (`/body?…`) when it has an HTML body.
    pub frame: Option<String>,
    /// The frame URL of each forwarded message, in `view.forwarded`'s order.
    pub forwarded_frames: Vec<String>,
    /// This page again with remote images allowed, when some were blocked.
    pub show_remote: Option<String>,
    /// `/part?folder=…&uid=…`; a link adds `&part=PATH`.
    pub part_base: String,
}

#[derive(Template)]
#[template(path = "compose.html", config = "src/web/askama.toml")]
pub struct ComposePage {
    pub chrome: Chrome,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub bcc: String,
    pub subject: String,
    pub body: String,
    /// Threading of an answer (hidden fields; ids without brackets, space-separated).
    pub in_reply_to: String,
    pub references: String,
    /// The draft being edited.
    pub draft: Option<u32>,
    /// The message being forwarded.
    pub forward_folder: String,
    pub forward_uid: Option<u32>,
    /// Files that come along without an upload (a draft's, a forwarded message).
    pub kept: Vec<String>,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "notice.html", config = "src/web/askama.toml")]
pub struct NoticePage {
    pub chrome: Option<Chrome>,
    pub title: String,
    pub text: String,
    pub error: bool,
    pub link: String,
    pub link_text: String,
}

/// The stylesheet, embedded.
pub const STYLE_CSS: &str = include_str!("static/style.css");
