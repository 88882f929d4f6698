//! The command line stands alone: every subcommand's `--help` says what it does and how it exits (users'
//! commands also show examples), and `ebb completion SHELL` prints a script for the shell that knows every
//! subcommand and flag.

use std::process::{Command, Output};

fn ebb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebb")).args(args).output().expect("run ebb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

const USERS: [&str; 7] = ["check", "inject", "simulate", "up", "status", "demo-model", "completion"];
const COMPONENTS: [&str; 3] = ["queue-proxy", "activator", "autoscaler"];

#[test]
fn every_subcommands_help_says_what_it_does_and_its_exit_codes() {
    let top = ebb(&["--help"]);
    assert!(top.status.success());
    let top = text(&top.stdout);
    for command in USERS.iter().chain(&COMPONENTS) {
        assert!(top.contains(&format!("  {command}")), "ebb --help lists {command}:\n{top}");
        let out = ebb(&[command, "--help"]);
        assert!(out.status.success(), "{command}");
        let help = text(&out.stdout);
        assert!(
            help.lines().next().is_some_and(|l| l.len() > 20),
            "{command}: a first line that says what it does"
        );
        assert!(help.contains("\nExit codes:\n  0  "), "{command} --help has no exit codes:\n{help}");
        if USERS.contains(command) {
            assert!(
                help.contains("\nExamples:\n  ebb ") || help.contains("\nExamples:\n  "),
                "{command}:\n{help}"
            );
        }
    }
    assert!(!top.contains("pod-supervisor"), "the internal subcommand stays hidden");
}

#[test]
fn completion_scripts_know_the_subcommands_and_flags() {
    for (shell, marker) in
        [("bash", "complete -F _ebb"), ("zsh", "#compdef ebb"), ("fish", "complete -c ebb")]
    {
        let out = ebb(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        // fish names flags without their dashes (`-l log-format`).
        for word in ["status", "simulate", "log-format", "context", "all-namespaces"] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
    }
    let out = ebb(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    // bash accepts the script (syntax only).
    let out = ebb(&["completion", "bash"]);
    let check = Command::new("bash").arg("-n").stdin(std::process::Stdio::piped()).spawn();
    if let Ok(mut bash) = check {
        std::io::Write::write_all(&mut bash.stdin.take().unwrap(), &out.stdout).unwrap();
        assert!(bash.wait().unwrap().success(), "bash -n rejects the completion script");
    }
}
