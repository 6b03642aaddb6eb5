//! Every user's folders over the spool: UIDs, flags, modification sequences, subscriptions,
//! and the records that change them (docs/MAILSTORE.md).
//!
//! Sans-IO: built from the spool's replay, it answers a change with the records to write and
//! applies them once they are durable; decisions with time in them take `now`.
