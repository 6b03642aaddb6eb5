//! Transcript tests: client bytes in, exact server bytes out, each run whole, split at every
//! byte boundary, and one byte at a time.

use std::sync::Arc;

use super::frame::Limits;
use super::session::{CloseReason, Event, Greeting, Outbox, Session, SessionConfig};
use super::store::memory::Memory;
use super::store::{serve, system_flag, Flags, SpecialUse};

const GREETING: &str = "* OK [CAPABILITY IMAP4rev2 IMAP4rev1 STARTTLS AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC ESEARCH BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT APPENDLIMIT=1000] relay IMAP ready\r\n";
const CAPS_AUTH: &str = "IMAP4rev2 IMAP4rev1 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC ESEARCH BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT APPENDLIMIT=1000";

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example".into(),
        limits: Limits {
            line_max: 200,
            literal_max: 100,
            command_max: 400,
            append_max: 1000,
        },
        plaintext_auth: true,
        starttls: true,
    }
}

const MSG1: &[u8] =
    b"From: Ann <ann@example.org>\r\nSubject: hello\r\nTo: bob@example.net\r\n\r\nHi Bob.\r\n";
const MSG2: &[u8] = b"Subject: two\r\n\r\nsecond\r\n";

/// INBOX with two messages (the second \Seen), Sent (special use), and "Work/Plans".
fn store() -> Memory {
    let mut m = Memory::default();
    m.deliver("INBOX", MSG1, Flags::default());
    m.deliver(
        "INBOX",
        MSG2,
        Flags {
            system: system_flag::SEEN,
            keywords: vec!["$Label1".into()],
        },
    );
    m.add_folder("Sent", Some(SpecialUse::Sent));
    m.add_folder("Work", None);
    m.add_folder("Work/Plans", None);
    m
}

/// Runs a session as the driver would: feeds the input in the given pieces, answers every
/// event (password "secret" is right; STARTTLS succeeds), and returns all output.
fn run_pieces(config: &SessionConfig, store: &mut Memory, pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Outbox::default();
    let mut session = Session::new(Arc::new(config.clone()), false, &mut out);
    let mut bytes = std::mem::take(&mut out.bytes);
    let mut pending: Vec<u8> = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        loop {
            let n = session.feed(&pending, &mut out);
            assert!(n <= pending.len());
            pending.drain(..n);
            bytes.append(&mut out.bytes);
            if out.events.is_empty() {
                break;
            }
            // An answer may raise the next event (FETCH asks for one body at a time).
            while !out.events.is_empty() {
                for event in std::mem::take(&mut out.events) {
                    match event {
                        Event::Authenticate(c) => {
                            session
                                .authenticated(c.password == "secret", &mut out)
                                .unwrap();
                        }
                        Event::StartTls => session.tls_established().unwrap(),
                        Event::Store(request) => {
                            let answer = serve(store, &request);
                            session.answer(answer, &mut out).unwrap();
                        }
                        Event::Close(_) => {}
                    }
                    bytes.append(&mut out.bytes);
                }
            }
            assert!(!session.awaiting());
        }
    }
    bytes
}

/// Checks one transcript whole, split at every boundary, and byte by byte.
fn transcript_with(config: &SessionConfig, make: fn() -> Memory, client: &str, server: &str) {
    let input = client.as_bytes();
    let expect =
        format!("{GREETING}{server}").replace("APPENDLIMIT=1000] relay", "APPENDLIMIT=1000] relay");
    let whole = run_pieces(config, &mut make(), &[input]);
    assert_eq!(
        String::from_utf8_lossy(&whole),
        expect,
        "\n--- whole input; client:\n{client}"
    );
    for cut in 1..input.len() {
        let split = run_pieces(config, &mut make(), &[&input[..cut], &input[cut..]]);
        assert_eq!(
            String::from_utf8_lossy(&split),
            expect,
            "\n--- split at {cut}"
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let single = run_pieces(config, &mut make(), &bytes);
    assert_eq!(
        String::from_utf8_lossy(&single),
        expect,
        "\n--- byte by byte"
    );
}

fn transcript(client: &str, server: &str) {
    transcript_with(&config(), store, client, server);
}

const LOGIN: &str = "a LOGIN alice secret\r\n";

fn login_ok() -> String {
    format!("a OK [CAPABILITY {CAPS_AUTH}] Logged in\r\n")
}

#[test]
fn capability_noop_logout() {
    transcript(
        "c1 CAPABILITY\r\nc2 NOOP\r\nc3 LOGOUT\r\nc4 NOOP\r\n",
        "* CAPABILITY IMAP4rev2 IMAP4rev1 STARTTLS AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC ESEARCH BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT APPENDLIMIT=1000\r\n\
         c1 OK CAPABILITY completed\r\n\
         c2 OK NOOP completed\r\n\
         * BYE Logging out\r\n\
         c3 OK LOGOUT completed\r\n",
    );
}

#[test]
fn login_disabled_without_tls_until_starttls() {
    let mut config = config();
    config.plaintext_auth = false;
    let client = "a LOGIN alice secret\r\nb STARTTLS\r\nc CAPABILITY\r\nd LOGIN alice secret\r\n";
    let input = client.as_bytes();
    let out = run_pieces(&config, &mut store(), &[input]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("* OK [CAPABILITY IMAP4rev2 IMAP4rev1 STARTTLS LOGINDISABLED LITERAL+")
    );
    let rest = &text[text.find("\r\n").unwrap() + 2..];
    assert_eq!(
        rest,
        "a NO [PRIVACYREQUIRED] LOGIN needs TLS\r\n\
         b OK Begin TLS negotiation now\r\n\
         * CAPABILITY IMAP4rev2 IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC ESEARCH BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT APPENDLIMIT=1000\r\n\
         c OK CAPABILITY completed\r\n\
         d OK [CAPABILITY IMAP4rev2 IMAP4rev1 LITERAL+ ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC ESEARCH BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT APPENDLIMIT=1000] Logged in\r\n"
    );
}

#[test]
fn starttls_stops_consuming_until_the_handshake() {
    let mut out = Outbox::default();
    let mut session = Session::new(Arc::new(config()), false, &mut out);
    out.bytes.clear();
    let input = b"a STARTTLS\r\nb NOOP\r\n";
    let n = session.feed(input, &mut out);
    assert_eq!(n, 12, "plaintext after STARTTLS must stay unread");
    assert_eq!(out.events, vec![Event::StartTls]);
    assert!(session.awaiting());
    assert_eq!(session.feed(&input[n..], &mut out), 0);
    session.tls_established().unwrap();
    let caps = session.capabilities();
    assert!(!caps.contains("STARTTLS"), "{caps}");
}

#[test]
fn login_with_literals_and_failures() {
    transcript(
        "a LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
        &format!("+ Ready for literal data\r\n{}", login_ok()),
    );
    transcript(
        "a LOGIN alice wrong\r\nb LOGIN alice wrong\r\nc LOGIN alice wrong\r\nd NOOP\r\n",
        "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n\
         b NO [AUTHENTICATIONFAILED] Authentication failed\r\n\
         c NO [AUTHENTICATIONFAILED] Authentication failed\r\n\
         * BYE Too many failures\r\n",
    );
}

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    // "\0alice\0secret"
    transcript("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", &login_ok());
    transcript(
        "a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
        &format!("+ \r\n{}", login_ok()),
    );
    transcript(
        "a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n",
        "+ \r\na NO Authentication cancelled\r\nb OK NOOP completed\r\n",
    );
}

#[test]
fn authenticate_login() {
    // "alice", "secret"
    transcript(
        "a AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n",
        &format!("+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n{}", login_ok()),
    );
}

#[test]
fn commands_need_authentication() {
    transcript(
        "a SELECT INBOX\r\nb FETCH 1 FLAGS\r\n",
        "a BAD Log in first\r\nb BAD Log in first\r\n",
    );
}

#[test]
fn syntax_errors() {
    transcript(
        "a FOO\r\n\r\n(bad NOOP\r\nb NOOP\r\n",
        "a BAD Syntax error or unknown command\r\n\
         * BAD Missing or invalid tag\r\n\
         * BAD Missing or invalid tag\r\n\
         b OK NOOP completed\r\n",
    );
}

#[test]
fn enable_id_namespace() {
    transcript(
        &format!("{LOGIN}b ENABLE IMAP4rev2 CONDSTORE\r\nc ENABLE IMAP4rev2\r\nd ID NIL\r\ne NAMESPACE\r\n"),
        &format!(
            "{}* ENABLED IMAP4rev2 CONDSTORE\r\nb OK ENABLE completed\r\n\
             * ENABLED\r\nc OK ENABLE completed\r\n\
             * ID (\"name\" \"relay\")\r\nd OK ID completed\r\n\
             * NAMESPACE ((\"\" \"/\")) NIL NIL\r\ne OK NAMESPACE completed\r\n",
            login_ok()
        ),
    );
}

#[test]
fn list_and_lsub() {
    transcript(
        &format!(
            "{LOGIN}b LIST \"\" \"*\"\r\nc LIST \"\" %\r\nd LIST \"\" \"\"\r\ne SUBSCRIBE Work\r\n\
             f LSUB \"\" *\r\ng LIST \"\" \"*\" RETURN (SUBSCRIBED)\r\nh LIST Work/ %\r\n"
        ),
        &format!(
            "{}* LIST (\\HasNoChildren) \"/\" INBOX\r\n\
             * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasChildren) \"/\" Work\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             b OK LIST completed\r\n\
             * LIST (\\HasNoChildren) \"/\" INBOX\r\n\
             * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasChildren) \"/\" Work\r\n\
             c OK LIST completed\r\n\
             * LIST (\\Noselect) \"/\" \"\"\r\n\
             d OK LIST completed\r\n\
             e OK SUBSCRIBE completed\r\n\
             * LSUB () \"/\" Work\r\n\
             f OK LSUB completed\r\n\
             * LIST (\\HasNoChildren) \"/\" INBOX\r\n\
             * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasChildren \\Subscribed) \"/\" Work\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             g OK LIST completed\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             h OK LIST completed\r\n",
            login_ok()
        ),
    );
}

#[test]
fn list_return_status() {
    transcript(
        &format!(
            "{LOGIN}b LIST \"\" \"*\" RETURN (STATUS (MESSAGES UNSEEN))\r\n\
             c LIST \"\" Work* RETURN (SUBSCRIBED STATUS (SIZE))\r\nd LIST \"\" * RETURN (FOO)\r\n"
        ),
        &format!(
            "{}* LIST (\\HasNoChildren) \"/\" INBOX\r\n\
             * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasChildren) \"/\" Work\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             * STATUS INBOX (MESSAGES 2 UNSEEN 1)\r\n\
             * STATUS Sent (MESSAGES 0 UNSEEN 0)\r\n\
             * STATUS Work (MESSAGES 0 UNSEEN 0)\r\n\
             * STATUS Work/Plans (MESSAGES 0 UNSEEN 0)\r\n\
             b OK LIST completed\r\n\
             * LIST (\\HasChildren) \"/\" Work\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             * STATUS Work (SIZE 0)\r\n\
             * STATUS Work/Plans (SIZE 0)\r\n\
             c OK LIST completed\r\n\
             d BAD Invalid RETURN options\r\n",
            login_ok()
        ),
    );
}

#[test]
fn status_create_rename_delete() {
    transcript(
        &format!(
            "{LOGIN}b STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE HIGHESTMODSEQ DELETED)\r\n\
             c CREATE Lists/\r\nd CREATE Lists\r\ne RENAME Lists Old\r\nf DELETE Old\r\n\
             g DELETE Old\r\nh STATUS Nope (MESSAGES)\r\ni CREATE INBOX\r\n"
        ),
        &format!(
            "{}* STATUS INBOX (MESSAGES 2 UNSEEN 1 UIDNEXT 3 UIDVALIDITY 1000 SIZE {} HIGHESTMODSEQ 3 DELETED 0)\r\n\
             b OK STATUS completed\r\n\
             c OK CREATE completed\r\n\
             d NO [ALREADYEXISTS] folder exists\r\n\
             e OK RENAME completed\r\n\
             f OK DELETE completed\r\n\
             g NO [NONEXISTENT] no such folder\r\n\
             h NO [NONEXISTENT] no such folder\r\n\
             i NO [ALREADYEXISTS] INBOX exists\r\n",
            login_ok(),
            MSG1.len() + MSG2.len()
        ),
    );
}

fn select_inbox_rev1() -> String {
    "* 2 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
     * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
     * OK [UNSEEN 1] First unseen\r\n* OK [UIDVALIDITY 1000] UIDs valid\r\n\
     * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 3] Highest\r\n"
        .to_string()
}

