//! `forkpool completions SHELL` and `forkpool man`: the scripts parse in their shells, the man
//! pages render, and both name every subcommand `forkpool --help` lists.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn forkpool(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "forkpool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_of(args: &[&str]) -> String {
    String::from_utf8(forkpool(args).stdout).unwrap()
}

/// The subcommands as `forkpool --help` lists them (less clap's `help`).
fn subcommands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let names: Vec<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(
        ["run", "submit", "check", "completions", "man"]
            .iter()
            .all(|known| names.iter().any(|name| name == known)),
        "{names:?} from:\n{help}"
    );
    names
}

/// Runs `shell -n` (parse only) on `script` when the shell is installed; false when it is not.
fn parses_in(shell: &str, script: &str) -> bool {
    let mut child = match Command::new(shell)
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{shell} is not installed: its completion script is not parsed here");
            return false;
        }
        Err(e) => panic!("running {shell}: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{shell} -n: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

#[test]
fn bash_completion_parses_and_completes_every_subcommand() {
    let script = stdout_of(&["completions", "bash"]);
    assert!(parses_in("bash", &script), "bash is needed for this test");
    assert!(script.contains("complete -F _forkpool"), "{script}");
    for name in subcommands() {
        assert!(
            script.contains(&format!("forkpool,{name})")),
            "`{name}` is not completed:\n{script}"
        );
    }
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let names = subcommands();
    for shell in ["zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        parses_in(shell, &script);
        for name in &names {
            let offered = match shell {
                "zsh" => format!("'{name}:"),
                _ => format!("__fish_forkpool_needs_command\" -f -a \"{name}\""),
            };
            assert!(
                script.contains(&offered),
                "{shell}: `{name}` is not completed:\n{script}"
            );
        }
    }
}

#[test]
fn man_page_has_name_synopsis_and_every_subcommand_and_renders() {
    let page = stdout_of(&["man"]);
    for section in [
        ".TH forkpool 1",
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH SUBCOMMANDS",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
    ] {
        assert!(page.contains(section), "no {section}:\n{page}");
    }
    for name in subcommands() {
        assert!(
            page.contains(&format!("forkpool\\-{name}(1)")),
            "`{name}` is not in the man page:\n{page}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forkpool.1");
    std::fs::write(&file, &page).unwrap();
    let rendered = render(&file);
    assert!(
        rendered.contains("NAME") && rendered.contains("forkpool - A prefork job runner"),
        "{rendered}"
    );
    assert!(
        rendered.contains("EXIT STATUS") && rendered.contains("FORKPOOL_SECTION__KEY"),
        "{rendered}"
    );
}

#[test]
fn man_dir_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    forkpool(&["man", "--dir", dir.path().to_str().unwrap()]);
    let main = std::fs::read_to_string(dir.path().join("forkpool.1")).unwrap();
    assert_eq!(main, stdout_of(&["man"]));
    for name in subcommands() {
        let file = dir.path().join(format!("forkpool-{name}.1"));
        let page =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(page.contains(".SH SYNOPSIS"), "{page}");
        let rendered = render(&file);
        assert!(rendered.contains(&format!("forkpool-{name}")), "{rendered}");
    }
    assert!(!dir.path().join("forkpool-help.1").exists());
}

/// The page as `man -l` shows it, else as groff formats it; its source when neither is here.
fn render(file: &Path) -> String {
    let attempts: [(&str, &[&str]); 2] = [("man", &["-l"]), ("groff", &["-man", "-Tutf8"])];
    for (program, args) in attempts {
        let output = match Command::new(program)
            .args(args)
            .arg(file)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("running {program}: {e}"),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{program}: {stderr}");
        assert!(!stderr.contains("warning"), "{program}: {stderr}");
        return String::from_utf8_lossy(&output.stdout).into_owned();
    }
    eprintln!("neither man nor groff is installed: the man pages are not rendered here");
    std::fs::read_to_string(file).unwrap()
}
