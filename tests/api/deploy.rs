//! The deployment files agree with the binary: every `ENTITLED_*` variable that
//! `entitled serve --help` prints is in deploy/entitled.env.example and the example
//! names no variable the binary does not know; the systemd unit has its key lines,
//! and `systemd-analyze verify` (when installed) finds nothing wrong with it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn deploy_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `ENTITLED_[A-Z0-9_]+` names in `text`, each starting right after one of `prefixes`.
fn names_after(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in prefixes {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            if !rest.starts_with("ENTITLED_") {
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            // `ENTITLED_*` in prose is no name.
            if end > "ENTITLED_".len() {
                names.insert(rest[..end].to_owned());
            }
        }
    }
    names
}

/// The `[env: ENTITLED_…]` names of `entitled serve --help`.
fn help_env_names() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_entitled"))
        .args(["serve", "--help"])
        .output()
        .expect("run entitled serve --help");
    assert!(
        output.status.success(),
        "entitled serve --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8(output.stdout).expect("--help prints UTF-8");
    let names = names_after(&help, &["[env: "]);
    assert!(
        names.contains("ENTITLED_WEBHOOK_TOKEN") && names.contains("ENTITLED_DB"),
        "found no [env: ENTITLED_…] in --help (did its format change?): {names:?}"
    );
    names
}

/// Variables the example sets or shows commented out: `NAME=` at the start of a
/// line, after an optional `#` and spaces.
fn example_env_names() -> BTreeSet<String> {
    let example = deploy_file("entitled.env.example");
    let mut names = BTreeSet::new();
    for line in example.lines() {
        let line = line.trim_start().trim_start_matches('#').trim_start();
        if let Some((name, _)) = line.split_once('=') {
            if name.starts_with("ENTITLED_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn env_example_lists_every_variable_of_serve_help() {
    let help = help_env_names();
    let example = example_env_names();
    let missing: Vec<_> = help.difference(&example).collect();
    assert!(
        missing.is_empty(),
        "deploy/entitled.env.example lacks {missing:?} (add each as `#NAME=default` with a comment)"
    );
}

#[test]
fn env_example_names_no_variable_serve_does_not_know() {
    let help = help_env_names();
    let example = deploy_file("entitled.env.example");
    // Every ENTITLED_ name anywhere in the file, comments included.
    let mentioned = names_after(&example, &[""]);
    let stale: Vec<_> = mentioned.difference(&help).collect();
    assert!(
        stale.is_empty(),
        "deploy/entitled.env.example names {stale:?}, which `entitled serve --help` does not list"
    );
}

#[test]
fn systemd_unit_has_its_key_lines() {
    let unit = deploy_file("entitled.service");
    let lines: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let has = |wanted: &dyn Fn(&str) -> bool| lines.iter().any(|l| wanted(l));

    assert!(
        has(&|l| l.starts_with("ExecStart=") && l.contains("entitled serve")),
        "ExecStart= running `entitled serve`"
    );
    assert!(
        has(&|l| l == "DynamicUser=yes" || (l.starts_with("User=") && l.len() > "User=".len())),
        "DynamicUser=yes or a User="
    );
    for line in [
        "StateDirectory=entitled",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "EnvironmentFile=/etc/entitled/entitled.env",
    ] {
        assert!(
            lines.contains(&line),
            "deploy/entitled.service lacks `{line}`"
        );
    }
    assert!(
        has(&|l| l.starts_with("Environment=") && l.contains("ENTITLED_DB=/var/lib/entitled/")),
        "the database in the state directory: Environment=ENTITLED_DB=/var/lib/entitled/…"
    );
    // Every variable the unit sets is one the binary knows.
    let help = help_env_names();
    let set = names_after(&unit, &["Environment="]);
    let unknown: Vec<_> = set.difference(&help).collect();
    assert!(unknown.is_empty(), "the unit sets unknown {unknown:?}");
}

/// `systemd-analyze verify FILE`: its complaints, one a line, without the one a
/// development machine always has (the ExecStart binary is not installed here).
/// `None` when systemd-analyze is not on PATH.
fn systemd_verify(unit: &std::path::Path) -> Option<Vec<String>> {
    let output = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("systemd-analyze verify: {e}"),
    };
    let text = std::fs::read_to_string(unit).expect("the unit");
    let exec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .and_then(|cmd| cmd.split_whitespace().next())
        .expect("an ExecStart= line")
        .to_owned();
    let mut missing_binary = false;
    let mut complaints = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if line.contains(&format!("Command {exec} is not executable")) {
            missing_binary = true;
        } else {
            complaints.push(line.to_owned());
        }
    }
    if !output.status.success() && !missing_binary && complaints.is_empty() {
        complaints.push(format!("exit status {} without a word", output.status));
    }
    Some(complaints)
}

#[test]
fn systemd_analyze_verify_finds_nothing_wrong_with_the_unit() {
    let unit = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("entitled.service");
    let Some(complaints) = systemd_verify(&unit) else {
        eprintln!(
            "systemd-analyze is not on PATH: deploy/entitled.service is not verified \
             (systemd_unit_has_its_key_lines checks its key lines only)"
        );
        return;
    };
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify deploy/entitled.service complains:\n{}",
        complaints.join("\n")
    );

    // The check has teeth with this systemd: a copy with a misspelt key and a bad
    // value is complained about.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broken = dir.path().join("entitled.service");
    let text = deploy_file("entitled.service").replacen(
        "[Service]\n",
        "[Service]\nProtectSytem=strict\nRestart=sometimes\n",
        1,
    );
    std::fs::write(&broken, text).expect("a broken copy");
    let complaints = systemd_verify(&broken).expect("systemd-analyze ran a moment ago");
    for wanted in ["ProtectSytem", "sometimes"] {
        assert!(
            complaints.iter().any(|c| c.contains(wanted)),
            "systemd-analyze verify did not report `{wanted}` in a broken copy: {complaints:?}"
        );
    }
}