#[test]
fn select_examine_close_unselect() {
    transcript(
        &format!(
            "{LOGIN}b SELECT INBOX\r\nc EXAMINE Sent\r\nd CLOSE\r\ne FETCH 1 FLAGS\r\n\
             f ENABLE IMAP4rev2\r\ng SELECT inbox\r\nh UNSELECT\r\ni SELECT Nope\r\n"
        ),
        &format!(
            "{}{}b OK [READ-WRITE] SELECT completed\r\n\
             * OK [CLOSED] Previous mailbox closed\r\n\
             * 0 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n* OK [UIDVALIDITY 1001] UIDs valid\r\n\
             * OK [UIDNEXT 1] Predicted next UID\r\n* OK [HIGHESTMODSEQ 1] Highest\r\n\
             c OK [READ-ONLY] EXAMINE completed\r\n\
             d OK CLOSE completed\r\n\
             e BAD No mailbox selected\r\n\
             * ENABLED IMAP4rev2\r\nf OK ENABLE completed\r\n\
             * 2 EXISTS\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n\
             * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 3] Highest\r\n\
             g OK [READ-WRITE] SELECT completed\r\n\
             h OK UNSELECT completed\r\n\
             i NO [NONEXISTENT] no such folder\r\n",
            login_ok(),
            select_inbox_rev1()
        ),
    );
}

fn selected(commands: &str) -> String {
    format!("{LOGIN}s SELECT INBOX\r\n{commands}")
}

fn selected_reply(replies: &str) -> String {
    format!(
        "{}{}s OK [READ-WRITE] SELECT completed\r\n{replies}",
        login_ok(),
        select_inbox_rev1()
    )
}

#[test]
fn fetch_attributes() {
    transcript(
        &selected("b FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)\r\nc UID FETCH 2 (FLAGS MODSEQ)\r\nd FETCH 3 FLAGS\r\n"),
        &selected_reply(&format!(
            "* 1 FETCH (FLAGS () UID 1 RFC822.SIZE {} INTERNALDATE \"14-Nov-2023 22:13:20 +0000\")\r\n\
             * 2 FETCH (FLAGS (\\Seen $Label1) UID 2 RFC822.SIZE {} INTERNALDATE \"14-Nov-2023 22:13:20 +0000\")\r\n\
             b OK FETCH completed\r\n\
             * 2 FETCH (UID 2 FLAGS (\\Seen $Label1) MODSEQ (3))\r\n\
             c OK UID FETCH completed\r\n\
             d BAD Invalid sequence set\r\n",
            MSG1.len(),
            MSG2.len()
        )),
    );
}

#[test]
fn fetch_body_sections_and_implicit_seen() {
    transcript(
        &selected(
            "b FETCH 2 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[]<0.7>)\r\n\
             c FETCH 1 BODY.PEEK[HEADER.FIELDS (subject from)]\r\n\
             d FETCH 1 BODY[TEXT]\r\ne FETCH 1 RFC822.SIZE\r\nf FETCH 1 FLAGS\r\n",
        ),
        &selected_reply(
            "* 2 FETCH (BODY[HEADER] {16}\r\nSubject: two\r\n\r\n BODY[TEXT] {8}\r\nsecond\r\n BODY[]<0> {7}\r\nSubject)\r\n\
             b OK FETCH completed\r\n\
             * 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {47}\r\nFrom: Ann <ann@example.org>\r\nSubject: hello\r\n\r\n)\r\n\
             c OK FETCH completed\r\n\
             * 1 FETCH (BODY[TEXT] {9}\r\nHi Bob.\r\n)\r\n\
             * 1 FETCH (FLAGS (\\Seen))\r\n\
             d OK FETCH completed\r\n\
             * 1 FETCH (RFC822.SIZE 77)\r\n\
             e OK FETCH completed\r\n\
             * 1 FETCH (FLAGS (\\Seen))\r\n\
             f OK FETCH completed\r\n",
        ),
    );
}

