//! The operational subcommands: each parses its own arguments and reports on stdout/stderr with
//! an exit status scripts can act on.

pub mod backup;
pub mod gate;
pub mod health;
pub mod migrate;

/// Something did not work out: a failed pause, a failed or refused migration, lint findings.
pub const EXIT_FAILED: u8 = 1;
/// Bad arguments or configuration, or an unreachable target.
pub const EXIT_USAGE: u8 = 2;

/// Prints a report as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
