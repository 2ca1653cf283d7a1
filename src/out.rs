//! Standard output that a closed pipe cannot break: `dml run … | head` ends quietly
//! instead of panicking in `println!`, and a run whose output nobody reads still
//! finishes and records itself.
use std::io::Write;

/// Prints a line on stdout; a write error (the reader went away) is ignored.
pub fn println(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}
