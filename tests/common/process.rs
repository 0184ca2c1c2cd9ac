//! idmint as a child process: started with a clean environment, waited for until it says
//! "ready", and killed when the test ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when the test ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The idmint binary with its state in `data` and no `IDMINT_` settings from the environment.
pub fn idmint(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idmint"));
    for (key, _) in std::env::vars() {
        if key.starts_with("IDMINT_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--data-dir").arg(data);
    cmd
}

/// Starts `cmd` with its log in `log` and waits for its "ready" line.
pub fn start(mut cmd: Command, log: PathBuf) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready") => break,
            Some(Ok(_)) => {}
            _ => panic!(
                "{cmd:?} stopped before it was ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Running(child)
}

/// Runs `cmd`, fails the test unless it succeeds, and returns its output.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `done`, failing the test after `limit`; returns how long it took.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}