#[test]
fn store_and_expunge() {
    transcript(
        &selected(
            "b STORE 1 +FLAGS (\\Deleted)\r\nc UID STORE 2 -FLAGS.SILENT (\\Seen)\r\n\
             d STORE 1:2 FLAGS (\\Flagged)\r\ne STORE 2 +FLAGS (\\Deleted)\r\nf EXPUNGE\r\n\
             g FETCH 1:* UID\r\n",
        ),
        &selected_reply(
            "* 1 FETCH (FLAGS (\\Deleted))\r\n\
             b OK STORE completed\r\n\
             c OK STORE completed\r\n\
             * 1 FETCH (FLAGS (\\Flagged))\r\n\
             * 2 FETCH (FLAGS (\\Flagged))\r\n\
             d OK STORE completed\r\n\
             * 2 FETCH (FLAGS (\\Flagged \\Deleted))\r\n\
             e OK STORE completed\r\n\
             * 2 EXPUNGE\r\n\
             f OK EXPUNGE completed\r\n\
             * 1 FETCH (UID 1)\r\n\
             g OK FETCH completed\r\n",
        ),
    );
}

#[test]
fn conditional_store() {
    transcript(
        &selected(
            "b STORE 1:2 (UNCHANGEDSINCE 2) +FLAGS (\\Answered)\r\n\
             c UID EXPUNGE 1\r\n",
        ),
        &selected_reply(
            "* 1 FETCH (FLAGS (\\Answered) MODSEQ (4))\r\n\
             b OK [MODIFIED 2] Conditional STORE failed\r\n\
             c OK UID EXPUNGE completed\r\n",
        ),
    );
}

#[test]
fn copy_and_move() {
    transcript(
        &selected(
            "b COPY 1:2 Work\r\nc UID MOVE 1 Sent\r\nd COPY 1 Nope\r\ne FETCH 1:* UID\r\nf STATUS Work (MESSAGES UIDNEXT)\r\n",
        ),
        &selected_reply(
            "b OK [COPYUID 1002 1:2 1:2] COPY completed\r\n\
             * OK [COPYUID 1001 1 1] Moved\r\n\
             * 1 EXPUNGE\r\n\
             c OK MOVE completed\r\n\
             d NO [TRYCREATE] No such mailbox\r\n\
             * 1 FETCH (UID 2)\r\n\
             e OK FETCH completed\r\n\
             * STATUS Work (MESSAGES 2 UIDNEXT 3)\r\n\
             f OK STATUS completed\r\n",
        ),
    );
}

#[test]
fn append_with_literal_plus_and_sync() {
    transcript(
        &format!(
            "{LOGIN}b APPEND Work (\\Seen) \"05-Dec-2026 10:00:00 +0100\" {{12+}}\r\nSubject: x\r\n\r\n\
             c APPEND Work {{3}}\r\nabc\r\nd APPEND Nope {{1+}}\r\nx\r\n\
             e SELECT Work\r\nf FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])\r\n"
        ),
        &format!(
            "{}b OK [APPENDUID 1002 1] APPEND completed\r\n\
             + Ready for literal data\r\n\
             c OK [APPENDUID 1002 2] APPEND completed\r\n\
             d NO [TRYCREATE] No such mailbox\r\n\
             * 2 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
             * OK [UNSEEN 2] First unseen\r\n* OK [UIDVALIDITY 1002] UIDs valid\r\n\
             * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 3] Highest\r\n\
             e OK [READ-WRITE] SELECT completed\r\n\
             * 1 FETCH (FLAGS (\\Seen) INTERNALDATE \"05-Dec-2026 10:00:00 +0100\" BODY[] {{12}}\r\nSubject: x\r\n)\r\n\
             * 2 FETCH (FLAGS () INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" BODY[] {{3}}\r\nabc)\r\n\
             f OK FETCH completed\r\n",
            login_ok()
        ),
    );
}

#[test]
fn search_rev1_and_esearch_rev2() {
    transcript(
        &selected(
            "b SEARCH UNSEEN\r\nc UID SEARCH SEEN KEYWORD $Label1\r\nd SEARCH OR SEEN NOT SEEN LARGER 30\r\n\
             e ENABLE IMAP4rev2\r\nf SEARCH ALL\r\ng UID SEARCH DELETED\r\nh SEARCH BODY x\r\n",
        ),
        &selected_reply(
            "* SEARCH 1\r\nb OK SEARCH completed\r\n\
             * SEARCH 2\r\nc OK UID SEARCH completed\r\n\
             * SEARCH 1\r\nd OK SEARCH completed\r\n\
             * ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n\
             * ESEARCH (TAG \"f\") ALL 1:2\r\nf OK SEARCH completed\r\n\
             * ESEARCH (TAG \"g\") UID\r\ng OK UID SEARCH completed\r\n\
             * ESEARCH (TAG \"h\")\r\nh OK SEARCH completed\r\n",
        ),
    );
}

#[test]
fn noop_reports_changes_made_elsewhere() {
    fn changed() -> Memory {
        let mut m = store();
        m.expunge_now("INBOX", 1);
        m.set_flags(
            "INBOX",
            2,
            Flags {
                system: system_flag::FLAGGED,
                keywords: vec![],
            },
        );
        m.deliver("INBOX", b"x", Flags::default());
        m
    }
    // The store changes after SELECT: model that by selecting from a store that has the
    // changes applied only afterwards, through a session on the original state.
    let config = Arc::new(config());
    let mut out = Outbox::default();
    let mut session = Session::new(config, false, &mut out);
    let mut st = store();
    let mut bytes = Vec::new();
    let step = |session: &mut Session, st: &mut Memory, input: &[u8], bytes: &mut Vec<u8>| {
        let mut out = Outbox::default();
        let n = session.feed(input, &mut out);
        assert_eq!(n, input.len());
        bytes.append(&mut out.bytes);
        while let Some(event) = out.events.pop() {
            match event {
                Event::Authenticate(_) => session.authenticated(true, &mut out).unwrap(),
                Event::Store(r) => session.answer(serve(st, &r), &mut out).unwrap(),
                _ => {}
            }
            bytes.append(&mut out.bytes);
        }
        assert!(!session.awaiting());
    };
    step(&mut session, &mut st, b"a LOGIN u p\r\n", &mut bytes);
    step(&mut session, &mut st, b"b SELECT INBOX\r\n", &mut bytes);
    bytes.clear();
    let mut st = changed();
    let _ = &mut st;
    step(&mut session, &mut st, b"c NOOP\r\n", &mut bytes);
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "* 1 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Flagged) UID 2)\r\n* 2 EXISTS\r\n* 1 RECENT\r\nc OK NOOP completed\r\n"
    );
    bytes.clear();
    step(&mut session, &mut st, b"d IDLE\r\n", &mut bytes);
    assert!(session.idling());
    st.deliver("INBOX", b"y", Flags::default());
    let mut out = Outbox::default();
    session.poll(&mut out);
    for event in std::mem::take(&mut out.events) {
        if let Event::Store(r) = event {
            session.answer(serve(&mut st, &r), &mut out).unwrap();
        }
    }
    bytes.append(&mut out.bytes);
    step(&mut session, &mut st, b"DONE\r\n", &mut bytes);
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "+ idling\r\n* 3 EXISTS\r\n* 2 RECENT\r\nd OK IDLE terminated\r\n"
    );
}

