//! The .deb as scripts/build-deb.sh builds it (cargo-deb), unpacked with `dpkg-deb -x` into
//! a temporary root: its binary accepts the configuration it ships, and the units, the
//! sysusers file, the man pages and the completions are where systemd, man and the shells
//! look for them.
//!
//! The build needs the release binary; scripts/test.sh builds it before `cargo test`, so
//! here it is already there (run alone, this test builds it: minutes). Without cargo-deb
//! the test says so and passes, except under CI (`CI` set), where .ci/run installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn cargo_deb_installed() -> bool {
    Command::new("cargo-deb")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Builds the .deb into `dir` and returns its path.
fn build_deb(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deb.sh");
    let output = run(Command::new("bash").arg(script).arg(dir));
    let printed = String::from_utf8(output.stdout).unwrap();
    let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.exists(),
        "{printed}"
    );
    deb
}

#[test]
fn the_deb_ships_a_binary_that_accepts_its_own_configuration_and_the_system_files() {
    if !cargo_deb_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "cargo-deb is not installed, and CI must build the package (.ci/run installs it)"
        );
        eprintln!(
            "cargo-deb is not installed (cargo install cargo-deb --locked): the .deb is not built here"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let root = out.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));

    // The packaged binary checks the packaged configuration as shipped: its catalog resolves
    // to the packaged jobs, inside this root, not to a path of the repository's layout.
    let binary = root.join("usr/bin/forkpool");
    let config = root.join("etc/forkpool/forkpool.toml");
    let checked = run(Command::new(&binary)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env_remove("FORKPOOL_CONFIG")
        .env_remove("FORKPOOL_SOCKET"));
    let said = String::from_utf8(checked.stdout).unwrap();
    let catalog = root.join("etc/forkpool/workers");
    assert!(
        said.contains(&format!("catalog {}: 4 jobs", catalog.display())),
        "{said}"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("\nsocket = \"/run/forkpool/forkpool.sock\""),
        "the socket the unit binds:\n{text}"
    );

    // /etc is the administrator's: every file there is a conffile.
    let control = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    let conffiles = String::from_utf8(control.stdout).unwrap();
    for file in [
        "/etc/forkpool/forkpool.toml",
        "/etc/forkpool/workers/add.toml",
    ] {
        assert!(conffiles.lines().any(|line| line == file), "{conffiles}");
    }
    // The user exists right after install, not only after the next boot.
    let control = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    let postinst = String::from_utf8(control.stdout).unwrap();
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");

    // The units run the packaged binary; the sysusers file is the repository's.
    let units = root.join("usr/lib/systemd/system");
    for unit in ["forkpool.service", "forkpool@.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(
            text.contains("\nExecStart=/usr/bin/forkpool run --config /etc/forkpool/"),
            "{unit}:\n{text}"
        );
    }
    for unit in ["forkpool.socket", "forkpool@.socket"] {
        assert!(units.join(unit).exists(), "{unit}");
    }
    let sysusers = std::fs::read(root.join("usr/lib/sysusers.d/forkpool.conf")).unwrap();
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/forkpool.sysusers");
    assert_eq!(sysusers, std::fs::read(repository).unwrap());

    // A man page for forkpool and each subcommand, compressed as Debian wants.
    let man = root.join("usr/share/man/man1");
    for page in [
        "forkpool",
        "forkpool-run",
        "forkpool-check",
        "forkpool-completions",
    ] {
        assert!(man.join(format!("{page}.1.gz")).exists(), "{page}.1.gz");
    }
    if let Ok(output) = Command::new("man")
        .arg("-l")
        .arg(man.join("forkpool.1.gz"))
        .env("MANPAGER", "cat")
        .output()
    {
        let page = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && page.contains("SYNOPSIS"),
            "{page}"
        );
    }

    // The completions, where bash-completion, zsh and fish load them from.
    let share = root.join("usr/share");
    let bash = share.join("bash-completion/completions/forkpool");
    run(Command::new("bash").arg("-n").arg(&bash));
    assert!(std::fs::read_to_string(&bash)
        .unwrap()
        .contains("complete -F _forkpool"));
    for file in [
        "zsh/vendor-completions/_forkpool",
        "fish/vendor_completions.d/forkpool.fish",
    ] {
        let text = std::fs::read_to_string(share.join(file)).unwrap();
        assert!(text.contains("forkpool"), "{file}");
    }
    for file in ["copyright", "LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(share.join("doc/forkpool").join(file).exists(), "{file}");
    }
}
