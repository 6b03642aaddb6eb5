//! DKIM signing of outbound mail for our own domains.