/// Drives `session` through `input` against `st`, answering every event; returns the output.
fn drive(session: &mut Session, st: &mut Memory, input: &[u8]) -> String {
    let mut out = Outbox::default();
    let mut bytes = Vec::new();
    let mut at = 0;
    while at < input.len() {
        at += session.feed(&input[at..], &mut out);
        bytes.append(&mut out.bytes);
        while let Some(event) = out.events.pop() {
            match event {
                Event::Authenticate(_) => session.authenticated(true, &mut out).unwrap(),
                Event::Store(r) => session.answer(serve(st, &r), &mut out).unwrap(),
                _ => {}
            }
            bytes.append(&mut out.bytes);
        }
        assert!(!session.awaiting());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_change_made_elsewhere_before_the_sessions_own_store_is_still_announced() {
    // Another session flags message 1 (modseq n), then this one stores on message 2
    // (modseq n + 1): the session's highest modseq passes the other change, which must
    // not hide it.
    let mut out = Outbox::default();
    let mut session = Session::new(Arc::new(config()), false, &mut out);
    let mut st = store();
    drive(&mut session, &mut st, b"a LOGIN u p\r\nb SELECT INBOX\r\n");
    let flagged = Flags {
        system: system_flag::FLAGGED,
        keywords: vec![],
    };
    st.set_flags("INBOX", 1, flagged);
    let stored = drive(
        &mut session,
        &mut st,
        b"c STORE 2 +FLAGS.SILENT (\\Answered)\r\n",
    );
    let noop = drive(&mut session, &mut st, b"d NOOP\r\n");
    let both = format!("{stored}{noop}");
    assert!(
        both.contains("* 1 FETCH (FLAGS (\\Flagged) UID 1)\r\n"),
        "{both}"
    );
    assert_eq!(both.matches("FETCH").count(), 1, "{both}");
}

#[test]
fn two_sessions_see_each_others_changes_through_the_store() {
    let mut out = Outbox::default();
    let config = Arc::new(config());
    let mut st = store();
    let mut a = Session::new(Arc::clone(&config), false, &mut out);
    let mut b = Session::new(config, false, &mut out);
    for s in [&mut a, &mut b] {
        drive(s, &mut st, b"a LOGIN u p\r\nb SELECT INBOX\r\n");
    }
    st.deliver("INBOX", b"Subject: new\r\n\r\nx\r\n", Flags::default());
    for s in [&mut a, &mut b] {
        let noop = drive(s, &mut st, b"c NOOP\r\n");
        assert!(noop.starts_with("* 3 EXISTS\r\n"), "{noop}");
    }
    // A session's own STORE shows in the other at its next poll.
    let stored = drive(&mut a, &mut st, b"d STORE 3 +FLAGS (\\Seen)\r\n");
    assert!(
        stored.contains("* 3 FETCH (FLAGS (\\Seen \\Recent))"),
        "{stored}"
    );
    let noop = drive(&mut b, &mut st, b"d NOOP\r\n");
    assert!(
        noop.contains("* 3 FETCH (FLAGS (\\Seen \\Recent) UID 3)"),
        "{noop}"
    );
}

#[test]
fn idle_done() {
    transcript(
        &selected("b IDLE\r\ndone\r\nc IDLE\r\nxyz\r\nd NOOP\r\n"),
        &selected_reply(
            "+ idling\r\nb OK IDLE terminated\r\n+ idling\r\nc BAD Expected DONE\r\nd OK NOOP completed\r\n",
        ),
    );
}

#[test]
fn limits_line_literal_append() {
    let long = "x".repeat(300);
    transcript(
        &format!(
            "a NOOP {long}\r\nb LOGIN {{101}}\r\nc LOGIN {{101+}}\r\n{}\r\nd NOOP\r\n",
            "y".repeat(101)
        ),
        "a BAD line too long\r\n\
         b BAD [TOOBIG] literal too large\r\n\
         c BAD [TOOBIG] literal too large\r\n\
         d OK NOOP completed\r\n",
    );
    transcript(
        &format!(
            "{LOGIN}b APPEND INBOX {{1001}}\r\nc APPEND INBOX {{1001+}}\r\n{}\r\nd NOOP\r\n",
            "z".repeat(1001)
        ),
        &format!(
            "{}b NO [TOOBIG] APPEND message larger than APPENDLIMIT\r\n\
             c NO [TOOBIG] APPEND message larger than APPENDLIMIT\r\n\
             d OK NOOP completed\r\n",
            login_ok()
        ),
    );
}

#[test]
fn too_many_errors_closes() {
    let input = "x FOO\r\n".repeat(60);
    let out = run_pieces(&config(), &mut store(), &[input.as_bytes()]);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("x BAD").count(), 50);
    assert!(text.ends_with("* BYE Too many errors\r\n"));
}

#[test]
fn store_unavailable_is_no() {
    fn broken() -> Memory {
        let mut m = store();
        m.broken = true;
        m
    }
    transcript_with(
        &config(),
        broken,
        &format!("{LOGIN}b SELECT INBOX\r\n"),
        &format!("{}b NO [UNAVAILABLE] store unavailable\r\n", login_ok()),
    );
}

#[test]
fn read_only_refuses_changes() {
    transcript(
        &format!("{LOGIN}b EXAMINE INBOX\r\nc STORE 1 +FLAGS (\\Seen)\r\nd EXPUNGE\r\ne FETCH 1 BODY[TEXT]\r\n"),
        &format!(
            "{}* 2 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n* OK [UNSEEN 1] First unseen\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n\
             * OK [HIGHESTMODSEQ 3] Highest\r\nb OK [READ-ONLY] EXAMINE completed\r\n\
             c NO [READ-ONLY] Mailbox is read-only\r\n\
             d NO [READ-ONLY] Mailbox is read-only\r\n\
             * 1 FETCH (BODY[TEXT] {{9}}\r\nHi Bob.\r\n)\r\n\
             e OK FETCH completed\r\n",
            login_ok()
        ),
    );
}

const MIXED: &[u8] = b"From: Ann <ann@example.org>\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nin\r\n--b--\r\n";

fn mixed_store() -> Memory {
    let mut m = Memory::default();
    m.deliver("INBOX", MIXED, Flags::default());
    m
}

#[test]
fn fetch_structure_and_parts() {
    transcript_with(
        &config(),
        mixed_store,
        &format!(
            "{LOGIN}s EXAMINE INBOX\r\nb FETCH 1 (ENVELOPE BODY)\r\nc FETCH 1 BODYSTRUCTURE\r\n\
             d FETCH 1 (BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[3])\r\n"
        ),
        &format!(
            "{}* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n* OK [UNSEEN 1] First unseen\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n* OK [UIDNEXT 2] Predicted next UID\r\n\
             * OK [HIGHESTMODSEQ 2] Highest\r\ns OK [READ-ONLY] EXAMINE completed\r\n\
             * 1 FETCH (ENVELOPE (NIL \"parts\" ((\"Ann\" NIL \"ann\" \"example.org\")) ((\"Ann\" NIL \"ann\" \"example.org\")) ((\"Ann\" NIL \"ann\" \"example.org\")) NIL NIL NIL NIL NIL) \
             BODY ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 5 0)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 20 (NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 2 0) 2) \"MIXED\"))\r\n\
             b OK FETCH completed\r\n\
             * 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 20 (NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 2 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL))\r\n\
             c OK FETCH completed\r\n\
             * 1 FETCH (BODY[1] {{5}}\r\nhello BODY[1.MIME] {{28}}\r\nContent-Type: text/plain\r\n\r\n BODY[2.HEADER] {{18}}\r\nSubject: inner\r\n\r\n BODY[2.TEXT] {{2}}\r\nin BODY[3] NIL)\r\n\
             d OK FETCH completed\r\n",
            login_ok()
        ),
    );
}

#[test]
fn preauth_and_bye_greetings_and_shutdown() {
    let config = Arc::new(config());
    let mut out = Outbox::default();
    let mut session = Session::with_greeting(config.clone(), true, Greeting::PreAuth, &mut out);
    assert_eq!(
        String::from_utf8_lossy(&out.bytes),
        format!("* PREAUTH [CAPABILITY {CAPS_AUTH}] Logged in\r\n")
    );
    out.bytes.clear();
    assert_eq!(
        session.feed(b"a LOGIN u p\r\nb NAMESPACE\r\n", &mut out),
        26
    );
    assert_eq!(
        String::from_utf8_lossy(&out.bytes),
        "a BAD Already authenticated\r\n* NAMESPACE ((\"\" \"/\")) NIL NIL\r\nb OK NAMESPACE completed\r\n"
    );
    out.bytes.clear();
    session.shut_down(&mut out);
    assert_eq!(out.bytes, b"* BYE Server shutting down\r\n");
    assert_eq!(out.events, vec![Event::Close(CloseReason::Refused)]);
    assert!(session.is_closed());
    assert_eq!(session.feed(b"c NOOP\r\n", &mut out), 0);

    let mut out = Outbox::default();
    let session = Session::with_greeting(config, false, Greeting::Bye, &mut out);
    assert_eq!(out.bytes, b"* BYE Service unavailable\r\n");
    assert_eq!(out.events, vec![Event::Close(CloseReason::Refused)]);
    assert!(session.is_closed());
}

/// A MIME message: encoded-word Subject and From, a quoted-printable Latin-1 part and a
/// base64 HTML part.
const MIME: &[u8] = b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nTo: ann@example.org\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nDate: Mon, 3 Mar 2025 23:30:00 -0500 (EST)\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSch=F6ne Gr=FC=DFe aus K=F6ln\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+Ym9sZDwvYj4=\r\n--b--\r\n";

fn mime_store() -> Memory {
    let mut m = store();
    m.deliver("INBOX", MIME, Flags::default());
    m
}

fn select_mime_rev1() -> String {
    format!(
        "{}* 3 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
         * OK [UNSEEN 1] First unseen\r\n* OK [UIDVALIDITY 1000] UIDs valid\r\n\
         * OK [UIDNEXT 4] Predicted next UID\r\n* OK [HIGHESTMODSEQ 4] Highest\r\n\
         s OK [READ-WRITE] SELECT completed\r\n",
        login_ok()
    )
}

/// A LITERAL+ literal (atoms and quoted strings are 7-bit in IMAP4rev1).
fn lit(text: &str) -> String {
    format!("{{{}+}}\r\n{text}", text.len())
}

#[test]
fn search_text_keys_over_decoded_mime() {
    transcript_with(
        &config(),
        mime_store,
        &selected(&format!(
            "b SEARCH SUBJECT {}\r\nc SEARCH FROM {} TO ANN\r\n\
             d UID SEARCH BODY {}\r\ne SEARCH BODY <b>BOLD\r\n\
             f SEARCH TEXT hi\r\ng SEARCH HEADER TO \"\"\r\nh SEARCH NOT BODY second\r\n\
             i SEARCH HEADER Content-Type alternative\r\nj SEARCH OR SEEN SUBJECT hello\r\n\
             k SEARCH SENTON 3-Mar-2025\r\nl SEARCH SENTSINCE 4-Mar-2025\r\n\
             m SEARCH SENTBEFORE 4-Mar-2025 SINCE 1-Jan-2020\r\n\
             n SEARCH CHARSET ISO-8859-1 ALL\r\no SEARCH CHARSET UTF-8 TEXT {}\r\n\
             p SEARCH CHARSET US-ASCII SUBJECT two\r\nq SEARCH BODY Subject\r\n",
            lit("gr\u{fc}\u{df}e"),
            lit("j\u{fc}rgen"),
            lit("sch\u{f6}ne gr\u{fc}\u{df}e"),
            lit("K\u{d6}LN"),
        )),
        &format!(
            "{}* SEARCH 3\r\nb OK SEARCH completed\r\n\
             * SEARCH 3\r\nc OK SEARCH completed\r\n\
             * SEARCH 3\r\nd OK UID SEARCH completed\r\n\
             * SEARCH 3\r\ne OK SEARCH completed\r\n\
             * SEARCH 1\r\nf OK SEARCH completed\r\n\
             * SEARCH 1 3\r\ng OK SEARCH completed\r\n\
             * SEARCH 1 3\r\nh OK SEARCH completed\r\n\
             * SEARCH 3\r\ni OK SEARCH completed\r\n\
             * SEARCH 1 2\r\nj OK SEARCH completed\r\n\
             * SEARCH 3\r\nk OK SEARCH completed\r\n\
             * SEARCH\r\nl OK SEARCH completed\r\n\
             * SEARCH 3\r\nm OK SEARCH completed\r\n\
             n NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n\
             * SEARCH 3\r\no OK SEARCH completed\r\n\
             * SEARCH 2\r\np OK SEARCH completed\r\n\
             * SEARCH\r\nq OK SEARCH completed\r\n",
            select_mime_rev1()
        ),
    );
}

#[test]
fn esearch_return_options() {
    transcript(
        &selected(
            "b SEARCH RETURN (MIN MAX COUNT) ALL\r\nc UID SEARCH RETURN () UNSEEN\r\n\
             d SEARCH RETURN (COUNT) DELETED\r\ne SEARCH RETURN (SAVE) ALL\r\n\
             f UID SEARCH RETURN (ALL MAX) MODSEQ 3\r\ng SEARCH UID 2:* SMALLER 1000 1:2\r\n\
             h SEARCH RETURN (MIN) BODY bob\r\n",
        ),
        &selected_reply(
            "* ESEARCH (TAG \"b\") MIN 1 MAX 2 COUNT 2\r\nb OK SEARCH completed\r\n\
             * ESEARCH (TAG \"c\") UID ALL 1\r\nc OK UID SEARCH completed\r\n\
             * ESEARCH (TAG \"d\") COUNT 0\r\nd OK SEARCH completed\r\n\
             e BAD Invalid RETURN options\r\n\
             * ESEARCH (TAG \"f\") UID MAX 2 ALL 2 MODSEQ 3\r\nf OK UID SEARCH completed\r\n\
             * SEARCH 2\r\ng OK SEARCH completed\r\n\
             * ESEARCH (TAG \"h\") MIN 1\r\nh OK SEARCH completed\r\n",
        ),
    );
}

#[test]
fn recent_for_rev1_only() {
    // APPEND to the selected folder: announced (new, and \Recent) before APPEND's OK.
    transcript(
        &selected(
            "b APPEND INBOX {1+}\r\nx\r\nc NOOP\r\nd FETCH 2:3 FLAGS\r\ne SEARCH RECENT\r\n\
             f SEARCH NEW\r\ng SEARCH OLD\r\nh STATUS INBOX (RECENT MESSAGES)\r\n\
             i STORE 3 +FLAGS (\\Seen)\r\nj SEARCH NEW\r\n",
        ),
        &selected_reply(
            "* 3 EXISTS\r\n* 1 RECENT\r\nb OK [APPENDUID 1000 3] APPEND completed\r\n\
             c OK NOOP completed\r\n\
             * 2 FETCH (FLAGS (\\Seen $Label1))\r\n* 3 FETCH (FLAGS (\\Recent))\r\nd OK FETCH completed\r\n\
             * SEARCH 3\r\ne OK SEARCH completed\r\n\
             * SEARCH 3\r\nf OK SEARCH completed\r\n\
             * SEARCH 1 2\r\ng OK SEARCH completed\r\n\
             * STATUS INBOX (RECENT 0 MESSAGES 3)\r\nh OK STATUS completed\r\n\
             * 3 FETCH (FLAGS (\\Seen \\Recent))\r\ni OK STORE completed\r\n\
             * SEARCH\r\nj OK SEARCH completed\r\n",
        ),
    );
    transcript(
        &format!(
            "{LOGIN}e ENABLE IMAP4rev2\r\ns SELECT INBOX\r\nb APPEND INBOX {{1+}}\r\nx\r\nc NOOP\r\n\
             d FETCH 3 FLAGS\r\nf SEARCH RECENT\r\n"
        ),
        &format!(
            "{}* ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n\
             * 2 EXISTS\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n\
             * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 3] Highest\r\n\
             s OK [READ-WRITE] SELECT completed\r\n\
             * 3 EXISTS\r\nb OK [APPENDUID 1000 3] APPEND completed\r\n\
             c OK NOOP completed\r\n\
             * 3 FETCH (FLAGS ())\r\nd OK FETCH completed\r\n\
             * ESEARCH (TAG \"f\")\r\nf OK SEARCH completed\r\n",
            login_ok()
        ),
    );
}

fn select_qresync(tag: &str) -> String {
    format!(
        "* 2 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
         * OK [UNSEEN 1] First unseen\r\n* OK [UIDVALIDITY 1000] UIDs valid\r\n\
         * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 3] Highest\r\n\
         {tag}"
    )
}

