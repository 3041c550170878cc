//! `forkpool completions SHELL` and `forkpool man`: the shell completion scripts and the man
//! pages, generated from the clap definition of the command line, so they never disagree
//! with `--help`. The packaging script (scripts/build-deb.sh) runs both on the release
//! binary and ships what they write.

use std::io::Write;
use std::path::Path;

use clap_complete::Shell;

use crate::exit::{EXIT_FAILED, EXIT_OK};

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
            clap_mangen::Man::new(command)
                .render(&mut out)
                .and_then(|()| out.flush())
        }
        Some(dir) => clap_mangen::generate_to(command, dir),
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
