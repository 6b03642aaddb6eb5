//! `relay mailbox ls [USER]`: the users' folders as the running server holds them, asked over
//! its admin socket (`/mailbox`, `/mailbox/{user}`: `relay::admin::mailbox`). There is no
//! offline fallback: the folders live in the server's memory, rebuilt from the spool at start.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{admin_socket, load, MailboxCommand};
use relay::admin::client::{call, AdminClientError, Call, Endpoint};
use relay::admin::mailbox::{render_user, render_users, user_path, UserReport, UserRow};

/// How long `relay mailbox` waits for the server (a read of the in-memory folders).
const MAILBOX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) fn run(
    command: MailboxCommand,
    path: Option<&Path>,
    socket: Option<PathBuf>,
) -> Result<()> {
    let config = load(path)?;
    let MailboxCommand::Ls { user, json } = command;
    let socket = admin_socket(&config, socket).ok_or_else(|| {
        anyhow::anyhow!("the admin endpoint is disabled in this config (admin.enabled = false)")
    })?;
    let endpoint = Endpoint::Socket(socket);
    let target = match &user {
        Some(name) => user_path(&name.to_ascii_lowercase()),
        None => "/mailbox".to_string(),
    };
    let (status, body) = match call(&endpoint, &Call::get(&target, MAILBOX_TIMEOUT)) {
        Ok(answer) => answer,
        Err(error @ AdminClientError::NotRunning(_)) => {
            return Err(anyhow::Error::new(error)
                .context("relay mailbox asks the running server (its folders are in memory)"))
        }
        Err(error) => return Err(error.into()),
    };
    anyhow::ensure!(
        status == 200,
        "{endpoint}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    let bad = || format!("{endpoint} answered {target} with something other than its JSON");
    let text = match (&user, json) {
        (_, true) => {
            // Checked before printing, so a script never reads a proxy's error page as data.
            let value: serde_json::Value = serde_json::from_slice(&body).with_context(bad)?;
            format!("{}\n", serde_json::to_string_pretty(&value)?)
        }
        (Some(_), false) => {
            render_user(&serde_json::from_slice::<UserReport>(&body).with_context(bad)?)
        }
        (None, false) => {
            render_users(&serde_json::from_slice::<Vec<UserRow>>(&body).with_context(bad)?)
        }
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
