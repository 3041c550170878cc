//! The exit codes of every `forkpool` command (DESIGN §4), in one place for the command
//! line and the client commands.

/// Success.
pub(crate) const EXIT_OK: i32 = 0;
/// The job or request failed (the answer says why).
pub(crate) const EXIT_FAILED: i32 = 1;
/// Bad usage or configuration.
pub(crate) const EXIT_USAGE: i32 = 2;
/// The service could not be reached.
pub(crate) const EXIT_UNREACHABLE: i32 = 3;
