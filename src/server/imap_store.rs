//! The IMAP session's store requests answered from the mail store (`crate::mailbox::MailStore`
//! over `crate::mailstore`): reads from the user's model, writes as records in the user's
//! turn, durable before the answer, bodies read from the spool.
//!
//! A selected folder is answered as a shared [`View`](crate::imap::store::View) of its
//! current version ([`SharedViews`]); the session finds what changed by comparing the view
//! it shows with the current one, so this side keeps only the folder's change counter.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use super::imap_views::SharedViews;
use super::shard::ShardContext;
use crate::envelope::{Envelope, Origin};
use crate::imap::store::{
    Answer, Changes, Copied, FlagOp, Flags, FolderInfo, FolderStatus, MessageMeta, Quota, Request,
    Snapshot, SpecialUse, StoreError, Stored, View,
};
use crate::mailbox::{sealing, ChangeError};
use crate::mailstore::{self, Entry, FlagMode, UserStore};
use crate::spool::state::{self as st, FolderId};
use crate::spool::NewMessage;

/// Body buffers larger than this are not kept for the next read (one huge message must not
/// pin its size for the rest of the session).
const BODY_BUFFER_KEEP: usize = 1 << 20;

/// One logged-in user's side of the store.
pub struct UserStoreLink {
    user: String,
    peer: std::net::SocketAddr,
    /// The selected folder and its change counter when the session last looked.
    selected: Option<(FolderId, u64)>,
    /// The last body's allocation, handed back by the session: a FETCH of many bodies reads
    /// each into it (no allocation or zeroing per message). Dropped while the connection
    /// waits for a command ([`UserStoreLink::release`]).
    body_buffer: Vec<u8>,
}

impl UserStoreLink {
    pub fn new(user: String, peer: std::net::SocketAddr) -> Self {
        UserStoreLink {
            user,
            peer,
            selected: None,
            body_buffer: Vec::new(),
        }
    }

