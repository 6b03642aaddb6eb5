//! placeholder, filled in by its module owner
fn main() {}