#[test]
fn qresync_select_vanished_and_fetch() {
    transcript(
        &format!(
            "{LOGIN}b SELECT INBOX (QRESYNC (1000 1))\r\nc ENABLE QRESYNC\r\n\
             d SELECT INBOX (QRESYNC (1000 2 1:9))\r\n\
             e STORE 1 +FLAGS.SILENT (\\Deleted)\r\nf EXPUNGE\r\ng UNSELECT\r\n\
             h SELECT INBOX (QRESYNC (1000 3 1:2))\r\n\
             i UID FETCH 1:* FLAGS (CHANGEDSINCE 3 VANISHED)\r\n\
             j FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\nk UNSELECT\r\n\
             l SELECT INBOX (QRESYNC (999 1))\r\nm UNSELECT\r\n\
             n EXAMINE INBOX (QRESYNC (1000 1))\r\n"
        ),
        &format!(
            "{}b BAD QRESYNC is not enabled\r\n\
             * ENABLED QRESYNC\r\nc OK ENABLE completed\r\n\
             {}\
             * 2 FETCH (FLAGS (\\Seen $Label1) UID 2 MODSEQ (3))\r\n\
             d OK [READ-WRITE] SELECT completed\r\n\
             * 1 FETCH (MODSEQ (4))\r\ne OK STORE completed\r\n\
             * VANISHED 1\r\nf OK EXPUNGE completed\r\n\
             g OK UNSELECT completed\r\n\
             * 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n\
             * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 5] Highest\r\n\
             * VANISHED (EARLIER) 1\r\n\
             h OK [READ-WRITE] SELECT completed\r\n\
             * VANISHED (EARLIER) 1\r\ni OK UID FETCH completed\r\n\
             j BAD VANISHED needs QRESYNC, UID and CHANGEDSINCE\r\n\
             k OK UNSELECT completed\r\n\
             * 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n\
             * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 5] Highest\r\n\
             l OK [READ-WRITE] SELECT completed\r\n\
             m OK UNSELECT completed\r\n\
             * 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n\
             * OK [UIDNEXT 3] Predicted next UID\r\n* OK [HIGHESTMODSEQ 5] Highest\r\n\
             * VANISHED (EARLIER) 1\r\n\
             * 1 FETCH (FLAGS (\\Seen $Label1) UID 2 MODSEQ (3))\r\n\
             n OK [READ-ONLY] EXAMINE completed\r\n",
            login_ok(),
            select_qresync("")
        ),
    );
}