    /// Takes back a body's allocation for the next body read.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() <= BODY_BUFFER_KEEP {
            self.body_buffer = buffer;
        }
    }

    /// Drops the kept body buffer (the session waits for its next command).
    pub fn release(&mut self) {
        self.body_buffer = Vec::new();
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// A message's body, read into the kept buffer (off the shard's thread: the ring or the
    /// reader pool).
    async fn body(
        &mut self,
        ctx: &ShardContext,
        folder: FolderId,
        uid: u32,
    ) -> Result<crate::imap::store::Body, StoreError> {
        let id = ctx
            .mail_store
            .folders()
            .with(&self.user, |s| s.entry(folder, uid).map(|e| e.id))
            .ok_or(StoreError::NonExistent)?;
        let body = std::mem::take(&mut self.body_buffer);
        let (read, body) = ctx.store.read_body_async(&ctx.reads, id, body, 0).await;
        match read {
            Ok(()) => Ok(body),
            Err(error) => {
                tracing::warn!(target: "relay::imap", %error, "cannot read a message");
                self.recycle(body);
                Err(StoreError::Unavailable)
            }
        }
    }

    /// Answers one request; writes are durable before this returns.
    pub async fn serve(&mut self, ctx: &ShardContext, request: Request) -> Answer {
        // A user being moved to another node, or moved already (`relay user move`): the
        // session gets NO [UNAVAILABLE] and shows no change, so the deletion of the store here
        // never reaches it as expunges; a new login goes to the new home.
        if moved_away(ctx, &self.user) {
            return super::imap::unavailable(&request);
        }
        if let Request::Body { folder, uid } = request {
            return Answer::Body(self.body(ctx, folder, uid).await);
        }
        let store = &ctx.mail_store;
        let user = self.user.clone();
        let read = |f: &mut dyn FnMut(&mut UserStore)| store.folders().with(&user, |s| f(s));
        match request {
            Request::List => {
                let mut out = Vec::new();
                read(&mut |s| {
                    out = s
                        .list()
                        .into_iter()
                        .filter(|e| e.selectable())
                        .map(|e| FolderInfo {
                            name: e.name,
                            special_use: e.special_use.map(special_use),
                            subscribed: e.subscribed,
                        })
                        .collect();
                });
                Answer::List(Ok(out))
            }
            Request::Status(name) => {
                let mut out = Err(StoreError::NonExistent);
                read(&mut |s| {
                    out = folder(s, &name)
                        .and_then(|f| s.status(f).map_err(refused))
                        .map(|st| FolderStatus {
                            messages: st.messages,
                            unseen: st.unseen,
                            deleted: st.deleted,
                            uidnext: st.uidnext,
                            uidvalidity: st.uidvalidity,
                            highest_modseq: st.highest_modseq,
                            size: st.size,
                            deleted_size: st.deleted_size,
                        });
                });
                Answer::Status(out)
            }
            Request::Select(name) => {
                let views = &ctx.imap.views;
                let mut out = Err(StoreError::NonExistent);
                let mut selected = None;
                read(&mut |s| {
                    out = folder(s, &name).and_then(|f| {
                        let (version, messages) = view(views, &user, s, f)?;
                        selected = Some((f, version.changes));
                        Ok(Snapshot {
                            folder: f,
                            uidvalidity: version.uidvalidity,
                            uidnext: version.uidnext,
                            highest_modseq: version.highest_modseq,
                            messages,
                        })
                    });
                });
                self.selected = selected;
                Answer::Select(out)
            }
            Request::Changes {
                folder,
                modseq,
                uidnext,
            } => Answer::Changes(self.changes(ctx, folder, modseq, uidnext)),
            Request::Body { folder, uid } => Answer::Body(self.body(ctx, folder, uid).await),
            Request::Summary { folder, uid } => {
                let mut id = None;
                read(&mut |s| id = s.entry(folder, uid).map(|e| e.id));
                let Some(id) = id else {
                    return Answer::Summary(Err(StoreError::NonExistent));
                };
                match ctx.store.read_summary(id) {
                    Ok(summary) => Answer::Summary(Ok(summary)),
                    // The body is read without the meta: it may still serve.
                    Err(error) => {
                        tracing::warn!(target: "relay::imap", %error, "cannot read a summary");
                        Answer::Summary(Ok(None))
                    }
                }
            }
            Request::StoreFlags {
                folder,
                uids,
                op,
                flags,
                unchanged_since,
            } => {
                let mode = match op {
                    FlagOp::Replace => FlagMode::Replace,
                    FlagOp::Add => FlagMode::Add,
                    FlagOp::Remove => FlagMode::Remove,
                };
                let flags = to_store_flags(&flags);
                let made = store
                    .change(&ctx.spool, &user, |s| {
                        let out = s.store_flags(folder, &uids, mode, &flags, unchanged_since)?;
                        Ok((out.record, out.failed))
                    })
                    .await;
                Answer::StoreFlags(made.map_err(|e| self.failed(e)).map(|modified| {
                    let skip: BTreeSet<u32> = modified.iter().copied().collect();
                    let mut updated = Vec::new();
                    store.folders().with(&user, |s| {
                        for uid in uids.iter().filter(|u| !skip.contains(u)) {
                            if let Some(e) = s.entry(folder, *uid) {
                                updated.push((*uid, from_store_flags(&e.flags), e.modseq));
                            }
                        }
                    });
                    Stored { updated, modified }
                }))
            }
            Request::Copy {
                folder,
                uids,
                to,
                remove,
            } => {
                let made = store
                    .change(&ctx.spool, &user, |s| {
                        let to = folder_of(s, &to)?;
                        let uidvalidity = s.status(to)?.uidvalidity;
                        let out = if remove {
                            s.move_(folder, &uids, to)?
                        } else {
                            s.copy(folder, &uids, to)?
                        };
                        Ok((out.record, (uidvalidity, out.pairs)))
                    })
                    .await;
                let answer = made.map_err(|e| self.failed(e));
                Answer::Copy(answer.map(|(uidvalidity, pairs)| Copied {
                    uidvalidity,
                    source: pairs.iter().map(|p| p.0).collect(),
                    destination: pairs.iter().map(|p| p.1).collect(),
                }))
            }
            Request::Expunge { folder, uids } => {
                let made = store
                    .change(&ctx.spool, &user, |s| {
                        let out = s.expunge(folder, Some(&uids))?;
                        Ok((out.record, out.uids))
                    })
                    .await;
                Answer::Expunge(made.map_err(|e| self.failed(e)))
            }
            Request::Append {
                to,
                flags,
                date,
                message,
            } => Answer::Append(self.append(ctx, &to, &flags, date, message).await),
            Request::Create(name) => {
                let now = unix_now();
                self.done(ctx, |s| Ok((Some(s.create_folder(&name, None, now)?), ())))
                    .await
            }
            Request::Delete(name) => {
                self.done(ctx, |s| Ok((Some(s.delete_folder(&name)?), ())))
                    .await
            }
            Request::Rename { from, to } => {
                let now = unix_now();
                self.done(ctx, |s| Ok((Some(s.rename_folder(&from, &to, now)?), ())))
                    .await
            }
            Request::ExpungedSince { folder, modseq } => {
                let mut out = Ok(true);
                read(&mut |s| {
                    out = s
                        .changes_since(folder, modseq)
                        .map(|c| c.expunged)
                        .map_err(refused);
                });
                Answer::ExpungedSince(out)
            }
            Request::Quota => {
                let mut used = (0, 0);
                read(&mut |s| used = (s.usage(), s.message_count() as u64));
                Answer::Quota(Ok(Quota {
                    storage_used_bytes: used.0,
                    storage_limit_bytes: ctx.auth.directory.current().quota(&user),
                    messages: used.1,
                }))
            }
            Request::Subscribe { name, subscribed } => {
                self.done(ctx, |s| Ok((s.subscribe(&name, subscribed)?, ())))
                    .await
            }
        }
    }

    async fn done(
        &mut self,
        ctx: &ShardContext,
        make: impl FnOnce(
            &mut UserStore,
        ) -> Result<(Option<st::MailboxState>, ()), mailstore::StoreError>,
    ) -> Answer {
        let made = ctx.mail_store.change(&ctx.spool, &self.user, make).await;
        Answer::Done(made.map_err(|e| self.failed(e)))
    }

    /// The selected folder now, when its change counter moved since the session last
    /// looked (else `None`: nothing to announce).
    fn changes(
        &mut self,
        ctx: &ShardContext,
        folder: FolderId,
        modseq: u64,
        uidnext: u32,
    ) -> Result<Changes, StoreError> {
        let unchanged = Changes {
            view: None,
            uidnext,
            highest_modseq: modseq,
        };
        let Some((selected, counter)) = self.selected.as_mut() else {
            return Ok(unchanged);
        };
        if *selected != folder {
            return Ok(unchanged);
        }
        let views = &ctx.imap.views;
        ctx.mail_store.folders().with(&self.user, |s| {
            let now = s.change_counter(folder).map_err(refused)?;
            if now == *counter {
                return Ok(unchanged);
            }
            *counter = now;
            let (version, messages) = view(views, &self.user, s, folder)?;
            Ok(Changes {
                view: Some(messages),
                uidnext: version.uidnext,
                highest_modseq: version.highest_modseq,
            })
        })
    }

    /// APPEND: a message frame with its placement (the UID rides in it, as for SMTP
    /// deliveries), durable before the answer. For a user whose mail is sealed the message
    /// is sealed first (`mailbox::sealing`), except into the Drafts folder: a draft is not
    /// a delivery but text its author is still editing, and the web mail, which reopens it
    /// in its editor, holds no private key. A message that cannot be sealed is not stored.
    async fn append(
        &mut self,
        ctx: &ShardContext,
        to: &str,
        flags: &Flags,
        date: Option<(i64, i16)>,
        message: Vec<u8>,
    ) -> Result<Copied, StoreError> {
        let store = &ctx.mail_store;
        let user = self.user.clone();
        let drafts = store.folders().with(&user, |s| {
            let folder = s.folder_id(to);
            folder.is_some()
                && s.list()
                    .into_iter()
                    .any(|e| e.folder == folder && e.special_use == Some(st::SpecialUse::Drafts))
        });
        let key = (!drafts)
            .then(|| sealing::key_for(Some(ctx.keys.as_ref()), &user, &message))
            .flatten();
        let (message, sealed) = match key {
            Some(key) => match sealing::seal_copy(&key, &user, &[], &message) {
                Ok(copy) => (copy.body, Some(copy.kind)),
                Err(error) => {
                    tracing::warn!(target: "relay::imap", %error, "APPEND not stored");
                    return Err(StoreError::Unavailable);
                }
            },
            None => (message, None),
        };
        let size = message.len() as u64;
        if let Some(quota) = ctx.auth.directory.current().quota(&user) {
            if store.usage(&user).saturating_add(size) > quota {
                return Err(StoreError::OverQuota);
            }
        }
        let now = SystemTime::now();
        let (internal_date, zone) = date.unwrap_or((unix_now(), 0));
        let flags = to_store_flags(flags);
        let placement = store
            .folders()
            .with(&user, |s| {
                let folder = folder_of(s, to)?;
                s.allocate(folder, &flags, internal_date, zone)
            })
            .map_err(refused)?;
        let uidvalidity = placement.uidvalidity;
        let uid = placement.uid;
        let id = ctx.spool.next_id(now);
        let mailboxes = vec![user.clone()];
        let placements = vec![Some(placement)];
        let new = NewMessage {
            id,
            arrival_unix_micros: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            origin: Origin {
                client_ip: self.peer.ip().to_string(),
                client_port: self.peer.port(),
                helo: String::new(),
                protocol: "IMAP".into(),
            },
            envelope: Envelope::default(),
            received_header: Vec::new(),
            body: message,
            mailboxes: mailboxes.clone(),
            remote: Vec::new(),
            placements: placements.clone(),
        };
        let summary = crate::imap::structure::Summary::encoded(&[], &new.body);
        let committed = match ctx.spool.append_message_with_summary(new, summary) {
            Ok(pending) => match pending.await {
                Ok(Ok(committed)) => Ok(committed),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(crate::spool::SpoolError::Closed),
            },
            Err(error) => Err(error),
        };
        match committed {
            Ok(committed) => {
                if let Some(kind) = sealed {
                    ctx.metrics.messages_sealed.inc();
                    tracing::info!(
                        target: "relay::sealing",
                        queue_id = %id,
                        user = %crate::logsafe::Safe(&user),
                        key = kind.name(),
                        size = committed.location.body_len,
                        "sealed copy stored"
                    );
                }
                store
                    .delivered(
                        &ctx.spool,
                        id,
                        committed.location.body_len,
                        &mailboxes,
                        &placements,
                    )
                    .await;
                Ok(Copied {
                    uidvalidity,
                    source: Vec::new(),
                    destination: vec![uid],
                })
            }
            Err(error) => {
                tracing::warn!(target: "relay::imap", %error, "APPEND not stored");
                store.abandoned(&ctx.spool, &mailboxes, &placements).await;
                Err(StoreError::Unavailable)
            }
        }
    }

    fn failed(&self, error: ChangeError) -> StoreError {
        match error {
            ChangeError::Refused(e) => refused(e),
            error => {
                tracing::warn!(target: "relay::imap", user = %crate::logsafe::Safe(&self.user), %error, "change not stored");
                StoreError::Unavailable
            }
        }
    }
}

