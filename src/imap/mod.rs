//! The sans-IO IMAP4rev2 (RFC 9051) server session, serving IMAP4rev1 (RFC 3501) clients too:
//! bytes in, responses and store requests out.
