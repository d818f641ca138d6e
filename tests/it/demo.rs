//! The demo, the README's first command, run as a newcomer runs it (with a
//! smaller bulk load): it must pass its own checks, and its terminal must
//! hold its story, with herald's log in the file it names.

use std::process::Command;

#[test]
fn the_demo_passes_its_checks_and_keeps_herald_s_log_out_of_its_table() {
    // `cargo test` builds the examples beside the test binaries.
    let exe = std::env::current_exe().unwrap();
    let demo = exe.parent().unwrap().parent().unwrap().join("examples").join("demo");
    assert!(demo.exists(), "cargo test builds examples/demo.rs to {}", demo.display());
    let out = Command::new(&demo).args(["--load", "500"]).env_remove("RUST_LOG").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    // A tracing line starts with its time and has its level after it.
    let logged = |line: &str| line.len() > 30 && line.as_bytes()[4] == b'-' && line[..30].contains('T') && [" INFO ", " WARN ", "ERROR ", "DEBUG "].iter().any(|l| line.contains(l));
    let noise: Vec<&str> = stdout.lines().chain(stderr.lines()).filter(|l| logged(l)).collect();
    assert!(noise.is_empty(), "herald's log reached the terminal: {noise:#?}");
    let named = stdout.lines().find_map(|l| l.strip_prefix("herald's log: ")).unwrap_or_else(|| panic!("the log file is named at the end:\n{stdout}"));
    let log = std::fs::read_to_string(named.trim()).unwrap();
    // The demo's dead letters and failovers are WARNs: they are in the file.
    assert!(log.lines().any(|l| logged(l) && l.contains(" WARN ")), "{log}");
    let _ = std::fs::remove_file(named.trim());
}
