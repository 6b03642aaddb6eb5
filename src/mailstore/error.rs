//! Why the store refused a change; the protocol layer maps each to its reply.

use crate::spool::state::FolderId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no such folder")]
    NoSuchFolder,
    #[error("no folder with id {0}")]
    NoSuchFolderId(FolderId),
    #[error("a folder of that name already exists")]
    AlreadyExists,
    #[error("INBOX cannot be deleted")]
    InboxCannotBeDeleted,
    #[error("folder name longer than {max} bytes")]
    NameTooLong { max: usize },
    #[error("invalid folder name: {0}")]
    InvalidName(&'static str),
    #[error("a folder cannot be renamed into itself")]
    RenameIntoItself,
    #[error("more than {max} folders")]
    TooManyFolders { max: usize },
    #[error("more than {max} keywords on a message")]
    TooManyKeywords { max: usize },
    #[error("keyword longer than {max} bytes")]
    KeywordTooLong { max: usize },
    /// UIDs are 32 bits (RFC 9051): a folder that used them all takes no more messages.
    #[error("the folder has no UIDs left")]
    UidsExhausted,
    /// UIDVALIDITY values are 32 bits and strictly increase per user.
    #[error("no UIDVALIDITY values left")]
    UidValidityExhausted,
}
