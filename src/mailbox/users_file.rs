//! The users file: one mailbox owner per line, as `relay user add` prints it:
//!
//! ```text
//! # comment
//! alice $argon2id$v=19$m=19456,t=2,p=1$…$… quota=1GiB
//! carol $argon2id$v=19$m=19456,t=2,p=1$…$… home=node-b
//! bob   $argon2id$v=19$m=19456,t=2,p=1$…$… apop=shared-secret
//! ```
//!
//! Exposure: an operator's file. Errors name the line; a plaintext password is refused.

use super::directory::User;
use crate::config::ByteSize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct UsersFileError {
    pub line: usize,
    pub message: String,
}

pub fn parse(text: &str) -> Result<Vec<User>, UsersFileError> {
    let mut users = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |message: String| UsersFileError {
            line: index + 1,
            message,
        };
        let mut fields = line.split_whitespace();
        let (Some(name), Some(password)) = (fields.next(), fields.next()) else {
            return Err(error(
                "expected `name $argon2id$…hash [quota=SIZE] [apop=SECRET]`".into(),
            ));
        };
        let mut user = User {
            name: name.to_string(),
            password: password.to_string(),
            quota: None,
            apop_secret: None,
            home: None,
        };
        for option in fields {
            match option.split_once('=') {
                Some(("quota", size)) => {
                    user.quota = Some(ByteSize::parse(size).map_err(error)?.0);
                }
                Some(("apop", secret)) if !secret.is_empty() => {
                    user.apop_secret = Some(secret.to_string());
                }
                Some(("home", node)) if crate::config::cluster::valid_node_name(node) => {
                    user.home = Some(node.to_string());
                }
                _ => {
                    return Err(error(format!(
                        "unknown option `{option}` (quota=, apop=, home=NODE)"
                    )))
                }
            }
        }
        users.push(user);
    }
    Ok(users)
}

/// The line `relay user add` prints for a new user.
pub fn line(name: &str, phc: &str) -> String {
    format!("{name} {phc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_with_options() {
        let text = "# users\n\nalice $argon2id$x quota=1MiB\nbob $argon2id$y apop=s3cret\n";
        let users = parse(text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "alice");
        assert_eq!(users[0].quota, Some(1 << 20));
        assert_eq!(users[1].apop_secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("alice\n").unwrap_err().line, 1);
        let err = parse("# x\nalice $argon2id$x colour=blue\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("colour"));
        assert!(parse("a $h quota=lots\n").is_err());
    }

    #[test]
    fn printed_line_parses_back() {
        let users = parse(&line("carol", "$argon2id$z")).unwrap();
        assert_eq!(
            (users[0].name.as_str(), users[0].password.as_str()),
            ("carol", "$argon2id$z")
        );
    }
}
