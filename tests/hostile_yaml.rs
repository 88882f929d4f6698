//! Hostile YAML at every entry point that reads it (`ebb check`, `ebb inject`, `ebb up -f`): an alias bomb, an
//! input far larger than any manifest, and nesting ten thousand levels deep. Each ends in exit code 2 and one
//! line that names the limit it hit, without a panic, quickly, and in bounded memory (the largest any `ebb`
//! process of these tests took is checked at the end of each).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::resource::{UsageWho, getrusage};

fn ebb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ebb-hostile-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The outcome of one run: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ebb ARGS`, writing `chunk` `times` times to its stdin (it may stop reading early).
fn run(args: &[&str], chunk: &[u8], times: usize) -> Run {
    let mut child =
        ebb().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let chunk = chunk.to_vec();
    // A closed pipe is expected: ebb stops reading at its limit.
    let writer = std::thread::spawn(move || (0..times).try_for_each(|_| stdin.write_all(&chunk)));
    let output = child.wait_with_output().unwrap();
    let _ = writer.join().unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `ebb check -`, `ebb inject -` and `ebb up -f FILE` on `yaml` (for `up`, `up_yaml`: the same trap inside an
/// ebb.yaml); each exits 2 with `expected` in the one line it prints about it.
fn every_entry_point(name: &str, yaml: &str, up_yaml: &str, expected: &str) {
    let check = run(&["check", "-"], yaml.as_bytes(), 1);
    let inject = run(&["inject", "-"], yaml.as_bytes(), 1);
    let file = temp(&format!("{name}.yaml"));
    std::fs::write(&file, up_yaml).unwrap();
    let up = run(&["up", "--port", "0", "--metrics-port", "0", "-f", file.to_str().unwrap()], b"", 0);
    for (entry, run) in [("check", check), ("inject", inject), ("up -f", up)] {
        assert_eq!(run.code, Some(2), "ebb {entry}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "ebb {entry}: {expected:?} not in {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "ebb {entry}: {}", run.stderr);
        if entry == "inject" {
            assert!(run.stdout.is_empty(), "ebb inject printed {}", run.stdout);
        }
    }
    assert_bounded_memory();
}

/// No `ebb` run of this test process took more than 512 MiB (peak resident memory of its children).
fn assert_bounded_memory() {
    let max_rss_kib = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss();
    assert!(max_rss_kib < 512 * 1024, "an ebb process took {max_rss_kib} KiB");
}

/// A billion laughs: nine levels of nine aliases, 9^9 strings once expanded.
fn laughs(indent: &str) -> String {
    let mut bomb = format!("{indent}- &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        bomb += &format!("{indent}- &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", "));
    }
    bomb
}

#[test]
fn an_alias_bomb_is_refused_where_it_starts_to_expand() {
    let yaml = format!("kind: ConfigMap\nmetadata: {{name: laughs}}\ndata:\n  bomb:\n{}", laughs("  "));
    // In ebb.yaml, inside the one field that takes a list: it is read whole before its type is checked.
    let up = format!("services:\n  - name: demo\n    command:\n{}", laughs("      "));
    every_entry_point("laughs", &yaml, &up, "beyond ebb's limits: aliases expand to more than 100000 nodes");
}

#[test]
fn nesting_ten_thousand_levels_deep_is_refused_at_the_depth_limit() {
    let expected = "beyond ebb's limits: nested deeper than 64 levels";
    let block = format!("{}x\n", "- ".repeat(10_000));
    let up = format!("services:\n  - name: demo\n    command:\n      {}x\n", "- ".repeat(10_000));
    every_entry_point("block", &block, &up, expected);
    let flow = format!("data: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let up =
        format!("services:\n  - name: demo\n    command: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    every_entry_point("flow", &flow, &up, expected);
}

#[test]
fn a_hundred_megabytes_of_input_are_not_read() {
    // ~100 MB of valid manifests, made here: a ConfigMap of 1 KiB, 100,000 times.
    let document =
        format!("---\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{a: \"{}\"}}\n", "x".repeat(970));
    let chunk = document.repeat(1_000);
    let expected = "beyond ebb's limits: larger than 32 MiB, the most YAML ebb reads";
    for args in [&["check", "-"][..], &["inject", "-"][..]] {
        let run = run(args, chunk.as_bytes(), 100);
        assert_eq!(run.code, Some(2), "ebb {args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "ebb {args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "ebb {args:?}: {}", run.stderr);
    }
    let file = temp("big.yaml");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    (0..100).for_each(|_| out.write_all(chunk.as_bytes()).unwrap());
    drop(out);
    let up = run(&["up", "--port", "0", "--metrics-port", "0", "-f", file.to_str().unwrap()], b"", 0);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(up.code, Some(2), "{}", up.stderr);
    assert!(up.stderr.contains(expected) && !up.stderr.contains("panicked"), "{}", up.stderr);
    assert_bounded_memory();
}
