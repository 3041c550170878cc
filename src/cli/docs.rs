//! `forkpool completions SHELL` and `forkpool man`: the shell completion scripts and the man
//! pages, generated from the clap definition of the command line, so they never disagree
//! with `--help`. The packaging script (scripts/build-deb.sh) runs both on the release
//! binary and ships what they write.

use std::io::Write;
use std::path::Path;

use clap_complete::Shell;

use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};

/// Prints the completion script for `shell` on stdout. The script completes the program by
/// the name it was started as, so a program of your own built on [`super::main_with`] (or a
/// link to forkpool under another name) gets completions under its own name.
pub fn completions(mut command: clap::Command, shell: Shell) -> i32 {
    clap_complete::generate(shell, &mut command, program_name(), &mut std::io::stdout());
    EXIT_OK
}

/// Prints the man page (roff, section 1) on stdout; with `dir`, writes it there as
/// `forkpool.1` with one page per subcommand (`forkpool-run.1`, …), as `man` looks them up.
pub fn man(command: clap::Command, dir: Option<&Path>) -> i32 {
    // `help` is clap's, not a page of its own.
    let command = command.disable_help_subcommand(true);
    let written = match dir {
        None => {
            let mut out = std::io::stdout().lock();
            main_page(command, &mut out).and_then(|()| out.flush())
        }
        Some(dir) => clap_mangen::generate_to(command.clone(), dir).and_then(|()| {
            // generate_to's forkpool.1 lacks the sections below: written again with them.
            let mut file = std::fs::File::create(dir.join("forkpool.1"))?;
            main_page(command, &mut file)
        }),
    };
    match written {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let place = dir.map_or("stdout".to_string(), |d| d.display().to_string());
            eprintln!("forkpool: writing the man pages to {place}: {e}");
            EXIT_FAILED
        }
    }
}

/// forkpool.1: clap's sections, then what `--help` has no room for — the exit codes, the
/// environment and the files (DESIGN §4, §6, §9).
fn main_page(command: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(command).render(out)?;
    write!(
        out,
        r#".SH "EXIT STATUS"
.TP
{EXIT_OK}
Success.
.TP
{EXIT_FAILED}
The job or request failed (the answer says why).
.TP
{EXIT_USAGE}
Bad usage or configuration.
.TP
{EXIT_UNREACHABLE}
The service could not be reached.
.SH ENVIRONMENT
.TP
\fBFORKPOOL_CONFIG\fR
The configuration file when \fB\-\-config\fR is not given (else config/forkpool.toml).
.TP
\fBFORKPOOL_SOCKET\fR
The socket of the client commands when \fB\-\-socket\fR is not given (else the
configured service.socket).
.TP
\fBFORKPOOL_\fISECTION\fB__\fIKEY\fR
Overrides one configuration key, e.g. FORKPOOL_WORKERS__COUNT=8.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd for LoadCredential=; path keys such as password_file may name it as
${{CREDENTIALS_DIRECTORY}}/db\-password.
.TP
\fBRUST_LOG\fR
The log filter (default info).
.SH FILES
.TP
/etc/forkpool/forkpool.toml
The configuration the package installs; relative paths in it are relative to its directory.
.TP
/etc/forkpool/workers/*.toml
The job files (service.catalog).
.TP
/run/forkpool/forkpool.sock
The service's socket under systemd (forkpool.service, forkpool.socket).
.SH "SEE ALSO"
\fBsystemd.exec\fR(5), \fBsysusers.d\fR(5)
"#
    )
}

/// The file name this program was started as; `forkpool` when it cannot be told.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or("forkpool")
        .to_string()
}