fn quota_store() -> Memory {
    let mut m = store();
    m.quota_limit = Some(150);
    m.set_flags(
        "INBOX",
        2,
        Flags {
            system: system_flag::DELETED,
            keywords: vec![],
        },
    );
    m
}

#[test]
fn quota_commands_and_overquota() {
    let big = "x".repeat(60);
    transcript_with(
        &config(),
        quota_store,
        &format!(
            "{LOGIN}b GETQUOTAROOT INBOX\r\nc GETQUOTA \"\"\r\nd GETQUOTA other\r\n\
             e SETQUOTA \"\" (STORAGE 10)\r\nf STATUS INBOX (DELETED DELETED-STORAGE)\r\n\
             g APPEND Work {{60+}}\r\n{big}\r\nh APPEND Work {{40+}}\r\n{}\r\n",
            &big[..40]
        ),
        &format!(
            "{}* QUOTAROOT INBOX \"\"\r\n* QUOTA \"\" (STORAGE 1 0)\r\nb OK GETQUOTAROOT completed\r\n\
             * QUOTA \"\" (STORAGE 1 0)\r\nc OK GETQUOTA completed\r\n\
             d NO [NONEXISTENT] No such quota root\r\n\
             e NO [NOPERM] Quotas are set by the administrator\r\n\
             * STATUS INBOX (DELETED 1 DELETED-STORAGE 1)\r\nf OK STATUS completed\r\n\
             g NO [OVERQUOTA] over quota\r\n\
             h OK [APPENDUID 1002 1] APPEND completed\r\n",
            login_ok()
        ),
    );
    // Without a limit there is no quota root.
    transcript(
        &format!("{LOGIN}b GETQUOTAROOT INBOX\r\nc GETQUOTA \"\"\r\nd GETQUOTAROOT Nope\r\n"),
        &format!(
            "{}* QUOTAROOT INBOX\r\nb OK GETQUOTAROOT completed\r\n\
             c NO [NONEXISTENT] No such quota root\r\n\
             d NO [NONEXISTENT] no such folder\r\n",
            login_ok()
        ),
    );
}

#[test]
fn modified_utf7_names_until_utf8_accept() {
    transcript(
        &format!(
            "{LOGIN}b CREATE Entw&APw-rfe\r\nc LIST \"\" Entw*\r\nd STATUS Entw&APw-rfe (MESSAGES)\r\n\
             e CREATE &AGE-\r\nf ENABLE UTF8=ACCEPT\r\ng LIST \"\" Entw*\r\nh STATUS {} (MESSAGES)\r\n\
             i RENAME {} A&B\r\nj LIST \"\" A*\r\nk APPEND INBOX UTF8 (~{{3+}}\r\nabc)\r\n",
            lit("Entw\u{fc}rfe"),
            lit("Entw\u{fc}rfe"),
        ),
        &format!(
            "{}b OK CREATE completed\r\n\
             * LIST (\\HasNoChildren) \"/\" Entw&APw-rfe\r\nc OK LIST completed\r\n\
             * STATUS Entw&APw-rfe (MESSAGES 0)\r\nd OK STATUS completed\r\n\
             e NO [CANNOT] Invalid mailbox name\r\n\
             * ENABLED UTF8=ACCEPT\r\nf OK ENABLE completed\r\n\
             * LIST (\\HasNoChildren) \"/\" {{9}}\r\nEntw\u{fc}rfe\r\ng OK LIST completed\r\n\
             * STATUS {{9}}\r\nEntw\u{fc}rfe (MESSAGES 0)\r\nh OK STATUS completed\r\n\
             i OK RENAME completed\r\n\
             * LIST (\\HasNoChildren) \"/\" A&B\r\nj OK LIST completed\r\n\
             k OK [APPENDUID 1000 3] APPEND completed\r\n",
            login_ok()
        ),
    );
}

fn binary_store() -> Memory {
    let mut m = Memory::default();
    m.deliver("INBOX", MIME, Flags::default());
    m.deliver(
        "INBOX",
        b"Subject: uu\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a\r\n",
        Flags::default(),
    );
    m
}

#[test]
fn binary_sections_decode_parts() {
    transcript_with(
        &config(),
        binary_store,
        &format!(
            "{LOGIN}s EXAMINE INBOX\r\n\
             b FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[2] BINARY.PEEK[2]<0.3>)\r\n\
             c FETCH 2 BINARY.PEEK[1]\r\nd FETCH 1 BINARY[3]\r\n"
        ),
        &format!(
            "{}* 2 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n* OK [UNSEEN 1] First unseen\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n\
             * OK [HIGHESTMODSEQ 3] Highest\r\ns OK [READ-ONLY] EXAMINE completed\r\n\
             * 1 FETCH (BINARY.SIZE[1] 21 BINARY[2] {{11}}\r\n<b>bold</b> BINARY[2]<0> {{3}}\r\n<b>)\r\n\
             b OK FETCH completed\r\n\
             c NO [UNKNOWN-CTE] Cannot decode a part's transfer encoding\r\n\
             * 1 FETCH (BINARY[3] NIL)\r\nd OK FETCH completed\r\n",
            login_ok()
        ),
    );
}