/// Whether `user`'s store here is frozen for a move or no longer theirs (homed elsewhere).
fn moved_away(ctx: &ShardContext, user: &str) -> bool {
    ctx.mail_store.is_moving(user)
        || ctx.login_proxy.as_ref().is_some_and(|proxy| {
            proxy
                .home_elsewhere(&ctx.auth.directory.current(), user)
                .is_some()
        })
}

fn folder(s: &UserStore, name: &str) -> Result<FolderId, StoreError> {
    s.folder_id(name).ok_or(StoreError::NonExistent)
}

fn folder_of(s: &UserStore, name: &str) -> Result<FolderId, mailstore::StoreError> {
    s.folder_id(name).ok_or(mailstore::StoreError::NoSuchFolder)
}

fn refused(error: mailstore::StoreError) -> StoreError {
    use mailstore::StoreError as E;
    match error {
        E::NoSuchFolder | E::NoSuchFolderId(_) => StoreError::NonExistent,
        E::AlreadyExists => StoreError::AlreadyExists,
        E::TooManyFolders { .. } | E::TooManyKeywords { .. } => StoreError::OverQuota,
        E::InboxCannotBeDeleted
        | E::NameTooLong { .. }
        | E::InvalidName(_)
        | E::RenameIntoItself
        | E::KeywordTooLong { .. }
        | E::UidsExhausted
        | E::UidValidityExhausted => StoreError::Cannot,
    }
}