#[test]
fn list_return_options_with_utf7_names() {
    fn utf7_store() -> Memory {
        let mut m = store();
        m.add_folder("Entw\u{fc}rfe", Some(SpecialUse::Drafts));
        m
    }
    transcript_with(
        &config(),
        utf7_store,
        &format!(
            "{LOGIN}b SUBSCRIBE Entw&APw-rfe\r\n\
             c LIST \"\" Entw% RETURN (CHILDREN SPECIAL-USE SUBSCRIBED STATUS (DELETED-STORAGE UIDNEXT))\r\n\
             d LIST \"\" Entw% RETURN (STATUS (MESSAGES) FOO)\r\n"
        ),
        &format!(
            "{}b OK SUBSCRIBE completed\r\n\
             * LIST (\\HasNoChildren \\Subscribed \\Drafts) \"/\" Entw&APw-rfe\r\n\
             * STATUS Entw&APw-rfe (DELETED-STORAGE 0 UIDNEXT 1)\r\nc OK LIST completed\r\n\
             d BAD Invalid RETURN options\r\n",
            login_ok()
        ),
    );
}

/// Work as the mail store has it before its first change: HIGHESTMODSEQ 0.
fn store_unchanged_folder() -> Memory {
    let mut m = store();
    m.zero_modseq("Work");
    m
}

/// The SELECT response code is a mod-sequence-value, 1 or more (RFC 7162 §7); STATUS says the
/// same. interimap takes 0 for "unknown" and resynced such a folder forever.
#[test]
fn highestmodseq_of_an_unchanged_folder_is_one() {
    transcript_with(
        &config(),
        store_unchanged_folder,
        &format!(
            "{LOGIN}b STATUS Work (UIDNEXT HIGHESTMODSEQ)\r\n\
             c LIST \"\" Work RETURN (STATUS (HIGHESTMODSEQ))\r\nd EXAMINE Work\r\n"
        ),
        &format!(
            "{}* STATUS Work (UIDNEXT 1 HIGHESTMODSEQ 1)\r\nb OK STATUS completed\r\n\
             * LIST (\\HasChildren) \"/\" Work\r\n* STATUS Work (HIGHESTMODSEQ 1)\r\n\
             c OK LIST completed\r\n\
             * 0 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n* OK [UIDVALIDITY 1002] UIDs valid\r\n\
             * OK [UIDNEXT 1] Predicted next UID\r\n* OK [HIGHESTMODSEQ 1] Highest\r\n\
             d OK [READ-ONLY] EXAMINE completed\r\n",
            login_ok()
        ),
    );
}

/// RFC 5258 selection options: SUBSCRIBED lists subscribed folders only (with \\Subscribed),
/// REMOTE adds nothing here, RECURSIVEMATCH adds unsubscribed parents with CHILDINFO and is an
/// error alone.
#[test]
fn list_selection_options() {
    transcript(
        &format!(
            "{LOGIN}b SUBSCRIBE Work/Plans\r\nc SUBSCRIBE Sent\r\n\
             d LIST (SUBSCRIBED) \"\" *\r\ne LIST (SUBSCRIBED REMOTE RECURSIVEMATCH) \"\" %\r\n\
             f LIST (RECURSIVEMATCH) \"\" *\r\ng LIST (REMOTE) \"\" S*\r\n\
             h LIST (SUBSCRIBED) \"\" * RETURN (STATUS (MESSAGES))\r\ni LIST (BOGUS) \"\" *\r\n"
        ),
        &format!(
            "{}b OK SUBSCRIBE completed\r\nc OK SUBSCRIBE completed\r\n\
             * LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasNoChildren \\Subscribed) \"/\" Work/Plans\r\n\
             d OK LIST completed\r\n\
             * LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasChildren) \"/\" Work (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n\
             e OK LIST completed\r\n\
             f BAD Invalid RETURN options\r\n\
             * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
             g OK LIST completed\r\n\
             * LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" Sent\r\n\
             * LIST (\\HasNoChildren \\Subscribed) \"/\" Work/Plans\r\n\
             * STATUS Sent (MESSAGES 0)\r\n* STATUS Work/Plans (MESSAGES 0)\r\n\
             h OK LIST completed\r\n\
             i BAD Invalid RETURN options\r\n",
            login_ok()
        ),
    );
}

/// RFC 5258 pattern lists: `LIST ref (p1 p2 ...)`, each folder once, with RETURN options.
#[test]
fn list_several_patterns() {
    transcript(
        &format!(
            "{LOGIN}b LIST \"\" (INBOX \"Work/*\")\r\n\
             x SUBSCRIBE Sent\r\nc LIST (SUBSCRIBED) \"\" (\"%\" Sent) RETURN (STATUS (MESSAGES))\r\n\
             d LIST \"\" (\"W*\" \"Work\")\r\ne LIST \"\" ()\r\n"
        ),
        &format!(
            "{}* LIST (\\HasNoChildren) \"/\" INBOX\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             b OK LIST completed\r\nx OK SUBSCRIBE completed\r\n\
             * LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" Sent\r\n\
             * STATUS Sent (MESSAGES 0)\r\n\
             c OK LIST completed\r\n\
             * LIST (\\HasChildren) \"/\" Work\r\n\
             * LIST (\\HasNoChildren) \"/\" Work/Plans\r\n\
             d OK LIST completed\r\n\
             e BAD Syntax error or unknown command\r\n",
            login_ok()
        ),
    );
}

use super::structure::Summary;

// ---- Stored summaries (ENVELOPE / BODY / BODYSTRUCTURE without the body)

/// Messages of every shape the summary renders: multipart, message/rfc822 (nested twice),
/// encoded words, groups, folded and 8-bit fields (literals), every extension field, a message
/// without a header, an empty one, and one the MIME engine refuses (too deep).
fn summary_corpus() -> Vec<Vec<u8>> {
    let nested = b"From: =?utf-8?b?w4VzYQ==?= <asa@example.se>\r\nTo: \"Team\": a@x.org, \"B, Q\" <b@y.org>;, c@z.org\r\nCc: undisclosed-recipients:;\r\nSubject: =?utf-8?q?n=C3=A4stad?= and\r\n folded\r\nDate: Tue, 4 Mar 2025 10:00:00 +0100\r\nMessage-ID: <n@example.se>\r\nIn-Reply-To: <p@example.se>\r\nReply-To: r@example.se\r\nSender: s@example.se\r\nBcc: hidden@example.se\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer b\"\r\n\r\npreamble\r\n--outer b\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\nContent-ID: <c1@example.se>\r\nContent-Description: the text\r\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\nContent-Transfer-Encoding: 8bit\r\n\r\nH\xc3\xa4lsningar\r\n--outer b\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\nFrom: Inner <i@example.org>\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\nplain\r\n--alt\r\nContent-Type: message/rfc822\r\n\r\nSubject: innermost\r\n\r\ndeep\r\n--alt--\r\n--outer b\r\nContent-Type: application/octet-stream; name=\"a b.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a b.bin\"; size=3\r\n\r\nAAEC\r\n--outer b--\r\nepilogue\r\n".to_vec();
    let eight_bit =
        "From: Jörg <jörg@exämple.org>\r\nSubject: Grüße\r\nTo: a@b.c\r\n\r\nbody\r\n".into();
    let mut deep = Vec::new();
    for i in 0..120 {
        deep.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
        );
    }
    deep.extend_from_slice(b"\r\nleaf\r\n");
    vec![
        MSG1.to_vec(),
        MSG2.to_vec(),
        MIXED.to_vec(),
        MIME.to_vec(),
        nested,
        eight_bit,
        b"\r\nno header at all\r\n".to_vec(),
        Vec::new(),
        deep,
    ]
}

fn corpus_store(summaries: bool) -> Memory {
    let mut m = Memory::default();
    m.summaries = summaries;
    for body in summary_corpus() {
        m.deliver("INBOX", &body, Flags::default());
    }
    m
}

const SUMMARY_FETCHES: &str = "a LOGIN alice secret\r\ns EXAMINE INBOX\r\n\
    b FETCH 1:* (UID ENVELOPE BODY BODYSTRUCTURE)\r\nc FETCH 1:* ENVELOPE\r\n\
    d UID FETCH 1:* (FLAGS BODY INTERNALDATE RFC822.SIZE)\r\ne FETCH 2,4 BODYSTRUCTURE\r\n";

/// The rendering from stored summaries is byte for byte the parse's, and asks for no body.
#[test]
fn fetch_from_summaries_renders_what_the_parse_renders_without_a_body() {
    let mut parsed = corpus_store(false);
    let mut summarised = corpus_store(true);
    let from_parse = run_pieces(&config(), &mut parsed, &[SUMMARY_FETCHES.as_bytes()]);
    let from_summary = run_pieces(&config(), &mut summarised, &[SUMMARY_FETCHES.as_bytes()]);
    assert_eq!(
        String::from_utf8_lossy(&from_summary),
        String::from_utf8_lossy(&from_parse)
    );
    let n = summary_corpus().len();
    // 4 FETCHes: every message 3 times, and 2 more.
    let asked = 3 * n + 2;
    assert_eq!(summarised.calls, vec!["summary"; asked]);
    // Without summaries each is asked for, then its body.
    assert_eq!(parsed.calls, ["summary", "body"].repeat(asked));
    // The replies carry what was asked: all 9 messages, literals for the 8-bit fields.
    let text = String::from_utf8_lossy(&from_summary);
    assert_eq!(text.matches("BODYSTRUCTURE (").count(), n + 2, "{text}");
    assert!(text.contains("\"innermost\""), "{text}");
    assert!(text.contains("(NIL NIL \"Team\" NIL)"), "{text}");
    assert!(text.contains("{5}\r\nJ\u{f6}rg"), "{text}");
    assert!(text.contains("e OK FETCH completed"), "{text}");
}

/// Same transcript, whole and split anywhere, from summaries (the expected bytes are those
/// of the parse path, pinned in `fetch_structure_and_parts`).
#[test]
fn fetch_structure_transcript_from_summaries() {
    fn mixed_summarised() -> Memory {
        let mut m = Memory::default();
        m.summaries = true;
        m.deliver("INBOX", MIXED, Flags::default());
        m
    }
    transcript_with(
        &config(),
        mixed_summarised,
        &format!("{LOGIN}s EXAMINE INBOX\r\nb FETCH 1 (ENVELOPE BODY)\r\nc FETCH 1 BODYSTRUCTURE\r\n"),
        &format!(
            "{}* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
             * OK [PERMANENTFLAGS ()] Limited\r\n* OK [UNSEEN 1] First unseen\r\n\
             * OK [UIDVALIDITY 1000] UIDs valid\r\n* OK [UIDNEXT 2] Predicted next UID\r\n\
             * OK [HIGHESTMODSEQ 2] Highest\r\ns OK [READ-ONLY] EXAMINE completed\r\n\
             * 1 FETCH (ENVELOPE (NIL \"parts\" ((\"Ann\" NIL \"ann\" \"example.org\")) ((\"Ann\" NIL \"ann\" \"example.org\")) ((\"Ann\" NIL \"ann\" \"example.org\")) NIL NIL NIL NIL NIL) \
             BODY ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 5 0)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 20 (NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 2 0) 2) \"MIXED\"))\r\n\
             b OK FETCH completed\r\n\
             * 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 20 (NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 2 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL))\r\n\
             c OK FETCH completed\r\n",
            login_ok()
        ),
    );
}

/// Items that need the body fetch it (never a summary); an unusable summary (none, another
/// rendering version, damaged) falls back to the body with the same reply.
#[test]
fn body_items_and_unusable_summaries_read_the_body() {
    let commands =
        "a LOGIN alice secret\r\ns EXAMINE INBOX\r\nb FETCH 3 (ENVELOPE BODY.PEEK[1])\r\n\
        c FETCH 3 (BODYSTRUCTURE RFC822.HEADER)\r\nd FETCH 3 (BODY BINARY.SIZE[1])\r\n";
    let mut store = corpus_store(true);
    run_pieces(&config(), &mut store, &[commands.as_bytes()]);
    assert_eq!(store.calls, vec!["body"; 3]);

    let fetch = "a LOGIN alice secret\r\ns EXAMINE INBOX\r\nb FETCH 3 (ENVELOPE BODYSTRUCTURE)\r\n";
    let want = run_pieces(&config(), &mut corpus_store(false), &[fetch.as_bytes()]);
    let good = Summary::of(MIXED).encode().unwrap();
    let mut other_version = good.clone();
    other_version[0] = Summary::VERSION + 1;
    let cut = good[..good.len() - 1].to_vec();
    for (what, stored) in [
        ("none", None),
        ("other version", Some(other_version)),
        ("cut short", Some(cut)),
    ] {
        let mut store = corpus_store(true);
        store.set_summary("INBOX", 3, stored);
        let got = run_pieces(&config(), &mut store, &[fetch.as_bytes()]);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{what}"
        );
        assert_eq!(store.calls, vec!["summary", "body"], "{what}");
    }
    // A summary that is not the message's is served as stored: the reply comes from it.
    let mut store = corpus_store(true);
    store.set_summary("INBOX", 3, Summary::of(MSG2).encode());
    let got = run_pieces(&config(), &mut store, &[fetch.as_bytes()]);
    assert!(String::from_utf8_lossy(&got).contains("(NIL \"two\" NIL"));
}

/// The summaries of the corpus, pinned. A change to the ENVELOPE or BODYSTRUCTURE rendering
/// changes this checksum: then raise `Summary::VERSION` (stored summaries of the old rendering
/// are then parsed again instead of served) and update the pin with it.
#[test]
fn summary_version_pins_the_rendering() {
    let mut all = Vec::new();
    for body in summary_corpus() {
        all.extend(Summary::of(&body).encode().unwrap());
    }
    assert_eq!(
        (Summary::VERSION, all.len(), crc32c::crc32c(&all)),
        (1, 4295, 2_165_305_664),
        "the rendering changed: raise Summary::VERSION and update this pin"
    );
}

#[test]
fn a_login_refused_at_home_answers_its_rfc_5530_code_and_the_session_goes_on() {
    use super::session::LoginRefused;
    let mut out = Outbox::default();
    let mut session = Session::new(Arc::new(config()), false, &mut out);
    for (tag, why, reply) in [
        (
            "a",
            LoginRefused::InUse,
            "a NO [INUSE] Mailbox in use, try again later\r\n",
        ),
        (
            "b",
            LoginRefused::AuthorizationFailed,
            "b NO [AUTHORIZATIONFAILED] No such mailbox\r\n",
        ),
        (
            "c",
            LoginRefused::Limit,
            "c NO [LIMIT] Too many sessions or requests, try again later\r\n",
        ),
        (
            "d",
            LoginRefused::ServerBug,
            "d NO [SERVERBUG] Internal error, try again later\r\n",
        ),
        (
            "e",
            LoginRefused::Unavailable,
            "e NO [UNAVAILABLE] Mailbox temporarily unavailable, try again later\r\n",
        ),
    ] {
        let mut out = Outbox::default();
        let login = format!("{tag} LOGIN u p\r\n");
        assert_eq!(session.feed(login.as_bytes(), &mut out), login.len());
        assert!(matches!(out.events.as_slice(), [Event::Authenticate(_)]));
        assert_eq!(session.login_tag(), Some(tag));
        out = Outbox::default();
        session.login_refused(why, &mut out).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.bytes), reply);
        // Not waiting for anything: a second answer is unexpected.
        assert!(session.login_refused(why, &mut out).is_err());
    }
}