fn special_use(role: st::SpecialUse) -> SpecialUse {
    match role {
        st::SpecialUse::Sent => SpecialUse::Sent,
        st::SpecialUse::Drafts => SpecialUse::Drafts,
        st::SpecialUse::Trash => SpecialUse::Trash,
        st::SpecialUse::Junk => SpecialUse::Junk,
        st::SpecialUse::Archive => SpecialUse::Archive,
    }
}

// The session's flag bits and the store's are the same assignment (both follow RFC 9051's
// list order); the conversion keeps the two layers apart.
fn to_store_flags(flags: &Flags) -> st::Flags {
    st::Flags {
        system: flags.system,
        keywords: flags.keywords.clone(),
    }
}

fn from_store_flags(flags: &st::Flags) -> Flags {
    Flags {
        system: flags.system,
        keywords: flags.keywords.clone(),
    }
}

/// The folder's version and its shared view of that version.
fn view(
    views: &SharedViews,
    user: &str,
    s: &UserStore,
    folder: FolderId,
) -> Result<(mailstore::Version, View), StoreError> {
    let (version, messages) = s.visible(folder).map_err(refused)?;
    let view = views.get(user, folder, version.uidvalidity, version.changes, || {
        messages.map(|(u, e)| meta(u, e)).collect()
    });
    Ok((version, view))
}

fn meta(uid: u32, e: &Entry) -> MessageMeta {
    MessageMeta {
        uid,
        flags: from_store_flags(&e.flags),
        size: u32::try_from(e.size).unwrap_or(u32::MAX),
        internal_date: e.internal_date,
        zone_minutes: e.zone_minutes,
        modseq: e.modseq,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn flag_bits_agree_between_the_session_and_the_store() {
        use crate::imap::store::system_flag as imap;
        use crate::spool::state::system_flag as store;
        assert_eq!(
            [
                imap::SEEN,
                imap::ANSWERED,
                imap::FLAGGED,
                imap::DELETED,
                imap::DRAFT
            ],
            [
                store::SEEN,
                store::ANSWERED,
                store::FLAGGED,
                store::DELETED,
                store::DRAFT
            ]
        );
    }
}
